"""`missing-wedge`: cryo-ET in-painting; only Fourier coefficients inside the tilt range are measured.

A tilt series about the tilt axis (y by default) with tilt angles theta in [tilt_min, tilt_max]
measures the central planes perpendicular to the beam direction, which at tilt theta is
(z, x) = (cos theta, sin theta) for axis y, or (z, y) = (cos theta, sin theta) for axis x.
Coefficient k lies on the plane of theta = atan(-k_z / k_x) (axis y), so the measured set is
M = {k : tilt_min <= atan(-k_z / k_x) <= tilt_max}, plus the tilt axis itself (k_z = k_x = 0).
The observation is y = F^-1(M (F x + F n)) with white noise n of variance `noise_variance`.

Maps may have any shape (nz, ny, nx), as tomogram crops do: k is the physical frequency in
cycles per voxel (per-axis `fftfreq(nz)`, `fftfreq(ny)`, `fftfreq(nx)`, `cryoinverse.fourier`;
voxels are cubic), so the wedge has the same angles in space whatever the box.
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import torch

from cryoinverse.fourier import Shape, fftn, frequency_grid, ifftn
from cryoinverse.hookspecs import hookimpl
from cryoinverse.params import non_negative, one_of, param


def _angle(instance, attribute, value: float) -> None:
    if not -90.0 <= value <= 90.0:
        raise ValueError(f"{attribute.name}: must be within [-90, 90] degrees; got {value}")


def wedge_mask(shape: Shape, tilt_min: float, tilt_max: float, axis: str = "y") -> torch.Tensor:
    """Boolean (nz, ny, nx) mask of the measured coefficients for a tilt range in degrees (see module doc).

    `shape` is the box: an edge n (n^3) or (z, y, x).
    """
    kz, ky, kx = frequency_grid(shape)
    other = kx if axis == "y" else ky
    # angle of the plane containing k, folded into (-90, 90]; atan2 handles other == 0 (= +-90)
    theta = torch.rad2deg(torch.atan2(-kz, other))
    theta = torch.where(theta > 90, theta - 180, torch.where(theta <= -90, theta + 180, theta))
    measured = (theta >= tilt_min - 1e-9) & (theta <= tilt_max + 1e-9)
    on_axis = (kz == 0) & (other == 0)
    return measured | on_axis


@attrs.define
class MissingWedge:
    """Cryo-ET missing wedge: a binary Fourier mask of a tilt range about a tilt axis, optional noise."""

    name: ClassVar[str] = "missing-wedge"

    tilt_min: float = param(-60.0, help="lowest tilt angle in degrees", validator=_angle)
    tilt_max: float = param(60.0, help="highest tilt angle in degrees", validator=_angle)
    tilt_axis: str = param("y", help="tilt axis: y or x", validator=one_of("y", "x"))
    noise_variance: float = param(
        1e-4, help="white noise variance on the measured coefficients (likelihood weight; 0 = noise-free)", validator=non_negative
    )

    def __attrs_post_init__(self) -> None:
        if self.tilt_min >= self.tilt_max:
            raise ValueError(f"tilt_min ({self.tilt_min}) must be below tilt_max ({self.tilt_max})")

    def mask(self, shape: Shape) -> torch.Tensor:
        """Boolean (nz, ny, nx) mask of the measured coefficients of a box (edge n or (z, y, x))."""
        return wedge_mask(shape, self.tilt_min, self.tilt_max, self.tilt_axis)

    def measured_fraction(self, shape: Shape) -> float:
        """Fraction of coefficients measured (1 - missing fraction)."""
        return float(self.mask(shape).to(torch.float64).mean())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """F^-1(M F x): the map with its missing wedge removed."""
        m = self.mask(tuple(x.shape[-3:])).to(x.device)
        return ifftn(m * fftn(x)).to(x.dtype)

    def _variance(self) -> float:
        # A noise-free observation still needs a finite likelihood weight for gradient samplers.
        return max(self.noise_variance, 1e-12)

    def fourier_diagonal(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, N) per coefficient of a box (edge n or (z, y, x)): a = M (0/1), N = noise variance on every coefficient."""
        a = self.mask(shape).to(torch.float64)
        return a, torch.full_like(a, self._variance())

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-1/2 sum over measured k of |F(x)_k - F(y)_k|^2 / noise_variance, per batch element."""
        m = self.mask(tuple(x.shape[-3:])).to(x.device)
        residual = fftn(x - y) * m
        return -0.5 * residual.abs().square().sum(dim=(-3, -2, -1)) / self._variance()

    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """F^-1(M (F x + F n)): the wedge removed, noise on the measured part."""
        noisy = x.to(torch.float64)
        if self.noise_variance > 0:
            noisy = noisy + math.sqrt(self.noise_variance) * torch.randn(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        return self.forward(noisy).to(x.dtype)

    def pseudo_inverse(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """F^-1(M F y + (1 - M) F x): the measured coefficients of y put into x."""
        m = self.mask(tuple(x.shape[-3:])).to(x.device)
        return ifftn(torch.where(m, fftn(y.to(x.dtype)), fftn(x))).to(x.dtype)


@hookimpl
def register_operators(register):
    register(MissingWedge)
