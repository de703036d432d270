"""Small pieces shared by the dock widgets: layer pickers, a loss curve, error reporting."""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, create_widget

from cellsynth.errors import CellsynthInputError
from cellsynth.io import Pair

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")


def threads_box() -> Any:
    """CPU threads for torch (0 = automatic: one per core other processes leave free).

    On oversubscribed cores more OpenMP threads are slower (docs/performance.md): a napari
    session synthesizing beside a fine-tune should give each one thread, or leave it on auto."""
    import os

    from magicgui.widgets import SpinBox

    box = SpinBox(label="CPU threads", value=0, min=0, max=max(os.cpu_count() or 1, 1))
    box.tooltip = (
        "torch threads on the CPU; 0 = automatic (the cores other processes leave free). "
        "Fewer threads run faster when other jobs share the cores."
    )
    return box


def threads_of(box: Any) -> int | None:
    """The box's value as ``--threads`` takes it (None: automatic)."""
    return int(box.value) or None


_LIVE: weakref.WeakSet = weakref.WeakSet()


def register(widget: Any) -> None:
    """Remember a dock widget so the others can hand it their results (no file dialogs)."""
    _LIVE.add(widget)


def offer(method: str, value: Any) -> None:
    """Call ``method(value)`` on every live widget that has it (e.g. a new bundle folder)."""
    for w in list(_LIVE):
        fn = getattr(w, method, None)
        if fn is not None:
            try:
                fn(value)
            except RuntimeError:  # its Qt widget is gone
                pass


# the core speaks to the command line; in the GUI the same advice names the buttons
_GUI_WORDS = (
    ("; choose a new folder or pass --resume", "; choose a new bundle folder or press Resume"),
    ("pass --resume", "press Resume"),
    ("--epochs", "epochs"),
    ("--3d", "the 3D stacks option"),
)


def gui_message(exc: BaseException) -> str:
    """One line for a notification: the core's message in GUI words, never a traceback."""
    if isinstance(exc, CellsynthInputError):
        msg = str(exc)
    else:
        msg = f"{exc.__class__.__name__}: {exc}"
    for cli, gui in _GUI_WORDS:
        msg = msg.replace(cli, gui)
    return msg.splitlines()[0] if msg else exc.__class__.__name__


def notify_error(exc: BaseException) -> str:
    """Show an error as one napari notification (no traceback); return its text."""
    from napari.utils.notifications import show_error

    msg = gui_message(exc)
    log.warning("%s", msg)
    show_error(msg)
    return msg


def notify(msg: str) -> None:
    from napari.utils.notifications import show_info

    show_info(msg)


def notify_warning(msg: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(msg)


def alive(widget: Any) -> bool:
    """Whether a magicgui widget's Qt object still exists (napari deletes docks on close)."""
    try:
        widget.native.objectName()
    except RuntimeError:
        return False
    return True


def wrap_label(label: Any) -> Any:
    """Let a status Label wrap instead of being cut off by the dock's width."""
    from qtpy.QtWidgets import QSizePolicy

    label.native.setWordWrap(True)
    label.native.setMinimumWidth(220)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    return label


# ---------------------------------------------------------------- pairs of layers

LINK = "pair_id"


def link_metadata(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metadata for an Image layer and its Labels layer that name each other by one id.

    napari renames layers freely (``… [1]`` when a name is taken), so pairs are found by this
    stored link, never by name.
    """
    pair_id = uuid.uuid4().hex
    inner = dict(meta.get("cellsynth", {}))
    return (
        {**meta, "cellsynth": {**inner, LINK: pair_id, "role": "image"}},
        {**meta, "cellsynth": {**inner, LINK: pair_id, "role": "labels"}},
    )


def linked_pairs(viewer: Any, synthetic_only: bool = False) -> list[tuple[Any, Any]]:
    """(Image, Labels) layers of the viewer joined by their stored link, in layer order."""
    labels = {}
    for la in layers_of(viewer, "Labels"):
        meta = la.metadata.get("cellsynth", {})
        if meta.get(LINK) and meta.get("role") == "labels":
            labels[meta[LINK]] = la
    out = []
    for img in layers_of(viewer, "Image"):
        meta = img.metadata.get("cellsynth", {})
        if synthetic_only and not meta.get("synthetic"):
            continue
        lab = labels.get(meta.get(LINK)) if meta.get("role") == "image" else None
        if lab is not None:
            out.append((img, lab))
    return out


def layers_of(viewer: Any, kind: str) -> list:
    """The viewer's layers of one napari layer class (``"Image"``, ``"Labels"`` …)."""
    import napari.layers

    cls = getattr(napari.layers, kind)
    return [layer for layer in viewer.layers if isinstance(layer, cls)]


def layer_picker(kind: str, label: str) -> ComboBox:
    """A combo box of the viewer's ``napari.layers.<kind>`` layers (magicgui's napari layer
    annotation: it lists the layers of the viewer it is docked in, and napari refreshes it when
    layers are added, removed, renamed or reordered). Empty (``None``) allowed."""
    import napari.layers

    return create_widget(
        annotation=getattr(napari.layers, kind), label=label, options={"nullable": True}
    )


def follow_link(image_pick: ComboBox, labels_pick: ComboBox) -> None:
    """Picking an Image layer also picks its linked Labels layer (reader, sample, Synthesize)."""

    def pick(image: Any) -> None:
        if image is None:
            return
        pair_id = image.metadata.get("cellsynth", {}).get(LINK)
        for lab in labels_pick.choices:
            if lab is not None and lab.metadata.get("cellsynth", {}).get(LINK) == pair_id:
                labels_pick.value = lab
                return

    image_pick.changed.connect(pick)


def scale_to_voxel(layer: Any) -> tuple[float, ...] | None:
    sc = [float(s) for s in layer.scale]
    spatial = sc[-3:] if layer.ndim >= 3 else sc[-2:]
    return None if all(abs(s - 1.0) < 1e-9 for s in spatial) else tuple(spatial)


def pairs_from_layers(image_layer: Any, labels_layer: Any) -> list[Pair]:
    """Image + Labels layers -> core pairs; a stacked layer (frames) gives one pair per frame."""
    if image_layer is None or labels_layer is None:
        raise CellsynthInputError("choose an Image layer and a Labels layer (or a folder)")
    img = np.asarray(image_layer.data)
    lab = np.asarray(labels_layer.data)
    if getattr(image_layer, "rgb", False):
        raise CellsynthInputError(
            f"layer '{image_layer.name}' is RGB; cellsynth needs one grayscale channel"
        )
    if img.shape != lab.shape:
        raise CellsynthInputError(
            f"image layer '{image_layer.name}' {img.shape} and labels layer "
            f"'{labels_layer.name}' {lab.shape} have different shapes"
        )
    meta = image_layer.metadata.get("cellsynth", {})
    voxel = scale_to_voxel(image_layer)
    if meta.get("stacked"):
        names = meta.get("names") or [f"{image_layer.name}_{i}" for i in range(len(img))]
        return [
            Pair.from_arrays(n, img[i], lab[i], voxel[1:] if voxel else None)
            for i, n in enumerate(names)
        ]
    return [Pair.from_arrays(image_layer.name, img, lab, voxel)]


def write_pairs_folder(pairs: list[Pair], root: Path) -> Path:
    """Write layer data to a dataset folder (for a subprocess job); never over existing files."""
    from cellsynth.io import DatasetWriter

    w = DatasetWriter(root)
    for p in pairs:
        w.add(
            w.free_name(f"{p.name}_") if w.exists(p.name) else p.name,
            p.image,
            p.labels,
            voxel_size=p.voxel_size,
        )
    return root


class LossPlot(Container):
    """A live loss curve (matplotlib in Qt) that the training widgets update.

    It draws from the first point on (a lone point shows as a dot), then at most every
    ``interval`` seconds so that fast reports do not slow the GUI.
    """

    interval = 1.0

    def __init__(self, title: str = "loss") -> None:
        super().__init__(labels=False)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 1.9), dpi=90, tight_layout=True)
        self.figure.patch.set_facecolor("#262930")
        self.ax = self.figure.add_subplot(111)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(150)
        self.native.layout().addWidget(self.canvas)
        self.title = title
        self.series: dict[str, list[tuple[float, float]]] = {}
        self._drawn_at = 0.0
        self.clear()

    def clear(self) -> None:
        self.series = {}
        self._draw()

    def add(self, name: str, x: float, y: float) -> None:
        """Add a point; the plot redraws now when it is a series' first, else when due."""
        if y is None or not np.isfinite(y):
            return
        first = name not in self.series
        self.series.setdefault(name, []).append((x, y))
        if first or time.monotonic() - self._drawn_at >= self.interval:
            self._draw()

    def _draw(self) -> None:
        ax = self.ax
        ax.clear()
        ax.set_facecolor("#262930")
        for spine in ax.spines.values():
            spine.set_color("#888888")
        ax.tick_params(colors="#cccccc", labelsize=7)
        ax.set_title(self.title, color="#dddddd", fontsize=8)
        for name, pts in self.series.items():
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=name, linewidth=1.2, marker="o" if len(pts) == 1 else None)
        if self.series:
            ax.legend(fontsize=7, facecolor="#262930", labelcolor="#dddddd")
            ax.set_yscale("log")
        # drawn now, not via draw_idle: a deferred draw can fire after napari deleted the canvas
        self.canvas.draw()
        self._drawn_at = time.monotonic()

    @property
    def drawn_points(self) -> int:
        """How many points the axes show now (what the user sees, for tests)."""
        return sum(len(line.get_xdata()) for line in self.ax.get_lines())

    def redraw(self) -> None:
        self._draw()


def layers_folder(pairs: list[Pair], prefix: str) -> Path:
    """Layer data written to a new temporary dataset folder, for a subprocess job to read.

    Returns the folder that holds the copy; the caller removes it (``shutil.rmtree``) when the
    job has ended.
    """
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    write_pairs_folder(pairs, tmp / "data")
    return tmp


class SubprocessWatch:
    """A :mod:`cellsynth.jobs` subprocess, its messages delivered in the GUI thread.

    ``job`` (a :class:`GeneratorJob`) reads the child's JSON lines in a napari thread worker and
    hands each :class:`cellsynth.jobs.JobMessage` to ``message``; ``finished`` runs when the child
    has ended (done, cancelled or failed: see ``result``). Closing ``widget`` (napari deletes the
    docks when it closes) cancels the child, which then saves its last checkpoint.
    """

    def __init__(
        self, widget: Any, kind: str, spec: dict[str, Any], *, message: Any, finished: Any
    ) -> None:
        from cellsynth.jobs import SubprocessJob

        self.process = SubprocessJob(kind, spec).start()
        process = self.process
        widget.native.destroyed.connect(lambda *_: process.running and process.cancel())
        self.job = GeneratorJob(process.messages(), yielded=message, finished=finished).start()

    @property
    def result(self) -> Any:
        """The child's last message (done, cancelled or error); ``None`` while it runs."""
        return self.process.result

    @property
    def running(self) -> bool:
        return self.process.running

    def cancel(self) -> None:
        """Ask the child to stop (it keeps its last checkpoint)."""
        if self.process.running:
            self.process.cancel()


class GeneratorJob:
    """Run one of the core's progress generators in a napari thread worker, cancellably.

    Cancelling stops the loop at the next report and closes the generator *in the worker
    thread*, so its cleanup (e.g. writing the last checkpoint) does not block the GUI.

    An error raised in the worker becomes exactly one notification in GUI words (``errored``
    is connected through ``_connect``, so superqt does not re-raise it in the GUI thread with
    its traceback); ``error`` keeps its text for the ``finished`` handler, which always runs.
    """

    def __init__(
        self, gen: Any, *, yielded: Any = None, finished: Any = None, errored: Any = None
    ) -> None:
        from napari.qt.threading import create_worker

        self.gen = gen
        self._abort = False
        self._started = False
        self._done = False
        self.error: str | None = None
        self._errored = errored

        def run():
            try:
                for item in gen:
                    yield item
                    if self._abort:
                        break
            finally:
                gen.close()

        self.worker = create_worker(
            run, _progress=False, _start_thread=False, _connect={"errored": self._on_error}
        )
        self.worker.finished.connect(self._set_done)
        if yielded is not None:
            self.worker.yielded.connect(yielded)
        if finished is not None:
            self.worker.finished.connect(finished)

    def _on_error(self, exc: BaseException) -> None:
        self.error = notify_error(exc)
        if self._errored is not None:
            self._errored(self.error)

    def _set_done(self) -> None:
        self._done = True

    @property
    def cancelled(self) -> bool:
        return self._abort

    def start(self) -> GeneratorJob:
        self._started = True
        self.worker.start()
        return self

    def cancel(self) -> None:
        self._abort = True

    @property
    def running(self) -> bool:
        """Started and not finished yet (finished includes errors and cancellation)."""
        return self._started and not self._done


def contrast_limits(data: Any) -> list[float]:
    """Display range from the data's own percentiles (synthetic uint8 images are often dim)."""
    arr = np.asarray(data)
    lo, hi = np.percentile(arr[:: max(1, arr.shape[0] // 512)], (0.5, 99.8))
    return [float(lo), float(max(hi, lo + 1))]


def folder_edit(label: str, mode: str = "d", value: str | None = None) -> FileEdit:
    fe = FileEdit(label=label, mode=mode)
    if value is not None:
        fe.value = value
    return fe


def path_or_none(fe: FileEdit) -> Path | None:
    v = fe.value
    if v is None:
        return None
    s = str(v).strip()
    return None if s in ("", ".") else Path(s)
