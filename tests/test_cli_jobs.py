"""Long commands run their core generator through one helper, ``cellsynth.cli.run_job``: one
progress bar, and on Ctrl-C the generator is closed (the core keeps its checkpoint), one line
says what was kept, and the exit code is 130."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest
from skimage.measure import label

from cellsynth import cli
from cellsynth.cli import Interrupted, main, run_job
from cellsynth.experiment import ExperimentProgress
from cellsynth.learn import Progress
from cellsynth.segmenters import FinetuneProgress
from cellsynth.shapes.multiview import MultiviewProgress


def _records(n: int, log: list[str]):
    try:
        for i in range(1, n + 1):
            yield i, n, f"record {i}"
    finally:
        log.append("closed")


def test_run_job_returns_the_last_record():
    log: list[str] = []
    assert run_job(_records(3, log), total=3, desc="test") == (3, 3, "record 3")
    assert log == ["closed"]


def test_ctrl_c_while_showing_a_record_closes_the_job_then_says_what_was_kept():
    log: list[str] = []

    def update(bar, record):
        if record[0] == 2:
            raise KeyboardInterrupt

    def kept() -> str:
        log.append("kept")
        return "the first record"

    with pytest.raises(Interrupted, match=r"^the first record$"):
        run_job(_records(5, log), total=5, desc="test", update=update, kept=kept)
    assert log == ["closed", "kept"]  # the core cleans up before the message is made


def _swallowing(n: int, at: int, log: list[int]):
    """Records 1..n; at record ``at`` a Ctrl-C arrives inside a library's bare ``except:``."""
    import signal

    try:
        for i in range(1, n + 1):
            if i == at:
                try:
                    signal.raise_signal(signal.SIGINT)
                except:  # noqa: E722 (what Cellpose 3 does around its matplotlib import)
                    pass
            log.append(i)
            yield i, n, f"record {i}"
    finally:
        log.append(-1)


def test_a_ctrl_c_that_a_library_swallows_still_stops_the_job():
    log: list[int] = []
    with pytest.raises(Interrupted):
        run_job(_swallowing(50, 3, log), total=50, desc="test")
    assert log == [1, 2, 3, -1]  # stopped after the record it arrived in, and closed


def test_a_cancel_that_a_library_swallows_still_stops_a_subprocess_job(
    tmp_path, monkeypatch, capsys
):
    import json

    from cellsynth import jobs

    log: list[int] = []
    monkeypatch.setitem(jobs.RUNNERS, "swallow", lambda spec: _swallowing(50, 2, log))
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"kind": "swallow"}))
    assert jobs.child_main([str(spec)]) == 130
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[-1] == {"cancelled": True} and len(lines) == 3  # two records, then cancelled
    assert log == [1, 2, -1]


def test_the_cli_has_one_progress_loop():
    tree = ast.parse(inspect.getsource(cli))
    bars = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "tqdm"
    ]
    ctrl_c = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ExceptHandler)
        and getattr(node.type, "id", "") == "KeyboardInterrupt"
    ]
    assert len(bars) == 1  # in run_job
    assert len(ctrl_c) == 2  # run_job closes the job; main turns Interrupted into exit code 130


# --------------------------------------------------------------------------- every long command


def _interrupted_after(record):
    """A core generator that reports one step, then gets Ctrl-C during the next."""

    def job(*args, **kwargs):
        yield record
        raise KeyboardInterrupt

    return job


def threshold_segment(model, image, **kwargs):
    """A "model" for the tests: labels the bright disks of conftest's images."""
    return label(np.asarray(image) > 250).astype(np.uint16)


def _segmenter(interrupt_at: int | None = None) -> dict:
    """Replacements of cellsynth.segment's model loading and segmentation."""
    calls = []

    def segment(model, image, **kwargs):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return threshold_segment(model, image)

    return {
        "cellsynth.segment.load_model": lambda *args, **kwargs: "threshold",
        "cellsynth.segment.segment": segment,
    }


CASES = {  # command: (arguments, replacements of core functions, what the line says was kept)
    "learn": (
        ["{data}", "-o", "{out}"],
        lambda: {
            "cellsynth.learn.learn": _interrupted_after(
                Progress(1, 1, 0, 10, 10, "mask_model", 1.0, 1.0, 0.1)
            )
        },
        "the last checkpoint is in {out}; continue with --resume",
    ),
    "synthesize": (
        ["-o", "{out}", "-n", "3"],
        lambda: {"cellsynth.synthesize.synthesize": _interrupted_after((1, 3, "synth_0000"))},
        "the pairs written so far are in {out}; run the same command to add the others",
    ),
    "finetune": (
        ["--real", "{data}", "-o", "{out}"],
        lambda: {
            "cellsynth.segment.finetune": _interrupted_after(
                FinetuneProgress(1, 9, 1, 1, 1.0, 1.0, 0.1)
            )
        },
        "the last weights are in {out}",
    ),
    "train-multiview": (
        ["-o", "{out}", "--steps", "9"],
        lambda: {
            "cellsynth.shapes.multiview.train_multiview": _interrupted_after(
                MultiviewProgress(1, 9, 1.0, 1.0)
            )
        },
        "the model so far is in {out}",
    ),
    "experiment": (
        ["{data}/labels/img0.tif", "-o", "{out}"],  # any file: load_config is replaced
        lambda: {
            "cellsynth.experiment.load_config": lambda path: {},
            "cellsynth.experiment.run_experiment": _interrupted_after(
                ExperimentProgress("bundle", None, 0.1, "loss 1")
            ),
        },
        "finished rows are kept in {out}; run the same command to continue",
    ),
    "segment": (
        ["{data}/images", "--model", "{data}/labels/img0.tif", "-o", "{out}"],
        lambda: _segmenter(interrupt_at=2),
        "the label images written so far are in {out}",
    ),
    "evaluate": (
        ["--model", "{data}/labels/img0.tif", "{data}"],
        lambda: _segmenter(interrupt_at=2),
        "nothing was written",
    ),
    "score": (
        ["{data}", "--model", "{data}/labels/img0.tif"],
        lambda: _segmenter(interrupt_at=2),
        "no scores were written",
    ),
}


def _run(command: str, data: Path, out: Path, monkeypatch) -> tuple[int, str]:
    argv, fakes, kept = CASES[command]
    for target, fake in fakes().items():
        monkeypatch.setattr(target, fake)
    names = {"data": data, "out": out}
    return main(["-q", command, *(a.format(**names) for a in argv)]), kept.format(**names)


@pytest.mark.parametrize("command", sorted(CASES))
def test_ctrl_c_in_a_long_command_exits_130_saying_what_was_kept(
    command, dataset_folder, tmp_path, monkeypatch, capsys
):
    code, kept = _run(command, dataset_folder, tmp_path / "out", monkeypatch)
    assert code == 130
    assert capsys.readouterr().err.splitlines() == [f"cellsynth {command}: interrupted: {kept}"]


def test_an_interrupted_segment_keeps_the_label_images_written(
    dataset_folder, tmp_path, monkeypatch
):
    assert _run("segment", dataset_folder, tmp_path / "out", monkeypatch)[0] == 130
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["img0.tif"]


def test_an_interrupted_train_multiview_saves_the_model_so_far(tmp_path, monkeypatch):
    from cellsynth.shapes.multiview import MultiviewModel

    assert _run("train-multiview", tmp_path, tmp_path / "out", monkeypatch)[0] == 130
    assert MultiviewModel.load(tmp_path / "out").angles  # a loadable model
