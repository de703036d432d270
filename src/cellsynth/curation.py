"""Curation, headless: a queue of synthetic pairs, accept (with corrected labels) or reject each.

:class:`Curation` holds the queue (best quality first), where the user is in it and what was
decided; :meth:`Curation.accept` writes the pair — with the corrected labels when there are any —
to the *curated folder* through :class:`cellsynth.io.DatasetWriter` (new files only, records
merged under the folder's lock), and :meth:`Curation.reject` records the rejection in that
folder's ``dataset.json`` (``"rejected"``). The curated folder follows the output policy of
:mod:`cellsynth.outputs`: never a real data set, never the synthetic source itself.

The Curate dock widget drives one :class:`Curation`; it only shows the current pair as layers and
passes the edited labels back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError

CURATED_ORIGIN = "synthetic-curated"

ArrayOrLoader = np.ndarray | Callable[[], np.ndarray]


@dataclass
class Candidate:
    """One synthetic pair to review; ``image``/``labels`` are arrays or loaders (read lazily)."""

    name: str
    image: ArrayOrLoader
    labels: ArrayOrLoader
    score: float | None = None  # quality (SEG of a segmenter on it), higher is better
    source: str = ""  # the synthetic folder it came from, or "layers"
    record: dict[str, Any] = field(default_factory=dict)  # its dataset.json record / parameters

    def load_image(self) -> np.ndarray:
        return np.asarray(self.image() if callable(self.image) else self.image)

    def load_labels(self) -> np.ndarray:
        return np.asarray(self.labels() if callable(self.labels) else self.labels)


def queue_order(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Best quality first; pairs without a score after those with one, in their given order."""
    return sorted(candidates, key=lambda c: -c.score if c.score is not None else float("inf"))


def candidates_from_folder(folder: str | Path) -> list[Candidate]:
    """The pairs of a synthetic dataset folder, with the quality ``cellsynth score`` recorded.

    A real annotated data set is refused (:func:`cellsynth.outputs.check_synthetic_source`).
    """
    from cellsynth.io import read_dataset
    from cellsynth.outputs import check_synthetic_source

    folder = check_synthetic_source(folder)
    ds = read_dataset(folder, require_labels=True, require_images=True)
    samples = ds.meta.get("samples", {})
    out = []
    for p in ds.pairs:
        rec = samples.get(p.name, {})
        out.append(
            Candidate(
                p.name,
                lambda p=p: p.image,
                lambda p=p: p.labels,
                rec.get("quality", {}).get("SEG"),
                str(folder),
                rec,
            )
        )
    return out


def curated_writer(out: str | Path, source: str | Path | None = None) -> Any:
    """A :class:`~cellsynth.io.DatasetWriter` for the curated folder ``out``, after the checks:
    a new, empty or synthetic folder (never real data), and not the synthetic ``source``."""
    from cellsynth.io import DatasetWriter
    from cellsynth.outputs import check_synthetic_target

    out = check_synthetic_target(out)
    if source is not None and out.resolve() == Path(source).expanduser().resolve():
        raise CellsynthInputError(
            "the curated folder must differ from the synthetic one "
            "(cellsynth never writes over the originals)",
            out,
        )
    return DatasetWriter(out, origin=CURATED_ORIGIN)


class Curation:
    """Walk a queue of candidates; accept (optionally corrected) or reject each, in order.

    ``source`` is the synthetic folder the candidates came from (``None`` for in-memory pairs),
    which the curated folder may not be. The curated folder is named on each decision, so a
    front end may let the user change it between pairs.
    """

    def __init__(self, candidates: Iterable[Candidate], source: str | Path | None = None) -> None:
        self.queue = queue_order(candidates)
        if not self.queue:
            raise CellsynthInputError("no synthetic pairs to curate")
        self.source = Path(source) if source is not None else None
        self.position = 0
        self.accepted: list[str] = []  # names written to the curated folder
        self.rejected: list[str] = []  # names of the candidates rejected

    @classmethod
    def from_folder(cls, folder: str | Path) -> Curation:
        return cls(candidates_from_folder(folder), source=folder)

    # ------------------------------------------------------------------ walking

    @property
    def current(self) -> Candidate | None:
        """The pair under review (``None`` once all are reviewed)."""
        return self.queue[self.position] if self.position < len(self.queue) else None

    @property
    def left(self) -> int:
        """Pairs after the current one."""
        return max(len(self.queue) - self.position - 1, 0)

    @property
    def done(self) -> bool:
        return self.current is None

    def next(self) -> Candidate | None:
        """Skip the current pair (no decision recorded); return the new current one."""
        self.position = min(self.position + 1, len(self.queue))
        return self.current

    # ------------------------------------------------------------------ decisions

    def _current_or_fail(self) -> Candidate:
        c = self.current
        if c is None:
            raise CellsynthInputError("all pairs are reviewed; nothing to accept or reject")
        return c

    def accept(self, out: str | Path, labels: np.ndarray | None = None) -> str:
        """Write the current pair to the curated folder ``out`` and move on; return its name there.

        ``labels``: the corrected labels (``None``: as synthesized); the record says whether they
        differ (``corrected``). The name is the pair's own, or the next free ``name_NNNN`` when the
        folder already has it (cellsynth never overwrites files).
        """
        c = self._current_or_fail()
        w = curated_writer(out, self.source)
        original = c.load_labels()
        final = original if labels is None else np.asarray(labels)
        name = w.free_name(f"{c.name}_") if w.exists(c.name) else c.name
        w.add(
            name,
            c.load_image(),
            final,
            record={
                **{k: v for k, v in c.record.items() if k != "status"},
                "status": "accepted",
                "corrected": not np.array_equal(final, original),
                "source": c.source,
                "source_name": c.name,
            },
        )
        self.accepted.append(name)
        self.next()
        return name

    def reject(self, out: str | Path) -> str:
        """Record the current pair as rejected in the curated folder ``out`` and move on."""
        c = self._current_or_fail()
        w = curated_writer(out, self.source)
        with w.transaction() as meta:
            meta.setdefault("rejected", {})[c.name] = {"source": c.source, "score": c.score}
        self.rejected.append(c.name)
        self.next()
        return c.name

    def summary(self) -> str:
        return f"accepted {len(self.accepted)} · rejected {len(self.rejected)} · {self.left} left"


def rejected_in(folder: str | Path) -> dict[str, Any]:
    """The rejections recorded in a curated folder: name -> {source, score}."""
    from cellsynth.outputs import dataset_origin

    folder = Path(folder)
    if dataset_origin(folder) is None:  # no dataset.json (refuses one that is not JSON)
        return {}
    return dict(json.loads((folder / "dataset.json").read_text()).get("rejected") or {})
