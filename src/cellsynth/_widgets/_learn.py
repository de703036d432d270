"""Learn dock widget: train a generator bundle from layers or folders, with a live loss curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
)

from cellsynth._widgets._common import (
    DEVICES,
    GeneratorJob,
    LayerPicker,
    LossPlot,
    folder_edit,
    notify,
    notify_error,
    offer,
    pairs_from_layers,
    path_or_none,
    register,
)
from cellsynth.errors import CellsynthInputError


class LearnWidget(Container):
    """Pick Image + Labels layers (or a data folder), a new bundle folder and a time budget."""

    def __init__(self, viewer: Any) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.image_pick = LayerPicker(viewer, "Image", "image layer")
        self.labels_pick = LayerPicker(viewer, "Labels", "labels layer")
        self.folder = folder_edit("or data folder")
        self.output = folder_edit(
            "bundle folder", mode="d", value=str(Path.home() / "cellsynth-bundle")
        )
        self.three_d = CheckBox(
            text="3D stacks: also fit cell shapes in z and slice correlation (rho)", value=False
        )
        self.minutes = FloatSpinBox(label="minutes", value=10.0, min=0.1, max=10_000, step=1)
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.start_btn = PushButton(text="Start")
        self.resume_btn = PushButton(text="Resume")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1000, value=0)
        self.status = Label(label="", value="")
        self.plot = LossPlot("training loss (EMA)")
        buttons = Container(
            widgets=[self.start_btn, self.resume_btn, self.cancel_btn],
            layout="horizontal",
            labels=False,
        )
        self.extend(
            [
                self.image_pick,
                self.labels_pick,
                self.folder,
                self.output,
                self.three_d,
                self.minutes,
                self.device,
                buttons,
                self.progress,
                self.status,
                self.plot,
            ]
        )
        self.start_btn.changed.connect(lambda: self._start(resume=False))
        self.resume_btn.changed.connect(lambda: self._start(resume=True))
        self.cancel_btn.changed.connect(self._cancel)
        self.job: GeneratorJob | None = None
        self._n = 0
        register(self)

    # ------------------------------------------------------------------ actions

    def _pairs(self) -> list:
        from cellsynth.io import read_pairs

        folder = path_or_none(self.folder)
        if folder is not None:
            return read_pairs([folder], require_labels=True)
        return pairs_from_layers(self.image_pick.value, self.labels_pick.value)

    def _start(self, resume: bool = False) -> None:
        from cellsynth.learn import LearnSettings, learn

        try:
            out = path_or_none(self.output)
            if out is None:
                raise CellsynthInputError("choose a bundle folder")
            pairs = self._pairs()
            settings = LearnSettings(
                minutes=float(self.minutes.value), device=str(self.device.value)
            )
            self._configure(settings)
            if self.three_d.value:
                from cellsynth.learn3d import Learn3DSettings, check_3d_pairs, learn_3d

                check_3d_pairs(pairs)
                s3 = Learn3DSettings()
                self._configure_3d(s3)
                gen = learn_3d(pairs, out, settings, s3, resume=resume)
            else:
                gen = learn(pairs, out, settings, resume=resume)
        except CellsynthInputError as exc:
            notify_error(exc)
            return
        self.plot.clear()
        self._n = 0
        self.job = GeneratorJob(gen, yielded=self._on_progress, finished=self._on_finished)
        self._set_running(True)
        self.status.value = "starting…"
        self.job.start()

    def _configure(self, settings: Any) -> None:
        """Hook for tests and power users to change the training settings."""

    def _configure_3d(self, settings: Any) -> None:
        """Same for the 3D settings (multiview refinement steps, rho calibration)."""

    def _on_progress(self, p: Any) -> None:
        self.progress.value = int(1000 * p.fraction)
        if p.done:
            self.status.value = f"done: bundle saved to {p.checkpoint}"
            return
        self.plot.add(p.model.replace("_model", ""), p.step, p.loss)
        self._n += 1
        if self._n % 10 == 0:
            self.plot.redraw()
        stage = " · 3D shapes" if p.model == "multiview_model" else ""
        self.status.value = (
            f"mask {p.mask_step} · texture {p.texture_step} steps{stage} · {p.elapsed / 60:.1f} min"
        )

    def _on_finished(self) -> None:
        self._set_running(False)
        self.plot.redraw()
        out = path_or_none(self.output)
        if out is not None and (out / "bundle.json").exists():
            notify(f"bundle saved to {out}")
            offer("offer_bundle", out)  # the Synthesize widget picks it up

    def _cancel(self) -> None:
        if self.job is not None:
            self.status.value = "cancelling: saving the last checkpoint…"
            self.job.cancel()

    def _set_running(self, running: bool) -> None:
        self.start_btn.enabled = not running
        self.resume_btn.enabled = not running
        self.cancel_btn.enabled = running
