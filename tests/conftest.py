"""Shared fixtures: small synthetic label images and data folders built on the fly.

napari settings are isolated from the user's: NAPARI_CONFIG points into a temporary folder
before napari can be imported by any test.

GUI tests (marker ``gui``) run with napari's exception hooks installed, as ``napari.run()``
installs them: an exception that escapes into the Qt event loop or a thread becomes a traceback
notification, and such a notification fails the test. pytest-qt's own capture is switched off for
them so that napari's hooks see what a user would see.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_napari_home = tempfile.mkdtemp(prefix="cellsynth-napari-")
os.environ.setdefault("NAPARI_CONFIG", str(Path(_napari_home) / "settings.yaml"))
os.environ.setdefault("NAPARI_CACHE_DIR", str(Path(_napari_home) / "cache"))
os.environ.setdefault("CELLPOSE_LOCAL_MODELS_PATH", str(Path(_napari_home) / "cellpose"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tifffile  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def disks(shape=(64, 64), centres=((16, 16), (40, 44)), radius=7, start=1) -> np.ndarray:
    """A label image with one disk (or ball, for 3D shapes) per centre."""
    grid = np.indices(shape)
    labels = np.zeros(shape, np.uint16)
    for i, c in enumerate(centres):
        c = tuple(c) if len(c) == len(shape) else (shape[0] // 2, *c)
        d2 = sum((g - ci) ** 2 for g, ci in zip(grid, c, strict=True))
        labels[d2 <= radius**2] = start + i
    return labels


#: tiny model and batch settings for LearnSettings: tests train bundles in seconds
TINY_LEARN = dict(
    mask_widths=(8, 16, 16),
    texture_widths=(8, 16, 16),
    mask_batch=8,
    texture_batch=4,
    tile=32,
    mask_size=16,
    crop_size=32,
    device="cpu",
    checkpoint_minutes=60,
)


def image_for(labels: np.ndarray, seed: int = 0, dtype=np.uint16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = 100 + 300 * (labels > 0) + rng.normal(0, 10, labels.shape)
    return np.clip(img, 0, np.iinfo(dtype).max).astype(dtype)


def write_pairs(root: Path, pairs) -> Path:
    """A dataset folder (images/ + labels/) of ``(name, image, labels)`` pairs."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for name, img, lab in pairs:
        tifffile.imwrite(root / "images" / f"{name}.tif", img)
        tifffile.imwrite(root / "labels" / f"{name}.tif", lab)
    return root


def learn_tiny(folder: Path, out: Path, **settings) -> Path:
    """A bundle learnt on ``folder`` in seconds (4 + 4 steps of tiny models)."""
    from cellsynth.io import read_dataset
    from cellsynth.learn import LearnSettings, learn

    kw = dict(TINY_LEARN, minutes=None, mask_steps=4, texture_steps=4) | settings
    for _ in learn(read_dataset(folder).pairs, out, LearnSettings(**kw)):
        pass
    return out


@pytest.fixture
def labels2d() -> np.ndarray:
    return disks()


@pytest.fixture
def dataset_folder(tmp_path) -> Path:
    """images/ + labels/ with three 2D pairs of different cell counts."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    layouts = [((16, 16), (40, 44)), ((20, 20), (44, 20), (30, 48)), ((32, 32),)]
    for i, centres in enumerate(layouts):
        lab = disks(centres=centres)
        tifffile.imwrite(root / "images" / f"img{i}.tif", image_for(lab, i))
        tifffile.imwrite(root / "labels" / f"img{i}.tif", lab)
    return root


@pytest.fixture
def ctc_folder(tmp_path) -> Path:
    """A CTC challenge folder: 01/ (2D, dense GT) and 02/ (3D, one annotated slice per frame)."""
    root = tmp_path / "Fluo-TEST"
    for d in ("01", "01_GT/SEG", "02", "02_GT/SEG"):
        (root / d).mkdir(parents=True)
    for t in range(3):
        lab = disks(centres=((16 + t, 16), (40, 44)))
        tifffile.imwrite(root / "01" / f"t{t:03d}.tif", image_for(lab, t))
        if t != 1:  # frame 1 has no GT, as in the challenge
            tifffile.imwrite(root / "01_GT" / "SEG" / f"man_seg{t:03d}.tif", lab)
    for t in range(2):
        vol = disks(shape=(6, 64, 64), centres=((3, 20, 20), (3, 44, 40)), radius=5)
        tifffile.imwrite(
            root / "02" / f"t{t:03d}.tif",
            image_for(vol, t),
            imagej=True,
            metadata={"axes": "ZYX", "spacing": 2.0},
            resolution=(1 / 0.5, 1 / 0.5),
        )
        tifffile.imwrite(root / "02_GT" / "SEG" / f"man_seg_{t:03d}_003.tif", vol[3])
    return root


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("gui") is not None:
            item.add_marker(pytest.mark.qt_no_exception_capture)


class Notifications:
    """The napari notifications of one test: ``errors``, ``warnings``, ``infos``, ``tracebacks``."""

    def __init__(self, manager, start: int) -> None:
        self._manager, self._start = manager, start

    @property
    def all(self) -> list:
        return list(self._manager.records[self._start :])

    def _of(self, severity: str) -> list[str]:
        return [str(n.message) for n in self.all if str(n.severity).lower() == severity]

    @property
    def errors(self) -> list[str]:
        return self._of("error")

    @property
    def warnings(self) -> list[str]:
        return self._of("warning")

    @property
    def infos(self) -> list[str]:
        return self._of("info")

    @property
    def tracebacks(self) -> list:
        """Notifications made from an exception (they carry its traceback)."""
        from napari.utils.notifications import ErrorNotification

        return [n for n in self.all if isinstance(n, ErrorNotification)]


@pytest.fixture(autouse=True)
def _napari_exception_hooks(request):
    """napari's sys/threading excepthooks on; a traceback notification fails a GUI test."""
    if request.node.get_closest_marker("gui") is None:
        yield None
        return
    from napari.utils.notifications import notification_manager

    notes = Notifications(notification_manager, len(notification_manager.records))
    with notification_manager:
        yield notes
    if notes.tracebacks:
        pytest.fail(
            "traceback notification(s): "
            + "; ".join(f"{type(n.exception).__name__}: {n.exception}" for n in notes.tracebacks)
        )


@pytest.fixture
def notifications(_napari_exception_hooks) -> Notifications:
    assert _napari_exception_hooks is not None, "mark the test gui to use notifications"
    return _napari_exception_hooks


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"../shared/data/{name} is not present (fresh clone without shared data)")
    return path
