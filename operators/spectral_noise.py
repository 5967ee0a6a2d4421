"""`spectral-noise`: y = x + n, n Gaussian with a per-shell (frequency dependent) power spectrum.

Noise power N_r is E|F(n)_k|^2 for coefficients k of shell r (orthonormal FFT, see
`cryoinverse.fourier`). Because the covariance is diagonal in Fourier space,
log p(y | x) = -1/2 sum_k |F(x)_k - F(y)_k|^2 / N_k + const exactly (sum over the full FFT).
Maps may have any shape (nz, ny, nx); a shell is a band of physical frequency (`cryoinverse.fourier`),
so one spectrum means the same noise on any box with as many shells.
The spectrum is given directly (`noise_power`, or white `noise_variance`) or estimated from
two half maps by the gold-standard FSC (`cryoinverse.spectra.half_map_statistics`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import attrs
import torch

from cryoinverse.components import PrepareContext
from cryoinverse.errors import SpecError
from cryoinverse.fourier import Shape, box_text, expand_shells, fftn, ifftn, n_shells, spectrum_for_box
from cryoinverse.halfmaps import HalfMapNoise
from cryoinverse.hookspecs import hookimpl
from cryoinverse.mrc import read_volume
from cryoinverse.params import param, positive
from cryoinverse.spectra import half_map_statistics
from cryoinverse.volume import Volume


def _two_paths(instance, attribute, value) -> None:
    if value is not None and len(value) != 2:
        raise ValueError(f"half_maps needs exactly two maps; got {len(value)}")


@attrs.define
class SpectralNoise(HalfMapNoise):
    """Additive Gaussian noise with a radial power spectrum, given or estimated from half maps."""

    name: ClassVar[str] = "spectral-noise"

    noise_power: list[float] | None = param(
        None, help="per-shell noise power of the observation (ortho FFT), shells 0..Nyquist at least"
    )
    noise_variance: float | None = param(None, help="white noise: the same power in every shell", validator=positive)
    half_maps: list[Path] | None = param(
        None, help="two half maps: noise of their average estimated by the gold-standard FSC", validator=_two_paths, is_map=True
    )

    _spectrum: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)
    _halves: tuple[Volume, Volume] | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        given = [f for f in ("noise_power", "noise_variance", "half_maps") if getattr(self, f) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of noise_power, noise_variance, half_maps; got {', '.join(given)}")

    @classmethod
    def estimate(cls, half_map_1: Volume | torch.Tensor, half_map_2: Volume | torch.Tensor) -> "SpectralNoise":
        """The noise model of the full map (h1 + h2) / 2, estimated from its two half maps."""
        op = cls()
        op._spectrum = op.half_map_noise(half_map_1, half_map_2)
        op._halves = tuple(h if isinstance(h, Volume) else Volume(h) for h in (half_map_1, half_map_2))
        return op

    def prepare(self, ctx: PrepareContext) -> None:
        """Estimate the spectrum from the half maps, if they were given."""
        if self.half_maps is not None and self._spectrum is None:
            h1, h2 = (read_volume(p) for p in self.half_maps)
            if h1.shape != h2.shape:
                raise SpecError(f"[operator] half_maps: shapes differ ({h1.shape} vs {h2.shape})")
            self._halves = (h1, h2)
            self._spectrum = self.half_map_noise(h1, h2)

    def half_map_noise(self, half_map_1: Volume | torch.Tensor, half_map_2: Volume | torch.Tensor) -> torch.Tensor:
        """Noise power per shell of the average (h1 + h2) / 2 on the halves' own box; sets nothing."""
        h1, h2 = (h.data if isinstance(h, Volume) else h for h in (half_map_1, half_map_2))
        return half_map_statistics(h1, h2)["noise_full"]

    def shell_noise_power(self, shape: Shape) -> torch.Tensor:
        """Noise power per shell (float64, shells 0..corner) for a box: an edge n (n^3) or (z, y, x)."""
        if self._spectrum is not None:
            if self._spectrum.numel() != n_shells(shape):
                raise ValueError(f"noise spectrum has {self._spectrum.numel()} shells; a {box_text(shape)} box has {n_shells(shape)}")
            return self._spectrum
        if self.noise_variance is not None:
            return torch.full((n_shells(shape),), float(self.noise_variance), dtype=torch.float64)
        if self.noise_power is not None:
            return spectrum_for_box(self.noise_power, shape, "operator.noise_power").clamp(min=1e-30)
        raise SpecError("[operator] spectral-noise: give noise_power, noise_variance or half_maps")

    def coefficient_noise_power(self, shape: Shape) -> torch.Tensor:
        """Noise power of every coefficient (nz, ny, nx), float64."""
        return expand_shells(self.shell_noise_power(shape), shape)

    def fourier_diagonal(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, N) per coefficient of a box (edge n or (z, y, x)): identity forward, noise power N."""
        noise = self.coefficient_noise_power(shape)
        return torch.ones_like(noise), noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Identity: the signal is observed as is."""
        return x

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-1/2 sum_k |F(x - y)_k|^2 / N_k, one value per batch element."""
        weight = (1.0 / self.coefficient_noise_power(tuple(x.shape[-3:]))).to(x.device, x.dtype)
        residual = fftn(x - y)
        return -0.5 * (weight * residual.abs().square()).sum(dim=(-3, -2, -1))

    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x + n with n drawn from the noise spectrum."""
        white = torch.randn(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        amplitude = torch.sqrt(self.coefficient_noise_power(tuple(x.shape[-3:]))).to(x.device)
        return (x.to(torch.float64) + ifftn(amplitude * fftn(white))).to(x.dtype)


@hookimpl
def register_operators(register):
    register(SpectralNoise)
