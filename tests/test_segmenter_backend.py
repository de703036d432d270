"""The segmenter seam: a backend registered here, by this test only (a threshold + watershed
"model" that "fine-tunes" by choosing its threshold on the real pairs), drives
``cellsynth finetune/segment/evaluate``, the subprocess job and the Fine-tune widget unchanged.
Also pins the Cellpose versions whose private internals the Cellpose 3 backend uses."""

from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellsynth.cli import main
from cellsynth.errors import CellsynthInputError
from cellsynth.io import Pair, write_json
from cellsynth.segmenters import (
    FinetuneProgress,
    FinetuneSettings,
    Segmenter,
    backend_for_model_file,
    backend_names,
    get_backend,
    register_backend,
)
from cellsynth.segmenters.base import training_slices

NAME = "threshold-test"
HERE = Path(__file__).parent


def _normalised(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (1, 99))
    return np.clip((np.asarray(image, np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


@register_backend
class ThresholdSegmenter(Segmenter):
    """Foreground above a threshold (of the 1-99 % normalised image), split by watershed."""

    name = NAME
    label = "threshold + watershed (test)"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = float(threshold)

    @classmethod
    def load(cls, path, device="auto") -> ThresholdSegmenter:
        if path is None:
            return cls()
        if not cls.is_model_file(Path(path)):
            raise CellsynthInputError(f"is not a {NAME} model file", path)
        from safetensors.numpy import load_file

        return cls(float(load_file(str(path))["threshold"][0]))

    @classmethod
    def is_model_file(cls, path: Path) -> bool:
        from safetensors import safe_open

        try:
            with safe_open(str(path), "np") as f:
                return (f.metadata() or {}).get("backend") == NAME
        except Exception:
            return False

    def segment(self, image, *, anisotropy=None, diameter=None, do_3D=False) -> np.ndarray:
        from scipy import ndimage as ndi
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        fg = _normalised(image) > self.threshold
        dist = ndi.distance_transform_edt(fg)
        peaks = peak_local_max(dist, min_distance=4, labels=ndi.label(fg)[0])
        markers = np.zeros(fg.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        return watershed(-dist, markers, mask=fg)

    def save(self, path) -> Path:
        from safetensors.numpy import save_file

        save_file(
            {"threshold": np.array([self.threshold], np.float32)},
            str(path),
            metadata={"backend": NAME},
        )
        return Path(path)

    @classmethod
    def finetune(
        cls, real: Sequence[Pair], synthetic: Sequence[Pair], out: Path, settings: FinetuneSettings
    ) -> Iterator[FinetuneProgress]:
        imgs, labs, _ = training_slices(real, "real")
        candidates = np.array_split(np.linspace(0.05, 0.95, 10 * settings.epochs), settings.epochs)
        best, losses, t0 = cls(), [], time.monotonic()
        try:
            for epoch, chunk in enumerate(candidates, 1):
                for t in chunk:
                    fgs = [_normalised(i) > t for i in imgs]
                    iou = np.mean(
                        [
                            (f & (lb > 0)).sum() / (f | (lb > 0)).sum()
                            for f, lb in zip(fgs, labs, strict=True)
                        ]
                    )
                    if not losses or 1 - iou < min(losses):
                        best = cls(t)
                    losses.append(float(1 - iou))
                yield FinetuneProgress(
                    epoch,
                    settings.epochs,
                    epoch,
                    settings.epochs,
                    min(losses),
                    time.monotonic() - t0,
                    epoch / settings.epochs,
                )
        finally:  # closing the generator keeps the best threshold so far
            best.save(out)
            write_json(out.with_name(out.name + ".log.json"), {"threshold": best.threshold})
        yield FinetuneProgress(
            settings.epochs,
            settings.epochs,
            settings.epochs,
            settings.epochs,
            min(losses),
            time.monotonic() - t0,
            1.0,
            done=True,
            model=str(out),
        )


@pytest.fixture
def cells(tmp_path) -> Path:
    from conftest import disks, image_for

    root = tmp_path / "cells"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        lab = disks(
            shape=(64, 64), centres=[tuple(c) for c in rng.integers(10, 54, (4, 2))], radius=5
        )
        tifffile.imwrite(root / "images" / f"c{i}.tif", image_for(lab, i))
        tifffile.imwrite(root / "labels" / f"c{i}.tif", lab)
    return root


def test_a_backend_registered_in_one_place_is_listed_and_found_by_its_model_file(tmp_path):
    assert backend_names()[0] == "cellpose3" and NAME in backend_names()
    assert get_backend(NAME) is ThresholdSegmenter
    path = ThresholdSegmenter(0.3).save(tmp_path / "m")
    assert backend_for_model_file(path) is ThresholdSegmenter
    with pytest.raises(CellsynthInputError, match="unknown segmenter backend 'nope'"):
        get_backend("nope")


def test_cli_finetune_segment_evaluate_run_the_dummy_backend(cells, tmp_path, capsys):
    model = tmp_path / "model"
    assert (
        main(
            ["finetune", "--real", str(cells), "--epochs", "3", "--backend", NAME, "-o", str(model)]
        )
        == 0
    )
    threshold = ThresholdSegmenter.load(model).threshold
    assert 0.05 <= threshold <= 0.95 and threshold != 0.5  # chosen from the data
    assert json.loads((tmp_path / "model.log.json").read_text())["threshold"] == pytest.approx(
        threshold
    )
    # segment: the backend comes from the model file
    assert (
        main(["segment", str(cells / "images"), "--model", str(model), "-o", str(tmp_path / "seg")])
        == 0
    )
    written = sorted((tmp_path / "seg").glob("*.tif"))
    assert [p.name for p in written] == ["c0.tif", "c1.tif"]
    assert 3 <= len(np.unique(tifffile.imread(written[0]))) - 1 <= 5  # about 4 cells
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--backend", NAME, str(cells)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_images"] == 2 and summary["SEG"] > 0.6


def test_finetune_with_an_unknown_backend_is_one_clear_error(cells, tmp_path, capsys):
    args = ["finetune", "--real", str(cells), "--backend", "nope", "-o", str(tmp_path / "m")]
    assert main(args) == 2
    assert "unknown segmenter backend 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.fixture
def child_finds_this_module(monkeypatch):
    """The job's child process imports this module (it registers the backend)."""
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in [str(HERE), path] if p))


def test_the_subprocess_finetune_job_runs_the_dummy_backend(
    cells, tmp_path, child_finds_this_module
):
    from cellsynth.jobs import SubprocessJob, finetune_spec

    spec = finetune_spec(
        NAME, real=[str(cells)], synthetic=[], output=str(tmp_path / "m"), settings={"epochs": 2}
    )
    assert spec["backend"] == NAME and spec["backend_module"] == __name__
    messages = list(SubprocessJob("finetune", spec, workdir=tmp_path).messages())
    assert messages[-1].kind == "done", messages[-1].data
    assert messages[-1].data["model"] == str(tmp_path / "m")
    assert [m.data["epoch"] for m in messages if m.kind == "progress"] == [1, 2, 2]
    assert backend_for_model_file(tmp_path / "m") is ThresholdSegmenter


@pytest.mark.gui
def test_the_finetune_widget_trains_and_predicts_with_the_dummy_backend(
    make_napari_viewer_proxy, qtbot, cells, tmp_path, notifications, child_finds_this_module
):
    pytest.importorskip("napari")
    viewer = make_napari_viewer_proxy()
    _, w = viewer.window.add_plugin_dock_widget("cellsynth", "Fine-tune")
    assert NAME in w.backend.choices
    img = viewer.add_image(tifffile.imread(cells / "images" / "c0.tif"), name="c0")
    w.real_folder.value, w.image_pick.value = cells, img
    w.epochs.value, w.backend.value, w.output.value = 2, NAME, tmp_path / "m"
    w.start_btn.clicked.emit()
    qtbot.waitUntil(lambda: any(la.name == "predictions m" for la in viewer.layers), timeout=60_000)
    assert notifications.errors == []
    assert w.predicted_cells >= 3
    assert backend_for_model_file(tmp_path / "m") is ThresholdSegmenter


# --------------------------------------------------------------------------- Cellpose 3 pin


def test_the_cellpose3_backend_relies_on_internals_of_the_pinned_cellpose_versions():
    """``_loss_fn_seg(lbl, y, device)`` is wrapped to record losses and ``train_seg`` takes the
    per-image probabilities: present in Cellpose 3.x, the range the backend accepts."""
    from cellpose import train

    from cellsynth.segmenters import cellpose3

    lo, hi = cellpose3.CELLPOSE_VERSIONS
    assert lo <= cellpose3.cellpose_version()[0] < hi
    assert list(inspect.signature(train._loss_fn_seg).parameters) == ["lbl", "y", "device"]
    params = inspect.signature(train.train_seg).parameters
    assert {"train_probs", "nimg_per_epoch", "save_every", "min_train_masks"} <= set(params)


def test_the_cellpose3_backend_refuses_to_train_with_another_cellpose(monkeypatch, cells, tmp_path):
    from cellsynth.io import read_dataset
    from cellsynth.segment import finetune
    from cellsynth.segmenters import cellpose3

    monkeypatch.setattr(cellpose3, "cellpose_version", lambda: (4, 0))
    with pytest.raises(CellsynthInputError, match=r"trains with Cellpose 3\.x; Cellpose 4\.0"):
        next(finetune(read_dataset(cells).pairs, [], tmp_path / "m"))


def test_only_the_cellpose3_backend_imports_cellposes_models_and_training():
    import re

    src = HERE.parent / "src" / "cellsynth"
    pattern = re.compile(
        r"^\s*(from|import)\s+cellpose\.(models|train)\b"
        r"|^\s*from\s+cellpose\s+import\s+.*\b(models|train)\b",
        re.MULTILINE,
    )
    users = sorted(
        str(p.relative_to(src)) for p in src.rglob("*.py") if pattern.search(p.read_text())
    )
    assert users == ["segmenters/cellpose3.py"]
