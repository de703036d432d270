"""Row keys: a hash of everything that determines a row's model, so a rerun keeps finished rows.

A key hashes the config's sections as written (not the settings they resolve to): changing a
default in a settings dataclass does not retrain rows, and a config means the same rows in
every version that reads it (tests/test_experiment_config.py pins the keys of
``experiments/gowt1.json``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from cellsynth.errors import CellsynthInputError
from cellsynth.experiment.config import ExperimentConfig, Row


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RowKeys:
    """The keys of one config's synthetic sets and rows.

    ``synthetic_size`` gives the synthetic pairs' size (the config's ``synthetic.size``, else
    the real frames'); it is called only for rows with synthetic pairs.
    """

    def __init__(
        self, config: ExperimentConfig, synthetic_size: Callable[[], Sequence[int]]
    ) -> None:
        self.config = config
        self.synthetic_size = synthetic_size

    @functools.cached_property
    def bundle_identity(self) -> Any:
        """What determines the bundle: its bundle.json (hashed once) or the learn settings."""
        cfg = self.config
        if cfg.bundle is not None:
            bj = cfg.bundle / "bundle.json"
            if not bj.is_file():
                raise CellsynthInputError("not a cellsynth bundle (no bundle.json)", bj.parent)
            return {"path": str(cfg.bundle), "sha": config_hash(bj.read_text())}
        return {"learn": cfg.learn, "train": cfg.train}

    def synthetic(self, rho: float | None) -> str:
        """The key of the synthetic set painted with ``rho``."""
        return config_hash(
            {
                "bundle": self.bundle_identity,
                "synthetic": self.config.synthetic,
                "n": self.config.n_synthetic,
                "size": [int(s) for s in self.synthetic_size()],
                "rho": rho,
            }
        )

    def row(self, row: Row, epochs: int, learning_rate: float | None = None) -> str:
        """The key of ``row`` trained for ``epochs`` (at ``learning_rate``: a convergence
        ladder's choice; None: the training section's)."""
        cfg = self.config
        scorer = cfg.scorer
        return config_hash(
            {
                "data": str(cfg.data),
                "train": cfg.train,
                "test": cfg.test,
                "row": _row_fields(row),
                "synthetic": self.synthetic(row.rho) if row.synthetic else None,
                # curated rows train on the pairs the scorer rates best, rated as the test
                # frames are scored (the evaluation only when set: older keys kept)
                "curation": (
                    cfg.curation | ({"evaluation": cfg.evaluation} if cfg.evaluation else {})
                )
                if row.curated
                else None,
                "scorer": (
                    self.row(scorer, epochs, learning_rate) if row.curated and scorer else None
                ),
                # a row that starts from another row's model: that model's key (only when set,
                # so that the keys of the rows written before start_from existed are kept)
                **(
                    {"start_from": self.row(cfg.row_named(row.start_from), epochs, learning_rate)}
                    if row.start_from
                    else {}
                ),
                "training": cfg.training
                | {"epochs": epochs}
                | ({} if learning_rate is None else {"learning_rate": learning_rate}),
            }
        )


def _row_fields(row: Row) -> dict[str, Any]:
    """``row``'s fields that make its key: not its note, and start_from only when set."""
    fields = asdict(row) | {"note": None}
    if fields.get("start_from") is None:
        fields.pop("start_from", None)
    return fields
