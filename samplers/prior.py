"""`prior`: unconditional sampling, Euler steps along the prior's flow velocity."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from cryoinverse.components import Likelihood, Prior, Progress, no_progress
from cryoinverse.flow import euler_times
from cryoinverse.hookspecs import hookimpl
from cryoinverse.params import param, positive


@attrs.define
class PriorSampler:
    """Draw maps from the prior alone (the observation is ignored): Euler integration of v(x_t, t)."""

    name: ClassVar[str] = "prior"

    steps: int = param(100, help="number of Euler steps from t = 0 to t = 1", validator=positive)

    def run(
        self,
        prior: Prior,
        likelihood: Likelihood | None,
        init: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: Progress = no_progress,
    ) -> torch.Tensor:
        """Integrate dx/dt = v(x, t) from the noise `init`; returns density units."""
        h = 1.0 / self.steps
        x = init
        with torch.no_grad():
            for t in euler_times(self.steps):
                x = x + h * prior.velocity(x, t)
                progress(1)
        return prior.denormalize(x)


@hookimpl
def register_samplers(register):
    register(PriorSampler)
