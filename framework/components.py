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


# -- optional capabilities ------------------------------------------------------------------
# What a component can do beyond its kind's protocol is a type: the runner, samplers and the
# conformance kit test `isinstance(component, Capability)`, so a capability is either all there
# or not there, and docs/plugins.md lists each by the name below. A misspelt member makes the
# check fail loudly in the conformance kit (`cryoinverse.testing.check_capabilities`), not silently.


@runtime_checkable
class Preparable(Protocol):
    """Any component: looks at the task's geometry and observation before work starts."""

    def prepare(self, ctx: PrepareContext) -> None:
        """Called once before sampling (see `PrepareContext`)."""


@runtime_checkable
class FixedBox(Protocol):
    """A prior made for one box edge (a network; None: any): the runner tiles other maps into such boxes."""

    box: int | None


@runtime_checkable
class FixedVoxelSize(Protocol):
    """A prior made for one voxel size in Å (None: any): the runner resamples other maps to it."""

    voxel_size: float | None


@runtime_checkable
class ChoosesByVoxelSize(Protocol):
    """A prior that is another prior at another voxel size (one of several trained networks)."""

    def for_voxel_size(self, voxel_size: float) -> Any:
        """The prior to use for maps of `voxel_size` Å (itself when nothing changes)."""


@runtime_checkable
class Tiled(Protocol):
    """A prior that runs on tiles of a larger map: boxes per call and their overlap (voxels)."""

    tile_batch: int
    tile_overlap: int | None


@runtime_checkable
class HasNetwork(Protocol):
    """A prior that computes with a loaded network, shared by the chunks of a chunked run."""

    def network(self, device: torch.device) -> Any:
        """Load the network onto `device` (once) and return it."""


@runtime_checkable
class PercentileScaled(Protocol):
    """A prior normalised by a percentile of the map (`meta.normalization.percentile`): a chunked
    run measures it over the whole map and sets `scale`."""

    scale: float | None
    meta: Any
    scale_from: str


@runtime_checkable
class ClosedFormConditional(Protocol):
    """A prior whose x1 given x_t is Gaussian in closed form (exact and Wiener guidance)."""

    def conditional(self, x_t: torch.Tensor, t: float) -> "GaussianConditional":
        """x1 | x_t as mean, per-coefficient variance and gain."""


@runtime_checkable
class DensityJacobian(Protocol):
    """A prior whose normalisation has a Jacobian `cryoinverse loglik` adds (log p in density units)."""

    def log_det_normalize(self, x: torch.Tensor) -> torch.Tensor:
        """log |det d normalize / dx| per map."""


@runtime_checkable
class FourierDiagonal(Protocol):
    """An operator diagonal in Fourier space with Gaussian noise: F(A x) = a F(x), noise power N."""

    def fourier_diagonal(self, shape) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, N) per coefficient of the box `shape` (n for a cube, else (z, y, x)), float64."""


@runtime_checkable
class PseudoInverse(Protocol):
    """An operator that can put an observation back into a map (`flow-posterior-pseudoinverse`)."""

    def pseudo_inverse(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x with its observed part replaced by y's."""


@runtime_checkable
class LoadsObservation(Protocol):
    """An operator whose observation is not a plain map (an image stack)."""

    def load_observation(self, path, voxel_size: float | None = None) -> Any:
        """The observation read from `path`."""


@runtime_checkable
class DefaultObservation(Protocol):
    """An operator that has its observation without a path (the average of its half maps)."""

    def default_observation(self) -> Any:
        """The observation, or None when it has none."""


@runtime_checkable
class VolumeGeometry(Protocol):
    """An operator that knows the box of the map to reconstruct when no map gives it (from images)."""

    def volume_geometry(self) -> tuple[tuple[int, int, int], float] | None:
        """((z, y, x), voxel size in Å), or None."""


@runtime_checkable
class TakesPoses(Protocol):
    """An operator observing images whose poses may be unknown: a poser places them."""

    def needs_poser(self) -> bool:
        """True when the poses are unknown."""

    def set_poses(self, rotations: torch.Tensor | None, shifts: torch.Tensor | None = None) -> None:
        """Take poses: rotations (N, 3, 3), shifts (N, 2) in Å; None forgets them."""

    def filters(self, n: int, device="cpu", dtype=torch.float32) -> torch.Tensor | None:
        """Each image's CTF (N, n, n, `fft2` order), or None."""

    @property
    def has_poses(self) -> bool:
        """True once the operator holds poses."""

    @property
    def image_pixel_size(self) -> float:
        """The images' pixel size in Å."""


@runtime_checkable
class EstimatesSignal(Protocol):
    """An operator that estimates the clean map's per-shell power from its observation."""

    def signal_power(self, n) -> torch.Tensor:
        """Per-shell power of the clean map (n as for `fourier_diagonal`)."""


@runtime_checkable
class HalfMaps(Protocol):
    """An operator whose noise came from two half maps: the report's half-map checks use them."""

    def halves(self) -> tuple[Volume, Volume] | None:
        """The two half maps, or None when the noise did not come from them."""

    def for_half_map(self) -> Any:
        """The operator of one half map (twice the noise)."""


@runtime_checkable
class NoiseFromHalfMaps(Protocol):
    """An operator class that builds itself with its noise estimated from two half maps (`bench`)."""

    @classmethod
    def estimate(cls, h1: Volume, h2: Volume) -> Any:
        """The operator with the noise of the average of half maps `h1` and `h2`."""


@runtime_checkable
class HalfMapNoiseEstimator(Protocol):
    """An operator that estimates a per-shell noise spectrum from two half maps of any box
    (a chunked run estimates it chunk by chunk and sets the operator's `noise_power`)."""

    noise_power: Any

    def half_map_noise(self, h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        """Per-shell noise power (float64) of the average of `h1` and `h2`."""


@runtime_checkable
class Resolvable(Protocol):
    """A sampler with settings chosen from the observation ("auto" guidance or step counts).

    The runner calls `resolved` once the likelihood is built, runs the sampler it returns, and
    records that one's settings in the report, so a report never says "auto"."""

    def resolved(self, likelihood: "Likelihood | None"):
        """This sampler (or a copy) with every "auto" setting fixed for `likelihood`."""


@runtime_checkable
class MapFreePoser(Protocol):
    """A poser that places images relative to each other without a map (up to one global rotation)."""

    def relative_poses(self, images: torch.Tensor, pixel_size: float) -> Any:
        """`Poses` of `images` (N, n, n) in the first image's frame."""


@runtime_checkable
class StagedPoser(Protocol):
    """A poser that works coarse to fine: the frequency limits of its stages."""

    def resolutions(self, n: int, pixel_size: float) -> list[float]:
        """Frequency limits (Å) of its stages, coarse to fine."""


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


def call_prepare(component: Any, ctx: PrepareContext) -> None:
    """`component.prepare(ctx)` where the component is `Preparable`; nothing otherwise."""
    if isinstance(component, Preparable):
        component.prepare(ctx)


CAPABILITIES: dict[str, tuple[type, ...]] = {
    "prior": (Preparable, FixedBox, FixedVoxelSize, ChoosesByVoxelSize, Tiled, HasNetwork, PercentileScaled, ClosedFormConditional, DensityJacobian),
    "operator": (
        Preparable, FourierDiagonal, PseudoInverse, LoadsObservation, DefaultObservation, VolumeGeometry, TakesPoses,
        EstimatesSignal, HalfMaps, HalfMapNoiseEstimator, NoiseFromHalfMaps,
    ),
    "sampler": (Preparable, Resolvable),
    "poser": (Preparable, MapFreePoser, StagedPoser, StackPoser),
}
"""The optional capabilities of each component kind, as the runner and the conformance kit test them."""


def capabilities(component: Any, kind: str | None = None) -> list[str]:
    """The names of the capabilities `component` has (of its `kind`'s, or of all kinds)."""
    kinds = [kind] if kind is not None else list(CAPABILITIES)
    found = dict.fromkeys(c.__name__ for k in kinds for c in CAPABILITIES[k] if isinstance(component, c))
    return list(found)


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
            if not isinstance(obs.operator, FourierDiagonal):
                return None
            a, noise = obs.operator.fourier_diagonal(compact_shape(obs.data.shape[-3:]))
            a = a.to(obs.data.device, torch.float64)
            noise = noise.to(obs.data.device, torch.float64)
            precision = torch.where(a != 0, a.square() / noise, torch.zeros_like(a))
            term = torch.where(a != 0, a / noise, torch.zeros_like(a)) * fftn(obs.data.to(torch.float64))
            info = precision if info is None else info + precision
            stat = term if stat is None else stat + term
        return info, stat
