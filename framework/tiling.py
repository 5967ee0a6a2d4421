"""Priors of a fixed box and voxel size on maps of any size and voxel size.

A learned prior is trained on boxes of one edge (`box`, e.g. 64) at one voxel size
(`voxel_size`, e.g. 1.5 A). Two wrappers, both Prior-protocol objects with `box = None`, let it
restore other maps (DESIGN section 8: resample to the model's voxel size and back; cover larger
maps with overlapping boxes, CryoFM-2 uses box 64 overlap 32, blended back smoothly):

- `TiledPrior` covers a map (B, D, H, W) of any shape with overlapping boxes, calls the inner
  velocity on batches of boxes and blends the outputs with a smooth partition of unity.
- `ResampledPrior` moves the flow state to the prior's voxel size by a unitary Fourier
  crop / pad, calls the (tiled) prior there, and moves the velocity back onto the map's grid.

`adapt_prior(prior, shape, voxel_size)` builds whichever of the two a map needs.

Blending (`axis_tiles`): along each axis, as few boxes as keep neighbours overlapping by at
least `overlap` voxels, spread evenly from one edge of the map to the other (40 voxels, box 16,
overlap 8: starts 0, 8, 16, 24). A box's weight is 1 inside and tapers (sin^2) across its
overlap with each neighbour, complementary to the neighbour's taper (sin^2 + cos^2 = 1); the
`margin` voxels nearest an edge facing a neighbour get weight 0, since a network is least
reliable where its box cuts off context. Edges on the map border are not tapered. Weights are
divided by their sum over boxes, so they are a partition of unity: a constant velocity, and any
pointwise velocity, is reproduced exactly; a translation-equivariant velocity of support radius
<= `margin` is reproduced exactly everywhere on maps of at least one box per axis (boxes on the
border see the border as the whole map does); with a smaller margin the error is confined to
the overlaps, weighted by the taper there. Weights are separable (a product of one 1D window
per axis), and so is their normalisation.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar

import attrs
import torch
from torch.utils.checkpoint import checkpoint

from .components import FixedBox, FixedVoxelSize, PrepareContext, Tiled
from .resample import resample_tensor, resample_to_shape, resampled_shape
from .volume import Volume

__all__ = ["AxisTiles", "axis_tiles", "TiledPrior", "ResampledPrior", "adapt_prior"]


@attrs.frozen
class AxisTiles:
    """How one axis of n voxels is covered by boxes of edge `box`.

    `pad_before` voxels are added in front (maps shorter than a box are padded up to one box,
    centred); `starts` are the boxes' first voxels in the padded axis; `weights[i]` (float64,
    `box` entries) is box i's normalised blending weight: summed over boxes it is 1 at every voxel.
    """

    n: int
    box: int
    pad_before: int
    starts: tuple[int, ...]
    weights: tuple[torch.Tensor, ...]


def _ramp(box: int, overlap: int, margin: int) -> torch.Tensor:
    """Weight by distance j (voxels) from an edge facing another box: 0, sin^2 rise, then 1."""
    j = torch.arange(box, dtype=torch.float64)
    width = overlap - 2 * margin
    if width <= 0:
        return (j >= margin).to(torch.float64)
    rise = torch.sin(math.pi * (j - margin + 0.5) / (2 * width)).square()
    return torch.where(j < margin, torch.zeros_like(j), torch.where(j >= overlap - margin, torch.ones_like(j), rise))


def axis_tiles(n: int, box: int, overlap: int, margin: int = 0) -> AxisTiles:
    """Boxes and normalised blending weights along one axis of n voxels (see the module doc)."""
    if box < 1 or not 0 <= overlap < box:
        raise ValueError(f"tiling needs 0 <= overlap < box; got box {box}, overlap {overlap}")
    if margin < 0 or 2 * margin > overlap:
        raise ValueError(f"tiling needs 0 <= 2 * margin <= overlap; got margin {margin}, overlap {overlap}")
    if n <= box:
        return AxisTiles(n, box, (box - n) // 2, (0,), (torch.ones(box, dtype=torch.float64),))
    # As few boxes as the overlap allows, spread evenly: neighbours overlap by >= `overlap`.
    count = math.ceil((n - overlap) / (box - overlap))
    starts = sorted({round(i * (n - box) / (count - 1)) for i in range(count)})
    windows = []
    for i, s in enumerate(starts):
        w = torch.ones(box, dtype=torch.float64)
        if i > 0:  # taper over the overlap with the box before
            w = w * _ramp(box, starts[i - 1] + box - s, margin)
        if i + 1 < len(starts):  # and with the box after
            w = w * _ramp(box, s + box - starts[i + 1], margin).flip(0)
        windows.append(w)
    total = torch.zeros(n, dtype=torch.float64)
    for s, w in zip(starts, windows):
        total[s : s + box] += w
    if not bool((total > 0).all()):
        raise ValueError(f"box {box}, overlap {overlap}, margin {margin} leave voxels of a {n}-voxel axis without weight")
    weights = tuple(w / total[s : s + box] for s, w in zip(starts, windows))
    return AxisTiles(n, box, 0, tuple(starts), weights)


def _reflect_index(n: int, before: int, length: int) -> torch.Tensor:
    """Indices into an axis of n voxels for a padded axis of `length` (mirror, edge not repeated)."""
    i = torch.arange(length) - before
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


@attrs.define(eq=False)
class TiledPrior:
    """A fixed-box prior on maps of any shape: overlapping boxes, batched, blended smoothly.

    Maps shorter than a box along an axis are mirror-padded to one box (centred) and cropped
    back: a mirror keeps the local statistics of the flow state (noise at small t, density at
    large t), which a constant would not. Normalisation is delegated unchanged: CryoFM normalises the whole map, then cuts boxes,
    so statistics such as its percentile must come from the whole map, never from one box.
    Differentiable (autograd flows through the boxes to x_t).
    """

    name: ClassVar[str] = "tiled"
    box: ClassVar[int | None] = None  # any map shape

    prior: Any = attrs.field()
    tile: int | None = attrs.field(default=None)
    overlap: int | None = attrs.field(default=None)
    margin: int | None = attrs.field(default=None)
    batch_size: int = attrs.field(default=8)
    _plans: dict = attrs.field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.tile is None:
            self.tile = getattr(self.prior, "box", None)
        if self.tile is None:
            raise ValueError("TiledPrior needs a box edge: the inner prior has box = None and no tile was given")
        if self.overlap is None:
            self.overlap = self.tile // 2
        if self.margin is None:
            self.margin = self.overlap // 8
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {self.batch_size}")
        axis_tiles(self.tile + 1, self.tile, self.overlap, self.margin)  # validate now, not mid-run

    def plan(self, shape: tuple[int, int, int]) -> tuple[AxisTiles, AxisTiles, AxisTiles]:
        """The tiling of a (D, H, W) map, one `AxisTiles` per axis."""
        key = tuple(int(n) for n in shape)
        if key not in self._plans:
            self._plans[key] = tuple(axis_tiles(n, self.tile, self.overlap, self.margin) for n in key)
        return self._plans[key]

    def prepare(self, ctx: PrepareContext) -> None:
        """Prepare the inner prior for the boxes it will be given: shape (tile,)*3, the same voxel
        size and device, and the whole observation (whole-map statistics, e.g. CryoFM's
        percentile). Operators are not passed on: their spectra are defined on the whole map."""
        prepare = getattr(self.prior, "prepare", None)
        if prepare is not None:
            prepare(PrepareContext((self.tile,) * 3, ctx.voxel_size, ctx.device, ctx.observation, [], ctx.signal_estimate))

    def velocity(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """Blended inner velocity on a batch (B, D, H, W) of any D, H, W."""
        if x_t.ndim != 4:
            raise ValueError(f"velocity needs a batch (B, D, H, W); got shape {tuple(x_t.shape)}")
        plans = self.plan(tuple(x_t.shape[-3:]))
        padded = x_t
        for axis, p in enumerate(plans):
            if p.n < p.box:
                index = _reflect_index(p.n, p.pad_before, p.box).to(x_t.device)
                padded = padded.index_select(axis + 1, index)
        weights = [[w.to(x_t.device, x_t.dtype) for w in p.weights] for p in plans]
        out = torch.zeros_like(padded)
        b = self.tile
        jobs = list(itertools.product(range(x_t.shape[0]), *(range(len(p.starts)) for p in plans)))
        for first in range(0, len(jobs), self.batch_size):
            chunk = jobs[first : first + self.batch_size]
            corners = [(i, *(p.starts[k] for p, k in zip(plans, ks))) for i, *ks in chunk]
            boxes = torch.stack([padded[i, z : z + b, y : y + b, x : x + b] for i, z, y, x in corners])
            if torch.is_grad_enabled() and boxes.requires_grad:
                # recompute each batch of boxes in the backward pass: memory of one batch, not of the whole map
                v = checkpoint(self.prior.velocity, boxes, t, use_reentrant=False)
            else:
                v = self.prior.velocity(boxes, t)
            for k, ((i, z, y, x), (_, kz, ky, kx)) in enumerate(zip(corners, chunk)):
                w = weights[0][kz][:, None, None] * weights[1][ky][None, :, None] * weights[2][kx][None, None, :]
                out[i, z : z + b, y : y + b, x : x + b] += w * v[k]
        for axis, p in enumerate(plans):
            if p.n < p.box:
                out = out.narrow(axis + 1, p.pad_before, p.n)
        return out

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The inner prior's normalisation, on the whole map."""
        return self.prior.normalize(x)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The inner prior's denormalisation, on the whole map."""
        return self.prior.denormalize(z)


def _crops(shape_from: tuple[int, ...], shape_to: tuple[int, ...]) -> bool:
    return any(m < n for n, m in zip(shape_from, shape_to))


@attrs.define(eq=False)
class ResampledPrior:
    """A prior at its own voxel size, seen on a map's grid through Fourier resampling.

    The sampler's state z lives on the map's grid (`shape`), the prior's on its own grid
    (`prior_shape`). They are identified by U, the *unitary* Fourier crop / pad from the map's
    grid to the prior's (`resample_tensor(..., unitary=True)`): it keeps orthonormal Fourier
    coefficients, so the sampler's N(0, I) noise on the map's grid is exactly the prior's
    N(0, I) noise on the frequencies both grids hold. Value-preserving resampling would not be:
    padding white noise keeps its per-voxel variance but piles it into the low frequencies, and
    cropping it to a grid of 1/8 the voxels leaves variance 1/8. The velocity is

        v(z, t) = U^T v_prior(U z + (1 - t) Q eps, t) - (z - U^T U z) / (1 - t)

    where the frequencies only one grid holds get the flow of a clean signal of zero:

    - map finer than the prior: beyond the prior's Nyquist v = -z / (1 - t), which takes the
      noise there to exactly 0 at t = 1; the restored map is band-limited to the prior's
      resolution, as with CryoFM's resample-in / resample-out.
    - map coarser than the prior: Q = I - U U^T projects onto the frequencies beyond the map's
      Nyquist and eps is a fixed N(0, I) draw, so the prior sees exactly the state
      t x1 + (1 - t) x0 of a map x1 with no content there (a map sampled at the coarser spacing
      has none): white unit noise at t = 0, as in training.

    Units and normalisation: the same density has orthonormal coefficients larger by
    sqrt(N / N') on a grid of N voxels than on one of N', so under U the prior's units on the
    map's grid are the model's units times s = sqrt(N_prior / N_map) (= (a_map / a_prior)^1.5
    for cubic maps): `normalize(x) = s prior.normalize(x)` and `denormalize(z) =
    prior.denormalize(z / s)`, on the map's grid. This is exactly resample, normalise on the
    prior's grid, map back by U^T, whenever the inner normalisation is affine with fixed
    constants (CryoFM's z = (x / p - 0.04) / 0.09 once p is known; the gaussian's identity):
    value-preserving resampling R is linear and keeps constants, so it commutes with affine
    maps, and R = s U on the frequencies both grids hold (the Nyquist planes of even grids are
    split and folded by 1/sqrt(2) under U, by 1/2 and 1 under R). A clip (CryoFM clips
    densities below 0) does not commute with resampling; it only touches maps handed to
    `normalize` (the pseudo-inverse sampler), at the level of ringing. Statistics of the map
    (CryoFM's 99.999th percentile) must come from the voxel size the model was trained at, so
    `prepare` gives the inner prior the observation resampled to its voxel size.
    """

    name: ClassVar[str] = "resampled"
    box: ClassVar[int | None] = None  # any map shape
    voxel_size: ClassVar[float | None] = None  # any voxel size

    prior: Any = attrs.field()
    shape: tuple[int, int, int] = attrs.field(converter=lambda s: tuple(int(n) for n in s))
    prior_shape: tuple[int, int, int] = attrs.field(converter=lambda s: tuple(int(n) for n in s))
    map_voxel_size: float = attrs.field(converter=float)
    prior_voxel_size: float = attrs.field(converter=float)
    fill_seed: int = attrs.field(default=0)
    _fills: dict = attrs.field(factory=dict, init=False, repr=False)

    @property
    def scale(self) -> float:
        """s = sqrt(N_prior / N_map): the map grid's prior units per model unit."""
        return math.sqrt(math.prod(self.prior_shape) / math.prod(self.shape))

    def prepare(self, ctx: PrepareContext) -> None:
        """Prepare the inner prior in its own geometry: shape, voxel size, resampled observation.

        Operators are not passed on: their spectra are defined on the map's grid.
        """
        prepare = getattr(self.prior, "prepare", None)
        if prepare is None:
            return
        observation, estimate = (self._resampled(v) for v in (ctx.observation, ctx.signal_estimate))
        prepare(PrepareContext(self.prior_shape, self.prior_voxel_size, ctx.device, observation, [], estimate))

    def _resampled(self, volume: Volume | None) -> Volume | None:
        if volume is None:
            return None
        return Volume(resample_to_shape(volume, self.prior_shape).data, self.prior_voxel_size, volume.origin)

    def _to_prior(self, z: torch.Tensor) -> torch.Tensor:
        return resample_tensor(z, self.prior_shape, unitary=True)

    def _to_map(self, v: torch.Tensor) -> torch.Tensor:
        return resample_tensor(v, self.shape, unitary=True)

    def _fill(self, like: torch.Tensor) -> torch.Tensor:
        """Q eps on the prior's grid: fixed unit noise on the frequencies the map's grid lacks."""
        key = (like.shape[0], like.device, like.dtype)
        if key not in self._fills:
            g = torch.Generator().manual_seed(self.fill_seed)
            eps = torch.randn((like.shape[0], *self.prior_shape), generator=g, dtype=torch.float64)
            q_eps = eps - resample_tensor(resample_tensor(eps, self.shape, unitary=True), self.prior_shape, unitary=True)
            self._fills[key] = q_eps.to(like.device, like.dtype)
        return self._fills[key]

    def velocity(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """v on the map's grid (B, *shape), from the prior's velocity on its own grid."""
        if tuple(x_t.shape[-3:]) != self.shape:
            raise ValueError(f"this prior was adapted to maps of shape {self.shape}; got {tuple(x_t.shape[-3:])}")
        inner = self._to_prior(x_t)
        if _crops(self.prior_shape, self.shape):  # the prior's grid is finer on some axis
            inner = inner + (1.0 - t) * self._fill(x_t)
        v = self._to_map(self.prior.velocity(inner, t))
        if _crops(self.shape, self.prior_shape):  # the map's grid is finer on some axis
            outside = x_t - self._to_map(self._to_prior(x_t))
            v = v - outside / max(1.0 - t, 1e-6)
        return v

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Density on the map's grid -> s times the inner prior's units (see the class doc)."""
        return self.scale * self.prior.normalize(x)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize` (see the class doc)."""
        return self.prior.denormalize(z / self.scale)


def adapt_prior(
    prior: Any,
    shape: tuple[int, int, int],
    voxel_size: float | None,
    *,
    overlap: int | None = None,
    margin: int | None = None,
    batch_size: int = 8,
    prior_voxel_size: float | None = None,
    rtol: float = 1e-3,
) -> Any:
    """`prior` made usable on maps of `shape` voxels at `voxel_size` Angstrom.

    Reads `prior.box` (edge it supports, None = any) and `prior.voxel_size` (Angstrom it was
    trained at, None = any; `prior_voxel_size` overrides it), and where the prior has them
    `prior.tile_overlap` (voxels, overriding `overlap` when set) and `prior.tile_batch` (boxes per
    network call, overriding `batch_size`: memory grows with it). Resamples when the voxel sizes
    differ by more than `rtol` (relative), tiles when the (resampled) map is not one box, and
    returns `prior` itself when neither is needed. `overlap` (default half a box), `margin`
    (default overlap // 8) and `batch_size` (boxes per call of the inner velocity) go to
    `TiledPrior`. Call the result's `prepare(ctx)` (map geometry) instead of the prior's.
    """
    tiled = isinstance(prior, Tiled)
    box = prior.box if isinstance(prior, FixedBox) else None
    overlap = overlap if overlap is not None else (prior.tile_overlap if tiled else None)
    batch_size = (prior.tile_batch if tiled else None) or batch_size
    trained = prior_voxel_size if prior_voxel_size is not None else (prior.voxel_size if isinstance(prior, FixedVoxelSize) else None)
    shape = tuple(int(n) for n in shape)
    resample = trained is not None and voxel_size is not None and abs(trained - voxel_size) > rtol * voxel_size
    prior_shape = resampled_shape(shape, voxel_size, trained) if resample else shape
    inner = prior
    if box is not None and prior_shape != (box,) * 3:
        inner = TiledPrior(prior, tile=box, overlap=overlap, margin=margin, batch_size=batch_size)
    if resample and prior_shape != shape:
        return ResampledPrior(inner, shape, prior_shape, voxel_size, trained)
    return inner
