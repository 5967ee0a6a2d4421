"""`flow-posterior-euler`: flow posterior sampling by Euler steps (CryoFM Alg. 1).

Each step: v = v(x_t, t); x1_hat = x_t + (1 - t) v; g = grad_{x_t} of -log p(y | x1_hat)
(autograd through the prior); v_post = v - lam(t) g / |g|; x_{t+h} = x_t + h v_post, with
lam(t) = lam_base min((1 - t) / t, lam_max) (schedule "cryofm") or lam_base ("constant").

Here |g| is the root-mean-square of g over the voxels of each map, so `lam_base` is a step in
units of the prior's per-voxel scale and does not depend on the box: CryoFM's reference code
divides by the L2 norm instead, so its lam_base = 1000 on 64^3 boxes is lam_base ~ 2 here.

`guidance = "wiener"` needs no gradient through the prior (about 3x cheaper per step): it takes
x1 | x_t as Gaussian with mean x1_hat (the network's) and, per Fourier coefficient, the variance
a Gaussian prior would have (`prior.conditional` where the prior has one, else a Gaussian with
the signal spectrum estimated from the observation, times `prior_error`), combines it with the
observation's likelihood exactly (every operator Fourier-diagonal with Gaussian noise: spectral,
anisotropic, missing wedge), and steps along v_post = (E[x1 | x_t, y] - x_t) / (1 - t). Shells
where the noise is small follow the data; shells where it is large follow the prior; no weight
needs tuning to the noise shape. For the gaussian prior it is exactly `guidance = "exact"`.
`model_error` adds a floor, that fraction of the signal power, to the variance: the prior's error
on maps unlike its training data, which does not vanish as t -> 1.

Why this form: for this path v = (x_t + (1 - t) score) / t, so the exact posterior velocity is
v + ((1 - t) / t) grad_{x_t} log p(y | x_t). `guidance = "exact"` uses that term where it is
available in closed form (a prior with `conditional`, e.g. `gaussian`, and operators that are
Fourier-diagonal with Gaussian noise): it samples the exact posterior up to Euler error, which
is how the approximation of `guidance = "cryofm"` is tested.
"""

from __future__ import annotations

import functools
from typing import ClassVar, Literal

import attrs
import torch

from cryoinverse.components import ClosedFormConditional, Likelihood, Prior, Progress, no_progress
from cryoinverse.errors import SpecError
from cryoinverse.flow import data_estimate, euler_integrate, per_sample_rms
from cryoinverse.fourier import fftn, ifftn
from cryoinverse.hookspecs import hookimpl
from cryoinverse.params import non_negative, one_of, param, positive
from cryoinverse.spectra import signal_power


AUTO_STEPS = {"wiener": 10, "exact": 100, "cryofm": 200}
"""Steps of `steps = "auto"` by guidance. wiener: 10 measured as good as 20 and 40 (the shipped
prior on the demo map; with the gaussian prior 10 restored better than 100, AUC-FSC 0.475 against
0.457, mean of 4 samples); exact needs more for its Euler error; cryofm (a normalised gradient
step) CryoFM's own order of magnitude."""


def _steps(instance, attribute, value) -> None:
    if value != "auto" and not (isinstance(value, int) and value > 0):
        raise ValueError(f"{attribute.name}: must be > 0 (a number of steps) or 'auto'; got {value!r}")


@attrs.define
class FlowPosteriorEuler:
    """Euler flow posterior sampling: prior velocity plus a normalised likelihood gradient at x1_hat."""

    name: ClassVar[str] = "flow-posterior-euler"

    steps: int | Literal["auto"] = param(
        "auto",
        help="number of Euler steps from t = 0 to t = 1; auto: by the guidance that runs (wiener 10, exact 100, cryofm 200; "
        "the report records the number)",
        validator=_steps,
    )
    lam_base: float = param(2.0, help="guidance weight (per-voxel units when the gradient is normalised)", validator=non_negative)
    lam_max: float = param(5.0, help="cap on (1 - t) / t in the cryofm weight schedule", validator=positive)
    schedule: str = param("cryofm", help="weight schedule: cryofm = lam_base min((1-t)/t, lam_max); constant = lam_base", validator=one_of("cryofm", "constant"))
    normalize_gradient: bool = param(True, help="divide the likelihood gradient by its per-map RMS")
    guidance: str = param(
        "auto",
        help="wiener: x1_hat and the observation combined per Fourier coefficient; cryofm: gradient at x1_hat (Alg. 1); "
        "exact: closed-form grad log p(y | x_t); auto: wiener where every operator is Fourier-diagonal with noise, else cryofm",
        validator=one_of("auto", "wiener", "cryofm", "exact"),
    )
    prior_error: float = param(
        4.0,
        help="wiener, priors without a closed-form conditional: variance of the prior's data estimate as a multiple of a Gaussian prior's (larger trusts the data more; 4 measured best for the shipped prior)",
        validator=positive,
    )
    model_error: float = param(
        0.0,
        help="wiener, priors without a closed-form conditional: a floor on that variance, as a fraction of the observed signal power, "
        "for maps unlike the prior's training data (shells measured far above it follow the data)",
        validator=non_negative,
    )

    def weight(self, t: float) -> float:
        """lam(t) of the schedule."""
        if self.schedule == "constant":
            return self.lam_base
        ratio = self.lam_max if t <= 0 else min((1.0 - t) / t, self.lam_max)
        return self.lam_base * ratio

    def resolved(self, likelihood: Likelihood | None) -> "FlowPosteriorEuler":
        """This sampler with `guidance` and `steps` fixed for `likelihood` (no "auto" left): what `run`
        integrates with, and what the runner's report records."""
        if likelihood is None:
            raise SpecError("[sampler] flow-posterior-euler needs an observation and an operator")
        guidance = self.guidance
        if guidance == "auto":
            information = likelihood.fourier_information()
            finite = information is not None and all(bool(torch.isfinite(a).all()) for a in information)
            guidance = "wiener" if finite else "cryofm"
        steps = AUTO_STEPS[guidance] if self.steps == "auto" else self.steps
        if (guidance, steps) == (self.guidance, self.steps):
            return self
        return attrs.evolve(self, guidance=guidance, steps=steps)

    def run(
        self,
        prior: Prior,
        likelihood: Likelihood | None,
        init: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: Progress = no_progress,
    ) -> torch.Tensor:
        """Integrate the posterior flow from the noise `init`; returns density units."""
        if self.guidance == "auto" or self.steps == "auto":
            return self.resolved(likelihood).run(prior, likelihood, init, generator, progress)
        if likelihood is None:
            raise SpecError("[sampler] flow-posterior-euler needs an observation and an operator")
        guidance = self.guidance
        information = likelihood.fourier_information() if guidance != "cryofm" else None
        if guidance == "exact":
            step = self._exact_step(prior, information)
        elif guidance == "wiener":
            step = self._wiener_step(prior, information)
        else:
            step = self._cryofm_step
        return prior.denormalize(euler_integrate(init, self.steps, functools.partial(step, prior, likelihood), progress))

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

    def _exact_step(self, prior: Prior, information: tuple[torch.Tensor, torch.Tensor] | None):
        conditional = prior.conditional if isinstance(prior, ClosedFormConditional) else None
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

    def _wiener_step(self, prior: Prior, information: tuple[torch.Tensor, torch.Tensor] | None):
        if information is None:
            raise SpecError("[sampler] guidance = 'wiener' needs Fourier-diagonal Gaussian operators; use guidance = 'cryofm'")
        info, stat = information
        if not (torch.isfinite(info).all() and torch.isfinite(stat).all()):
            raise SpecError("[sampler] guidance = 'wiener' needs noise in every observed coefficient (a noise-free operator: use flow-posterior-pseudoinverse)")
        # x = k z + b maps the prior's units to density (affine for every prior here)
        probe = torch.tensor([0.0, 1.0], dtype=torch.float64, device=info.device).reshape(2, 1, 1, 1)
        b0, b1 = (float(v) for v in prior.denormalize(probe).reshape(-1))
        k = b1 - b0
        signal = signal_power(info, stat) / k**2  # per coefficient, prior units
        conditional = prior.conditional if isinstance(prior, ClosedFormConditional) else None

        def step(prior: Prior, likelihood: Likelihood, x: torch.Tensor, t: float) -> torch.Tensor:
            with torch.no_grad():
                v = prior.velocity(x, t)
                x1_hat = data_estimate(x, v, t)
                if conditional is not None:  # the prior's own, exact
                    var = conditional(x, t).var
                else:  # Var[x1 | x_t] of a Gaussian prior with the observed signal spectrum, scaled
                    var = self.prior_error * signal * (1 - t) ** 2 / (t * t * signal + (1 - t) ** 2)
                    var = var + self.model_error * signal
                var = var * k**2  # density units
                m = fftn(prior.denormalize(x1_hat).to(torch.float64))
                # E[x1 | x_t, y] for x1 | x_t ~ N(x1_hat, var), per coefficient
                delta = ifftn(var * (stat - info * m) / (1.0 + info * var)) / k
                return v + (delta / (1.0 - t)).to(x.dtype)

        return step

@hookimpl
def register_samplers(register):
    register(FlowPosteriorEuler)
