"""An experiment's rows side by side, one ``cellsynth experiment --only ROW`` process per device."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cellsynth.errors import CellsynthInputError
from cellsynth.experiment.config import ExperimentConfig, Row, load_config
from cellsynth.experiment.runner import Experiment, ExperimentProgress, training_order

log = logging.getLogger(__name__)


def row_devices(devices: Sequence[str]) -> list[str]:
    """The devices of ``--devices``: names as given (``cuda:0 cuda:1``, ``cpu cpu``), or
    ``auto``: every CUDA GPU (``cuda:0`` …), else the one device :func:`select_device` picks."""
    from cellsynth.device import select_device

    if list(devices) == ["auto"]:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] or [str(select_device("auto"))]
    return [str(select_device(d)) for d in devices]


def run_rows_in_parallel(
    config: ExperimentConfig | str | Path,
    out: str | Path,
    devices: Sequence[str],
    *,
    only: Sequence[str] | None = None,
    poll_seconds: float = 1.0,
) -> Iterator[ExperimentProgress]:
    """Run an experiment's rows side by side, one row per device (``--devices``).

    The bundle and the synthetic pairs are prepared here first (on the first device), and the
    ``convergence`` ladder, if any, runs here too; then one
    ``cellsynth experiment CONFIG -o OUT --only ROW --device DEV`` process per device trains a
    row, and the next pending row takes the first device that is free, so an experiment takes
    about the time of its slowest row. Curated rows start once their scorer row is finished.
    Each process's output is in ``OUT/logs/ROW.log``; finished rows are kept as in
    :func:`run_experiment`, so a rerun continues.
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    if config.source is None:
        raise CellsynthInputError("rows in parallel need the experiment config as a file")
    devices = list(devices)
    out = Path(out)
    exp = Experiment(config, out, device=devices[0])
    for p in exp.run(only=only, prepare_only=True):
        if p.stage != "done":
            yield p
    (out / "logs").mkdir(exist_ok=True)
    env = {**os.environ, "LOCAL_WORLD_SIZE": str(len(devices))}  # threads: cores / rows
    if config.convergence_spec is not None and exp.convergence_decision() is None:
        yield from _ladder_in_parallel(exp, devices, env, poll_seconds)
        yield from exp.converge()  # decides from the rungs (trains nothing): rows read it
    rows = config.with_prerequisites([r for r in config.rows if not only or r.name in only])
    scorer = config.scorer if any(r.curated for r in rows) else None
    epochs = exp.epochs
    pending = sorted(
        (r for r in rows if exp.finished(r, epochs) is None),
        key=lambda r: training_order(r, scorer),
    )

    def ready(r: Row) -> bool:  # curated rows wait for their scorer, pretrained for their start
        before = [scorer] if r.curated else []
        before += [config.row_named(r.start_from)] if r.start_from else []
        return all(exp.finished(b, epochs) is not None for b in before)

    total = max(len(pending), 1)
    running: dict[int, tuple[Row, Any, Any]] = {}  # by slot: ``cpu cpu`` is two slots
    try:
        while pending or running:
            for slot, dev in enumerate(devices):
                if slot in running:
                    continue
                startable = [r for r in pending if ready(r)]
                if not startable:
                    break
                row = startable[0]
                pending.remove(row)
                running[slot] = (row, *_start(exp, dev, ["--only", row.name], row.slug, env))
                yield ExperimentProgress("training", row.name, 0.0, f"started on {dev}")
            time.sleep(poll_seconds)
            for dev, row in _ended(running, devices, exp, lambda r: (f"row {r.name!r}", r.slug)):
                left = len(pending) + len(running)
                yield ExperimentProgress(
                    "evaluation", row.name, 1.0 - left / total, f"finished on {dev}"
                )
    finally:
        for _row, proc, log_file in running.values():  # interrupted: stop this run's rows
            proc.terminate()
            proc.wait()
            log_file.close()
    exp.write_results()
    yield ExperimentProgress("done", None, 1.0, str(out / "results.json"))


def _ladder_in_parallel(
    exp: Experiment, devices: Sequence[str], env: dict[str, str], poll_seconds: float
) -> Iterator[ExperimentProgress]:
    """Train the convergence ladder's rungs side by side, one process per device.

    The rungs are independent trainings: the learning-rate sweep's first, then every doubling
    up to ``max_epochs`` at once (without a sweep, the first rung and its doublings together),
    the longest first, so the ladder takes about the time of its longest rung, not the sum. A
    rung that finished rungs make unnecessary (the ladder converged below it) is stopped.
    """
    running: dict[int, tuple[tuple[int, float | None], Any, Any]] = {}  # by slot

    def tag(rung: tuple[int, float | None]) -> str:
        return f"ladder_{rung[0]}" + ("" if rung[1] is None else f"_lr{rung[1]:g}")

    try:
        while True:
            needed = exp.pending_rungs()
            for slot, (rung, proc, log_file) in list(running.items()):
                if rung not in needed:  # decided without it
                    proc.terminate()
                    proc.wait()
                    log_file.close()
                    del running[slot]
                    log.info("rung %s on %s stopped: not needed", tag(rung), devices[slot])
            if not needed and not running:
                return
            busy = {rung for rung, _, _ in running.values()}
            todo = sorted((r for r in needed if r not in busy), key=lambda r: -r[0])
            for slot, dev in enumerate(devices):
                if slot in running or not todo:
                    continue
                rung = todo.pop(0)
                args = ["--rung", str(rung[0])]
                args += [] if rung[1] is None else ["--rung-lr", repr(rung[1])]
                running[slot] = (rung, *_start(exp, dev, args, tag(rung), env))
                yield ExperimentProgress("convergence", tag(rung), 0.0, f"started on {dev}")
            time.sleep(poll_seconds)
            ended = _ended(running, devices, exp, lambda r: (f"convergence rung {tag(r)}", tag(r)))
            for dev, rung in ended:
                yield ExperimentProgress("convergence", tag(rung), 1.0, f"finished on {dev}")
    finally:
        for _rung, proc, log_file in running.values():  # interrupted: stop this run's rungs
            proc.terminate()
            proc.wait()
            log_file.close()


def _start(
    exp: Experiment, device: str, args: list[str], name: str, env: dict[str, str]
) -> tuple[Any, Any]:
    """Start ``cellsynth experiment CONFIG -o OUT --device DEVICE ARGS`` with its output in
    ``OUT/logs/NAME.log``: (the process, its open log file)."""
    import subprocess

    log_file = open(exp.out / "logs" / f"{name}.log", "a")
    cmd = [sys.executable, "-m", "cellsynth", "experiment", str(exp.config.source)]
    cmd += ["-o", str(exp.out), "--device", device, *args]
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    log.info("%s on %s (pid %d)", name, device, proc.pid)
    return proc, log_file


def _ended(
    running: dict[int, tuple[Any, Any, Any]],
    devices: Sequence[str],
    exp: Experiment,
    names: Any,
) -> Iterator[tuple[str, Any]]:
    """Take the processes of ``running`` (slot in ``devices``: (item, process, log file)) that
    have ended out of it: (device, item); one that failed raises, naming its log
    (``names(item)`` gives the item's words and its log's name)."""
    for slot, (item, proc, log_file) in list(running.items()):
        if proc.poll() is None:
            continue
        log_file.close()
        del running[slot]
        dev = devices[slot]
        if proc.returncode != 0:
            what, name = names(item)
            raise CellsynthInputError(
                f"{what} failed on {dev} (exit code {proc.returncode}); its output is in this file",
                exp.out / "logs" / f"{name}.log",
            )
        yield dev, item
