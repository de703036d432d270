"""Synthesize dock widget: draw annotated pairs from a bundle into Image + Labels layers.

The pairs are drawn by :func:`cellsynth.synthesize.synthesize` — the loop the CLI runs — into the
chosen dataset folder, or into a temporary one (removed at the end) when none is chosen, and read
back into layers one by one as they are written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

from cellsynth._widgets._common import (
    DEVICES,
    GeneratorJob,
    contrast_limits,
    folder_edit,
    link_metadata,
    notify,
    notify_error,
    notify_warning,
    path_or_none,
    register,
    threads_box,
    threads_of,
    wrap_label,
)
from cellsynth.errors import CellsynthInputError
from cellsynth.synthesize import SynthesisParams

if TYPE_CHECKING:
    import napari.viewer

GAP = 16  # pixels between the pairs of one run, laid out side by side
#: a sample's dataset.json record, less what is not a synthesis parameter
_NOT_PARAMS = ("origin", "request", "status")


@dataclass
class Drawn:
    """One pair :func:`~cellsynth.synthesize.synthesize` wrote, read back for the viewer."""

    image: Any
    labels: Any
    params: dict[str, Any]  # every parameter of the sample (seed, cells placed, rho …)
    voxel_size: list[float] | None  # as the dataset folder records it
    name: str | None  # its name in the chosen dataset folder (None: not kept)
    bundle: Path  # the bundle's folder (its name names the layers)

    @classmethod
    def read(cls, folder: Path, name: str, kept: bool) -> Drawn:
        from cellsynth.io import read_array

        meta = json.loads((folder / "dataset.json").read_text())
        record = meta["samples"][name]
        params = {k: v for k, v in record.items() if k not in _NOT_PARAMS}
        return cls(
            read_array(folder / "images" / f"{name}.tif").data,
            read_array(folder / "labels" / f"{name}.tif").data,
            params,
            record.get("voxel_size") or meta.get("voxel_size"),
            name if kept else None,
            Path(params.get("bundle") or "bundle"),
        )


def draw(
    params: SynthesisParams,
    n: int,
    bundle: Path | None,
    save_to: Path | None,
    device: str,
    threads: int | None = None,
) -> Iterator[Drawn]:
    """Worker-thread generator: :func:`~cellsynth.synthesize.synthesize` into ``save_to`` (a
    temporary folder when ``None``), each pair read back as it is written; ``threads``: torch's
    CPU threads (None: automatic)."""
    from cellsynth.device import configure_threads
    from cellsynth.synthesize import synthesize

    configure_threads(threads)
    folder = save_to if save_to is not None else Path(tempfile.mkdtemp(prefix="cellsynth-synth-"))
    try:
        for _i, _n, name in synthesize(folder, n, params, bundle=bundle, device=device):
            yield Drawn.read(folder, name, kept=save_to is not None)
    finally:
        if save_to is None:
            shutil.rmtree(folder, ignore_errors=True)


class SynthesizeWidget(Container):
    """Bundle (built-in by default), canvas, cells, clustering, steps, seed, how many."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.bundle = folder_edit("bundle")
        self.bundle.tooltip = "a generator bundle folder; empty: the built-in bundle"
        self.dims = ComboBox(
            label="dimensions",
            choices=["2D", "3D"],
            value="2D",
            tooltip="3D: 2D masks -> multiview silhouettes -> NeuS volumes -> slices textured "
            "from correlated noise",
        )
        defaults = SynthesisParams()
        self.canvas_z = SpinBox(label="slices (3D)", value=32, min=1, max=1024, visible=False)
        self.rho = _bundles_or(
            "rho (3D, -1 = bundle's)",
            100.0,
            0.25,
            visible=False,
            tooltip="correlation of the slices' initial noise (paper 001, eq. 2); -1 uses the "
            "value calibrated on the bundle's 3D data",
        )
        height, width = defaults.size[-2:]
        self.canvas_h = SpinBox(label="height", value=height, min=16, max=8192, step=16)
        self.canvas_w = SpinBox(label="width", value=width, min=16, max=8192, step=16)
        self.cells = SpinBox(
            label="cells (0 = auto)", value=defaults.cells or 0, min=0, max=100_000
        )
        self.cluster = _bundles_or(
            "clustering (-1 = bundle's)",
            1.0,
            0.05,
            tooltip="probability that a cell is placed next to others; -1 uses the bundle's, "
            "fitted to its training frames' nearest-neighbour distances (0.3 for older bundles)",
        )
        self.divisions = FloatSpinBox(
            label="dividing cells",
            value=defaults.divisions,
            min=0.0,
            max=1.0,
            step=0.05,
            tooltip="fraction of cells drawn as daughters of a recent division: touching pairs "
            "of sisters of one size, shape and brightness (0 = none)",
        )
        self.blur = _bundles_or(
            "blur px (-1 = bundle's)",
            10.0,
            0.1,
            tooltip="2D: Gaussian sigma of the blur put on the painted image before the camera "
            "noise; -1 uses the bundle's, fitted to its training cells' boundaries (0 for older "
            "bundles)",
        )
        self.edge_blur = _bundles_or(
            "edge blur px (-1 = bundle's)",
            10.0,
            0.1,
            tooltip="2D: Gaussian sigma of the softening of the cells' boundaries only (the "
            "grain inside them kept); -1 uses the bundle's, fitted with the blur (0 for older "
            "bundles)",
        )
        self.steps = SpinBox(
            label="texture steps (0 = bundle's)", value=defaults.steps or 0, min=0, max=200
        )
        self.brightness = ComboBox(
            label="cell brightness",
            choices=["data", "model"],
            value=defaults.brightness,
            tooltip="data: each cell's mean brightness drawn from the training cells (bundles "
            "that record them); model: as the texture model paints it",
        )
        self.exemplar = FloatSpinBox(
            label="exemplar (0 = bundle's)",
            value=0.0,
            min=0.0,
            max=1.0,
            step=0.05,
            tooltip="2D, bundles holding their training cells: how much of the diffusion "
            "schedule the texture model repaints over real cells warped onto the new masks "
            "(1 = the model alone, from noise)",
        )
        self.seed = SpinBox(label="seed", value=defaults.seed, min=0, max=2**31 - 1)
        self.how_many = SpinBox(label="how many", value=1, min=1, max=1000)
        self.save_to = folder_edit("write to folder")
        self.save_to.tooltip = (
            "optional: also write the pairs to this synthetic dataset folder (a new folder, or "
            "one cellsynth synthesized; never a real data set)"
        )
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.threads = threads_box()
        self.run_btn = PushButton(text="Synthesize")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = wrap_label(Label(label="", value=""))
        buttons = Container(
            widgets=[self.run_btn, self.cancel_btn], layout="horizontal", labels=False
        )
        self.extend(
            [
                self.bundle,
                self.dims,
                self.canvas_z,
                self.canvas_h,
                self.canvas_w,
                self.rho,
                self.cells,
                self.cluster,
                self.divisions,
                self.blur,
                self.edge_blur,
                self.steps,
                self.brightness,
                self.exemplar,
                self.seed,
                self.how_many,
                self.save_to,
                self.device,
                self.threads,
                buttons,
                self.progress,
                self.status,
            ]
        )
        self.dims.changed.connect(self._on_dims)
        self.run_btn.changed.connect(self._run)
        self.cancel_btn.changed.connect(self._cancel)
        self.job: GeneratorJob | None = None
        self.results: list[tuple[Any, Any]] = []  # (image layer, labels layer)
        self._run_layers: list[tuple[Any, Any]] = []  # this run's pairs
        self._written = 0
        register(self)

    def offer_bundle(self, path: Path) -> None:
        """A bundle just trained by the Learn widget becomes the default here."""
        if path_or_none(self.bundle) is None:
            self.bundle.value = path
            self.status.value = f"using the new bundle {Path(path).name}"

    def _on_dims(self, value: str) -> None:
        three = value == "3D"
        self.canvas_z.visible = self.rho.visible = three
        self.blur.visible = self.edge_blur.visible = not three  # exemplars: 2D and 3D
        if three and self.canvas_h.value > 512:  # 3D canvases cost Z times a 2D one
            self.canvas_h.value = self.canvas_w.value = 256

    def params(self) -> SynthesisParams:
        yx = (int(self.canvas_h.value), int(self.canvas_w.value))
        three = self.dims.value == "3D"
        return SynthesisParams(
            size=(int(self.canvas_z.value), *yx) if three else yx,
            rho=float(self.rho.value) if three and self.rho.value >= 0 else None,
            cells=int(self.cells.value) or None,
            cluster_prob=float(self.cluster.value) if self.cluster.value >= 0 else None,
            divisions=float(self.divisions.value),
            blur=float(self.blur.value) if self.blur.value >= 0 else None,
            edge_blur=float(self.edge_blur.value) if self.edge_blur.value >= 0 else None,
            steps=int(self.steps.value) or None,
            seed=int(self.seed.value),
            brightness=str(self.brightness.value),
            exemplar_strength=float(self.exemplar.value) or None,
        )

    def _run(self) -> None:
        from cellsynth.outputs import check_synthetic_target

        try:
            params = self.params()
            params.validate()
            save_to = path_or_none(self.save_to)
            if save_to is not None:
                check_synthetic_target(save_to)
            bundle = path_or_none(self.bundle)
            if bundle is not None and not (bundle / "bundle.json").is_file():
                raise CellsynthInputError(
                    "is not a generator bundle (no bundle.json); choose a folder the Learn "
                    "widget wrote, or leave it empty for the built-in bundle",
                    bundle,
                )
            gen = draw(
                params,
                int(self.how_many.value),
                bundle,
                save_to,
                str(self.device.value),
                threads_of(self.threads),
            )
        except CellsynthInputError as exc:
            notify_error(exc)
            return
        self.progress.max = int(self.how_many.value)
        self.progress.value = 0
        self.run_btn.enabled, self.cancel_btn.enabled = False, True
        self.status.value = "loading the bundle…"
        self._run_layers = []
        self._written = 0
        self.job = GeneratorJob(gen, yielded=self._on_pair, finished=self._on_finished).start()

    def _on_pair(self, pair: Drawn) -> None:
        name = pair.name
        seed = pair.params["seed"]
        base = f"{pair.bundle.name} seed {seed}"
        if pair.labels.ndim == 3:  # anisotropic stacks look right in 3D view and XZ slices
            scale = list(pair.params["voxel_size"])
        else:
            scale = list(pair.voxel_size)[-2:] if pair.voxel_size else [1.0, 1.0]
        meta = {
            "cellsynth": {
                "synthetic": True,
                "bundle": str(pair.bundle),
                "params": pair.params,
                "dataset_name": name,
                "dataset": str(path_or_none(self.save_to)) if name else None,
            }
        }
        img_meta, lab_meta = link_metadata(meta)  # Curate finds the pair by this link
        # the pairs of one run side by side along x, not on top of each other
        translate = [0.0] * pair.labels.ndim
        translate[-1] = len(self._run_layers) * (pair.labels.shape[-1] + GAP) * scale[-1]
        img = self.viewer.add_image(
            pair.image,
            name=f"synth {base}",
            scale=scale,
            translate=translate,
            metadata=img_meta,
            contrast_limits=contrast_limits(pair.image),
        )
        lab = self.viewer.add_labels(
            pair.labels,
            name=f"synth {base} labels",
            scale=scale,
            translate=translate,
            metadata=lab_meta,
            opacity=0.35,
        )
        self.results.append((img, lab))
        self._run_layers.append((img, lab))
        self._written += name is not None
        self.progress.value = self.progress.value + 1
        rho = pair.params.get("rho")
        extra = f", rho {rho:g}" if rho is not None else ""
        self.status.value = f"{pair.params['cells_placed']} cells, seed {seed}{extra}"

    def _on_finished(self) -> None:
        self.run_btn.enabled, self.cancel_btn.enabled = True, False
        job = self.job
        n = len(self._run_layers)
        if job is not None and job.error is not None:
            self.status.value = f"failed after {n} pair(s): {job.error}"
        elif job is not None and job.cancelled:
            self.status.value = f"cancelled after {n} pair(s)"
        if n > 1:
            self.viewer.reset_view()  # show the whole row of pairs
        if self._written:
            notify(f"{self._written} synthetic pair(s) written to {path_or_none(self.save_to)}")
        elif n == 0 and job is not None and job.error is None:
            notify_warning("no synthetic pair was made")

    def _cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()


def _bundles_or(label: str, maximum: float, step: float, **kw: Any) -> FloatSpinBox:
    """A spin box from -1 (the bundle's value) to ``maximum``, showing -1 at first."""
    return FloatSpinBox(label=label, value=-1.0, min=-1.0, max=maximum, step=step, **kw)
