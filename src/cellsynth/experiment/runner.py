"""Running an experiment: the bundle, the synthetic sets, one segmenter per row, its record.

:class:`Experiment` is the state of one experiment folder; :meth:`Experiment.run` does the
work in stages and yields :class:`ExperimentProgress`; :func:`run_experiment` is its front door.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cellsynth.errors import CellsynthInputError
from cellsynth.experiment.config import ExperimentConfig, Row, load_config
from cellsynth.experiment.keys import RowKeys, config_hash
from cellsynth.experiment.results import nan_to_none, write_results
from cellsynth.io import Pair, read_dataset, write_json
from cellsynth.segmenters import FinetuneSettings

log = logging.getLogger(__name__)


@dataclass
class ExperimentProgress:
    stage: str  # bundle | synthesis | calibration | training | scoring | evaluation | done
    row: str | None
    fraction: float
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_info(device: str) -> dict[str, Any]:
    import torch

    from cellsynth import __version__

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cellsynth": __version__,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    with contextlib.suppress(Exception):
        import cellpose

        info["cellpose"] = getattr(cellpose, "__version__", None) or _dist_version("cellpose")
    return info


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


@contextlib.contextmanager
def _preparation_lock(out: Path) -> Iterator[None]:
    """The experiment folder's write lock for the bundle and synthesis stage: a second run
    waits for the first one's preparation (and then shares it)."""
    from cellsynth.locks import folder_lock

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(folder_lock(out, "experiment folder"))
        except CellsynthInputError as exc:
            log.info("%s; waiting", exc)
            stack.enter_context(folder_lock(out, "experiment folder", wait=math.inf))
        yield


class Experiment:
    """The state of one experiment folder; :meth:`run` does the work and yields progress."""

    def __init__(self, config: ExperimentConfig, out: str | Path, *, device: str = "auto"):
        self.config = config
        self.out = Path(out)
        self.device = device
        self.pairs = self._read_frames()
        self.keys = RowKeys(config, self._synthetic_size)
        self.epochs = config.epochs
        self.learning_rate: float | None = None  # a convergence ladder's choice
        decision = self.convergence_decision()
        if decision is not None:
            self.epochs, self.learning_rate = decision["epochs"], decision["learning_rate"]

    # -- data -------------------------------------------------------------------------------

    def _read_frames(self) -> dict[str, Pair]:
        cfg = self.config
        ds = read_dataset(cfg.data, require_labels=True)
        pairs = {p.name: p for p in ds.pairs}
        if cfg.voxel_size:
            for p in pairs.values():
                p.voxel_size = p.voxel_size or cfg.voxel_size
        missing = [n for n in cfg.train + cfg.test if n not in pairs]
        if missing:
            raise CellsynthInputError(
                f"frames {missing} not found (available: {sorted(pairs)[:20]})", cfg.data
            )
        return pairs

    @property
    def train_pairs(self) -> list[Pair]:
        return [self.pairs[n] for n in self.config.train]

    @property
    def learn_pairs(self) -> list[Pair]:
        """The frames the bundle learns from: ``learn.frames``, else all training frames."""
        names = self.config.learn.get("frames") or self.config.train
        return [self.pairs[n] for n in names]

    @property
    def test_pairs(self) -> list[Pair]:
        return [self.pairs[n] for n in self.config.test]

    # -- paths and records ------------------------------------------------------------------

    @property
    def bundle_path(self) -> Path:
        return self.config.bundle or self.out / "bundle"

    def synthetic_path(self, rho: float | None) -> Path:
        return self.out / ("synthetic" if rho is None else f"synthetic_rho{rho:g}")

    def model_path(self, row: Row) -> Path:
        return self.out / "models" / row.slug

    def row_path(self, row: Row) -> Path:
        return self.out / "rows" / f"{row.slug}.json"

    def synthetic_key(self, rho: float | None) -> str:
        return self.keys.synthetic(rho)

    def row_key(self, row: Row, epochs: int) -> str:
        return self.keys.row(row, epochs, self.learning_rate)

    def _scorer(self) -> Row:
        scorer = self.config.scorer
        assert scorer is not None, "config_from_dict checks curated rows' scorer"
        return scorer

    def finished(self, row: Row, epochs: int) -> dict[str, Any] | None:
        return self._finished_at(
            self.row_path(row), self.model_path(row), self.row_key(row, epochs)
        )

    def _finished_at(self, record: Path, model: Path, key: str) -> dict[str, Any] | None:
        """The record at ``record`` if it has ``key``, its ``model`` is there and it was scored
        as the config's ``evaluation`` says (else :meth:`rescore` scores it again)."""
        rec = _finished_at(record, model, key)
        if rec is None or (rec.get("evaluation") or {}) != self.config.evaluation:
            return None
        return rec

    def _synthetic_size(self) -> list[int]:
        size = self.config.synthetic.get("size")
        if size:
            return [int(s) for s in size]
        return list(self.train_pairs[0].labels.shape)  # the real frames' size

    # -- stages -----------------------------------------------------------------------------

    def run(
        self,
        *,
        only: Sequence[str] | None = None,
        budget_hours: float | None = None,
        command: Sequence[str] | None = None,
        prepare_only: bool = False,
        rung: tuple[int, float | None] | None = None,
    ) -> Iterator[ExperimentProgress]:
        cfg = self.config
        rows = cfg.rows
        if rung is not None:  # one training of the convergence ladder (a --devices process)
            self.command = list(command) if command is not None else sys.argv
            self.machine = machine_info(str(self._device()))
            yield from self.train_rung(*rung)
            yield ExperimentProgress("done", None, 1.0, f"rung {rung[0]} epochs")
            return
        if budget_hours is not None and cfg.convergence:
            raise CellsynthInputError(
                "--budget-hours and a 'convergence' section exclude each other (the ladder "
                "decides the budget); remove one",
                cfg.source or cfg.name,
            )
        if only:
            unknown = sorted(set(only) - {r.name for r in rows})
            if unknown:
                raise CellsynthInputError(
                    f"--only {unknown}: no such row (rows: {[r.name for r in rows]})",
                    cfg.source or cfg.name,
                )
            rows = cfg.with_prerequisites([r for r in rows if r.name in only])
        self.out.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.command = list(command) if command is not None else sys.argv
        self.machine = machine_info(str(self._device()))
        needs = {r.rho for r in rows if r.synthetic}
        if needs:  # rows of real frames alone need no bundle: they need not wait for one
            with _preparation_lock(self.out):
                yield from self._ensure_bundle()
                for rho in sorted(needs, key=lambda v: -1 if v is None else v):
                    yield from self._ensure_synthetic(rho)
        yield from self.rescore()
        if prepare_only:
            self.write_results()
            yield ExperimentProgress("done", None, 1.0, "bundle and synthetic data ready")
            return
        yield from self.converge()
        epochs = self.epochs
        pending = [r for r in rows if self.finished(r, epochs) is None]
        if budget_hours is not None and pending:
            epochs = yield from self._epochs_for_budget(pending, budget_hours)
            pending = [r for r in rows if self.finished(r, epochs) is None]
        self.epochs = epochs
        scorer = cfg.scorer
        order = sorted(rows, key=lambda r: training_order(r, scorer))
        for row in order:
            rec = self.finished(row, epochs)
            if rec is not None:
                log.info("row %r already done (same key): kept", row.name)
                if "cell_jaccards" not in rec:  # rows written before per-cell scores were kept
                    yield ExperimentProgress("evaluation", row.name, 0.0, "per-cell scores")
                    self._add_cell_jaccards(row, rec)
                continue
            yield from self._run_row(row, epochs)
            self.write_results()
        self.write_results()
        yield ExperimentProgress("done", None, 1.0, str(self.out / "results.json"))

    def _device(self) -> Any:
        from cellsynth.device import select_device

        return select_device(self.device)

    def _write_config(self) -> None:
        path = self.out / "config.json"
        new = self.config.to_dict()
        if path.is_file():
            old = json.loads(path.read_text())
            if old != new:
                log.warning("%s differs from the config given; rows are matched by key", path)
                write_json(self.out / f"config-{time.strftime('%Y%m%d-%H%M%S')}.json", new)
        else:
            write_json(path, new)

    def _ensure_bundle(self) -> Iterator[ExperimentProgress]:
        path = self.bundle_path
        if self.config.bundle is not None:
            _ = self.keys.bundle_identity  # checks bundle.json
            return
        done = self.out / "bundle.done.json"
        if done.is_file() and json.loads(done.read_text()).get("learn") == self.config.learn:
            return
        from cellsynth import learn, learn3d

        settings = dataclasses.replace(self.config.learn_settings, device=self.device)
        resume = (path / "training_state" / "state.json").is_file()
        if path.exists() and any(path.iterdir()) and not resume:
            raise CellsynthInputError(
                "an unfinished bundle without training state is in the way; remove it", path
            )
        t0 = time.perf_counter()
        s3 = self.config.learn_3d_settings
        if s3 is not None:
            learn3d.check_3d_pairs(self.learn_pairs)
            s3.voxel_size = s3.voxel_size or self._data_voxel_size()
            job = learn3d.learn_3d(self.learn_pairs, path, settings, s3, resume=resume)
        else:
            job = learn.learn(self.learn_pairs, path, settings, resume=resume)
        last = None
        for p in job:
            last = p
            yield ExperimentProgress("bundle", None, p.fraction, f"loss {p.loss:.4f}")
        write_json(
            done,
            {
                "learn": self.config.learn,
                "seconds": round(time.perf_counter() - t0, 1),
                "mask_steps": getattr(last, "mask_step", None),
                "texture_steps": getattr(last, "texture_step", None),
            },
        )

    def _ensure_synthetic(self, rho: float | None) -> Iterator[ExperimentProgress]:
        from cellsynth import synthesize
        from cellsynth.io import DatasetWriter

        path = self.synthetic_path(rho)
        key = self.synthetic_key(rho)
        n = self.config.n_synthetic
        marker = path / "experiment.json"
        state = json.loads(marker.read_text()) if marker.is_file() else {}
        if state.get("key") not in (None, key):
            raise CellsynthInputError(
                "holds synthetic pairs of another config (bundle, size or seed changed); "
                "use a new output folder",
                path,
            )
        have = len(self._synthetic_names(path))
        if have >= n:
            return
        base = self.config.synthesis_params
        size = tuple(self._synthetic_size())
        params = dataclasses.replace(
            base,
            size=size,
            seed=base.seed + have,
            rho=rho,
            voxel_size=self._data_voxel_size() if len(size) == 3 else None,
        )
        t0 = time.perf_counter()
        for i, _total, _ in synthesize.synthesize(
            path, n - have, params, bundle=self.bundle_path, device=self.device
        ):
            if i == 1 and not marker.is_file():
                write_json(marker, {"key": key, "seconds": 0.0, "n": n})
            yield ExperimentProgress("synthesis", None, (have + i) / n, f"pair {have + i}/{n}")
        secs = float(state.get("seconds", 0.0)) + time.perf_counter() - t0
        write_json(marker, {"key": key, "seconds": round(secs, 1), "n": n})
        DatasetWriter(path)  # dataset.json exists and reads back

    def _data_voxel_size(self) -> tuple[float, ...] | None:
        """The real stacks' voxel size (config, else the training files'); None: the bundle's."""
        if self.config.voxel_size:
            return tuple(self.config.voxel_size)
        for p in self.train_pairs:
            _ = p.image  # reading the image fills the voxel size from the file's metadata
            if p.voxel_size and len(p.voxel_size) == 3:
                return tuple(p.voxel_size)
        return None

    @staticmethod
    def _synthetic_names(path: Path) -> list[str]:
        if not (path / "labels").is_dir():
            return []
        return sorted(
            p.stem for p in (path / "labels").glob("*.tif") if (path / "images" / p.name).is_file()
        )

    def synthetic_pairs(self, row: Row) -> list[Pair]:
        if not row.synthetic:
            return []
        path = self.synthetic_path(row.rho)
        pairs = read_dataset(path, require_labels=True).pairs
        pairs = sorted(pairs, key=lambda p: p.name)[: self.config.n_synthetic]
        if row.curated:
            quality = self._quality(path, pairs)
            pairs = sorted(pairs, key=lambda p: -quality[p.name])  # best first
        return pairs[: row.synthetic]

    def _load_model(self, row: Row) -> Any:
        from cellsynth.segment import load_model

        return load_model(self.model_path(row), self.device, backend=self.config.backend)

    def _quality(self, path: Path, pairs: Sequence[Pair]) -> dict[str, float]:
        """SEG of the scorer model on each synthetic pair (cached in the dataset's JSON)."""
        from cellsynth.io import DatasetWriter
        from cellsynth.segment import record_quality, score_dataset

        scorer = self._scorer()
        scorer_key = self.row_key(scorer, self.epochs)
        if self.config.evaluation:  # scored as the test frames are; keys of older runs kept
            scorer_key += "/" + config_hash(self.config.evaluation)
        writer = DatasetWriter(path)
        samples = writer.meta["samples"]
        todo = [
            p
            for p in pairs
            if samples.get(p.name, {}).get("quality", {}).get("scorer_key") != scorer_key
        ]
        if todo:
            model = self._load_model(scorer)
            scores = score_dataset(model, todo, self.config.stitch_threshold)
            record_quality(writer, scores, self.model_path(scorer), scorer_key=scorer_key)
        out = {}
        for p in pairs:
            v = samples[p.name]["quality"]["SEG"]
            out[p.name] = -1.0 if v is None or (isinstance(v, float) and math.isnan(v)) else v
        return out

    def _settings(
        self, row: Row, epochs: int, learning_rate: float | None = None
    ) -> FinetuneSettings:
        """``row``'s training settings at ``epochs`` (``learning_rate``, else the ladder's
        choice, else the training section's)."""
        s = dataclasses.replace(
            self.config.finetune_settings, epochs=epochs, p_real=row.p_real, device=self.device
        )
        if row.start_from:  # its weights: the other row's model at the same budget
            start = self.model_path(self.config.row_named(row.start_from))
            s = dataclasses.replace(s, pretrained=str(start))
        lr = learning_rate if learning_rate is not None else self.learning_rate
        return s if lr is None else dataclasses.replace(s, learning_rate=lr)

    # -- the convergence ladder -------------------------------------------------------------

    @property
    def convergence_path(self) -> Path:
        return self.out / "convergence"

    def _ladder_key(self) -> str | None:
        spec = self.config.convergence_spec
        if spec is None:
            return None
        base = next(r for r in self.config.rows if r.name == spec.row)
        key = {"spec": dataclasses.asdict(spec), "row": self.keys.row(base, spec.start_epochs)}
        if self.config.evaluation:  # only then: decisions of older configs keep their key
            key["evaluation"] = self.config.evaluation
        return config_hash(key)

    def convergence_decision(self) -> dict[str, Any] | None:
        """The ladder's decision (``convergence/decision.json``) if it is this config's."""
        key = self._ladder_key()
        path = self.convergence_path / "decision.json"
        if key is None or not path.is_file():
            return None
        decision = json.loads(path.read_text())
        return decision if decision.get("key") == key else None

    def converge(self) -> Iterator[ExperimentProgress]:
        """Run the ``convergence`` ladder on the baseline row (or keep its decision): pick the
        learning rate and the budget every row trains at (:class:`~cellsynth.experiment.config.
        Convergence`); the baseline's model at that budget becomes its row's."""
        spec = self.config.convergence_spec
        if spec is None or self.convergence_decision() is not None:
            return
        base = next(r for r in self.config.rows if r.name == spec.row)
        while todo := self.pending_rungs():
            yield from self.train_rung(*min(todo, key=lambda t: (t[0], t[1] or 0.0)))
        walk = self._walk()
        epochs, lr = walk.epochs, walk.learning_rate
        chosen = next(r for r in walk.ladder if r["epochs"] == epochs)

        def brief(r: dict[str, Any], rate: float | None) -> dict[str, Any]:
            keep = ("epochs", "SEG", "AP50", "bPQ", "final_loss")
            return {k: r.get(k) for k in keep} | {
                "learning_rate": rate,
                "train_minutes": r["train_seconds"] / 60,
            }

        rates = spec.learning_rates or (None,)
        decision = {
            "key": self._ladder_key(),
            "row": base.name,
            "epochs": epochs,
            "learning_rate": lr,
            "converged": walk.converged,
            "peaked": walk.peaked,
            "tolerance": spec.tolerance,
            "sweep": [brief(r, v) for r, v in zip(walk.sweep, rates, strict=True)]
            if spec.learning_rates
            else [],
            "ladder": [brief(r, lr) for r in walk.ladder],
        }
        if not walk.converged and not walk.peaked:
            log.warning(
                "row %r has not converged by max_epochs %d (SEG still moves by >= %g when the "
                "budget doubles): every row trains at %d epochs",
                base.name, spec.max_epochs, spec.tolerance, epochs,
            )  # fmt: skip
        self.epochs, self.learning_rate = epochs, lr
        self._adopt(base, chosen)
        write_json(self.convergence_path / "decision.json", nan_to_none(decision))
        yield ExperimentProgress(
            "convergence", base.name, 1.0,
            f"{_ladder_state(walk)} at {epochs} epochs"
            + ("" if lr is None else f", learning rate {lr:g}"),
        )  # fmt: skip

    def pending_rungs(self) -> list[tuple[int, float | None]]:
        """The ladder's trainings still needed, as (epochs, learning rate): the sweep's, else
        every doubling up to ``max_epochs`` that the finished ones leave undecided (they are
        independent: :func:`~cellsynth.experiment.parallel.run_rows_in_parallel` trains them
        side by side). Empty: the decision can be made."""
        return self._walk().missing

    def _walk(self) -> _Ladder:
        """Walk the ladder over the rungs trained so far (nothing is trained here)."""
        spec = self.config.convergence_spec
        assert spec is not None
        base = next(r for r in self.config.rows if r.name == spec.row)
        rates = spec.learning_rates or (None,)
        start = spec.start_epochs
        sweep = [self._rung_record(base, start, v) for v in rates]
        if any(r is None for r in sweep):
            todo = [(start, v) for v, r in zip(rates, sweep, strict=True) if r is None]
            if len(rates) == 1:  # no sweep to wait for: the doublings are independent of it
                todo += self._missing_doublings(base, start, rates[0])
            return _Ladder(missing=todo)
        seg = [-1.0 if r["SEG"] is None else r["SEG"] for r in sweep]  # type: ignore[index]
        best = seg.index(max(seg))  # the first on ties
        lr = rates[best]
        walk = _Ladder(sweep=sweep, learning_rate=lr, ladder=[sweep[best]], epochs=start)
        while 2 * walk.epochs <= spec.max_epochs:
            rec = self._rung_record(base, 2 * walk.epochs, lr)
            if rec is None:
                return _Ladder(missing=self._missing_doublings(base, walk.epochs, lr))
            walk.ladder.append(rec)
            change = (rec["SEG"] or 0.0) - (walk.ladder[-2]["SEG"] or 0.0)
            if abs(change) < spec.tolerance:
                walk.converged = True
                break
            if change < 0:  # doubling made it worse: past the peak, keep the lower budget
                walk.peaked = True
                break
            walk.epochs *= 2
        return walk

    def _missing_doublings(
        self, base: Row, epochs: int, lr: float | None
    ) -> list[tuple[int, float | None]]:
        """The rungs above ``epochs`` (each doubling up to ``max_epochs``) not trained yet."""
        spec = self.config.convergence_spec
        assert spec is not None
        missing = []
        e = 2 * epochs
        while e <= spec.max_epochs:
            if self._rung_record(base, e, lr) is None:
                missing.append((e, lr))
            e *= 2
        return missing

    def _rung_paths(self, row: Row, epochs: int, lr: float | None) -> tuple[Path, Path]:
        tag = f"{row.slug}@{epochs}" + ("" if lr is None else f"_lr{lr:g}")
        return self.convergence_path / "models" / tag, self.convergence_path / f"{tag}.json"

    def _rung_record(self, row: Row, epochs: int, lr: float | None) -> dict[str, Any] | None:
        """The baseline's record at ``epochs`` (and ``lr``) if it has been trained: by the
        ladder, or as the row itself."""
        model, record = self._rung_paths(row, epochs, lr)
        key = self.keys.row(row, epochs, lr)
        return self._finished_at(record, model, key) or self._finished_at(
            self.row_path(row), self.model_path(row), key
        )

    def train_rung(self, epochs: int, lr: float | None) -> Iterator[ExperimentProgress]:
        """Train the baseline at ``epochs`` (and ``lr``) for the ladder, unless it is there."""
        spec = self.config.convergence_spec
        if spec is None:
            raise CellsynthInputError(
                "a ladder rung needs a 'convergence' section", self.config.source
            )
        base = next(r for r in self.config.rows if r.name == spec.row)
        if self._rung_record(base, epochs, lr) is not None:
            return
        model, record = self._rung_paths(base, epochs, lr)
        yield from self._train(
            base, epochs, model=model, record=record, learning_rate=lr, stage="convergence"
        )

    def _adopt(self, row: Row, rec: dict[str, Any]) -> None:
        """``row``'s model and record become the ladder's ``rec`` (copies; a model of another
        key in the way is set aside, never deleted)."""
        key = self.row_key(row, rec["epochs"])
        if self._finished_at(self.row_path(row), self.model_path(row), key) is not None:
            return
        from cellsynth.io import atomic_path
        from cellsynth.segment import finetune_outputs

        src = finetune_outputs(Path(rec["model"]), self.config.backend)
        dst = finetune_outputs(self.model_path(row), self.config.backend)
        _set_aside(dst)
        for a, b in zip(src, dst, strict=True):
            if a.is_file():
                with atomic_path(b) as tmp:
                    shutil.copyfile(a, tmp)
        write_json(self.row_path(row), nan_to_none(rec | {"key": key, "model": str(dst[0])}))

    def _epochs_for_budget(
        self, pending: Sequence[Row], hours: float
    ) -> Iterator[ExperimentProgress]:
        """Epochs so that the pending rows fit in ``hours``: time a 2-epoch run, then scale."""
        import tempfile

        from cellsynth.segment import finetune

        row = max(pending, key=lambda r: (bool(r.real), r.synthetic))
        settings = self._settings(row, 2)
        real = [self.pairs[n] for n in row.real]
        # the first pairs stand in for a curated selection: timing needs no quality scores
        syn = self.synthetic_pairs(dataclasses.replace(row, curated=False))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "calibration"
            for p in finetune(real, syn, out, settings, backend=self.config.backend):
                yield ExperimentProgress("calibration", row.name, p.fraction)
        per_epoch = (time.perf_counter() - t0) / 2  # includes set-up: errs on the safe side
        eval_s = 30.0 * len(self.config.test)
        budget = hours * 3600 - len(pending) * eval_s
        epochs = min(self.config.epochs, int(budget / (len(pending) * per_epoch)))
        if epochs < 10:
            raise CellsynthInputError(
                f"a time budget of {hours:g} h allows {max(epochs, 0)} epochs for "
                f"{len(pending)} row(s) ({per_epoch:.1f} s per epoch here); give at least "
                f"{len(pending) * (10 * per_epoch + eval_s) / 3600:.2f} h or fewer rows"
            )
        log.info(
            "budget %.2f h: %d epochs per row (%.1f s/epoch, %d rows)",
            hours, epochs, per_epoch, len(pending),
        )  # fmt: skip
        return epochs

    def _run_row(self, row: Row, epochs: int) -> Iterator[ExperimentProgress]:
        if row.start_from and self.finished(self.config.row_named(row.start_from), epochs) is None:
            raise CellsynthInputError(
                f"row {row.name!r} starts from row {row.start_from!r}, which has not finished "
                f"at {epochs} epochs: run that row first (or without --only)",
                self.config.source or self.config.name,
            )
        yield from self._train(
            row,
            epochs,
            model=self.model_path(row),
            record=self.row_path(row),
            learning_rate=self.learning_rate,
        )

    def _train(
        self,
        row: Row,
        epochs: int,
        *,
        model: Path,
        record: Path,
        learning_rate: float | None,
        stage: str = "training",
    ) -> Iterator[ExperimentProgress]:
        """Train ``row`` for ``epochs`` into ``model``, score it on the test frames, write its
        ``record``; returns the record."""
        from cellsynth.segment import (
            finetune,
            finetune_outputs,
            load_model,
            read_log,
        )

        backend = self.config.backend
        real = [self.pairs[n] for n in row.real]
        if row.curated:
            yield ExperimentProgress("scoring", row.name, 0.0, "quality scores")
        syn = self.synthetic_pairs(row)
        out = model
        out.parent.mkdir(parents=True, exist_ok=True)
        # a stale model of another key, or what a killed run left (its work folder): this
        # experiment's own files, set aside, never deleted
        _set_aside(finetune_outputs(out, backend))
        settings = self._settings(row, epochs, learning_rate)
        label = row.name if stage == "training" else f"{row.name} @ {epochs} epochs"
        t0 = time.perf_counter()
        for p in finetune(real, syn, out, settings, backend=backend):
            yield ExperimentProgress(
                stage, label, p.fraction, f"epoch {p.epoch}/{epochs} loss {p.loss:.4f}"
            )
        train_s = time.perf_counter() - t0
        scores = self._scores(load_model(out, self.device, backend=backend))
        log_json = read_log(out)  # what the backend records; Cellpose 3's fills every field
        rec = {
            "row": asdict(row),
            "key": self.keys.row(row, epochs, learning_rate),
            "backend": backend,
            **scores,
            "epochs": epochs,
            "learning_rate": log_json.get("learning_rate", settings.learning_rate),
            "nimg_per_epoch": log_json.get("nimg_per_epoch", settings.nimg_per_epoch),
            "n_real_images": log_json.get("n_real"),
            "n_synthetic_images": log_json.get("n_synthetic"),
            "synthetic_used": [p.name for p in syn],
            "p_real_effective": log_json.get("p_real_effective"),
            "final_loss": (log_json.get("epoch_losses") or [None])[-1],
            "train_seconds": round(train_s, 1),
            "model": str(out),
            "command": self.command,
            "machine": self.machine,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        write_json(record, nan_to_none(rec))
        yield ExperimentProgress(
            "evaluation", label, 1.0, f"SEG {rec['SEG']:.3f} AP50 {rec['AP50']:.3f}"
        )
        return rec

    def _scores(self, model: Any) -> dict[str, Any]:
        """``model`` scored on the test frames as the config's ``evaluation`` says: the
        record's score fields."""
        from cellsynth.segment import evaluate_model

        t0 = time.perf_counter()
        ev = evaluate_model(model, self.test_pairs, self.config.stitch_threshold)
        s = ev.summary()
        return {
            "SEG": s["SEG"],
            "AP50": s["AP50"],
            "bPQ": s["bPQ"],
            "n_reference": s["n_reference"],
            "n_predicted": s["n_predicted"],
            "frames": ev.rows(),
            "cell_jaccards": {f.name: list(f.jaccards) for f in ev.frames},
            "evaluation": self.config.evaluation,
            "eval_seconds": round(time.perf_counter() - t0, 1),
        }

    def rescore(self) -> Iterator[ExperimentProgress]:
        """Score again, without training, the finished models (rows and ladder rungs) whose
        records were scored otherwise than the config's ``evaluation`` now says (e.g. a
        ``stitch_threshold`` added); each record keeps its former scores under
        ``previous_scores``."""
        from cellsynth.segment import load_model

        pairs = [(self.row_path(r), self.model_path(r)) for r in self.config.rows]
        if self.convergence_path.is_dir():
            pairs += [
                (j, self.convergence_path / "models" / j.stem)
                for j in sorted(self.convergence_path.glob("*@*.json"))
            ]
        stale = []
        for record, model in pairs:
            if record.is_file() and model.is_file():
                rec = json.loads(record.read_text())
                if (rec.get("evaluation") or {}) != self.config.evaluation:
                    stale.append((record, model, rec))
        scored: dict[str, dict[str, Any]] = {}  # by the model's bytes: a row adopted from a
        # ladder rung holds a copy of the rung's model, scored once for both
        for i, (record, model, rec) in enumerate(stale):
            yield ExperimentProgress(
                "evaluation", record.stem, i / len(stale), "scored again: the evaluation changed"
            )
            keep = ("SEG", "AP50", "bPQ", "n_predicted", "evaluation")
            before = {k: rec.get(k) for k in keep}
            digest = hashlib.sha256(model.read_bytes()).hexdigest()
            if digest not in scored:
                m = load_model(model, self.device, backend=self.config.backend)
                scored[digest] = self._scores(m)
            scores = scored[digest]
            rec = rec | scores | {"previous_scores": [*rec.get("previous_scores", []), before]}
            write_json(record, nan_to_none(rec))
            log.info(
                "%s: SEG %s -> %.3f (%s)", record, before["SEG"], rec["SEG"], scores["evaluation"]
            )

    def _add_cell_jaccards(self, row: Row, rec: dict[str, Any]) -> None:
        from cellsynth.segment import evaluate_model

        ev = evaluate_model(self._load_model(row), self.test_pairs, self.config.stitch_threshold)
        if abs(ev.summary()["SEG"] - rec["SEG"]) > 1e-6:
            log.warning("row %r: re-evaluated SEG differs from the recorded one", row.name)
        rec["cell_jaccards"] = {f.name: list(f.jaccards) for f in ev.frames}
        write_json(self.row_path(row), nan_to_none(rec))

    # -- results ----------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
        rows = {}
        for row in self.config.rows:
            path = self.row_path(row)
            if path.is_file():
                rec = json.loads(path.read_text())
                if (
                    rec.get("key") == self.row_key(row, int(rec.get("epochs", 0)))
                    and (rec.get("evaluation") or {}) == self.config.evaluation
                ):
                    rows[row.name] = rec
        extra: dict[str, Any] = {}
        done = self.out / "bundle.done.json"
        if done.is_file():
            extra["bundle_learning"] = json.loads(done.read_text())
        decision = self.convergence_decision()
        if decision is not None:
            extra["convergence"] = decision
        for rho in sorted({r.rho for r in self.config.rows if r.synthetic}, key=str):
            marker = self.synthetic_path(rho) / "experiment.json"
            if marker.is_file():
                extra[f"synthesis{'' if rho is None else f'_rho{rho:g}'}"] = json.loads(
                    marker.read_text()
                )
        return {
            "config": self.config.to_dict(),
            "bundle": str(self.bundle_path),
            **extra,
            "rows": rows,
        }

    def write_results(self) -> dict[str, Any]:
        res = self.results()
        write_results(self.out, res)
        return res


@dataclass
class _Ladder:
    """Where the convergence ladder stands: ``missing`` rungs, else its decision."""

    missing: list[tuple[int, float | None]] = dataclasses.field(default_factory=list)
    sweep: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    learning_rate: float | None = None
    ladder: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    epochs: int = 0
    converged: bool = False  # doubling moved SEG by less than the tolerance
    peaked: bool = False  # doubling lowered SEG by more than the tolerance (overtrained)


def _ladder_state(walk: _Ladder) -> str:
    if walk.converged:
        return "converged"
    return "past its peak (doubling lowered SEG)" if walk.peaked else "NOT converged"


def training_order(row: Row, scorer: Row | None) -> int:
    """Rows train in this order: the curation scorer first, rows that start from another
    row's model last (after the rows they start from)."""
    if scorer is not None and row.name == scorer.name:
        return 0
    return 2 if row.start_from else 1


def _finished_at(record: Path, model: Path, key: str) -> dict[str, Any] | None:
    """The record at ``record`` if it has ``key`` and its ``model`` is there."""
    if not record.is_file():
        return None
    rec = json.loads(record.read_text())
    if rec.get("key") != key or not model.is_file():
        return None
    return rec


def _set_aside(paths: Sequence[Path]) -> None:
    """Rename what is at ``paths`` to ``NAME.old-STAMP`` (this experiment's own files: a model
    of another key, what a killed run left)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for src in paths:
        if src.exists():
            src.rename(src.with_name(f"{src.name}.old-{stamp}"))


def run_experiment(
    config: ExperimentConfig | str | Path,
    out: str | Path,
    *,
    device: str = "auto",
    only: Sequence[str] | None = None,
    budget_hours: float | None = None,
    command: Sequence[str] | None = None,
    prepare_only: bool = False,
    rung: tuple[int, float | None] | None = None,
) -> Iterator[ExperimentProgress]:
    """Run (or resume) an experiment; yields progress; results in ``out/results.json``.

    ``prepare_only``: learn the bundle and synthesize, train nothing (look at the synthetic
    pairs first, e.g. in napari). ``rung``: only train the convergence ladder's baseline at
    (epochs, learning rate) — what each ``--devices`` process does for the ladder.
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    exp = Experiment(config, out, device=device)
    yield from exp.run(
        only=only,
        budget_hours=budget_hours,
        command=command,
        prepare_only=prepare_only,
        rung=rung,
    )
