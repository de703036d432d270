"""Learned-feature realism: images in units of their cells' contrast, tiles, Cellpose style
vectors, the Fréchet distance between feature sets, and a classifier two-sample test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellsynth.errors import CellsynthInputError
from cellsynth.metrics.texture import background_pixels


def relative_image(image: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """An image in units of its cells' contrast: (image - background median) / (median cell
    mean - background median). Without labels, the 50th and 99th percentiles stand in.
    Scale-free inputs for the learned-feature distance and the two-sample test."""
    img = np.asarray(image, np.float64)
    if labels is not None and np.any(labels):
        lab = np.asarray(labels)
        bg = float(np.median(background_pixels(img, lab)))
        fgm = float(np.median(img[lab > 0]))
    else:
        bg, fgm = (float(v) for v in np.percentile(img, (50, 99)))
    return ((img - bg) / max(fgm - bg, 1e-6)).astype(np.float32)


def image_tiles(images: Sequence[np.ndarray], tile: int, stride: int | None = None) -> np.ndarray:
    """(N, tile, tile) float32 tiles on a regular grid of each 2D image (images smaller than
    ``tile`` are padded with their edge values)."""
    stride = stride or tile
    out = []
    for img in images:
        img = np.asarray(img, np.float32)
        ph, pw = max(0, tile - img.shape[0]), max(0, tile - img.shape[1])
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw)), mode="edge")
        for y in range(0, img.shape[0] - tile + 1, stride):
            for x in range(0, img.shape[1] - tile + 1, stride):
                out.append(img[y : y + tile, x : x + tile])
    return np.stack(out) if out else np.zeros((0, tile, tile), np.float32)


def style_vectors(
    model: Any,
    images: Sequence[np.ndarray],
    *,
    tile: int = 96,
    stride: int | None = None,
    batch: int = 16,
) -> np.ndarray:
    """Cellpose style vectors (the network's 256-d global summary, as in Cellpose's own
    style-based size model) of tiles of 2D images (``tile`` px every ``stride``, default half a
    tile, after rescaling), shape (N, 256).

    ``model`` is a ``cellpose.models.CellposeModel`` (e.g. ``cellsynth.segment.load_model`` of a
    model trained on the user's real data). Each image is normalised as Cellpose does (1st-99th
    percentile) and rescaled so its cells have the network's training diameter.
    """
    import torch
    from cellpose.transforms import normalize99
    from skimage.transform import rescale

    net = model.net
    dev = next(net.parameters()).device
    diam_labels = float(getattr(model, "diam_labels", 0) or 0)
    scale = float(model.diam_mean) / diam_labels if diam_labels > 0 else 1.0
    prepared = []
    for img in images:
        x = normalize99(np.asarray(img, np.float32))
        if abs(scale - 1.0) > 1e-3:
            x = rescale(x, scale, order=1, preserve_range=True, anti_aliasing=scale < 1)
        prepared.append(x.astype(np.float32))
    tiles = image_tiles(prepared, tile, stride or tile // 2)
    nchan = int(getattr(model, "nchan", 2) or 2)
    styles = []
    net.eval()
    with torch.no_grad():
        for i in range(0, len(tiles), batch):
            t = torch.from_numpy(tiles[i : i + batch])[:, None]
            x = torch.cat([t, torch.zeros_like(t).repeat(1, nchan - 1, 1, 1)], 1)
            styles.append(net(x.to(dev))[1].float().cpu().numpy())
    return np.concatenate(styles) if styles else np.zeros((0, 256), np.float32)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples), as in
    FID: |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise CellsynthInputError(
            f"Fréchet distance needs two feature sets of >= 2 rows and equal width, got "
            f"{a.shape} and {b.shape}"
        )
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sa @ sb)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(len(sa))
        covmean = linalg.sqrtm((sa + eps) @ (sb + eps))
    return float(max(mu @ mu + np.trace(sa + sb - 2 * np.real(covmean)), 0.0))


@dataclass
class TwoSampleTest:
    """A classifier two-sample test: held-out accuracy of a CNN told to separate two sets
    (0.5 = indistinguishable)."""

    accuracy: float
    n_train: int
    n_test: int
    chance_interval: tuple[float, float]  # 95 % of accuracies of a classifier that guesses

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "chance_interval": list(self.chance_interval),
        }


def classifier_two_sample_test(
    set_a: Sequence[np.ndarray],
    set_b: Sequence[np.ndarray],
    *,
    crop: int = 48,
    crops_per_image: int = 64,
    epochs: int = 8,
    seed: int = 0,
    device: str | Any = "cpu",
) -> TwoSampleTest:
    """Train a small CNN on random crops of half the images of each set (label: which set),
    report its accuracy on crops of the other half. Images (e.g. :func:`relative_image` outputs)
    are split by image, not by crop, so the test crops come from images the network never saw;
    the classes are balanced by drawing the same number of crops from each set."""
    import torch
    from torch import nn

    from cellsynth.device import select_device

    if len(set_a) < 2 or len(set_b) < 2:
        raise CellsynthInputError("a two-sample test needs at least two images in each set")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    def crops(images, n_total):
        per = max(1, n_total // len(images))
        out = []
        for img in images:
            img = np.asarray(img, np.float32)
            if min(img.shape) < crop:
                img = np.pad(img, [(0, max(0, crop - s)) for s in img.shape], mode="edge")
            ys = rng.integers(0, img.shape[0] - crop + 1, per)
            xs = rng.integers(0, img.shape[1] - crop + 1, per)
            out += [img[y : y + crop, x : x + crop] for y, x in zip(ys, xs, strict=True)]
        return np.stack(out)

    def split(images):
        idx = rng.permutation(len(images))
        h = len(images) // 2
        return [images[i] for i in idx[:h]], [images[i] for i in idx[h:]]

    (a_tr, a_te), (b_tr, b_te) = split(list(set_a)), split(list(set_b))
    n_tr = crops_per_image * min(len(a_tr), len(b_tr))
    n_te = crops_per_image * min(len(a_te), len(b_te))
    xtr = np.concatenate([crops(a_tr, n_tr), crops(b_tr, n_tr)])
    ytr = np.concatenate([np.zeros(len(xtr) // 2), np.ones(len(xtr) - len(xtr) // 2)])
    xa, xb = crops(a_te, n_te), crops(b_te, n_te)
    xte = np.concatenate([xa, xb])
    yte = np.concatenate([np.zeros(len(xa)), np.ones(len(xb))])
    dev = select_device(device)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1),
    ).to(dev)  # fmt: skip
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    xt = torch.from_numpy(xtr)[:, None].to(dev)
    yt = torch.from_numpy(ytr).float().to(dev)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), device=dev)
        for i in range(0, len(xt), 32):
            j = perm[i : i + 32]
            x = xt[j]
            if rng.random() < 0.5:  # flips: the test is about texture, not orientation
                x = torch.flip(x, (3,))
            loss = nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], yt[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        logits = torch.cat(
            [
                net(torch.from_numpy(xte[i : i + 256])[:, None].to(dev))[:, 0]
                for i in range(0, len(xte), 256)
            ]
        )
    acc = float(((logits.cpu().numpy() > 0) == (yte > 0.5)).mean())
    half = 1.96 * 0.5 / np.sqrt(len(yte))
    return TwoSampleTest(acc, len(ytr), len(yte), (0.5 - half, 0.5 + half))
