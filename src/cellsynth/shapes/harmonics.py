"""Stage 3a: a procedural prior of 3D cell shapes from spherical-harmonic radius functions.

A shape is a star-shaped body in its own frame, ``{rho * u : rho <= r(u)}`` with
``log r(u) = sum_lm a_lm Y_lm(u)`` (real spherical harmonics, ``l = 1..L``; ``a_lm`` drawn with
variance ``sigma^2 * l^-beta``, a power-law spectrum: larger ``beta``, smoother cells), stretched by
per-axis elongations, tilted and turned at random, then scaled and centred so that its silhouette
seen along z (the 2D mask the 2D mask model draws) has its farthest point at radius
:data:`TOP_RADIUS` of the view frame ``[-1, 1]^3``.

Coordinates are (x, y, z) with z the stack axis; arrays are returned in (z, y, x) / (row, col)
order like the rest of cellsynth. Everything is batched in torch and exact for any resolution:
silhouettes and volumes are evaluated from the radius function, not from a rasterised copy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from cellsynth.errors import CellsynthInputError

TOP_RADIUS = 0.6  # farthest point of the top-view silhouette from the centre, in frame units
_TABLE = (48, 96)  # (polar, azimuth) samples of the radius table


@dataclass
class ShapePriorConfig:
    """Parameters of the shape distribution (``learn --3d`` fits z_ratio to the user's cells)."""

    degree: int = 5  # L
    sigma: float = 0.25  # amplitude of the log-radius harmonics
    beta: float = 2.5  # power-law exponent of the spectrum
    xy_elongation: float = 0.15  # std of the log ratio of the two in-plane axes
    z_ratio: float = 0.8  # mean z axis / mean in-plane axis (cells lie flat)
    z_ratio_std: float = 0.15  # std of the log z ratio
    tilt_deg: float = 20.0  # max tilt of the cell's axes out of the image plane
    max_z: float = 0.95  # shapes whose z extent exceeds this (frame units) are redrawn

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShapePriorConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def validate(self) -> None:
        if self.degree < 1 or self.degree > 12:
            raise CellsynthInputError(f"shape prior degree must be 1..12, got {self.degree}")
        if not 0.05 <= self.z_ratio <= 1.8:
            raise CellsynthInputError(
                f"z ratio {self.z_ratio:.3g} is outside 0.05..1.8 (z extent / xy diameter)"
            )


@lru_cache(maxsize=8)
def _sh_table(degree: int) -> tuple[torch.Tensor, np.ndarray]:
    """Real spherical harmonics (l = 1..L) on the (polar, azimuth) table, and their degrees."""
    from scipy.special import sph_harm_y

    nt, nphi = _TABLE
    theta = np.linspace(0, np.pi, nt)
    phi = np.linspace(-np.pi, np.pi, nphi)
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    basis, degrees = [], []
    for ell in range(1, degree + 1):
        for m in range(-ell, ell + 1):
            y = sph_harm_y(ell, abs(m), th, ph)
            if m < 0:
                b = math.sqrt(2) * (-1) ** m * y.imag
            elif m == 0:
                b = y.real
            else:
                b = math.sqrt(2) * (-1) ** m * y.real
            basis.append(b)
            degrees.append(ell)
    return torch.from_numpy(np.stack(basis).astype(np.float32)), np.asarray(degrees)


def _rotation(rng: np.random.Generator, tilt_deg: float) -> np.ndarray:
    """Random turn about z times a random tilt of at most ``tilt_deg`` (3x3, acting on xyz)."""
    from scipy.spatial.transform import Rotation

    turn = Rotation.from_euler("z", rng.uniform(0, 360), degrees=True)
    axis = rng.normal(size=2)
    axis = np.array([*(axis / (np.linalg.norm(axis) + 1e-12)), 0.0])
    tilt = Rotation.from_rotvec(axis * np.deg2rad(rng.uniform(0, tilt_deg)))
    return (turn * tilt).as_matrix()


@dataclass
class Shapes:
    """A batch of B shapes: radius tables and the affine maps from shape frame to view frame."""

    radius: torch.Tensor  # (B, 1, nt, nphi) radius r(u) in the shape's own frame
    linear: torch.Tensor  # (B, 3, 3) world = linear @ q + centre
    centre: torch.Tensor  # (B, 3)

    def __len__(self) -> int:
        return self.radius.shape[0]

    def inside(self, points: torch.Tensor, soft: float = 0.0) -> torch.Tensor:
        """Occupancy of world points (B, N, 3) in [0, 1] (hard unless ``soft`` > 0)."""
        inv = torch.linalg.inv(self.linear)
        q = torch.einsum("bij,bnj->bni", inv, points - self.centre[:, None])
        rho = q.norm(dim=-1).clamp_min(1e-9)
        theta = torch.acos((q[..., 2] / rho).clamp(-1, 1))
        phi = torch.atan2(q[..., 1], q[..., 0])
        grid = torch.stack([phi / math.pi, theta / math.pi * 2 - 1], dim=-1)[:, :, None]
        r = torch.nn.functional.grid_sample(
            self.radius, grid, mode="bilinear", padding_mode="border", align_corners=True
        )[:, 0, :, 0]
        if soft > 0:
            return torch.sigmoid((r - rho) / soft)
        return (rho <= r).float()

    def volume(self, n: int = 32) -> np.ndarray:
        """(B, n, n, n) boolean occupancy on the frame [-1, 1]^3, ZYX order."""
        occ = self.inside(volume_points(n).expand(len(self), -1, -1))
        return occ.reshape(len(self), n, n, n).numpy() > 0.5

    def silhouettes(self, views: torch.Tensor, res: int = 32, depth: int = 48) -> np.ndarray:
        """(B, K, res, res) boolean silhouettes seen along each of ``views`` (K, 3, 3)."""
        from cellsynth.shapes.views import ray_points

        pts = ray_points(views, res, depth)  # (K, res, res, depth, 3)
        k = pts.shape[0]
        flat = pts.reshape(1, -1, 3).expand(len(self), -1, -1)
        occ = self.inside(flat).reshape(len(self), k, res, res, depth)
        return occ.amax(dim=-1).numpy() > 0.5


def volume_points(n: int) -> torch.Tensor:
    """(1, n^3, 3) xyz points of an n^3 lattice on [-1, 1]^3 in ZYX raster order."""
    c = (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    return torch.stack([x, y, z], dim=-1).reshape(1, -1, 3)


def sample_shapes(n: int, cfg: ShapePriorConfig, rng: np.random.Generator) -> Shapes:
    """``n`` random shapes, centred and scaled to the view frame (see module docstring)."""
    cfg.validate()
    basis, degrees = _sh_table(cfg.degree)
    nt, nphi = _TABLE
    theta = torch.linspace(0, math.pi, nt)[:, None].expand(nt, nphi)
    phi = torch.linspace(-math.pi, math.pi, nphi)[None].expand(nt, nphi)
    dirs = torch.stack(
        [torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta)],
        dim=-1,
    ).reshape(-1, 3)  # (T, 3)
    weight = torch.sin(theta).reshape(-1)  # solid-angle weight of each table entry
    std = cfg.sigma * degrees.astype(np.float64) ** (-cfg.beta / 2)
    radii, linears, centres = [], [], []
    attempts = 0
    while len(radii) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise CellsynthInputError(
                f"shape prior cannot fit shapes in the view frame (z_ratio {cfg.z_ratio:.3g}, "
                f"max_z {cfg.max_z}); lower z_ratio"
            )
        a = torch.from_numpy((rng.normal(size=len(degrees)) * std).astype(np.float32))
        r = torch.exp(torch.einsum("k,kij->ij", a, basis))  # (nt, nphi)
        e = math.exp(rng.normal(0, cfg.xy_elongation))
        z = cfg.z_ratio * math.exp(rng.normal(0, cfg.z_ratio_std))
        axes = np.array([math.sqrt(e), 1 / math.sqrt(e), z])
        lin = torch.from_numpy((_rotation(rng, cfg.tilt_deg) @ np.diag(axes)).astype(np.float32))
        surf = (dirs * r.reshape(-1, 1)) @ lin.T  # (T, 3) boundary points
        rr = r.reshape(-1)
        w = weight * rr**3
        centroid = 0.75 * (surf * w[:, None]).sum(0) / w.sum()  # of the solid body
        rel = surf - centroid
        scale = TOP_RADIUS / float(rel[:, :2].norm(dim=-1).max())
        if float(rel[:, 2].abs().max()) * scale > cfg.max_z:
            continue
        radii.append(r[None])
        linears.append(lin * scale)
        centres.append(-centroid * scale)
    return Shapes(torch.stack(radii), torch.stack(linears), torch.stack(centres))
