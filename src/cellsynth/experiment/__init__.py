"""Does synthetic data help? One reproducible experiment: config → bundle → synthetic → Cellpose.

An experiment is a JSON config (see ``experiments/`` and docs/experiments.md)::

    {"name": "gowt1", "data": "../../shared/data/ctc_Fluo-N2DH-GOWT1",
     "train": ["t01", "t21"], "test": ["t31", "t39"],
     "bundle": null, "learn": {"minutes": 12},
     "synthetic": {"n": 16, "size": [512, 512], "seed": 0},
     "training": {"epochs": 200, "nimg_per_epoch": 8, "seed": 0},
     "curation": {"score_with": "real"},
     "rows": [{"name": "real"}, {"name": "synthetic", "real": [], "synthetic": 16},
              {"name": "both p_real=0.6", "synthetic": 16, "p_real": 0.6}]}

:func:`run_experiment` learns a generator bundle on the training frames only (or uses the one
named), synthesizes the synthetic pairs once (seeds ``seed, seed+1, …``; one set per ``rho`` in
3D), trains one Cellpose model per row from scratch with the same budget (``epochs`` ×
``nimg_per_epoch`` training crops for every row, so rows differ only in what is drawn), and
scores every model on the test frames that no model and no bundle saw (SEG, AP50, bPQ).
Curated rows keep the best synthetic pairs by the quality score of paper 003 (the ``score_with``
row's model segments each synthetic image; SEG against its own mask).

Everything lands in the output folder: ``config.json`` (the resolved config), ``bundle/``,
``synthetic*/``, ``models/``, ``rows/NAME.json`` (one file per finished row, with its key, the
command, the machine and the timings) and ``results.json`` / ``results.md`` assembled from them.
A row whose key (a hash of everything that determines it) is already there is not trained
again, so an interrupted experiment resumes and several processes can share rows
(``only=``). The bundle and synthesis stage is serialised with a file lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import platform
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError
from cellsynth.io import Pair, atomic_path, read_dataset, write_json

log = logging.getLogger(__name__)

CONFIG_KEYS = {
    "name", "description", "data", "train", "test", "bundle", "learn", "synthetic", "training",
    "curation", "rows", "voxel_size",
}  # fmt: skip
ROW_KEYS = {"name", "real", "synthetic", "p_real", "curated", "rho", "note"}
LEARN_KEYS = {
    "minutes", "mask_steps", "texture_steps", "seed", "3d", "voxel_size", "multiview_steps",
    "tiny", "frames",
}  # fmt: skip
SYNTHETIC_KEYS = {"n", "size", "seed", "steps", "cluster_prob", "brightness"}
TRAINING_KEYS = {"epochs", "nimg_per_epoch", "seed", "batch_size", "bsize", "learning_rate"}
CURATION_KEYS = {"score_with"}


@dataclass
class Row:
    """One model of the table: which real frames, how many synthetic pairs, how they mix."""

    name: str
    real: list[str]  # training frames used (a subset of the config's train frames)
    synthetic: int = 0  # synthetic pairs used (the first n, or the best n when curated)
    p_real: float = 1.0
    curated: bool = False
    rho: float | None = None  # 3D: the synthetic set painted with this slice correlation
    note: str = ""

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_") or "row"


@dataclass
class ExperimentConfig:
    name: str
    data: Path
    train: list[str]
    test: list[str]
    rows: list[Row]
    bundle: Path | None = None
    learn: dict[str, Any] = field(default_factory=dict)
    synthetic: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    curation: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    voxel_size: tuple[float, ...] | None = None  # for 3D data whose files do not record it
    source: Path | None = None

    @property
    def epochs(self) -> int:
        return int(self.training.get("epochs", 200))

    @property
    def nimg_per_epoch(self) -> int:
        return int(self.training.get("nimg_per_epoch", 8))

    @property
    def n_synthetic(self) -> int:
        return int(self.synthetic.get("n", max([r.synthetic for r in self.rows] + [0])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "data": str(self.data),
            "train": self.train,
            "test": self.test,
            "bundle": str(self.bundle) if self.bundle else None,
            "learn": self.learn,
            "synthetic": self.synthetic,
            "training": self.training,
            "curation": self.curation,
            "voxel_size": list(self.voxel_size) if self.voxel_size else None,
            "rows": [asdict(r) for r in self.rows],
        }


# --------------------------------------------------------------------------- config


_INT, _NUM, _BOOL, _STR, _STRS = "an integer", "a number", "true or false", "a string", "a list"
#: the type and range of every value a config may hold: (kind, minimum, maximum)
VALUE_TYPES: dict[str, dict[str, tuple[str, float | None, float | None]]] = {
    "learn": {
        "minutes": (_NUM, 0, None), "mask_steps": (_INT, 0, None),
        "texture_steps": (_INT, 0, None), "seed": (_INT, None, None), "3d": (_BOOL, None, None),
        "multiview_steps": (_INT, 0, None), "tiny": (_BOOL, None, None),
        "frames": (_STRS, None, None),
    },
    "synthetic": {
        "n": (_INT, 0, None), "seed": (_INT, None, None), "steps": (_INT, 1, 1000),
        "cluster_prob": (_NUM, 0, 1), "brightness": (_STR, None, None),
    },
    "training": {
        "epochs": (_INT, 1, None), "nimg_per_epoch": (_INT, 1, None), "seed": (_INT, None, None),
        "batch_size": (_INT, 1, None), "bsize": (_INT, 16, None),
        "learning_rate": (_NUM, 0, None),
    },
    "row": {
        "name": (_STR, None, None), "real": (_STRS, None, None), "synthetic": (_INT, 0, None),
        "p_real": (_NUM, 0, 1), "curated": (_BOOL, None, None), "rho": (_NUM, 0, None),
        "note": (_STR, None, None),
    },
}  # fmt: skip


def _check_values(d: dict[str, Any], section: str, where: str, path: Path) -> None:
    """Each value of ``d`` has its section's type and range; null means the default."""
    for key, value in d.items():
        spec = VALUE_TYPES[section].get(key)
        if spec is None or value is None:
            continue
        kind, lo, hi = spec
        ok = {
            _INT: isinstance(value, int) and not isinstance(value, bool),
            _NUM: isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value),
            _BOOL: isinstance(value, bool),
            _STR: isinstance(value, str),
            _STRS: isinstance(value, list) and all(isinstance(v, str) for v in value),
        }[kind]
        if ok and kind in (_INT, _NUM):
            ok = (lo is None or value >= lo) and (hi is None or value <= hi)
        if not ok:
            expected = kind if kind != _STRS else "a list of frame names"
            if kind in (_INT, _NUM) and (lo is not None or hi is not None):
                bound = (
                    f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
                )
                expected += " " + bound
            raise CellsynthInputError(
                f"{where}: {key!r} must be {expected}, got {json.dumps(value)}", path
            )


def _check_keys(d: Any, allowed: set[str], where: str, path: Path) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise CellsynthInputError(f"{where} must be a JSON object", path)
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise CellsynthInputError(
            f"unknown key(s) {unknown} in {where} (known: {sorted(allowed)})", path
        )
    return d


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and check an experiment config; relative paths are relative to the config file."""
    path = Path(path)
    if not path.is_file():
        raise CellsynthInputError("experiment config not found", path)
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CellsynthInputError(f"not a valid JSON file ({exc})", path) from exc
    return config_from_dict(raw, base=path.parent, source=path)


def config_from_dict(
    raw: dict[str, Any], *, base: Path = Path("."), source: Path | None = None
) -> ExperimentConfig:
    where = source or Path("<config>")
    _check_keys(raw, CONFIG_KEYS, "the config", where)
    for key in ("data", "train", "test", "rows"):
        if key not in raw:
            raise CellsynthInputError(f"the config needs {key!r}", where)

    def resolve(p: str) -> Path:
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else (base / q).resolve()

    learn = _check_keys(raw.get("learn") or {}, LEARN_KEYS, "'learn'", where)
    synthetic = _check_keys(raw.get("synthetic") or {}, SYNTHETIC_KEYS, "'synthetic'", where)
    training = _check_keys(raw.get("training") or {}, TRAINING_KEYS, "'training'", where)
    curation = _check_keys(raw.get("curation") or {}, CURATION_KEYS, "'curation'", where)
    for section, values in (("learn", learn), ("synthetic", synthetic), ("training", training)):
        _check_values(values, section, f"'{section}'", where)
    size = synthetic.get("size")
    if size is not None and (
        not isinstance(size, list)
        or len(size) not in (2, 3)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        raise CellsynthInputError(
            f"'synthetic': 'size' must be [H, W] or [Z, Y, X] positive integers, got "
            f"{json.dumps(size)}",
            where,
        )
    for key in ("train", "test"):
        if not isinstance(raw[key], list) or not all(isinstance(v, str) for v in raw[key]):
            raise CellsynthInputError(f"{key!r} must be a list of frame names", where)
    if not isinstance(raw["rows"], list) or not raw["rows"]:
        raise CellsynthInputError("'rows' must be a non-empty list of row objects", where)
    for key in ("data", "bundle"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise CellsynthInputError(f"{key!r} must be a path (a string)", where)
    train, test = list(raw["train"]), list(raw["test"])
    if not train or not test:
        raise CellsynthInputError("'train' and 'test' must each name at least one frame", where)
    if set(train) & set(test):
        raise CellsynthInputError(
            f"frames {sorted(set(train) & set(test))} are both train and test", where
        )
    bad = sorted(set(learn.get("frames") or []) - set(train))
    if bad or learn.get("frames") == []:
        raise CellsynthInputError(
            f"'learn' frames {bad or '[]'} must be a non-empty subset of the training "
            f"frames {train}",
            where,
        )
    rows = []
    for i, r in enumerate(raw["rows"]):
        _check_keys(r, ROW_KEYS, f"row {i + 1}", where)
        if "name" not in r:
            raise CellsynthInputError(f"row {i + 1} needs a 'name'", where)
        _check_values(r, "row", f"row {i + 1}", where)
        if Row(name=r["name"], real=[]).slug.startswith("."):
            raise CellsynthInputError(
                f"row {i + 1}: name {r['name']!r} cannot be a file name (its models and results "
                "are files named after it); use letters or digits",
                where,
            )
        real = list(train if r.get("real") is None else r["real"])
        bad = sorted(set(real) - set(train))
        if bad:
            raise CellsynthInputError(
                f"row {r['name']!r}: real frames {bad} are not training frames {train}", where
            )
        n_syn = int(r.get("synthetic", 0))
        default_p = 1.0 if n_syn == 0 else (0.0 if not real else 0.6)
        p_real = float(r.get("p_real", default_p))
        if not 0.0 <= p_real <= 1.0:
            raise CellsynthInputError(f"row {r['name']!r}: p_real must be in [0, 1]", where)
        if not real and n_syn == 0:
            raise CellsynthInputError(f"row {r['name']!r} trains on nothing", where)
        if n_syn < 0:
            raise CellsynthInputError(f"row {r['name']!r}: synthetic must be >= 0", where)
        if real and n_syn and p_real in (0.0, 1.0):
            log.warning("row %r: p_real %s ignores one of the two sets", r["name"], p_real)
        rows.append(
            Row(
                name=str(r["name"]),
                real=real,
                synthetic=n_syn,
                p_real=p_real if n_syn else 1.0,
                curated=bool(r.get("curated", False)),
                rho=None if r.get("rho") is None else float(r["rho"]),
                note=str(r.get("note", "")),
            )
        )
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise CellsynthInputError("row names must be unique", where)
    if len({r.slug for r in rows}) != len(rows):
        raise CellsynthInputError("row names must differ in letters/digits (file names)", where)
    cfg = ExperimentConfig(
        name=str(raw.get("name") or (source.stem if source else "experiment")),
        description=str(raw.get("description", "")),
        data=resolve(raw["data"]),
        train=train,
        test=test,
        rows=rows,
        bundle=resolve(raw["bundle"]) if raw.get("bundle") else None,
        learn=learn,
        synthetic=synthetic,
        training=training,
        curation=curation,
        voxel_size=_voxel_size(raw.get("voxel_size"), where),
        source=source,
    )
    if cfg.n_synthetic < max(r.synthetic for r in rows):
        raise CellsynthInputError(
            f"a row uses more synthetic pairs than synthetic.n = {cfg.n_synthetic}", where
        )
    if any(r.curated for r in rows):
        scorer = curation.get("score_with", "real")
        by_name = {r.name: r for r in rows}
        if scorer not in by_name:
            raise CellsynthInputError(
                f"curated rows need curation.score_with = a row name; {scorer!r} is not one", where
            )
        if by_name[scorer].synthetic:
            raise CellsynthInputError(
                f"curation.score_with row {scorer!r} must train on real data only", where
            )
    if cfg.epochs < 1 or cfg.nimg_per_epoch < 1:
        raise CellsynthInputError("training.epochs and nimg_per_epoch must be >= 1", where)
    return cfg


def _voxel_size(v: Any, where: Path) -> tuple[float, ...] | None:
    if v is None:
        return None
    try:
        vs = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        vs = ()
    if len(vs) != 3 or not all(x > 0 for x in vs):
        raise CellsynthInputError(
            f"voxel_size must be three positive numbers Z Y X, got {v}", where
        )
    return vs


# --------------------------------------------------------------------------- running


@dataclass
class ExperimentProgress:
    stage: str  # bundle | synthesis | calibration | training | scoring | evaluation | done
    row: str | None
    fraction: float
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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

    @functools.cached_property
    def _bundle_identity(self) -> Any:
        """What determines the bundle: its bundle.json (hashed once) or the learn settings."""
        if self.config.bundle is not None:
            bj = self.config.bundle / "bundle.json"
            if not bj.is_file():
                raise CellsynthInputError("not a cellsynth bundle (no bundle.json)", bj.parent)
            return {"path": str(self.config.bundle), "sha": _hash(bj.read_text())}
        return {"learn": self.config.learn, "train": self.config.train}

    def synthetic_key(self, rho: float | None) -> str:
        return _hash(
            {
                "bundle": self._bundle_identity,
                "synthetic": self.config.synthetic,
                "n": self.config.n_synthetic,
                "size": self._synthetic_size(),
                "rho": rho,
            }
        )

    def row_key(self, row: Row, epochs: int) -> str:
        cfg = self.config
        return _hash(
            {
                "data": str(cfg.data),
                "train": cfg.train,
                "test": cfg.test,
                "row": asdict(row) | {"note": None},
                "synthetic": self.synthetic_key(row.rho) if row.synthetic else None,
                "curation": cfg.curation if row.curated else None,
                "scorer": (self.row_key(self._scorer(), epochs) if row.curated else None),
                "training": cfg.training | {"epochs": epochs},
            }
        )

    def _scorer(self) -> Row:
        return next(r for r in self.config.rows if r.name == self._scorer_name())

    def finished(self, row: Row, epochs: int) -> dict[str, Any] | None:
        path = self.row_path(row)
        if not path.is_file():
            return None
        rec = json.loads(path.read_text())
        if rec.get("key") != self.row_key(row, epochs) or not self.model_path(row).is_file():
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
    ) -> Iterator[ExperimentProgress]:
        cfg = self.config
        rows = cfg.rows
        if only:
            unknown = sorted(set(only) - {r.name for r in rows})
            if unknown:
                raise CellsynthInputError(
                    f"--only {unknown}: no such row (rows: {[r.name for r in rows]})",
                    cfg.source or cfg.name,
                )
            rows = [r for r in rows if r.name in only]
            if any(r.curated for r in rows) and self._scorer() not in rows:
                rows = [self._scorer(), *rows]
        self.out.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.command = list(command) if command is not None else sys.argv
        self.machine = machine_info(str(self._device()))
        needs = {r.rho for r in rows if r.synthetic}
        with _preparation_lock(self.out):
            if needs:
                yield from self._ensure_bundle()
                for rho in sorted(needs, key=lambda v: -1 if v is None else v):
                    yield from self._ensure_synthetic(rho)
        if prepare_only:
            self.write_results()
            yield ExperimentProgress("done", None, 1.0, "bundle and synthetic data ready")
            return
        epochs = cfg.epochs
        pending = [r for r in rows if self.finished(r, epochs) is None]
        if budget_hours is not None and pending:
            epochs = yield from self._epochs_for_budget(pending, budget_hours)
            pending = [r for r in rows if self.finished(r, epochs) is None]
        self.epochs = epochs
        order = sorted(rows, key=lambda r: 0 if (r.name == self._scorer_name()) else 1)
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

    def _scorer_name(self) -> str:
        return self.config.curation.get("score_with", "real")

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
            _ = self._bundle_identity  # checks bundle.json
            return
        done = self.out / "bundle.done.json"
        if done.is_file() and json.loads(done.read_text()).get("learn") == self.config.learn:
            return
        from cellsynth.learn import LearnSettings, learn

        lc = dict(self.config.learn)
        settings = LearnSettings(
            minutes=lc.get("minutes", 20.0),
            mask_steps=int(lc.get("mask_steps", 2000)),
            texture_steps=int(lc.get("texture_steps", 4000)),
            seed=int(lc.get("seed", 0)),
            device=self.device,
        )
        if lc.get("tiny"):
            settings.use_tiny_models()
        resume = (path / "training_state" / "state.json").is_file()
        if path.exists() and any(path.iterdir()) and not resume:
            raise CellsynthInputError(
                "an unfinished bundle without training state is in the way; remove it", path
            )
        t0 = time.perf_counter()
        if lc.get("3d"):
            from cellsynth.learn3d import Learn3DSettings, check_3d_pairs, learn_3d

            check_3d_pairs(self.learn_pairs)
            s3 = Learn3DSettings(
                multiview_steps=int(lc.get("multiview_steps", 1000)),
                voxel_size=tuple(lc["voxel_size"])
                if lc.get("voxel_size")
                else self._data_voxel_size(),
            )
            if lc.get("tiny"):
                s3.use_tiny_models()
            job = learn_3d(self.learn_pairs, path, settings, s3, resume=resume)
        else:
            job = learn(self.learn_pairs, path, settings, resume=resume)
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
        from cellsynth.io import DatasetWriter
        from cellsynth.synthesize import SynthesisParams, synthesize

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
        sc = self.config.synthetic
        params = SynthesisParams(
            size=tuple(self._synthetic_size()),
            seed=int(sc.get("seed", 0)) + have,
            steps=sc.get("steps"),
            cluster_prob=float(sc.get("cluster_prob", 0.3)),
            brightness=str(sc.get("brightness", "data")),
            rho=rho,
            voxel_size=self._data_voxel_size() if len(self._synthetic_size()) == 3 else None,
        )
        t0 = time.perf_counter()
        for i, _total, _ in synthesize(
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

    def _quality(self, path: Path, pairs: Sequence[Pair]) -> dict[str, float]:
        """SEG of the scorer model on each synthetic pair (cached in the dataset's JSON)."""
        from cellsynth.io import DatasetWriter
        from cellsynth.segment import load_model, record_quality, score_dataset

        scorer = self._scorer()
        model_file = self.model_path(scorer)
        scorer_key = self.row_key(scorer, self.epochs)
        writer = DatasetWriter(path)
        samples = writer.meta["samples"]
        todo = [
            p
            for p in pairs
            if samples.get(p.name, {}).get("quality", {}).get("scorer_key") != scorer_key
        ]
        if todo:
            model = load_model(model_file, self.device)
            record_quality(writer, score_dataset(model, todo), model_file, scorer_key=scorer_key)
        out = {}
        for p in pairs:
            v = samples[p.name]["quality"]["SEG"]
            out[p.name] = -1.0 if v is None or (isinstance(v, float) and math.isnan(v)) else v
        return out

    def _settings(self, row: Row, epochs: int) -> Any:
        from cellsynth.segment import FinetuneSettings

        t = self.config.training
        s = FinetuneSettings(
            epochs=epochs,
            p_real=row.p_real,
            device=self.device,
            seed=int(t.get("seed", 0)),
            nimg_per_epoch=self.config.nimg_per_epoch,
        )
        for k in ("batch_size", "bsize"):
            if k in t:
                setattr(s, k, int(t[k]))
        if t.get("learning_rate") is not None:
            s.learning_rate = float(t["learning_rate"])
        return s

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
            for p in finetune(real, syn, Path(tmp) / "calibration", settings):
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
        from cellsynth.segment import (
            evaluate_model,
            finetune,
            finetune_outputs,
            load_model,
            read_log,
        )

        real = [self.pairs[n] for n in row.real]
        if row.curated:
            yield ExperimentProgress("scoring", row.name, 0.0, "quality scores")
        syn = self.synthetic_pairs(row)
        out = self.model_path(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        # a stale model of another key, or what a killed run left (its work folder): this
        # experiment's own files, set aside, never deleted
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for src in finetune_outputs(out):
            if src.exists():
                src.rename(src.with_name(f"{src.name}.old-{stamp}"))
        t0 = time.perf_counter()
        for p in finetune(real, syn, out, self._settings(row, epochs)):
            yield ExperimentProgress(
                "training", row.name, p.fraction, f"epoch {p.epoch}/{epochs} loss {p.loss:.4f}"
            )
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        model = load_model(out, self.device)
        ev = evaluate_model(model, self.test_pairs)
        eval_s = time.perf_counter() - t1
        s = ev.summary()
        log_json = read_log(out)
        rec = {
            "row": asdict(row),
            "key": self.row_key(row, epochs),
            "SEG": s["SEG"],
            "AP50": s["AP50"],
            "bPQ": s["bPQ"],
            "n_reference": s["n_reference"],
            "n_predicted": s["n_predicted"],
            "frames": ev.rows(),
            "cell_jaccards": {f.name: list(f.jaccards) for f in ev.frames},
            "epochs": epochs,
            "nimg_per_epoch": log_json["nimg_per_epoch"],
            "n_real_images": log_json["n_real"],
            "n_synthetic_images": log_json["n_synthetic"],
            "synthetic_used": [p.name for p in syn],
            "p_real_effective": log_json["p_real_effective"],
            "final_loss": (log_json["epoch_losses"] or [None])[-1],
            "train_seconds": round(train_s, 1),
            "eval_seconds": round(eval_s, 1),
            "model": str(out),
            "command": self.command,
            "machine": self.machine,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        write_json(self.row_path(row), _nan_to_none(rec))
        yield ExperimentProgress(
            "evaluation", row.name, 1.0, f"SEG {s['SEG']:.3f} AP50 {s['AP50']:.3f}"
        )

    def _add_cell_jaccards(self, row: Row, rec: dict[str, Any]) -> None:
        from cellsynth.segment import evaluate_model, load_model

        ev = evaluate_model(load_model(self.model_path(row), self.device), self.test_pairs)
        if abs(ev.summary()["SEG"] - rec["SEG"]) > 1e-6:
            log.warning("row %r: re-evaluated SEG differs from the recorded one", row.name)
        rec["cell_jaccards"] = {f.name: list(f.jaccards) for f in ev.frames}
        write_json(self.row_path(row), _nan_to_none(rec))

    # -- results ----------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
        rows = {}
        for row in self.config.rows:
            path = self.row_path(row)
            if path.is_file():
                rec = json.loads(path.read_text())
                if rec.get("key") == self.row_key(row, int(rec.get("epochs", 0))):
                    rows[row.name] = rec
        extra: dict[str, Any] = {}
        done = self.out / "bundle.done.json"
        if done.is_file():
            extra["bundle_learning"] = json.loads(done.read_text())
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
        write_json(self.out / "results.json", _nan_to_none(res))
        with atomic_path(self.out / "results.md", overwrite=True) as tmp:  # rows side by side
            tmp.write_text(results_markdown(res))
        return res


def paired_difference(
    a: dict[str, Any], b: dict[str, Any], *, n_boot: int = 4000, seed: int = 0
) -> dict[str, float] | None:
    """SEG(a) − SEG(b) over the same reference cells, with a 95 % bootstrap interval.

    Cells are resampled with replacement (paired: each cell's Jaccard in both rows). None when
    a row has no per-cell scores or the rows were scored on different cells.
    """
    ja, jb = a.get("cell_jaccards"), b.get("cell_jaccards")
    if not ja or not jb or set(ja) != set(jb):
        return None
    x, y = cell_jaccards(a), cell_jaccards(b)
    if x.shape != y.shape or x.size == 0:
        return None
    d = x - y
    mean, lo, hi = bootstrap_mean(d, n_boot=n_boot, seed=seed)
    return {"difference": mean, "low": lo, "high": hi, "cells": d.size}


def cell_jaccards(rec: dict[str, Any]) -> np.ndarray:
    """A row's per-cell Jaccard indices (the cells SEG averages), frames in name order."""
    cells = rec.get("cell_jaccards") or {}
    return np.concatenate(
        [np.asarray(cells[k], dtype=float) for k in sorted(cells)] or [np.zeros(0)]
    )


def bootstrap_mean(
    x: np.ndarray, *, n_boot: int = 4000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``x`` and its 95 % bootstrap interval (``x`` resampled with replacement)."""
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(x.mean()), float(lo), float(hi)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _f(v: Any, nd: int = 3) -> str:
    return "–" if v is None else f"{v:.{nd}f}"


def results_markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    lines = [
        f"# {cfg['name']}: Cellpose trained on real / synthetic / both",
        "",
        f"Data `{cfg['data']}`; train {', '.join(cfg['train'])}; test {', '.join(cfg['test'])}.",
        f"Bundle: `{cfg['bundle']}`."
        if cfg.get("bundle")
        else "Bundle: learnt on "
        + ", ".join((cfg.get("learn") or {}).get("frames") or cfg["train"])
        + " (`OUT/bundle`).",
        f"Budget per row: {cfg['training'].get('epochs', 200)} epochs × "
        f"{cfg['training'].get('nimg_per_epoch', 8)} crops (from scratch).",
        "",
        "| row | real frames | synthetic | p_real | SEG | AP50 | bPQ | train min | epochs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in cfg["rows"]:
        rec = res["rows"].get(r["name"])
        syn = f"{r['synthetic']}{' (curated)' if r['curated'] else ''}"
        if r.get("rho") is not None:
            syn += f" rho {r['rho']:g}"
        real = ", ".join(r["real"]) or "–"
        if rec is None:
            lines.append(f"| {r['name']} | {real} | {syn} | {r['p_real']:g} | not run | | | | |")
            continue
        lines.append(
            f"| {r['name']} | {real} | {syn} | {r['p_real']:g} | {_f(rec['SEG'])} | "
            f"{_f(rec['AP50'])} | {_f(rec['bPQ'])} | {rec['train_seconds'] / 60:.1f} | "
            f"{rec['epochs']} |"
        )
    base = res["rows"].get("real")
    diffs = []
    for name, rec in res["rows"].items():
        if base is not None and name != "real":
            d = paired_difference(rec, base)
            if d is not None:
                diffs.append(
                    f"| {name} | {d['difference']:+.3f} | [{d['low']:+.3f}, {d['high']:+.3f}] | "
                    f"{d['cells']} |"
                )
    if diffs:
        lines += [
            "",
            "SEG difference to the real-only row over the same test cells (95 % paired bootstrap):",
            "",
            "| row | SEG − SEG(real) | 95 % interval | cells |",
            "| --- | --- | --- | --- |",
            *diffs,
        ]
    machines = {json.dumps(rec.get("machine", {}), sort_keys=True) for rec in res["rows"].values()}
    if machines:
        lines += ["", "Machine(s):"]
        lines += [f"- `{m}`" for m in sorted(machines)]
    return "\n".join(lines) + "\n"


def run_experiment(
    config: ExperimentConfig | str | Path,
    out: str | Path,
    *,
    device: str = "auto",
    only: Sequence[str] | None = None,
    budget_hours: float | None = None,
    command: Sequence[str] | None = None,
    prepare_only: bool = False,
) -> Iterator[ExperimentProgress]:
    """Run (or resume) an experiment; yields progress; results in ``out/results.json``.

    ``prepare_only``: learn the bundle and synthesize, train nothing (look at the synthetic
    pairs first, e.g. in napari).
    """
    if not isinstance(config, ExperimentConfig):
        config = load_config(config)
    exp = Experiment(config, out, device=device)
    yield from exp.run(
        only=only, budget_hours=budget_hours, command=command, prepare_only=prepare_only
    )


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

    The bundle and the synthetic pairs are prepared here first (on the first device); then one
    ``cellsynth experiment CONFIG -o OUT --only ROW --device DEV`` process per device trains a
    row, and the next pending row takes the first device that is free, so an experiment takes
    about the time of its slowest row. Curated rows start once their scorer row is finished.
    Each process's output is in ``OUT/logs/ROW.log``; finished rows are kept as in
    :func:`run_experiment`, so a rerun continues.
    """
    import subprocess

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
    rows = [r for r in config.rows if not only or r.name in only]
    scorer = exp._scorer()
    if any(r.curated for r in rows) and scorer not in rows:
        rows = [scorer, *rows]
    epochs = config.epochs
    pending = sorted(
        (r for r in rows if exp.finished(r, epochs) is None),
        key=lambda r: 0 if r.name == scorer.name else 1,
    )
    total = max(len(pending), 1)
    running: dict[str, tuple[Row, subprocess.Popen, Any]] = {}
    (out / "logs").mkdir(exist_ok=True)
    env = {**os.environ, "LOCAL_WORLD_SIZE": str(len(devices))}  # threads: cores / rows
    try:
        while pending or running:
            for dev in devices:
                if dev in running:
                    continue
                ready = [
                    r for r in pending if not r.curated or exp.finished(scorer, epochs) is not None
                ]
                if not ready:
                    break
                row = ready[0]
                pending.remove(row)
                log_file = open(out / "logs" / f"{row.slug}.log", "a")
                cmd = [sys.executable, "-m", "cellsynth", "experiment", str(config.source)]
                cmd += ["-o", str(out), "--only", row.name, "--device", dev]
                proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
                running[dev] = (row, proc, log_file)
                log.info("row %r on %s (pid %d)", row.name, dev, proc.pid)
                yield ExperimentProgress("training", row.name, 0.0, f"started on {dev}")
            time.sleep(poll_seconds)
            for dev, (row, proc, log_file) in list(running.items()):
                if proc.poll() is None:
                    continue
                log_file.close()
                del running[dev]
                if proc.returncode != 0:
                    raise CellsynthInputError(
                        f"row {row.name!r} failed on {dev} (exit code {proc.returncode}); "
                        "its output is in this file",
                        out / "logs" / f"{row.slug}.log",
                    )
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
