"""`gaussian`: a Gaussian prior with a mean map and a radial power spectrum; closed-form velocity.

x1 ~ N(mu, C) with C diagonal in Fourier space: every coefficient of shell r has variance P_r
(orthonormal FFT, see `cryoinverse.fourier`: maps of any shape (nz, ny, nx), shells by physical
frequency, so one spectrum is the same stationary field on any box). For x_t = t x1 + (1 - t) x0,
x0 ~ N(0, I), each coefficient of d = x_t - t mu is independent with variance
s_t = t^2 P + (1 - t)^2, and

    E[x1 | x_t] = mu + (t P / s_t) d,     E[x0 | x_t] = ((1 - t) / s_t) d,
    v(x_t, t)   = E[x1 - x0 | x_t] = mu + ((t P - (1 - t)) / s_t) d,
    Var[x1 | x_t] = P (1 - t)^2 / s_t.

It needs no weights: the default prior, the baseline, and the exact oracle of the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import attrs
import numpy as np
import torch

from cryoinverse.components import EstimatesSignal, FourierDiagonal, GaussianConditional, PrepareContext
from cryoinverse.errors import SpecError
from cryoinverse.fourier import Shape, box_text, compact_shape, expand_shells, fftn, grid_shape, ifftn, n_shells, shell_average, spectrum_for_box
from cryoinverse.hookspecs import hookimpl
from cryoinverse.mrc import read_volume
from cryoinverse.params import param, positive
from cryoinverse.spectra import ac_max, radial_power


PASSED = 0.01  # shells an operator passes at under this fraction of its best (mean a^2) borrow their spectrum


def _extrapolate(spectrum: torch.Tensor, reliable: torch.Tensor, fit: int = 4) -> torch.Tensor:
    """Fill the shells that are not `reliable` from those that are: beyond the last reliable shell,
    log-linearly from the last `fit` of them with a slope of at most 0; below the first, its value."""
    out = spectrum.clone()
    good = torch.nonzero(reliable).reshape(-1)
    first, last = int(good[0]), int(good[-1])
    out[:first] = out[first]
    floor = 1e-12 * float(spectrum[reliable].clamp(min=0).max())
    tail = good[-fit:]
    logs = torch.log(spectrum[tail].clamp(min=floor if floor > 0 else 1e-300))
    slope = 0.0
    if tail.numel() > 1:
        r = tail.to(spectrum.dtype)
        slope = float(((r - r.mean()) * (logs - logs.mean())).sum() / (r - r.mean()).square().sum())
    slope = min(slope, 0.0)
    beyond = torch.arange(last + 1, spectrum.numel(), dtype=spectrum.dtype)
    out[last + 1 :] = out[last].clamp(min=floor) * torch.exp(slope * (beyond - last))
    inner = ~reliable & (torch.arange(spectrum.numel()) > first) & (torch.arange(spectrum.numel()) < last)
    if bool(inner.any()):  # gaps between reliable shells: linear in log between their neighbours
        idx = torch.arange(spectrum.numel(), dtype=spectrum.dtype)
        logs_all = torch.log(spectrum.clamp(min=floor if floor > 0 else 1e-300))
        filled = torch.from_numpy(np.interp(idx[inner].numpy(), good.to(spectrum.dtype).numpy(), logs_all[good].numpy()))
        out[inner] = torch.exp(filled).to(spectrum.dtype)
    return out


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
        1e-6, help="smallest power, relative to the largest beyond shell 0 (the mean), when the spectrum is estimated", validator=positive
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
        return spectrum.clamp(min=self.power_floor * ac_max(spectrum))

    def prepare(self, ctx: PrepareContext) -> None:
        """Load mean and spectrum; without `power`/`power_from`, estimate signal power from the observed map,
        or else from the first operator with a `signal_power(n)` (e.g. projection, from its images)."""
        shape = tuple(ctx.shape)
        if self.mean_from is not None and self._mean is None:
            self._mean = read_volume(self.mean_from).data
        if self._spectrum is not None:
            return
        if self.power is not None:
            try:
                self._spectrum = spectrum_for_box(self.power, shape, "prior.power")
            except ValueError as exc:
                raise SpecError(f"[prior] power: {exc}") from None
        elif self.power_from is not None:
            data = read_volume(self.power_from).data
            centred = data if self._mean is None else data - self._mean
            self._spectrum = self._floored(radial_power(centred))
        elif ctx.observation is not None:
            centred = ctx.observation.data if self._mean is None else ctx.observation.data - self._mean
            self._spectrum = self._floored(self._signal_power(radial_power(centred), ctx, shape))
        else:
            # an operator whose observation is not a map (particle images) may estimate the spectrum itself
            estimators = [op.signal_power for op in ctx.operators if isinstance(op, EstimatesSignal)]
            if not estimators:
                raise SpecError("[prior] gaussian: give power or power_from (there is no observation to estimate it from)")
            self._spectrum = self._floored(estimators[0](compact_shape(shape)).to(torch.float64))

    @staticmethod
    def _signal_power(observed: torch.Tensor, ctx: PrepareContext, shape: Shape) -> torch.Tensor:
        """Empirical Bayes: for a Fourier-diagonal operator (a, N), E|F y|^2 = a^2 S + N on measured
        coefficients, so S_r = (P_r - <N [a != 0]>_r) / <a^2>_r; otherwise S = P."""
        for op in ctx.operators:
            if not isinstance(op, FourierDiagonal):
                continue
            a, noise = op.fourier_diagonal(compact_shape(shape))
            a2 = shell_average(a.square())
            measured_noise = shell_average(torch.where(a != 0, noise, torch.zeros_like(noise)))
            # Shells the operator passes at under 1% of its best (a blur's tail) say almost nothing
            # about the signal: dividing by their tiny a^2 would explode. Their spectrum is
            # extrapolated from the well-passed shells instead, log-linearly and never rising.
            reliable = a2 > PASSED * float(a2.max())
            estimate = torch.where(reliable, (observed - measured_noise) / a2.clamp(min=1e-300), observed)
            if not bool(reliable.all()) and bool(reliable.any()):
                estimate = _extrapolate(estimate, reliable)
            return estimate
        return observed

    def spectrum(self, shape: Shape) -> torch.Tensor:
        """Per-shell power P_r (float64, shells 0..corner) for a box: an edge n (n^3) or (z, y, x)."""
        if self._spectrum is None:
            if self.power is None:
                raise RuntimeError("gaussian prior has no spectrum yet: give power, or call prepare(ctx)")
            self._spectrum = spectrum_for_box(self.power, shape, "prior.power")
        if self._spectrum.numel() != n_shells(shape):
            raise ValueError(f"prior spectrum has {self._spectrum.numel()} shells; a {box_text(shape)} box has {n_shells(shape)}")
        return self._spectrum

    def mean(self, like: torch.Tensor) -> torch.Tensor:
        """Prior mean map broadcastable to `like`."""
        if self._mean is None:
            return torch.zeros((), dtype=like.dtype, device=like.device)
        return self._mean.to(like.device, like.dtype)

    def _coefficient_power(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[-3:])
        return expand_shells(self.spectrum(shape).to(x.device), shape)

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

    def draw(self, n_samples: int, shape: Shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples (n_samples, nz, ny, nx) of a box (edge n or (z, y, x)) drawn directly in Fourier space (a reference for the flow)."""
        white = torch.randn((n_samples, *grid_shape(shape)), generator=generator, dtype=torch.float64)
        p = expand_shells(self.spectrum(shape), shape)
        mu = self.mean(white.to(torch.float32)).to(torch.float64)
        return (mu + ifftn(torch.sqrt(p) * fftn(white))).to(torch.float32)


@hookimpl
def register_priors(register):
    register(GaussianPrior)
