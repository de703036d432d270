"""Learn dock widget: train a generator bundle from layers or folders, with a live loss curve.

Training runs in a subprocess (:mod:`cellsynth.jobs`, as Fine-tune does): napari stays responsive
and its memory is the GUI's alone. Layers are written to a temporary dataset folder for it (removed
when the job ends). The child streams its progress (steps, losses); *Cancel* — or closing napari —
stops it, and it saves its last checkpoint, so the bundle folder can be resumed.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    offer,
    pairs_from_layers,
    path_or_none,
    register,
    threads_box,
    threads_of,
    wrap_label,
)
from cellsynth.errors import CellsynthInputError
from cellsynth.learn import LearnSettings, Progress

if TYPE_CHECKING:
    import napari.viewer


def steps_in_bundle(folder: Path) -> int:
    """Training steps a bundle folder records (0 when it has none)."""
    try:
        meta = json.loads((folder / "bundle.json").read_text())
    except (OSError, ValueError):
        return 0
    training = meta.get("training", {})
    return sum(int(v.get("steps", 0)) for v in training.values() if isinstance(v, dict))


def check_bundle_folder(out: Path, resume: bool) -> None:
    """The core's checks, asked before the worker starts and said with the widget's buttons."""
    if resume and not (out / "training_state" / "state.json").exists():
        raise CellsynthInputError(
            "has no training to resume (no training_state/state.json); press Start to train "
            "a new bundle",
            out,
        )
    if not resume and out.exists() and any(out.iterdir()):
        raise CellsynthInputError(
            "is not empty; choose a new bundle folder, or press Resume to continue training it",
            out,
        )


class LearnWidget(Container):
    """Pick Image + Labels layers (or a data folder), a new bundle folder and a time budget."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.image_pick = layer_picker("Image", "image layer")
        self.labels_pick = layer_picker("Labels", "labels layer")
        follow_link(self.image_pick, self.labels_pick)
        self.folder = folder_edit("or data folder")
        self.output = folder_edit(
            "bundle folder", mode="d", value=str(Path.home() / "cellsynth-bundle")
        )
        self.three_d = CheckBox(
            text="3D stacks: also fit cell shapes in z and slice correlation (rho)", value=False
        )
        self.minutes = FloatSpinBox(
            label="minutes",
            value=LearnSettings().minutes,
            min=0.1,
            max=10_000,
            step=1,
            tooltip="time budget, preparing the data (cell atlas, texture tiles) included",
        )
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.threads = threads_box()
        self.start_btn = PushButton(text="Start")
        self.resume_btn = PushButton(text="Resume")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1000, value=0)
        self.status = wrap_label(Label(label="", value=""))
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
                self.threads,
                buttons,
                self.progress,
                self.status,
                self.plot,
            ]
        )
        self.start_btn.changed.connect(lambda: self._start(resume=False))
        self.resume_btn.changed.connect(lambda: self._start(resume=True))
        self.cancel_btn.changed.connect(self._cancel)
        self.job: GeneratorJob | None = None  # reads the training subprocess's messages
        self.subprocess: SubprocessWatch | None = None
        self.bundle_path: Path | None = None  # set when a run trained and saved a bundle
        self._out: Path | None = None
        self._budget: float | None = None
        self._last: Any = None
        self._steps_before = 0
        self._started_at = 0.0
        self._prepared_in: float | None = None
        self._tmp: Path | None = None  # the layers, copied for the subprocess
        self._error: str | None = None  # the subprocess's error, as notified
        register(self)

    # ------------------------------------------------------------------ actions

    def _spec(self, out: Path, resume: bool) -> dict[str, Any]:
        """The ``learn`` job: data folder(s), bundle folder, settings (after ``_configure``)."""
        folder = path_or_none(self.folder)
        if folder is not None:
            data = [str(folder)]  # read (and checked) by the subprocess
        else:
            pairs = pairs_from_layers(self.image_pick.value, self.labels_pick.value)
            if self.three_d.value:
                from cellsynth.learn3d import check_3d_pairs

                check_3d_pairs(pairs)
            self._tmp = layers_folder(pairs, "cellsynth-learn-")
            data = [str(self._tmp / "data")]
        settings = LearnSettings(minutes=float(self.minutes.value), device=str(self.device.value))
        self._configure(settings)
        spec: dict[str, Any] = {
            "data": data,
            "output": str(out),
            "settings": settings.to_dict(),
            "resume": resume,
            "threads": threads_of(self.threads),
        }
        if self.three_d.value:
            from cellsynth.learn3d import Learn3DSettings

            s3 = Learn3DSettings()
            self._configure_3d(s3)
            spec["settings_3d"] = s3.to_dict()
        self._budget = settings.minutes
        return spec

    def _start(self, resume: bool = False) -> None:
        try:
            out = path_or_none(self.output)
            if out is None:
                raise CellsynthInputError("choose a bundle folder")
            check_bundle_folder(out, resume)
            spec = self._spec(out, resume)
        except CellsynthInputError as exc:
            self._remove_tmp()
            notify_error(exc)
            return
        self.plot.clear()
        self.progress.value = 0
        self.bundle_path = None
        self._out = out
        self._last = None
        self._steps_before = steps_in_bundle(out) if resume else 0
        self._prepared_in = None
        self._error = None
        self._started_at = time.monotonic()
        self.subprocess = SubprocessWatch(
            self, "learn", spec, message=self._on_message, finished=self._on_finished
        )
        self.job = self.subprocess.job
        self._set_running(True)
        self.status.value = "preparing the data (cell atlas, texture tiles)…"

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _configure(self, settings: Any) -> None:
        """Hook for tests and power users to change the training settings."""

    def _configure_3d(self, settings: Any) -> None:
        """Same for the 3D settings (multiview refinement steps, rho calibration)."""

    def _on_message(self, msg: Any) -> None:
        if not alive(self):  # napari closed while the job ran
            return
        if msg.kind == "progress":
            self._on_progress(Progress(**msg.data))
        elif msg.kind == "error":
            self._error = notify_error(CellsynthInputError(str(msg.data)))

    def _on_progress(self, p: Progress) -> None:
        self._last = p
        if self._prepared_in is None:
            self._prepared_in = time.monotonic() - self._started_at
        if p.done:
            return
        self.progress.value = int(1000 * p.fraction)
        self.plot.add(p.model.replace("_model", ""), p.step, p.loss)
        stage = " · 3D shapes" if p.model == "multiview_model" else ""
        self.status.value = (
            f"mask {p.mask_step} · texture {p.texture_step} steps{stage} · "
            f"{p.elapsed / 60:.1f} min (data prepared in {self._prepared_in:.0f} s)"
        )

    @property
    def steps_trained(self) -> int:
        """Training steps this run made (a resumed run counts only its own)."""
        return 0 if self._last is None else int(self._last.step) - self._steps_before

    def _on_finished(self) -> None:
        """Say what the run did; hand a bundle on only when this run trained it."""
        self._remove_tmp()
        if not alive(self) or self.subprocess is None:
            return
        self._set_running(False)
        self.plot.redraw()
        result = self.subprocess.result
        kind = result.kind if result is not None else "error"
        error = (self.job.error if self.job is not None else None) or self._error
        if error is not None or kind == "error":
            self.progress.value = 0
            self.status.value = f"failed: {error}"
            return
        cancelled = kind == "cancelled"
        out = self._out
        if self.steps_trained <= 0:
            self.progress.value = 0
            if cancelled:
                msg = "cancelled before the first training step: no bundle to hand on"
            else:
                spent = time.monotonic() - self._started_at
                budget = f"{self._budget:g} min" if self._budget else "no time limit"
                msg = (
                    f"no training step ran: preparing the data took {spent:.0f} s (budget: "
                    f"{budget}); give it more minutes"
                )
            self.status.value = msg
            notify_warning(msg)
            return
        self.bundle_path = out
        if not cancelled:
            self.progress.value = self.progress.max
        what = "cancelled; the last checkpoint" if cancelled else "done; the bundle"
        self.status.value = f"{what} ({self.steps_trained} steps) is saved in {out}"
        notify(f"bundle saved to {out} ({self.steps_trained} training steps)")
        offer("offer_bundle", out)  # the Synthesize widget picks it up

    def _cancel(self) -> None:
        if self.subprocess is not None and self.subprocess.running:
            self.status.value = "cancelling: saving the last checkpoint…"
            self.subprocess.cancel()

    def _set_running(self, running: bool) -> None:
        self.start_btn.enabled = not running
        self.resume_btn.enabled = not running
        self.cancel_btn.enabled = running
