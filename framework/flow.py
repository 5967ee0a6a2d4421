"""The flow path shared by priors and samplers (CryoFM, this project's direction).

x_t = t x1 + (1 - t) x0 with x0 ~ N(0, I) at t = 0 and data x1 at t = 1; velocity target
x1 - x0; data estimate x1_hat = x_t + (1 - t) v(x_t, t). Euler steps run at t_i = i / N
(`euler_integrate`); a sampler that integrates one velocity field is an `EulerSampler`.
"""

from __future__ import annotations

from typing import Callable

import torch

from .components import Likelihood, Prior, Progress, no_progress


def euler_times(steps: int) -> list[float]:
    """Start times t_i = i / steps of the Euler steps, i = 0..steps-1."""
    return [i / steps for i in range(steps)]


def data_estimate(x_t: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """x1_hat = x_t + (1 - t) v."""
    return x_t + (1.0 - t) * v


def per_sample_rms(g: torch.Tensor) -> torch.Tensor:
    """Root-mean-square of each batch element of (B, ...), shaped (B, 1, 1, 1) for broadcasting."""
    flat = g.reshape(g.shape[0], -1)
    return flat.square().mean(dim=1).sqrt().reshape(-1, *([1] * (g.ndim - 1)))


Velocity = Callable[[torch.Tensor, float], torch.Tensor]
"""A velocity field: (x_t, t) -> dx/dt, in the prior's normalised units."""


def euler_integrate(x: torch.Tensor, steps: int, velocity: Velocity, progress: Progress = no_progress) -> torch.Tensor:
    """x at t = 1 from x at t = 0 by `steps` Euler steps x <- x + velocity(x, t) / steps at t = `euler_times(steps)`,
    calling `progress(1)` after each. Each new x is detached: a graph `velocity` builds ends with its step."""
    h = 1.0 / steps
    for t in euler_times(steps):
        x = (x + h * velocity(x, t)).detach()
        progress(1)
    return x


class EulerSampler:
    """A sampler that integrates one velocity field from the noise at t = 0 to t = 1 in `steps` Euler steps.

    A subclass (an attrs class with a `steps` field) says in `velocity_field` what the velocity is,
    given the prior and the observations; the inherited `run` integrates it from `init`.
    """

    steps: int

    def velocity_field(self, prior: Prior, likelihood: Likelihood | None) -> Velocity:
        """The velocity to integrate (SpecError where the prior or the observations do not suit the sampler)."""
        raise NotImplementedError(f"{type(self).__name__} must define velocity_field(prior, likelihood)")

    def run(self, prior: Prior, likelihood: Likelihood | None, init: torch.Tensor, generator: torch.Generator | None = None,
            progress: Progress = no_progress) -> torch.Tensor:
        """Integrate `velocity_field` from the noise `init` (prior units); returns density units."""
        return prior.denormalize(euler_integrate(init, self.steps, self.velocity_field(prior, likelihood), progress))
