"""An experiment's config: reading and checking it, and its sections as the settings dataclasses.

The ``learn``, ``synthetic`` and ``training`` sections hold fields of the settings dataclasses
the CLI and the widgets use (:class:`~cellsynth.learn.LearnSettings`,
:class:`~cellsynth.learn3d.Learn3DSettings`, :class:`~cellsynth.synthesize.SynthesisParams`,
:class:`~cellsynth.segmenters.FinetuneSettings`), under the same names, and take their defaults
from there (:data:`SETTINGS`); a few keys are the experiment's own (:data:`OWN_KEYS`). The
sections are kept as written: the row keys hash them (:mod:`cellsynth.experiment.keys`), so a
config means the same rows whatever a default becomes; :class:`ExperimentConfig` turns them into
settings objects on demand.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cellsynth.errors import CellsynthInputError
from cellsynth.segmenters import DEFAULT_BACKEND, FinetuneSettings, backend_names
from cellsynth.settings import LR_SCHEDULES, Learn3DSettings, LearnSettings
from cellsynth.synthesize import SynthesisParams

log = logging.getLogger(__name__)

CONFIG_KEYS = {
    "name", "description", "data", "train", "test", "bundle", "learn", "synthetic", "training",
    "curation", "rows", "voxel_size", "convergence", "evaluation",
}  # fmt: skip
#: sections a config that ``extends`` another merges key by key into the other's (the other
#: keys, ``rows`` included, replace the other's; ``name`` is never inherited)
MERGED_SECTIONS = ("learn", "synthetic", "training", "curation", "convergence", "evaluation")
#: keys holding paths, which resolve against the directory of the file that writes them
PATH_KEYS = ("data", "bundle")
ROW_KEYS = {"name", "real", "synthetic", "p_real", "curated", "rho", "start_from", "note"}
CURATION_KEYS = {"score_with"}
CONVERGENCE_KEYS = {"row", "start_epochs", "max_epochs", "tolerance", "learning_rates"}
EVALUATION_KEYS = {"stitch_threshold"}

#: the settings fields each section may set, by dataclass (the defaults are the dataclasses')
SETTINGS: dict[str, tuple[tuple[type, tuple[str, ...]], ...]] = {
    "learn": (
        (
            LearnSettings,
            (
                "minutes",
                "mask_steps",
                "texture_steps",
                "seed",
                "lr",
                "lr_schedule",
                "checkpoint_minutes",
            ),
        ),
        (Learn3DSettings, ("multiview_steps", "voxel_size")),
    ),
    "synthetic": (
        (
            SynthesisParams,
            (
                "seed",
                "steps",
                "cluster_prob",
                "brightness",
                "exemplar_strength",
                "blur",
                "edge_blur",
                "density_factor",
                "touching",
                "divisions",
            ),
        ),
    ),
    "training": (
        (
            FinetuneSettings,
            ("epochs", "nimg_per_epoch", "seed", "batch_size", "bsize", "learning_rate"),
        ),
    ),
}
#: keys of a section that are the experiment's own, not a settings field
OWN_KEYS = {
    "learn": {"3d", "tiny", "frames"},  # 3D bundle; tiny models (tests); the frames learnt on
    "synthetic": {"n", "size"},  # how many pairs; their size (default: the real frames')
    "training": {"backend"},  # the segmenter backend (cellsynth.segmenters)
}
#: where an experiment's default differs from its dataclass's, and why: every row draws the
#: same number of training crops per epoch, however many images it has (equal budgets)
EXPERIMENT_DEFAULTS: dict[tuple[str, str], Any] = {("training", "nimg_per_epoch"): 8}
#: keys whose ``null`` is the value None rather than the default: no time limit
NULL_IS_NONE = {("learn", "minutes")}


def section_keys(section: str) -> set[str]:
    return {n for _, names in SETTINGS[section] for n in names} | OWN_KEYS[section]


def section_defaults(section: str) -> dict[str, Any]:
    """The value each settings key of ``section`` takes when a config leaves it out."""
    out = {}
    for cls, names in SETTINGS[section]:
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name in names:
            out[name] = EXPERIMENT_DEFAULTS.get((section, name), defaults[name])
    return out


def _settings(cls: type, section: str, given: dict[str, Any]) -> Any:
    """``cls`` with the values ``given`` for its fields of ``section``, the defaults elsewhere."""
    names = dict(SETTINGS[section])[cls]
    values = {}
    for name in names:
        value = given.get(name)
        if value is None and not (name in given and (section, name) in NULL_IS_NONE):
            if (section, name) not in EXPERIMENT_DEFAULTS:
                continue
            value = EXPERIMENT_DEFAULTS[section, name]
        if isinstance(value, list):
            value = tuple(value)
        elif value is not None and VALUE_TYPES[section].get(name, ("",))[0] == _NUM:
            value = float(value)
        values[name] = value
    return cls(**values)


# --------------------------------------------------------------------------- the config


@dataclass
class Row:
    """One model of the table: which real frames, how many synthetic pairs, how they mix."""

    name: str
    real: list[str]  # training frames used (a subset of the config's train frames)
    synthetic: int = 0  # synthetic pairs used (the first n, or the best n when curated)
    p_real: float = 1.0
    curated: bool = False
    rho: float | None = None  # 3D: the synthetic set painted with this slice correlation
    # start from this row's trained model (pretrain, e.g. on synthetic data, then fine-tune)
    start_from: str | None = None
    note: str = ""

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_") or "row"


@dataclass
class ExperimentConfig:
    """A checked config; the sections as written (``learn`` …) and as settings objects."""

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
    convergence: dict[str, Any] = field(default_factory=dict)  # as written; see Convergence
    evaluation: dict[str, Any] = field(default_factory=dict)  # how the test frames are scored
    source: Path | None = None

    @property
    def learn_settings(self) -> LearnSettings:
        """How the bundle learns (its device is the run's)."""
        s = _settings(LearnSettings, "learn", self.learn)
        if self.learn.get("tiny"):
            s.use_tiny_models()
        return s

    @property
    def learn_3d_settings(self) -> Learn3DSettings | None:
        """A 3D bundle's settings (``voxel_size`` None: the data's); None for a 2D bundle."""
        if not self.learn.get("3d"):
            return None
        s = _settings(Learn3DSettings, "learn", self.learn)
        if self.learn.get("tiny"):
            s.use_tiny_models()
        return s

    @property
    def synthesis_params(self) -> SynthesisParams:
        """Synthesis settings (size, seed offset, rho and voxel size are set per set)."""
        return _settings(SynthesisParams, "synthetic", self.synthetic)

    @property
    def finetune_settings(self) -> FinetuneSettings:
        """Every row's training settings (epochs, p_real and device are set per row)."""
        return _settings(FinetuneSettings, "training", self.training)

    @property
    def backend(self) -> str:
        return self.training.get("backend") or DEFAULT_BACKEND

    @property
    def epochs(self) -> int:
        return self.finetune_settings.epochs

    @property
    def nimg_per_epoch(self) -> int:
        return int(self.finetune_settings.nimg_per_epoch or 0)

    @property
    def stitch_threshold(self) -> float | None:
        """Stacks scored as 2D slices stitched at this IoU (None: Cellpose's 3D mode)."""
        v = self.evaluation.get("stitch_threshold")
        return None if v is None else float(v)

    @property
    def n_synthetic(self) -> int:
        return int(self.synthetic.get("n", max([r.synthetic for r in self.rows] + [0])))

    def row_named(self, name: str) -> Row:
        """The row called ``name`` (names are unique: :func:`config_from_dict` checks)."""
        return next(r for r in self.rows if r.name == name)

    def with_prerequisites(self, rows: list[Row]) -> list[Row]:
        """``rows`` and, before them, the rows they need trained first: the curation scorer of
        curated rows and the rows their ``start_from`` names."""
        need = [self.scorer] if any(r.curated for r in rows) and self.scorer else []
        need += [self.row_named(r.start_from) for r in rows if r.start_from]
        return [*(r for r in self.rows if r in need and r not in rows), *rows]

    @property
    def scorer(self) -> Row | None:
        """The row whose model scores the synthetic pairs for curated rows."""
        name = self.curation.get("score_with", "real")
        return next((r for r in self.rows if r.name == name), None)

    @property
    def convergence_spec(self) -> Convergence | None:
        """The budget ladder of the ``convergence`` section; None without one."""
        if not self.convergence:
            return None
        c = self.convergence
        start = int(c.get("start_epochs") or self.epochs)
        return Convergence(
            row=str(c["row"]),
            start_epochs=start,
            max_epochs=int(c.get("max_epochs") or 8 * start),
            tolerance=0.01 if c.get("tolerance") is None else float(c["tolerance"]),
            learning_rates=tuple(float(v) for v in c.get("learning_rates") or ()),
        )

    def to_dict(self) -> dict[str, Any]:
        d = {
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
        for key in ("convergence", "evaluation"):  # only when set: older configs resolve to
            if getattr(self, key):  # the same config.json
                d[key] = getattr(self, key)
        return d


@dataclass(frozen=True)
class Convergence:
    """Train every row at a budget where the baseline row has converged (the ``convergence``
    section).

    The baseline ``row`` (real data only) first trains at ``start_epochs`` once per learning
    rate of ``learning_rates`` (none: the training section's); the best held-out SEG picks the
    learning rate every row then uses. Then the budget doubles until doubling moves the
    baseline's held-out SEG by less than ``tolerance``, or ``max_epochs`` is reached; every row
    trains at the last budget that doubling did not improve (or at ``max_epochs``, marked not
    converged). The held-out frames decide, and they decide for the baseline only: a gain of
    another row over it cannot come from an undertrained baseline or a learning rate tuned
    for the other row.
    """

    row: str
    start_epochs: int
    max_epochs: int
    tolerance: float = 0.01
    learning_rates: tuple[float, ...] = ()


# --------------------------------------------------------------------------- checks


_INT, _NUM, _BOOL, _STR, _STRS = "an integer", "a number", "true or false", "a string", "a list"
#: the type and range of every value a config may hold: (kind, minimum, maximum)
VALUE_TYPES: dict[str, dict[str, tuple[str, float | None, float | None]]] = {
    "learn": {
        "minutes": (_NUM, 0, None), "mask_steps": (_INT, 0, None),
        "texture_steps": (_INT, 0, None), "seed": (_INT, None, None), "3d": (_BOOL, None, None),
        "multiview_steps": (_INT, 0, None), "tiny": (_BOOL, None, None),
        "frames": (_STRS, None, None), "lr": (_NUM, 0, None), "lr_schedule": (_STR, None, None),
        "checkpoint_minutes": (_NUM, 0.1, None),
    },
    "synthetic": {
        "n": (_INT, 0, None), "seed": (_INT, None, None), "steps": (_INT, 1, 1000),
        "cluster_prob": (_NUM, 0, 1), "brightness": (_STR, None, None),
        "exemplar_strength": (_NUM, 0.01, 1), "blur": (_NUM, 0, 10),
        "edge_blur": (_NUM, 0, 10), "density_factor": (_NUM, 0.05, 20),
        "touching": (_NUM, 0, 1), "divisions": (_NUM, 0, 1),
    },
    "training": {
        "epochs": (_INT, 1, None), "nimg_per_epoch": (_INT, 1, None), "seed": (_INT, None, None),
        "batch_size": (_INT, 1, None), "bsize": (_INT, 16, None),
        "learning_rate": (_NUM, 0, None), "backend": (_STR, None, None),
    },
    "evaluation": {"stitch_threshold": (_NUM, 0.001, 1)},
    "convergence": {
        "row": (_STR, None, None), "start_epochs": (_INT, 1, None),
        "max_epochs": (_INT, 1, None), "tolerance": (_NUM, 0, 1),
    },
    "row": {
        "name": (_STR, None, None), "real": (_STRS, None, None), "synthetic": (_INT, 0, None),
        "p_real": (_NUM, 0, 1), "curated": (_BOOL, None, None), "rho": (_NUM, 0, None),
        "start_from": (_STR, None, None),
        "note": (_STR, None, None),
    },
}  # fmt: skip


def _choices() -> dict[tuple[str, str], list[str]]:
    """The values a string key may take (backends: those registered now)."""
    return {
        ("learn", "lr_schedule"): list(LR_SCHEDULES),
        ("synthetic", "brightness"): ["data", "model"],
        ("training", "backend"): backend_names(),
    }


def _check_values(d: dict[str, Any], section: str, where: str, path: Path) -> None:
    """Each value of ``d`` has its section's type and range; null means the default."""
    choices = _choices()
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
        allowed = choices.get((section, key))
        if ok and allowed is not None and value not in allowed:
            raise CellsynthInputError(
                f"{where}: {key!r} must be one of {', '.join(allowed)}, got {json.dumps(value)}",
                path,
            )
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


def _resolve(p: str, base: Path) -> Path:
    """``p`` (``~`` expanded) as written when absolute, else relative to ``base``, resolved."""
    q = Path(os.path.expanduser(p))
    return q if q.is_absolute() else (base / q).resolve()


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and check an experiment config; relative paths are relative to the config file.

    A config may name another in ``extends`` (a path relative to it): it then holds only
    what differs (:func:`read_config_dict`).
    """
    path = Path(path)
    return config_from_dict(read_config_dict(path), base=path.parent, source=path)


def read_config_dict(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The config at ``path`` as one JSON object, the configs it ``extends`` merged in.

    ``"extends": "other.json"`` takes everything from ``other.json`` (itself read this way)
    but what this file writes: the sections of :data:`MERGED_SECTIONS` merge key by key (a
    section written ``null`` drops the other's), every other key replaces the other's
    (``rows`` whole), and ``name`` is never inherited (it is this file's, or its file name).
    The other's relative ``data`` and ``bundle`` stay relative to the other file. The result
    is what the runner writes as the run's ``config.json``, so rows keep their keys whether
    a config is written out in full or as the difference to another.
    """
    path = Path(path)
    where = _chain[0] if _chain else path
    if not path.is_file():
        if _chain:
            raise CellsynthInputError(
                f"'extends': {path} (named by {_chain[-1].name}) not found", where
            )
        raise CellsynthInputError("experiment config not found", path)
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CellsynthInputError(f"not a valid JSON file ({exc})", path) from exc
    if not isinstance(raw, dict):
        raise CellsynthInputError("the config must be a JSON object", path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent:
        raise CellsynthInputError(
            f"'extends' must be the path of another config, got {json.dumps(parent)}", path
        )
    chain = (*_chain, path)
    other = _resolve(parent, path.parent)
    if other.resolve() in {p.resolve() for p in chain}:
        loop = " -> ".join(p.name for p in (*chain, other))
        raise CellsynthInputError(f"'extends' loops: {loop}", where)
    base = read_config_dict(other, chain)
    for key in PATH_KEYS:  # the other's paths are relative to the other file
        if isinstance(base.get(key), str):
            base[key] = str(_resolve(base[key], other.parent))
    merged = {k: v for k, v in base.items() if k != "name"}
    for key, value in raw.items():
        if key in MERGED_SECTIONS and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        elif key in MERGED_SECTIONS and value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def config_from_dict(
    raw: dict[str, Any], *, base: Path = Path("."), source: Path | None = None
) -> ExperimentConfig:
    where = source or Path("<config>")
    if isinstance(raw, dict) and "extends" in raw:
        raise CellsynthInputError(
            "'extends' is resolved when a config is read from a file (load_config, "
            "read_config_dict), not in a dict",
            where,
        )
    _check_keys(raw, CONFIG_KEYS, "the config", where)
    for key in ("data", "train", "test", "rows"):
        if key not in raw:
            raise CellsynthInputError(f"the config needs {key!r}", where)

    sections = {
        s: _check_keys(raw.get(s) or {}, section_keys(s), f"'{s}'", where)
        for s in ("learn", "synthetic", "training")
    }
    curation = _check_keys(raw.get("curation") or {}, CURATION_KEYS, "'curation'", where)
    convergence = _check_keys(
        raw.get("convergence") or {}, CONVERGENCE_KEYS, "'convergence'", where
    )
    _check_values(convergence, "convergence", "'convergence'", where)
    evaluation = _check_keys(raw.get("evaluation") or {}, EVALUATION_KEYS, "'evaluation'", where)
    _check_values(evaluation, "evaluation", "'evaluation'", where)
    evaluation = {k: v for k, v in evaluation.items() if v is not None}
    for section, values in sections.items():
        _check_values(values, section, f"'{section}'", where)
    learn, synthetic = sections["learn"], sections["synthetic"]
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
    _voxel_size(learn.get("voxel_size"), where, "'learn': 'voxel_size'")
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
    rows = [_row(r, i, train, where) for i, r in enumerate(raw["rows"])]
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise CellsynthInputError("row names must be unique", where)
    if len({r.slug for r in rows}) != len(rows):
        raise CellsynthInputError("row names must differ in letters/digits (file names)", where)
    cfg = ExperimentConfig(
        name=str(raw.get("name") or (source.stem if source else "experiment")),
        description=str(raw.get("description", "")),
        data=_resolve(raw["data"], base),
        train=train,
        test=test,
        rows=rows,
        bundle=_resolve(raw["bundle"], base) if raw.get("bundle") else None,
        learn=learn,
        synthetic=synthetic,
        training=sections["training"],
        curation=curation,
        voxel_size=_voxel_size(raw.get("voxel_size"), where),
        convergence=convergence,
        evaluation=evaluation,
        source=source,
    )
    if cfg.n_synthetic < max(r.synthetic for r in rows):
        raise CellsynthInputError(
            f"a row uses more synthetic pairs than synthetic.n = {cfg.n_synthetic}", where
        )
    if any(r.curated for r in rows):
        scorer = cfg.scorer
        if scorer is None:
            raise CellsynthInputError(
                f"curated rows need curation.score_with = a row name; "
                f"{curation.get('score_with', 'real')!r} is not one",
                where,
            )
        if scorer.synthetic:
            raise CellsynthInputError(
                f"curation.score_with row {scorer.name!r} must train on real data only", where
            )
    if cfg.epochs < 1 or cfg.nimg_per_epoch < 1:
        raise CellsynthInputError("training.epochs and nimg_per_epoch must be >= 1", where)
    _check_start_from(cfg, where)
    _check_convergence(cfg, where)
    return cfg


def _check_start_from(cfg: ExperimentConfig, where: Path) -> None:
    """A row's ``start_from`` names another row that starts from scratch (one level: the
    pretrained row is trained first, at the same budget and learning rate)."""
    names = {r.name: r for r in cfg.rows}
    for r in cfg.rows:
        if r.start_from is None:
            continue
        start = names.get(r.start_from)
        if start is None or start is r:
            raise CellsynthInputError(
                f"row {r.name!r}: start_from {r.start_from!r} must name another row "
                f"(rows: {sorted(names)})",
                where,
            )
        if start.start_from is not None:
            raise CellsynthInputError(
                f"row {r.name!r}: start_from row {start.name!r} itself starts from "
                f"{start.start_from!r}; name a row that trains from scratch",
                where,
            )
    base = cfg.convergence.get("row") if cfg.convergence else None
    if base is not None and names.get(base) is not None and names[base].start_from:
        raise CellsynthInputError(
            f"'convergence': the baseline row {base!r} must train from scratch (no start_from)",
            where,
        )


def _check_convergence(cfg: ExperimentConfig, where: Path) -> None:
    c = cfg.convergence
    if not c:
        return
    if "row" not in c:
        raise CellsynthInputError("'convergence' needs 'row': the real-only baseline row", where)
    base = next((r for r in cfg.rows if r.name == c["row"]), None)
    if base is None or base.synthetic:
        raise CellsynthInputError(
            f"'convergence': 'row' {c['row']!r} must name a row that trains on real data only",
            where,
        )
    lrs = c.get("learning_rates")
    if lrs is not None and not (
        isinstance(lrs, list)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in lrs)
    ):
        raise CellsynthInputError(
            f"'convergence': 'learning_rates' must be a list of numbers in (0, 1), got "
            f"{json.dumps(lrs)}",
            where,
        )
    spec = cfg.convergence_spec
    assert spec is not None
    if spec.max_epochs < spec.start_epochs:
        raise CellsynthInputError(
            f"'convergence': max_epochs {spec.max_epochs} is below start_epochs "
            f"{spec.start_epochs}",
            where,
        )


def _row(r: Any, i: int, train: list[str], where: Path) -> Row:
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
    return Row(
        name=str(r["name"]),
        real=real,
        synthetic=n_syn,
        p_real=p_real if n_syn else 1.0,
        curated=bool(r.get("curated", False)),
        rho=None if r.get("rho") is None else float(r["rho"]),
        start_from=None if r.get("start_from") is None else str(r["start_from"]),
        note=str(r.get("note", "")),
    )


def _voxel_size(v: Any, where: Path, what: str = "voxel_size") -> tuple[float, ...] | None:
    if v is None:
        return None
    try:
        vs = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        vs = ()
    if len(vs) != 3 or not all(x > 0 for x in vs):
        raise CellsynthInputError(f"{what} must be three positive numbers Z Y X, got {v}", where)
    return vs
