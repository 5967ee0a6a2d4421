"""Near-uniform grids on SO(3) for pose search, coarse to fine (a Hopf-fibration grid).

A rotation is split into its viewing direction (a point on the sphere S^2: the third row of R,
`cryoinverse.rotations`) and an in-plane angle psi. Level L holds 12 * 4^L directions (a
Fibonacci lattice: near-uniform, as many points as HEALPix at nside = 2^L) times 6 * 2^L
in-plane angles, so level 1 has 576 rotations about 30 degrees apart and each level halves the
spacing, as in cryoDRGN's and cryoSPARC's grids. `local_grid` puts a cube of small rotations
around given ones, for refinement level by level.
"""

from __future__ import annotations

import math

import torch

from .rotations import euler_zyz_to_matrix

__all__ = ["sphere_directions", "so3_grid", "grid_size", "grid_spacing", "local_grid", "axis_angle_to_matrix"]


def sphere_directions(count: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """`count` near-uniform unit vectors (x, y, z) on the sphere: a Fibonacci lattice."""
    i = torch.arange(count, dtype=dtype) + 0.5
    z = 1.0 - 2.0 * i / count
    r = torch.sqrt((1.0 - z * z).clamp(min=0.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))  # the golden angle
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


def grid_size(level: int) -> tuple[int, int]:
    """(directions, in-plane angles) of level `level` (>= 1)."""
    if level < 1:
        raise ValueError(f"grid level must be >= 1; got {level}")
    return 12 * 4**level, 6 * 2**level


def grid_spacing(level: int) -> float:
    """Approximate spacing (degrees) of level `level`: the in-plane step, 60 / 2^level."""
    return 360.0 / grid_size(level)[1]


def so3_grid(level: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rotations (N, 3, 3) of level `level`: every direction with every in-plane angle (direction-major)."""
    n_dir, n_psi = grid_size(level)
    d = sphere_directions(n_dir, dtype)
    tilt = torch.rad2deg(torch.acos(d[:, 2].clamp(-1.0, 1.0)))
    rot = torch.rad2deg(torch.atan2(d[:, 1], d[:, 0]))
    psi = torch.arange(n_psi, dtype=dtype) * (360.0 / n_psi)
    return euler_zyz_to_matrix(rot[:, None].expand(n_dir, n_psi), tilt[:, None].expand(n_dir, n_psi), psi[None, :].expand(n_dir, n_psi), dtype=dtype).reshape(-1, 3, 3)


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """exp of the axis-angle vectors v (..., 3) (radians): rotation matrices (..., 3, 3), Rodrigues' formula."""
    theta = v.norm(dim=-1, keepdim=True)
    k = v / theta.clamp(min=1e-30)
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    K = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], dim=-1).reshape(*v.shape[:-1], 3, 3)
    s, c = torch.sin(theta)[..., None], torch.cos(theta)[..., None]
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(K)
    return eye + s * K + (1 - c) * (K @ K)


def local_grid(rotations: torch.Tensor, step_degrees: float, radius: int = 1) -> torch.Tensor:
    """Around each of `rotations` (K, 3, 3): R exp(delta) for delta on a cube of (2 radius + 1)^3 axis-angle
    vectors spaced `step_degrees` (the centre, delta = 0, included) -> (K, (2 radius + 1)^3, 3, 3)."""
    steps = torch.arange(-radius, radius + 1, dtype=rotations.dtype, device=rotations.device) * math.radians(step_degrees)
    deltas = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij"), dim=-1).reshape(-1, 3)
    return rotations[:, None] @ axis_angle_to_matrix(deltas)[None]
