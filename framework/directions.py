"""Directions of Fourier coefficients: unit vectors of k, cones, nearest-direction tables.

Directions are (z, y, x) unit vectors like the arrays (see `cryoinverse.fourier`), of the
physical frequency (cycles per voxel, per-axis `fftfreq`), so boxes of any shape (nz, ny, nx)
see the same directions. A direction and its opposite are the same for a real map (Friedel
symmetry), so every test here is on |cos| of the angle. The zero frequency has no direction: it counts as outside every cone.
"""

from __future__ import annotations

import functools
import math

import torch

from .fourier import Shape, frequency_grid, grid_shape


@functools.lru_cache(maxsize=8)
def _unit_frequencies(edges: tuple[int, int, int]) -> torch.Tensor:
    vec = torch.stack(frequency_grid(edges), dim=-1)
    norm = vec.norm(dim=-1, keepdim=True)
    return torch.where(norm > 0, vec / norm.clamp(min=1e-300), torch.zeros_like(vec))


def unit_frequencies(shape: Shape) -> torch.Tensor:
    """(nz, ny, nx, 3) unit (z, y, x) direction of every coefficient (zero at k = 0)."""
    return _unit_frequencies(grid_shape(shape))


def axis_from_angles(tilt_deg: float, azimuth_deg: float) -> torch.Tensor:
    """(z, y, x) unit vector at polar angle `tilt_deg` from z and azimuth `azimuth_deg` from x towards y."""
    th, ph = math.radians(tilt_deg), math.radians(azimuth_deg)
    return torch.tensor([math.cos(th), math.sin(th) * math.sin(ph), math.sin(th) * math.cos(ph)], dtype=torch.float64)


def cone_mask(shape: Shape, axis: torch.Tensor, half_angle_deg: float) -> torch.Tensor:
    """Boolean (nz, ny, nx): coefficients whose direction is within `half_angle_deg` of +-axis."""
    cos = (unit_frequencies(shape) @ (axis / axis.norm())).abs()
    inside = cos >= math.cos(math.radians(half_angle_deg))
    inside[0, 0, 0] = False
    return inside


def nearest_direction(shape: Shape, directions: torch.Tensor) -> torch.Tensor:
    """(nz, ny, nx) index of the table direction (rows (z, y, x)) nearest to each coefficient's, up to sign."""
    table = directions.to(torch.float64)
    table = table / table.norm(dim=-1, keepdim=True)
    cos = (unit_frequencies(shape).reshape(-1, 3) @ table.T).abs()
    return cos.argmax(dim=-1).reshape(grid_shape(shape))


def fibonacci_hemisphere(count: int) -> torch.Tensor:
    """`count` near-uniform (z, y, x) unit directions on the half sphere z >= 0."""
    i = torch.arange(count, dtype=torch.float64) + 0.5
    z = 1 - i / count  # uniform in z on (0, 1]: uniform area on the hemisphere
    r = torch.sqrt(1 - z * z)
    phi = i * math.pi * (3 - math.sqrt(5))
    return torch.stack([z, r * torch.sin(phi), r * torch.cos(phi)], dim=-1)
