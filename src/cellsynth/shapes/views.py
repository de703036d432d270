"""Fixed orthographic views of the frame [-1, 1]^3 shared by the prior, the multiview model,
NeuS and the visual hull.

A view is a 3x3 matrix whose rows are the image's column axis ``e1``, its row axis ``e2`` and the
viewing direction ``d``: pixel (row i, column j) at depth w sees ``u_j e1 + v_i e2 + w d``.
View 0 looks along z with rows = y and columns = x, so it is the 2D mask as drawn in the image.
Orthographic silhouettes along ``d`` and ``-d`` are mirror images, so the default views cover
a hemisphere: three side views and three oblique ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: (elevation, azimuth) in degrees; the first is the top view (the 2D mask)
DEFAULT_VIEWS: tuple[tuple[float, float], ...] = (
    (90.0, 0.0),
    (0.0, 0.0),
    (0.0, 60.0),
    (0.0, 120.0),
    (45.0, 30.0),
    (45.0, 150.0),
    (45.0, 270.0),
)


def view_matrices(angles: Sequence[tuple[float, float]] = DEFAULT_VIEWS) -> torch.Tensor:
    """(K, 3, 3) view matrices (rows e1, e2, d) for (elevation, azimuth) pairs in degrees."""
    mats = []
    for el, az in angles:
        e, a = math.radians(el), math.radians(az)
        d = torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        if abs(el) > 89.999:  # looking along z: columns = x, rows = y
            e1, e2 = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
            d = torch.tensor([0, 0, 1.0])
        else:
            up = torch.tensor([0, 0, 1.0])
            e1 = torch.linalg.cross(up, d)
            e1 = e1 / e1.norm()
            e2 = torch.linalg.cross(d, e1)
        mats.append(torch.stack([e1, e2, d]))
    return torch.stack(mats).float()


def pixel_centres(res: int) -> torch.Tensor:
    return (torch.arange(res, dtype=torch.float32) + 0.5) / res * 2 - 1


def ray_points(views: torch.Tensor, res: int, depth: int) -> torch.Tensor:
    """(K, res, res, depth, 3) world points along the rays of every pixel of every view."""
    c = pixel_centres(res)
    w = pixel_centres(depth)
    v, u, t = torch.meshgrid(c, c, w, indexing="ij")
    local = torch.stack([u, v, t], dim=-1)  # (res, res, depth, 3) in (e1, e2, d) coordinates
    return torch.einsum("rsdc,kcx->krsdx", local, views)


def project(points: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Image coordinates (K, N, 2) as (u = column, v = row) in [-1, 1] of world points (N, 3)."""
    return torch.einsum("nx,kcx->knc", points, views[:, :2])
