"""Curate dock widget: walk through synthetic pairs, correct labels, accept or reject.

Pairs come from a synthetic dataset folder (sorted by the quality score that
``cellsynth score`` wrote, best first) or from the layers the Synthesize widget added. Label
corrections are made with napari's own Labels tools on the "curate … labels" layer; *Accept*
writes the image and the corrected labels to the curated dataset folder (a new file, never over
the originals), *Reject* records the rejection there. Keyboard: A accept, R reject, N next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label, PushButton

from cellsynth._widgets._common import (
    GeneratorJob,
    contrast_limits,
    folder_edit,
    linked_pairs,
    notify,
    notify_error,
    notify_warning,
    offer,
    path_or_none,
    register,
    wrap_label,
)
from cellsynth.errors import CellsynthInputError

if TYPE_CHECKING:
    import napari.viewer


@dataclass
class Candidate:
    name: str
    image: Any  # array or callable
    labels: Any
    score: float | None
    source: str
    record: dict


class CurateWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.source = folder_edit("synthetic folder")
        self.source.tooltip = (
            "a folder written by Synthesize or `cellsynth synthesize`; empty: the pairs the "
            "Synthesize widget added as layers"
        )
        self.output = folder_edit("curated folder", value=str(Path.home() / "cellsynth-curated"))
        self.output.tooltip = "accepted pairs are written here (a new or a curated folder)"
        self.load_btn = PushButton(text="Load pairs")
        self.accept_btn = PushButton(text="Accept [A]")
        self.reject_btn = PushButton(text="Reject [R]")
        self.next_btn = PushButton(text="Next [N]")
        self.model = folder_edit("segmenter", mode="r")
        self.model.tooltip = "optional: a Cellpose model file for pseudo-labels"
        self.pseudo_btn = PushButton(text="Show pseudo-labels")
        self.counts = wrap_label(Label(label="", value="no pairs loaded"))
        self.current_label = wrap_label(Label(label="", value=""))
        row = Container(
            widgets=[self.accept_btn, self.reject_btn, self.next_btn],
            layout="horizontal",
            labels=False,
        )
        self.extend(
            [
                self.source,
                self.output,
                self.load_btn,
                row,
                self.model,
                self.pseudo_btn,
                self.current_label,
                self.counts,
            ]
        )
        self.load_btn.changed.connect(self.load)
        self.accept_btn.changed.connect(self.accept)
        self.reject_btn.changed.connect(self.reject)
        self.next_btn.changed.connect(self.next)
        self.pseudo_btn.changed.connect(self.show_pseudo_labels)
        self.candidates: list[Candidate] = []
        self.position = -1
        self.accepted = 0
        self.rejected = 0
        self.image_layer = None
        self.labels_layer = None
        self.job: GeneratorJob | None = None
        register(self)
        for key, fn in (("a", self.accept), ("r", self.reject), ("n", self.next)):
            viewer.bind_key(key, lambda _v, f=fn: f(), overwrite=True)

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        try:
            folder = path_or_none(self.source)
            self.candidates = self._from_folder(folder) if folder else self._from_layers()
        except CellsynthInputError as exc:
            notify_error(exc)
            return
        if not self.candidates:
            notify_error(CellsynthInputError("no synthetic pairs to curate"))
            return
        self.candidates.sort(key=lambda c: -(c.score if c.score is not None else -1.0))
        self.position = -1
        self.next()

    def _from_folder(self, folder: Path) -> list[Candidate]:
        from cellsynth.io import read_dataset
        from cellsynth.outputs import check_synthetic_source

        check_synthetic_source(folder)  # a real annotated data set is not curated as synthetic
        ds = read_dataset(folder, require_labels=True, require_images=True)
        samples = ds.meta.get("samples", {})
        out = []
        for p in ds.pairs:
            rec = samples.get(p.name, {})
            q = rec.get("quality", {}).get("SEG")
            out.append(
                Candidate(p.name, lambda p=p: p.image, lambda p=p: p.labels, q, str(folder), rec)
            )
        return out

    def _from_layers(self) -> list[Candidate]:
        """The Synthesize widget's pairs, joined by the link stored in their metadata."""
        out = []
        for img, lab in linked_pairs(self.viewer, synthetic_only=True):
            meta = img.metadata["cellsynth"]
            seed = meta.get("params", {}).get("seed", 0)
            out.append(
                Candidate(
                    f"{Path(meta.get('bundle', 'bundle')).name}_seed{seed}",
                    np.asarray(img.data),
                    np.asarray(lab.data),
                    None,
                    "layers",
                    meta.get("params", {}),
                )
            )
        return out

    # ------------------------------------------------------------------ walking

    @property
    def current(self) -> Candidate | None:
        if 0 <= self.position < len(self.candidates):
            return self.candidates[self.position]
        return None

    def next(self) -> None:
        self.position += 1
        c = self.current
        if c is None:
            self.current_label.value = "all pairs reviewed"
            self._update_counts()
            return
        image = c.image() if callable(c.image) else c.image
        labels = c.labels() if callable(c.labels) else c.labels
        for layer in (self.image_layer, self.labels_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.image_layer = self.viewer.add_image(
            image, name=f"curate {c.name}", contrast_limits=contrast_limits(image)
        )
        # a copy: corrections never touch the source arrays or files
        self.labels_layer = self.viewer.add_labels(
            np.array(labels, copy=True), name=f"curate {c.name} labels", opacity=0.35
        )
        self.viewer.layers.selection.active = self.labels_layer
        score = f" · quality SEG {c.score:.3f}" if c.score is not None else ""
        self.current_label.value = f"{self.position + 1}/{len(self.candidates)}: {c.name}{score}"
        self._update_counts()

    def _writer(self) -> Any:
        from cellsynth.io import DatasetWriter
        from cellsynth.outputs import check_synthetic_target

        out = path_or_none(self.output)
        if out is None:
            raise CellsynthInputError("choose a curated folder")
        check_synthetic_target(out)
        src = path_or_none(self.source)
        if src is not None and out.resolve() == src.resolve():
            raise CellsynthInputError(
                "the curated folder must differ from the synthetic one "
                "(cellsynth never writes over the originals)",
                out,
            )
        return DatasetWriter(out, origin="synthetic-curated")

    def accept(self) -> None:
        c = self.current
        if c is None or self.labels_layer is None:
            return
        try:
            w = self._writer()
            name = w.free_name(f"{c.name}_") if w.exists(c.name) else c.name
            edited = not np.array_equal(
                self.labels_layer.data, c.labels() if callable(c.labels) else c.labels
            )
            w.add(
                name,
                np.asarray(self.image_layer.data),
                np.asarray(self.labels_layer.data),
                record={
                    **{k: v for k, v in c.record.items() if k != "status"},
                    "status": "accepted",
                    "corrected": bool(edited),
                    "source": c.source,
                    "source_name": c.name,
                },
            )
        except CellsynthInputError as exc:
            notify_error(exc)
            return
        self.accepted += 1
        offer("offer_synthetic", w.root)  # the Fine-tune widget picks up the curated folder
        self.next()

    def reject(self) -> None:
        c = self.current
        if c is None:
            return
        try:
            w = self._writer()
            w.meta.setdefault("rejected", {})[c.name] = {"source": c.source, "score": c.score}
            w.save()
        except CellsynthInputError as exc:
            notify_error(exc)
            return
        self.rejected += 1
        self.next()

    def _update_counts(self) -> None:
        left = max(len(self.candidates) - self.position - 1, 0)
        self.counts.value = f"accepted {self.accepted} · rejected {self.rejected} · {left} left"

    # ------------------------------------------------------------------ pseudo-labels

    def show_pseudo_labels(self) -> None:
        model = path_or_none(self.model)
        if model is None or self.image_layer is None:
            notify_error(CellsynthInputError("load pairs and choose a segmenter model first"))
            return
        image = np.asarray(self.image_layer.data)
        name = f"pseudo-labels {self.current.name if self.current else ''}"

        def run():
            from cellsynth.segment import load_model, segment

            yield segment(load_model(model, "auto"), image)

        def show(labels: Any) -> None:
            self.viewer.add_labels(labels, name=name, opacity=0.4)
            n = len(np.unique(labels[labels > 0]))
            (notify if n else notify_warning)(f"{n} cells found by the segmenter")

        self.job = GeneratorJob(run(), yielded=show).start()
