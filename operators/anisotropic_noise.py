"""`anisotropic-noise`: spectral noise amplified in under-sampled directions (CryoFM section 5.2).

Noise power of coefficient k is N_k = B_r(k) f(dir k): a per-shell base B and a direction factor
f, either `factor` inside a cone of half angle `cone_half_angle` about the axis at polar angle
`cone_tilt` (from z) and azimuth `cone_azimuth`, 1 elsewhere; or a table of directions with
weights (a CSV of rows z, y, x, weight, e.g. from particle orientation counts; each coefficient
takes the weight of the nearest direction, up to sign). Given `noise_power` / `noise_variance`
is B. Estimated from half maps (CryoFM appendix D.2), the direction-averaged power N_r comes
from the half-map FSC (as for `spectral-noise`), f from the power of the half-map difference
per direction bin, and B_r = N_r / mean_shell(f), so that the average over each shell is kept.
Directions are those of the physical frequency (per-axis `fftfreq`, `cryoinverse.directions`), so
maps of any shape (nz, ny, nx) see the same cone.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import attrs
import numpy as np
import torch

from cryoinverse.components import PrepareContext
from cryoinverse.directions import axis_from_angles, cone_mask, fibonacci_hemisphere, nearest_direction
from cryoinverse.errors import DataError
from cryoinverse.fourier import Shape, expand_shells, fftn, nyquist, shell_average, shell_index
from cryoinverse.hookspecs import hookimpl
from cryoinverse.mrc import read_volume
from cryoinverse.params import param, positive
from cryoinverse.spectra import half_map_statistics
from cryoinverse.volume import Volume
from cryoinverse.operators.spectral_noise import SpectralNoise


def read_direction_table(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(directions (M, 3) z-y-x, weights (M,)) from a CSV of rows z, y, x, weight (header optional)."""
    try:
        table = np.loadtxt(path, delimiter=",", ndmin=2, comments="#")
    except ValueError:
        table = np.loadtxt(path, delimiter=",", ndmin=2, comments="#", skiprows=1)
    except OSError as exc:
        raise DataError(f"{path}: cannot read direction table: {exc}") from None
    if table.shape[1] != 4 or len(table) == 0:
        raise DataError(f"{path}: a direction table needs rows 'z, y, x, weight'; got shape {table.shape}")
    if (table[:, 3] <= 0).any() or np.any(np.linalg.norm(table[:, :3], axis=1) == 0):
        raise DataError(f"{path}: direction weights must be > 0 and directions non-zero")
    t = torch.from_numpy(table)
    return t[:, :3], t[:, 3]


@attrs.define
class AnisotropicNoise(SpectralNoise):
    """Spectral noise amplified inside a cone of Fourier directions (or weighted by a direction table)."""

    name: ClassVar[str] = "anisotropic-noise"

    factor: float = param(4.0, help="noise power factor inside the cone", validator=positive)
    cone_tilt: float = param(0.0, help="cone axis: polar angle from z, degrees")
    cone_azimuth: float = param(0.0, help="cone axis: azimuth from x towards y, degrees")
    cone_half_angle: float = param(30.0, help="cone half angle, degrees", validator=positive)
    direction_weights: Path | None = param(None, help="CSV of rows z, y, x, weight: per-direction factors instead of the cone")

    _table: tuple[torch.Tensor, torch.Tensor] | None = attrs.field(default=None, init=False, repr=False)
    _renormalise: bool = attrs.field(default=False, init=False, repr=False)

    # Its half-map noise is more than a per-shell spectrum (direction factors too), so it offers no
    # `half_map_noise`: a chunked run refuses its half maps rather than drop the anisotropy.
    half_map_noise: ClassVar[None] = None

    @classmethod
    def estimate(cls, half_map_1: Volume | torch.Tensor, half_map_2: Volume | torch.Tensor, n_directions: int = 64) -> "AnisotropicNoise":
        """Noise of the full map (h1 + h2) / 2: shell powers from the FSC, direction factors from h1 - h2."""
        h1 = (half_map_1.data if isinstance(half_map_1, Volume) else half_map_1).to(torch.float64)
        h2 = (half_map_2.data if isinstance(half_map_2, Volume) else half_map_2).to(torch.float64)
        op = cls()
        op._spectrum = half_map_statistics(h1, h2)["noise_full"]
        op._table = direction_factors(h1 - h2, fibonacci_hemisphere(n_directions))
        op._renormalise = True
        return op

    def prepare(self, ctx: PrepareContext) -> None:
        """Estimate from half maps when given; read the direction table when given."""
        if self.half_maps is not None and self._spectrum is None:
            h1, h2 = (read_volume(p) for p in self.half_maps)
            estimated = type(self).estimate(h1, h2)
            self._halves = (h1, h2)
            self._spectrum, self._renormalise = estimated._spectrum, True
            if self.direction_weights is None:
                self._table = estimated._table
        if self.direction_weights is not None and self._table is None:
            self._table = read_direction_table(self.direction_weights)

    def direction_factor(self, shape: Shape) -> torch.Tensor:
        """f per coefficient (nz, ny, nx) of a box (edge n or (z, y, x)), float64."""
        if self._table is not None:
            directions, weights = self._table
            return weights.to(torch.float64)[nearest_direction(shape, directions)]
        inside = cone_mask(shape, axis_from_angles(self.cone_tilt, self.cone_azimuth), self.cone_half_angle)
        return torch.where(inside, torch.tensor(self.factor, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))

    def coefficient_noise_power(self, shape: Shape) -> torch.Tensor:
        """N_k = B_r f(k); B is renormalised by the shell mean of f when the power was estimated."""
        f = self.direction_factor(shape)
        base = self.shell_noise_power(shape)
        if self._renormalise:
            base = base / shell_average(f)
        return expand_shells(base, shape) * f


def direction_factors(noise: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-direction factors of a pure-noise map: mean of |F|^2 / shell mean over each direction bin.

    Uses shells 2..Nyquist (the lowest shells have too few coefficients to split by direction).
    Bins with no coefficients get factor 1. Returns (directions, factors).
    """
    shape = tuple(noise.shape[-3:])
    power = fftn(noise).abs().square()
    ratio = power / expand_shells(shell_average(power), shape).clamp(min=1e-300)
    shells = shell_index(shape)
    use = (shells >= 2) & (shells <= nyquist(shape))
    bins = nearest_direction(shape, directions)[use]
    sums = torch.zeros(len(directions), dtype=torch.float64).index_add_(0, bins, ratio[use])
    counts = torch.bincount(bins, minlength=len(directions)).to(torch.float64)
    factors = torch.where(counts > 0, sums / counts.clamp(min=1), torch.ones_like(sums))
    return directions, factors


@hookimpl
def register_operators(register):
    register(AnisotropicNoise)
