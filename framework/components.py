"""The protocols of the four component kinds, and the objects passed between them.

Every component is an attrs class registered under a kebab-case `name`; its attrs fields are
the parameters a task spec may set. Tensors are batched (B, z, y, x); flow time t is a float in
[0, 1] with t = 0 Gaussian noise and t = 1 data, x_t = t x1 + (1 - t) x0 (CryoFM, this project's
direction). Priors work in their own normalised units; operators and likelihoods in density
units; samplers convert with `prior.denormalize` at the boundary.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import attrs
import torch

from .fourier import compact_shape, fftn
from .volume import Volume

Progress = Callable[[int], None]
"""Called with the number of steps just completed; samplers call it once per step."""


def no_progress(_: int) -> None:
    """A progress callback that shows nothing."""


@attrs.define
class PrepareContext:
    """What a component may look at before work starts (its `prepare(ctx)` hook)."""

    shape: tuple[int, int, int]  # (None, None, None) while no map or operator has given it
    voxel_size: float | None  # None while no map or operator has given it
    device: torch.device
    observation: Volume | None = None
    operators: list = attrs.Factory(list)
    signal_estimate: Volume | None = None
    """The observation's best linear estimate of the clean map (the Wiener filter of the operators'
    noise model, `cryoinverse.spectra.wiener_estimate`), where the operators are Fourier-diagonal
    and Gaussian; None otherwise. Statistics of the clean map (a density scale) are taken from it
    rather than from a noisy observation."""
    poser: Any = None
    """The task's pose model (its `[poser]`), for samplers that search poses while they sample; None when the task has none."""


@runtime_checkable
class Prior(Protocol):
    """A distribution of clean maps, given as a flow velocity field."""

    name: ClassVar[str]

    def velocity(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """Velocity v(x_t, t) on a batch (B, z, y, x) in the prior's units."""

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Density units -> the prior's units."""

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The prior's units -> density units."""


@runtime_checkable
class Operator(Protocol):
    """A degradation y = A x + n with its noise model."""

    name: ClassVar[str]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x (noise-free) on a batch."""

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x) up to a constant, one value per batch element; differentiable in x."""

    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random observation A x + n."""


@runtime_checkable
class Sampler(Protocol):
    """Turns a prior (and a likelihood) into maps."""

    name: ClassVar[str]

    def run(
        self,
        prior: Prior,
        likelihood: "Likelihood | None",
        init: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: Progress = no_progress,
    ) -> torch.Tensor:
        """Integrate from the noise `init` (B, z, y, x, prior units) to maps in density units."""


@runtime_checkable
class Poser(Protocol):
    """Estimates the poses of particle images."""

    name: ClassVar[str]

    def estimate(self, images: torch.Tensor, volume: torch.Tensor, pixel_size: float, ctf: torch.Tensor | None = None, init=None):
        """Poses (`cryoinverse.poses.Poses`) of images (N, n, n) against a volume (n, n, n) at `pixel_size` Å."""


@runtime_checkable
class Resolvable(Protocol):
    """A sampler with settings chosen from the observation ("auto" guidance or step counts).

    The runner calls `resolved` once the likelihood is built, runs the sampler it returns, and
    records that one's settings in the report, so a report never says "auto"."""

    def resolved(self, likelihood: "Likelihood | None"):
        """This sampler (or a copy) with every "auto" setting fixed for `likelihood`."""


@runtime_checkable
class StackPoser(Protocol):
    """A poser with something computed over the whole particle stack (a spectrum, a noise level).

    A stack searched in parts (`cryoinverse.poses_io.estimate_in_chunks`: checkpoints, memory)
    first has `stack_statistics` of every part added with `+`, then `estimate` runs on the poser
    `with_stack_statistics` returns, so the poses do not depend on the size of the parts."""

    def stack_statistics(self, images: torch.Tensor, ctf: torch.Tensor | None = None):
        """Statistics of images (N, n, n) and their CTFs (N, n, n, `fft2` order, or None); summable with `+`."""

    def with_stack_statistics(self, statistics):
        """A poser (this one or a copy) that uses `statistics` of the whole stack in every `estimate`."""


@attrs.frozen
class GaussianConditional:
    """x1 | x_t for a Gaussian prior: per-coefficient Fourier-diagonal quantities (nz, ny, nx).

    `mean` is E[x1 | x_t] in real space (B, z, y, x); `var` is Var[x1 | x_t] per Fourier
    coefficient; `gain_per_t` is (d E[x1 | x_t] / d x_t) / t, Fourier-diagonal, finite at t = 0.
    """

    mean: torch.Tensor
    var: torch.Tensor
    gain_per_t: torch.Tensor


@attrs.define
class Observation:
    """One observed map `y` (density units) and the operator that produced it."""

    operator: Operator
    data: torch.Tensor


@attrs.define
class Likelihood:
    """The product of the likelihoods of independent observations of one map."""

    observations: list[Observation]

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the observations' log-likelihoods, one value per batch element."""
        return sum(obs.operator.log_likelihood(x, obs.data) for obs in self.observations)

    def fourier_information(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(I, z): Fourier-diagonal information sum_j a_j^2 / N_j and statistic sum_j a_j F(y_j) / N_j.

        Available when every operator has `fourier_diagonal(shape)` -> (a, N): F(A x) = a F(x)
        and noise power N per coefficient of the observation's box; `shape` is
        `cryoinverse.fourier.compact_shape` of it (n for a cube n^3, else (z, y, x)). Together
        they are the sufficient statistics of a linear-Gaussian likelihood, so several
        observations combine exactly.
        """
        info, stat = None, None
        for obs in self.observations:
            diag = getattr(obs.operator, "fourier_diagonal", None)
            if diag is None:
                return None
            a, noise = diag(compact_shape(obs.data.shape[-3:]))
            a = a.to(obs.data.device, torch.float64)
            noise = noise.to(obs.data.device, torch.float64)
            precision = torch.where(a != 0, a.square() / noise, torch.zeros_like(a))
            term = torch.where(a != 0, a / noise, torch.zeros_like(a)) * fftn(obs.data.to(torch.float64))
            info = precision if info is None else info + precision
            stat = term if stat is None else stat + term
        return info, stat
