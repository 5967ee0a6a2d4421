"""`prior`: unconditional sampling, Euler steps along the prior's flow velocity."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from cryoinverse.components import Likelihood, Prior
from cryoinverse.flow import EulerSampler, Velocity
from cryoinverse.hookspecs import hookimpl
from cryoinverse.params import param, positive


@attrs.define
class PriorSampler(EulerSampler):
    """Draw maps from the prior alone (the observation is ignored): Euler integration of v(x_t, t)."""

    name: ClassVar[str] = "prior"

    steps: int = param(100, help="number of Euler steps from t = 0 to t = 1", validator=positive)

    def velocity_field(self, prior: Prior, likelihood: Likelihood | None) -> Velocity:
        """The prior's velocity v(x_t, t), without gradients (the observation is ignored)."""
        return torch.no_grad()(prior.velocity)


@hookimpl
def register_samplers(register):
    register(PriorSampler)
