"""`gaussian`: a Gaussian prior with a mean map and a radial power spectrum; closed-form velocity.

x1 ~ N(mu, C) with C diagonal in Fourier space: every coefficient of shell r has variance P_r
(orthonormal FFT, see `cryoinverse.fourier`). For x_t = t x1 + (1 - t) x0, x0 ~ N(0, I), each
coefficient of d = x_t - t mu is independent with variance s_t = t^2 P + (1 - t)^2, and

    E[x1 | x_t] = mu + (t P / s_t) d,     E[x0 | x_t] = ((1 - t) / s_t) d,
    v(x_t, t)   = E[x1 - x0 | x_t] = mu + ((t P - (1 - t)) / s_t) d,
    Var[x1 | x_t] = P (1 - t)^2 / s_t.

It needs no weights: the default prior, the baseline, and the exact oracle of the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import attrs
import torch

from cryoinverse.components import GaussianConditional, PrepareContext
from cryoinverse.errors import SpecError
from cryoinverse.fourier import expand_shells, fftn, ifftn, n_shells, shell_average, spectrum_for_box
from cryoinverse.hookspecs import hookimpl
from cryoinverse.mrc import read_volume
from cryoinverse.params import param, positive
from cryoinverse.spectra import radial_power


@attrs.define
class GaussianPrior:
    """Gaussian prior of maps: mean map (default zero) and radial power spectrum; exact velocity."""

    name: ClassVar[str] = "gaussian"

    power: list[float] | None = param(
        None, help="per-shell variance of Fourier coefficients (ortho FFT), shells 0..Nyquist at least"
    )
    power_from: Path | None = param(None, help="map whose radial power spectrum (minus the mean map) is used", is_map=True)
    mean_from: Path | None = param(None, help="map used as the prior mean (default: zero)", is_map=True)
    power_floor: float = param(
        1e-6, help="smallest power, relative to the largest, when the spectrum is estimated", validator=positive
    )

    _spectrum: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)
    _mean: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)

    box: ClassVar[int | None] = None

    @classmethod
    def from_map(cls, volume, mean=None, power_floor: float = 1e-6) -> "GaussianPrior":
        """A prior whose spectrum is that of `volume` (minus `mean` where given)."""
        prior = cls(power_floor=power_floor)
        data = volume.data if hasattr(volume, "data") else torch.as_tensor(volume)
        mean_t = None if mean is None else (mean.data if hasattr(mean, "data") else torch.as_tensor(mean))
        prior._mean = None if mean_t is None else mean_t.to(torch.float32)
        centred = data if mean_t is None else data - mean_t
        prior._spectrum = prior._floored(radial_power(centred))
        return prior

    def _floored(self, spectrum: torch.Tensor) -> torch.Tensor:
        return spectrum.clamp(min=self.power_floor * float(spectrum.max()))

    def prepare(self, ctx: PrepareContext) -> None:
        """Load mean and spectrum; without `power`/`power_from`, estimate signal power from the observation."""
        n = ctx.shape[-1]
        if self.mean_from is not None and self._mean is None:
            self._mean = read_volume(self.mean_from).data
        if self._spectrum is not None:
            return
        if self.power is not None:
            try:
                self._spectrum = spectrum_for_box(self.power, n, "prior.power")
            except ValueError as exc:
                raise SpecError(f"[prior] power: {exc}") from None
        elif self.power_from is not None:
            data = read_volume(self.power_from).data
            centred = data if self._mean is None else data - self._mean
            self._spectrum = self._floored(radial_power(centred))
        elif ctx.observation is not None:
            centred = ctx.observation.data if self._mean is None else ctx.observation.data - self._mean
            self._spectrum = self._floored(self._signal_power(radial_power(centred), ctx, n))
        else:
            raise SpecError("[prior] gaussian: give power or power_from (there is no observation to estimate it from)")

    @staticmethod
    def _signal_power(observed: torch.Tensor, ctx: PrepareContext, n: int) -> torch.Tensor:
        """Empirical Bayes: for a Fourier-diagonal operator (a, N), E|F y|^2 = a^2 S + N on measured
        coefficients, so S_r = (P_r - <N [a != 0]>_r) / <a^2>_r; otherwise S = P."""
        for op in ctx.operators:
            diag = getattr(op, "fourier_diagonal", None)
            if diag is None:
                continue
            a, noise = diag(n)
            a2 = shell_average(a.square())
            measured_noise = shell_average(torch.where(a != 0, noise, torch.zeros_like(noise)))
            return torch.where(a2 > 0, (observed - measured_noise) / a2.clamp(min=1e-12), observed)
        return observed

    def spectrum(self, n: int) -> torch.Tensor:
        """Per-shell power P_r (float64, shells 0..corner) for an n^3 box."""
        if self._spectrum is None:
            if self.power is None:
                raise RuntimeError("gaussian prior has no spectrum yet: give power, or call prepare(ctx)")
            self._spectrum = spectrum_for_box(self.power, n, "prior.power")
        if self._spectrum.numel() != n_shells(n):
            raise ValueError(f"prior spectrum has {self._spectrum.numel()} shells; an {n}^3 box has {n_shells(n)}")
        return self._spectrum

    def mean(self, like: torch.Tensor) -> torch.Tensor:
        """Prior mean map broadcastable to `like`."""
        if self._mean is None:
            return torch.zeros((), dtype=like.dtype, device=like.device)
        return self._mean.to(like.device, like.dtype)

    def _coefficient_power(self, x: torch.Tensor) -> torch.Tensor:
        return expand_shells(self.spectrum(x.shape[-1]).to(x.device), x.shape[-1])

    def velocity(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """Closed-form v(x_t, t) = mu + ((t P - (1 - t)) / (t^2 P + (1 - t)^2)) (x_t - t mu)."""
        p = self._coefficient_power(x_t)
        s_t = (t * t * p + (1 - t) ** 2).clamp(min=1e-12)
        mu = self.mean(x_t)
        gain = ((t * p - (1 - t)) / s_t).to(x_t.dtype)
        return mu + ifftn(gain * fftn(x_t - t * mu))

    def conditional(self, x_t: torch.Tensor, t: float) -> GaussianConditional:
        """x1 | x_t in closed form (used by exact posterior guidance)."""
        p = self._coefficient_power(x_t)
        s_t = (t * t * p + (1 - t) ** 2).clamp(min=1e-12)
        mu = self.mean(x_t)
        gain_per_t = p / s_t
        mean = mu + ifftn((t * gain_per_t).to(x_t.dtype) * fftn(x_t - t * mu))
        return GaussianConditional(mean=mean, var=p * (1 - t) ** 2 / s_t, gain_per_t=gain_per_t)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Identity: the Gaussian prior works in density units."""
        return x

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Identity: the Gaussian prior works in density units."""
        return z

    def draw(self, n_samples: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples (n_samples, n, n, n) drawn directly in Fourier space (a reference for the flow)."""
        white = torch.randn((n_samples, n, n, n), generator=generator, dtype=torch.float64)
        p = expand_shells(self.spectrum(n), n)
        mu = self.mean(white.to(torch.float32)).to(torch.float64)
        return (mu + ifftn(torch.sqrt(p) * fftn(white))).to(torch.float32)


@hookimpl
def register_priors(register):
    register(GaussianPrior)
