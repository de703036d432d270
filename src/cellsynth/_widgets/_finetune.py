"""Fine-tune dock widget: train Cellpose in a subprocess on real + curated synthetic data.

Real data come from Image + Labels layers (written to a temporary dataset folder for the
subprocess) or a folder. The job streams progress and losses; Cancel stops it and keeps the last
weights. At the end the model segments the current image into a Labels layer and, when
validation data are given, an evaluation table (SEG, AP50, bPQ) is shown.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    Table,
)

from cellsynth._widgets._common import (
    DEVICES,
    GeneratorJob,
    LossPlot,
    SubprocessWatch,
    alive,
    folder_edit,
    follow_link,
    layer_picker,
    layers_folder,
    notify,
    notify_error,
    notify_warning,
    pairs_from_layers,
    path_or_none,
    register,
    threads_box,
    threads_of,
    wrap_label,
)
from cellsynth.errors import CellsynthInputError
from cellsynth.segmenters import DEFAULT_BACKEND, FinetuneSettings, backend_names

if TYPE_CHECKING:
    import napari.viewer


class FinetuneWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.image_pick = layer_picker("Image", "real image layer")
        self.labels_pick = layer_picker("Labels", "real labels layer")
        follow_link(self.image_pick, self.labels_pick)
        self.real_folder = folder_edit("or real folder")
        self.synthetic = folder_edit("synthetic folder")
        self.synthetic.tooltip = "the curated synthetic pairs (the Curate widget's folder)"
        self.validation = folder_edit("validation folder")
        self.validation.tooltip = "optional: held-out real pairs for the evaluation table"
        defaults = FinetuneSettings()
        self.p_real = FloatSpinBox(label="p_real", value=defaults.p_real, min=0, max=1, step=0.05)
        self.epochs = SpinBox(label="epochs", value=defaults.epochs, min=1, max=100_000)
        self.pretrain_epochs = SpinBox(
            label="pretrain epochs", value=defaults.pretrain_epochs, min=0, max=100_000
        )
        self.pretrain_epochs.tooltip = (
            "0: one stage. Else first this many epochs on the synthetic folder alone (that "
            "model is kept as MODEL_synthetic_pretrain), then the epochs above on real "
            "(+ synthetic, by p_real) from those weights"
        )
        self.pretrained = folder_edit("start from", mode="r")
        self.pretrained.tooltip = "optional: a local Cellpose model file to fine-tune"
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.threads = threads_box()
        self.backend = ComboBox(
            label="backend", choices=lambda _: backend_names(), value=DEFAULT_BACKEND
        )
        self.backend.tooltip = "the segmenter to train (cellsynth.segmenters registry)"
        self.output = folder_edit(
            "model file", mode="w", value=str(Path.home() / "cellsynth-cellpose-model")
        )
        self.start_btn = PushButton(text="Start")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1000, value=0)
        self.status = wrap_label(Label(label="", value=""))
        self.plot = LossPlot("Cellpose training loss")
        self.table = Table(
            value={k: [] for k in ("SEG", "AP50", "bPQ", "images")}, label="evaluation"
        )
        self.table.visible = False
        buttons = Container(
            widgets=[self.start_btn, self.cancel_btn], layout="horizontal", labels=False
        )
        self.extend(
            [
                self.image_pick,
                self.labels_pick,
                self.real_folder,
                self.synthetic,
                self.validation,
                self.p_real,
                self.epochs,
                self.pretrain_epochs,
                self.pretrained,
                self.device,
                self.threads,
                self.backend,
                self.output,
                buttons,
                self.progress,
                self.status,
                self.plot,
                self.table,
            ]
        )
        self.start_btn.changed.connect(self.start)
        self.cancel_btn.changed.connect(self.cancel)
        self.subprocess = None  # the cellsynth.jobs.SubprocessJob training the model
        self.job: GeneratorJob | None = None
        self.model_path: Path | None = None
        self.evaluation: dict[str, Any] | None = None
        self.predicted_cells: int | None = None
        self.extra_settings: dict[str, Any] = {}  # for tests and power users (bsize, ...)
        self._tmp: Path | None = None  # the real layers copied for the subprocess
        self._batches = 0
        register(self)

    def offer_synthetic(self, path: Path) -> None:
        """The Curate widget's folder of accepted pairs becomes the synthetic data here."""
        if path_or_none(self.synthetic) is None:
            self.synthetic.value = path

    def _spec(self) -> dict[str, Any]:
        from cellsynth.jobs import finetune_spec
        from cellsynth.segment import pretrain_path

        out = path_or_none(self.output)
        if out is None:
            raise CellsynthInputError("choose where to write the model file")
        if out.exists():
            raise CellsynthInputError("already exists; choose a new model file name", out)
        real_folder = path_or_none(self.real_folder)
        if real_folder is not None:
            real = [str(real_folder)]
        else:
            pairs = pairs_from_layers(self.image_pick.value, self.labels_pick.value)
            self._tmp = layers_folder(pairs, "cellsynth-real-")
            real = [str(self._tmp / "data")]
        synthetic = [str(p) for p in [path_or_none(self.synthetic)] if p is not None]
        if self.pretrain_epochs.value and not synthetic:
            raise CellsynthInputError(
                "pretrain epochs train on the synthetic folder first: choose one, or set "
                "pretrain epochs to 0"
            )
        if self.pretrain_epochs.value and pretrain_path(out).exists():
            raise CellsynthInputError(
                "already exists (the first stage's model); choose a new model file name",
                pretrain_path(out),
            )
        pre = path_or_none(self.pretrained)
        return finetune_spec(
            self.backend.value,
            real=real,
            synthetic=synthetic,
            output=str(out),
            settings={
                "epochs": int(self.epochs.value),
                "pretrain_epochs": int(self.pretrain_epochs.value),
                "p_real": float(self.p_real.value),
                "pretrained": str(pre) if pre else None,
                "device": str(self.device.value),
                **self.extra_settings,
            },
            threads=threads_of(self.threads),
        )

    def start(self) -> None:
        try:
            spec = self._spec()
        except CellsynthInputError as exc:
            self._remove_tmp()
            notify_error(exc)
            return
        self.model_path = Path(spec["output"])
        watch = SubprocessWatch(
            self, "finetune", spec, message=self._on_message, finished=self._on_finished
        )
        self.subprocess, self.job = watch.process, watch.job
        self.plot.clear()
        self.progress.value = 0
        self._batches = 0
        self.table.visible = False
        self.start_btn.enabled, self.cancel_btn.enabled = False, True
        self.status.value = f"starting {self.backend.value} in a subprocess…"

    def cancel(self) -> None:
        if self.subprocess is not None and self.subprocess.running:
            self.status.value = "cancelling: keeping the last weights…"
            self.subprocess.cancel()

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _on_message(self, msg: Any) -> None:
        if not alive(self):  # napari closed while the job ran
            return
        if msg.kind == "progress":
            p = msg.data
            self._batches = int(p["batch"])
            self.progress.value = int(1000 * p["fraction"])
            self.status.value = (
                f"epoch {p['epoch']}/{p['epochs']} · loss {p['loss']:.4f} · {p['elapsed']:.0f} s"
            )
            self.plot.add("batch", p["batch"], p["loss"])
        elif msg.kind == "error":
            text = notify_error(CellsynthInputError(str(msg.data)))
            self.status.value = f"failed: {text}"

    def _on_finished(self) -> None:
        """Say what the run left behind; predict only with a model that trained."""
        self._remove_tmp()
        if not alive(self):  # napari closed while the job ran: nobody to tell
            return
        self.start_btn.enabled, self.cancel_btn.enabled = True, False
        self.plot.redraw()
        result = self.subprocess.result if self.subprocess else None
        kind = result.kind if result is not None else "error"
        written = self.model_path is not None and self.model_path.exists()
        if self.job is not None and self.job.error is not None:
            self.status.value = f"failed: {self.job.error}"
            return
        if kind == "error":
            self.progress.value = 0
            return  # the subprocess's error was notified by _on_message
        if kind == "cancelled" and (self._batches == 0 or not written):
            self.progress.value = 0
            msg = "cancelled before the first training batch: no model to use"
            if written:
                msg += f" ({self.model_path} holds the starting weights)"
            self.status.value = msg
            notify_warning(msg)
            return
        if not written:
            self.status.value = f"failed: the job ended without writing {self.model_path}"
            notify_error(CellsynthInputError(self.status.value))
            return
        if kind == "cancelled":
            self.status.value = (
                f"cancelled after {self._batches} batches; the last weights are in "
                f"{self.model_path}"
            )
        else:
            self.progress.value = self.progress.max
            self.status.value = f"done: {self.model_path}"
        notify(f"{self.backend.value} model written to {self.model_path}")
        self.predict_and_evaluate()

    def predict_and_evaluate(self) -> None:
        """Segment the chosen image layer and, with validation data, fill the table."""
        model_path = self.model_path
        backend = self.backend.value
        layer = self.image_pick.value
        image = np.asarray(layer.data) if layer is not None else None
        scale = tuple(layer.scale) if layer is not None else None
        validation = path_or_none(self.validation)

        def run():
            from cellsynth.segment import anisotropy_of, evaluate_model, load_model, segment

            model = load_model(model_path, "auto", backend)
            if image is not None and image.ndim in (2, 3):
                aniso = anisotropy_of(scale, image.ndim)
                yield ("prediction", segment(model, image, anisotropy=aniso))
            if validation is not None:
                from cellsynth.io import read_dataset

                pairs = read_dataset(validation, require_labels=True).pairs
                yield ("evaluation", evaluate_model(model, pairs).summary())

        def show(item: Any) -> None:
            kind, value = item
            if kind == "prediction":
                self.viewer.add_labels(
                    value, name=f"predictions {model_path.name}", scale=layer.scale, opacity=0.5
                )
                n = len(np.unique(value[value > 0]))
                self.predicted_cells = n
                if n == 0:
                    notify_warning(
                        f"the model {model_path.name} found no cells in '{layer.name}'; "
                        "train longer, add real data or check the image"
                    )
            else:
                self.table.value = {
                    "SEG": [round(value["SEG"], 4)],
                    "AP50": [round(value["AP50"], 4)],
                    "bPQ": [round(value["bPQ"], 4)],
                    "images": [value["n_images"]],
                }
                self.table.visible = True
                self.evaluation = value

        self.job = GeneratorJob(run(), yielded=show).start()
