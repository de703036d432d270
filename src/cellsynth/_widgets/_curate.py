"""Curate dock widget: walk through synthetic pairs, correct labels, accept or reject.

Pairs come from a synthetic dataset folder (sorted by the quality score that
``cellsynth score`` wrote, best first) or from the layers the Synthesize widget added. Label
corrections are made with napari's own Labels tools on the "curate … labels" layer; *Accept*
writes the image and the corrected labels to the curated dataset folder (a new file, never over
the originals), *Reject* records the rejection there. Keyboard: A accept, R reject, N next.

The queue, the decisions and the writing are :class:`cellsynth.curation.Curation`'s; this widget
shows its current pair as layers and hands it the edited labels.
"""

from __future__ import annotations

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
from cellsynth.curation import Candidate, Curation
from cellsynth.errors import CellsynthInputError

if TYPE_CHECKING:
    import napari.viewer


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
        self.curation: Curation | None = None
        self.image_layer = None
        self.labels_layer = None
        self.job: GeneratorJob | None = None
        register(self)
        for key, fn in (("a", self.accept), ("r", self.reject), ("n", self.next)):
            viewer.bind_key(key, lambda _v, f=fn: f(), overwrite=True)

    # ------------------------------------------------------------------ the queue

    @property
    def candidates(self) -> list[Candidate]:
        return self.curation.queue if self.curation is not None else []

    @property
    def current(self) -> Candidate | None:
        return self.curation.current if self.curation is not None else None

    @property
    def accepted(self) -> int:
        return len(self.curation.accepted) if self.curation is not None else 0

    @property
    def rejected(self) -> int:
        return len(self.curation.rejected) if self.curation is not None else 0

    def load(self) -> None:
        try:
            folder = path_or_none(self.source)
            if folder is not None:
                self.curation = Curation.from_folder(folder)
            else:
                self.curation = Curation(self._from_layers())
        except CellsynthInputError as exc:
            notify_error(exc)
            return
        self._show()

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

    def _show(self) -> None:
        """The current pair as an Image and an editable Labels layer (a copy)."""
        for layer in (self.image_layer, self.labels_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.image_layer = self.labels_layer = None
        c = self.current
        if c is None:
            self.current_label.value = "all pairs reviewed"
            self._update_counts()
            return
        image = c.load_image()
        self.image_layer = self.viewer.add_image(
            image, name=f"curate {c.name}", contrast_limits=contrast_limits(image)
        )
        # a copy: corrections never touch the source arrays or files
        self.labels_layer = self.viewer.add_labels(
            np.array(c.load_labels(), copy=True), name=f"curate {c.name} labels", opacity=0.35
        )
        self.viewer.layers.selection.active = self.labels_layer
        score = f" · quality SEG {c.score:.3f}" if c.score is not None else ""
        position = self.curation.position + 1
        self.current_label.value = f"{position}/{len(self.candidates)}: {c.name}{score}"
        self._update_counts()

    def _output(self) -> Path:
        out = path_or_none(self.output)
        if out is None:
            raise CellsynthInputError("choose a curated folder")
        return out

    def next(self) -> None:
        if self.curation is not None and not self.curation.done:
            self.curation.next()
            self._show()

    def accept(self) -> None:
        if self.current is None or self.labels_layer is None:
            return
        try:
            out = self._output()
            self.curation.accept(out, labels=np.asarray(self.labels_layer.data))
        except CellsynthInputError as exc:
            notify_error(exc)
            return
        offer("offer_synthetic", out)  # the Fine-tune widget picks up the curated folder
        self._show()

    def reject(self) -> None:
        if self.current is None:
            return
        try:
            self.curation.reject(self._output())
        except CellsynthInputError as exc:
            notify_error(exc)
            return
        self._show()

    def _update_counts(self) -> None:
        self.counts.value = self.curation.summary() if self.curation else "no pairs loaded"

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
