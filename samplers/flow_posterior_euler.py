"""`flow-posterior-euler`: flow posterior sampling by Euler steps (CryoFM Alg. 1).

Each step: v = v(x_t, t); x1_hat = x_t + (1 - t) v; g = grad_{x_t} of -log p(y | x1_hat)
(autograd through the prior); v_post = v - lam(t) g / |g|; x_{t+h} = x_t + h v_post, with
lam(t) = lam_base min((1 - t) / t, lam_max) (schedule "cryofm") or lam_base ("constant").

Here |g| is the root-mean-square of g over the voxels of each map, so `lam_base` is a step in
units of the prior's per-voxel scale and does not depend on the box: CryoFM's reference code
divides by the L2 norm instead, so its lam_base = 1000 on 64^3 boxes is lam_base ~ 2 here.

Why this form: for this path v = (x_t + (1 - t) score) / t, so the exact posterior velocity is
v + ((1 - t) / t) grad_{x_t} log p(y | x_t). `guidance = "exact"` uses that term where it is
available in closed form (a prior with `conditional`, e.g. `gaussian`, and operators that are
Fourier-diagonal with Gaussian noise): it samples the exact posterior up to Euler error, which
is how the approximation of `guidance = "cryofm"` is tested.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from cryoinverse.components import Likelihood, Prior, Progress, no_progress
from cryoinverse.errors import SpecError
from cryoinverse.flow import data_estimate, euler_times, per_sample_rms
from cryoinverse.fourier import fftn, ifftn
from cryoinverse.hookspecs import hookimpl
from cryoinverse.params import non_negative, one_of, param, positive


@attrs.define
class FlowPosteriorEuler:
    """Euler flow posterior sampling: prior velocity plus a normalised likelihood gradient at x1_hat."""

    name: ClassVar[str] = "flow-posterior-euler"

    steps: int = param(200, help="number of Euler steps from t = 0 to t = 1", validator=positive)
    lam_base: float = param(2.0, help="guidance weight (per-voxel units when the gradient is normalised)", validator=non_negative)
    lam_max: float = param(5.0, help="cap on (1 - t) / t in the cryofm weight schedule", validator=positive)
    schedule: str = param("cryofm", help="weight schedule: cryofm = lam_base min((1-t)/t, lam_max); constant = lam_base", validator=one_of("cryofm", "constant"))
    normalize_gradient: bool = param(True, help="divide the likelihood gradient by its per-map RMS")
    guidance: str = param("cryofm", help="cryofm: gradient at x1_hat (Alg. 1); exact: closed-form grad log p(y | x_t)", validator=one_of("cryofm", "exact"))

    def weight(self, t: float) -> float:
        """lam(t) of the schedule."""
        if self.schedule == "constant":
            return self.lam_base
        ratio = self.lam_max if t <= 0 else min((1.0 - t) / t, self.lam_max)
        return self.lam_base * ratio

    def run(
        self,
        prior: Prior,
        likelihood: Likelihood | None,
        init: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: Progress = no_progress,
    ) -> torch.Tensor:
        """Integrate the posterior flow from the noise `init`; returns density units."""
        if likelihood is None:
            raise SpecError("[sampler] flow-posterior-euler needs an observation and an operator")
        step = self._exact_step(prior, likelihood) if self.guidance == "exact" else self._cryofm_step
        h = 1.0 / self.steps
        x = init
        for t in euler_times(self.steps):
            x = (x + h * step(prior, likelihood, x, t)).detach()
            progress(1)
        return prior.denormalize(x)

    def _cryofm_step(self, prior: Prior, likelihood: Likelihood, x: torch.Tensor, t: float) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            v = prior.velocity(x, t)
            x1_hat = data_estimate(x, v, t)
            loss = -likelihood.log_likelihood(prior.denormalize(x1_hat)).sum()
            (g,) = torch.autograd.grad(loss, x)
        if self.normalize_gradient:
            g = g / per_sample_rms(g).clamp(min=1e-30)
        return v.detach() - self.weight(t) * g

    def _exact_step(self, prior: Prior, likelihood: Likelihood):
        conditional = getattr(prior, "conditional", None)
        information = likelihood.fourier_information()
        if conditional is None or information is None:
            raise SpecError(
                "[sampler] guidance = 'exact' needs a prior with a closed-form conditional (gaussian) "
                "and Fourier-diagonal Gaussian operators; use guidance = 'cryofm'"
            )
        info, stat = information

        def step(prior: Prior, likelihood: Likelihood, x: torch.Tensor, t: float) -> torch.Tensor:
            with torch.no_grad():
                c = conditional(x, t)
                # ((1 - t) / t) grad_{x_t} log p(y | x_t), with p(y | x_t) = N(y; A m, A S A^T + N)
                # combined over observations through the sufficient statistics (info, stat).
                residual = stat - info * fftn(c.mean.to(torch.float64))
                term = (1.0 - t) * c.gain_per_t * residual / (info * c.var + 1.0)
                return prior.velocity(x, t) + ifftn(term).to(x.dtype)

        return step


@hookimpl
def register_samplers(register):
    register(FlowPosteriorEuler)
