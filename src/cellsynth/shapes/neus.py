"""Stage 3c: cell volumes from K silhouettes — NeuS on a small SDF grid per cell, and the
visual hull as a baseline.

Each cell's signed distance f is a G^3 grid on the view frame [-1, 1]^3 (trilinear in between),
initialised to a sphere. Along the orthographic ray of every pixel of every view the NeuS
discrete opacity (Wang et al. 2021, eq. 13) is

    alpha_i = max((Phi_s(f_i) - Phi_s(f_{i+1})) / Phi_s(f_i), 0),   Phi_s(x) = sigmoid(s x)

and the rendered silhouette is ``1 - prod_i (1 - alpha_i)``. The grid and the sharpness ``s`` are
fitted to the silhouettes with binary cross-entropy plus an eikonal term ``(|grad f| - 1)^2``.
The rays are fixed, so trilinear sampling is one sparse matrix shared by all cells: a batch of
cells costs two sparse-dense products per iteration. The mask is ``f < 0`` sampled at the data
set's voxel size (anisotropic z).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from cellsynth.errors import CellsynthInputError
from cellsynth.shapes.views import project, ray_points

log = logging.getLogger(__name__)


@dataclass
class NeuSConfig:
    grid: int = 24  # SDF grid side
    depth: int = 16  # samples per ray
    iterations: int = 50
    lr: float = 0.01
    eikonal: float = 0.03
    s_init: float = 16.0  # NeuS sharpness (1 / standard deviation of the logistic density)
    s_max: float = 80.0
    init_radius: float = 0.6
    init: str = "sphere"  # or "hull": start from the signed distance of the visual hull
    balloon: float = 0.5  # weight of a term favouring filled cells (silhouettes only bound them)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _trilinear_matrix(points: torch.Tensor, g: int) -> torch.Tensor:
    """Sparse (N, g^3) matrix of trilinear weights of xyz ``points`` in a [z, y, x] grid on
    [-1, 1]^3 (grid nodes at the ends, like ``align_corners=True``)."""
    idx = ((points.clamp(-1, 1) + 1) / 2 * (g - 1)).clamp(0, g - 1 - 1e-6)
    i0 = idx.floor().long()
    fr = idx - i0
    rows, cols, vals = [], [], []
    n = points.shape[0]
    ar = torch.arange(n)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (
                    (fr[:, 0] if dx else 1 - fr[:, 0])
                    * (fr[:, 1] if dy else 1 - fr[:, 1])
                    * (fr[:, 2] if dz else 1 - fr[:, 2])
                )
                c = ((i0[:, 2] + dz) * g + (i0[:, 1] + dy)) * g + (i0[:, 0] + dx)
                rows.append(ar)
                cols.append(c)
                vals.append(w)
    m = torch.sparse_coo_tensor(
        torch.stack([torch.cat(rows), torch.cat(cols)]),
        torch.cat(vals),
        (n, g**3),
        check_invariants=False,
    )
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return m.coalesce().to_sparse_csr()


@lru_cache(maxsize=4)
def _ray_operator(views_key: tuple, res: int, depth: int, g: int):
    views = torch.tensor(views_key).reshape(-1, 3, 3)
    pts = ray_points(views, res, depth).reshape(-1, 3)
    m = _trilinear_matrix(pts, g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mt = m.to_sparse_coo().t().coalesce().to_sparse_csr()
    return m, mt


class _SparseApply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m, mt, x):  # x: (g^3, B)
        ctx.mt = mt
        return m @ x

    @staticmethod
    def backward(ctx, grad):
        return None, None, ctx.mt @ grad


def sphere_grid(n: int, g: int, radius: float) -> torch.Tensor:
    c = torch.linspace(-1, 1, g)
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    f = (x**2 + y**2 + z**2).sqrt() - radius
    return f[None].expand(n, g, g, g).clone()


def fit_sdf(
    silhouettes: np.ndarray | torch.Tensor,
    views: torch.Tensor,
    cfg: NeuSConfig | None = None,
    callback: Any = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Fit one SDF grid per cell to its silhouettes (B, K, res, res); returns (B, G, G, G).

    The fit runs on ``device`` (a GPU when synthesis has one); the grids come back on the CPU.
    """
    cfg = cfg or NeuSConfig()
    if torch.device(device).type == "mps":  # no sparse CSR products on MPS
        device = "cpu"
    sil = torch.as_tensor(np.asarray(silhouettes), dtype=torch.float32)
    if sil.ndim != 4 or sil.shape[1] != views.shape[0] or sil.shape[2] != sil.shape[3]:
        raise CellsynthInputError(
            f"silhouettes must be (cells, {views.shape[0]} views, res, res), got {tuple(sil.shape)}"
        )
    b, _, res, _ = sil.shape
    g = cfg.grid
    if b == 0:
        return torch.zeros((0, g, g, g))
    key = tuple(float(v) for v in views.reshape(-1))
    m, mt = (op.to(device) for op in _ray_operator(key, res, cfg.depth, g))
    target = sil.reshape(b, -1).T.to(device)  # (rays, B)
    if cfg.init == "hull":
        f0 = hull_sdf(sil, views, g)
    else:
        f0 = sphere_grid(b, g, cfg.init_radius)
    f = f0.reshape(b, -1).T.contiguous().to(device).requires_grad_(True)
    log_s = torch.full((1, b), math.log(cfg.s_init), device=device, requires_grad=True)
    opt = torch.optim.Adam([f, log_s], lr=cfg.lr)
    h = 2.0 / (g - 1)
    eps = 1e-5
    with torch.enable_grad():
        for it in range(cfg.iterations):
            opt.zero_grad(set_to_none=True)
            vals = _SparseApply.apply(m, mt, f).reshape(-1, cfg.depth, b)  # (rays, depth, B)
            s = log_s.exp().clamp(max=cfg.s_max)[:, None]
            phi = torch.sigmoid(vals * s)
            alpha = ((phi[:, :-1] - phi[:, 1:]) / (phi[:, :-1] + eps)).clamp(0, 1 - eps)
            trans = torch.log1p(-alpha).sum(dim=1)  # (rays, B)
            opacity = (1 - trans.exp()).clamp(eps, 1 - eps)
            bce = torch.nn.functional.binary_cross_entropy(opacity, target)
            grid = f.T.reshape(b, g, g, g)
            gz = (grid[:, 2:, 1:-1, 1:-1] - grid[:, :-2, 1:-1, 1:-1]) / (2 * h)
            gy = (grid[:, 1:-1, 2:, 1:-1] - grid[:, 1:-1, :-2, 1:-1]) / (2 * h)
            gx = (grid[:, 1:-1, 1:-1, 2:] - grid[:, 1:-1, 1:-1, :-2]) / (2 * h)
            eik = (((gx**2 + gy**2 + gz**2) + 1e-9).sqrt() - 1).pow(2).mean()
            loss = bce + cfg.eikonal * eik
            if cfg.balloon:
                loss = loss + cfg.balloon * torch.sigmoid(f * s[0]).mean()
            loss.backward()
            opt.step()
            if callback is not None:
                callback(it + 1, cfg.iterations, float(loss))
    return f.detach().T.reshape(b, g, g, g).contiguous().cpu()


def grid_points(g: int) -> torch.Tensor:
    """(g^3, 3) xyz nodes of a [z, y, x] grid with nodes at -1 and 1."""
    c = torch.linspace(-1, 1, g)
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    return torch.stack([x, y, z], dim=-1).reshape(-1, 3)


def hull_sdf(sil: torch.Tensor, views: torch.Tensor, g: int) -> torch.Tensor:
    """Signed distance (frame units) of the visual hull on the G^3 grid, for each cell."""
    from scipy import ndimage

    inside = visual_hull(sil, views, grid_points(g)).reshape(-1, g, g, g).numpy()
    h = 2.0 / (g - 1)
    out = []
    for v in inside:
        d = ndimage.distance_transform_edt(~v) - ndimage.distance_transform_edt(v)
        out.append(torch.from_numpy((d * h).astype(np.float32)))
    return torch.stack(out)


def sample_grid(grids: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear values (B, N) of grids (B, G, G, G) at xyz points (B, N, 3) in [-1, 1]."""
    out = torch.nn.functional.grid_sample(
        grids[:, None],
        points[:, :, None, None],
        mode="bilinear",
        padding_mode="border",
        align_corners=True,
    )
    return out[:, 0, :, 0, 0]


def visual_hull(
    silhouettes: np.ndarray | torch.Tensor, views: torch.Tensor, points: torch.Tensor
) -> torch.Tensor:
    """Occupancy (B, N) of xyz points (N, 3): inside every silhouette (B, K, res, res)."""
    sil = torch.as_tensor(np.asarray(silhouettes), dtype=torch.float32)
    b, k = sil.shape[:2]
    uv = project(points, views)  # (K, N, 2)
    inside = torch.ones((b, points.shape[0]), dtype=torch.bool)
    for i in range(k):
        grid = uv[i][None, :, None].expand(b, -1, -1, -1)  # (B, N, 1, 2) (x=col, y=row)
        v = torch.nn.functional.grid_sample(
            sil[:, i : i + 1], grid, mode="nearest", padding_mode="zeros", align_corners=False
        )[:, 0, :, 0]
        inside &= v > 0.5
    return inside


def voxel_points(px_per_unit: float, anisotropy: float, z_phase: float = 0.5):
    """Lattice of a cell at the data set's voxel size: xyz frame points (N, 3) and its shape.

    ``px_per_unit`` is the cell's scale (pixels per frame unit), ``anisotropy`` the z step in
    pixels (voxel z / voxel xy), ``z_phase`` in [0, 1) shifts the slices relative to the cell.
    """
    if anisotropy <= 0 or not math.isfinite(anisotropy):
        raise CellsynthInputError(f"voxel anisotropy must be > 0, got {anisotropy}")
    nxy = max(1, math.ceil(2 * px_per_unit))
    xy = (torch.arange(nxy, dtype=torch.float32) + 0.5 - nxy / 2) / px_per_unit
    step = anisotropy / px_per_unit  # frame units per slice
    nz = max(1, 2 * math.ceil(1 / step) + 1)
    z = (torch.arange(nz, dtype=torch.float32) - nz // 2 + (z_phase - 0.5)) * step
    zz, yy, xx = torch.meshgrid(z, xy, xy, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1).reshape(-1, 3), (nz, nxy, nxy)


def clean_volume(v: np.ndarray) -> np.ndarray:
    """Largest 6-connected component, holes filled, cropped to its bounding box."""
    from scipy import ndimage

    lab, n = ndimage.label(v)
    if n == 0:
        return np.zeros((0, 0, 0), bool)
    if n > 1:
        sizes = np.bincount(lab.ravel())[1:]
        v = lab == (1 + int(np.argmax(sizes)))
    v = ndimage.binary_fill_holes(v)
    sl = ndimage.find_objects(v.astype(np.uint8))[0]
    return v[sl]


def cell_volumes(
    grids: torch.Tensor,
    px_per_unit: np.ndarray,
    anisotropy: float,
    rng: np.random.Generator,
    fallback: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Boolean ZYX volumes of each fitted cell at the data set's voxel size.

    A cell thinner than one slice would vanish; it keeps one slice (``fallback[i]``, its 2D
    mask) so every requested cell exists.
    """
    out = []
    for i in range(grids.shape[0]):
        pts, shape = voxel_points(float(px_per_unit[i]), anisotropy, float(rng.uniform()))
        f = sample_grid(grids[i : i + 1], pts[None])[0].reshape(shape)
        v = clean_volume((f < 0).numpy())
        if v.size == 0 or not v.any():
            if fallback is None:
                raise CellsynthInputError("a cell volume is empty at this voxel size")
            log.info("cell %s is thinner than one slice; kept as a single slice", i)
            v = np.asarray(fallback[i], bool)[None]
        out.append(v)
    return out
