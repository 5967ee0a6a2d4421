"""TiledPrior and adapt_prior: partition of unity, exactness for pointwise and local velocities,
batching, gradients, resampling to the prior's voxel size, and a posterior run."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cryoinverse.components import Likelihood, Observation, PrepareContext
from cryoinverse.errors import SpecError
from cryoinverse.fourier import fftn, n_shells, shell_average
from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.resample import resample_tensor
from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
from cryoinverse.samplers.prior import PriorSampler
from cryoinverse.tiling import ResampledPrior, TiledPrior, adapt_prior, axis_tiles
from cryoinverse.volume import Volume


class Pointwise:
    """v = -x + c(t): a pointwise velocity with a fixed box, recording the batches it is given."""

    name = "pointwise"

    def __init__(self, box=16, voxel_size=None):
        self.box, self.voxel_size, self.calls, self.prepared = box, voxel_size, [], None

    def velocity(self, x, t):
        if self.box is not None:
            assert tuple(x.shape[-3:]) == (self.box,) * 3
        self.calls.append(x.detach().clone())
        return -x + 0.25 + t

    def normalize(self, x):
        return (x - 0.04) / 0.09

    def denormalize(self, z):
        return 0.09 * z + 0.04

    def prepare(self, ctx):
        self.prepared = ctx


class LocalFilter(Pointwise):
    """v = K * x, a 3x3x3 convolution with zero padding (translation-equivariant, radius 1)."""

    def __init__(self, kernel, box=16):
        super().__init__(box)
        self.kernel = kernel

    def velocity(self, x, t):
        return F.conv3d(x[:, None], self.kernel[None, None].to(x.dtype), padding=1)[:, 0]


def _gaussian(n=16):
    r = torch.arange(n_shells(n), dtype=torch.float64)
    return GaussianPrior(power=(4.0 * torch.exp(-((r / 4.0) ** 2)) + 0.01).tolist())


@pytest.mark.parametrize("n", [10, 16, 17, 20, 24, 33, 40, 100])
@pytest.mark.parametrize("box, overlap, margin", [(16, 8, 0), (16, 8, 1), (16, 4, 2), (16, 0, 0), (16, 12, 3), (64, 32, 4)])
def test_blending_windows_sum_to_one(n, box, overlap, margin):
    tiles = axis_tiles(n, box, overlap, margin)
    length = max(n, box)
    total = torch.zeros(length, dtype=torch.float64)
    for start, w in zip(tiles.starts, tiles.weights):
        assert w.shape == (box,) and bool((w >= 0).all())
        total[start : start + box] += w
    assert torch.allclose(total, torch.ones(length, dtype=torch.float64), atol=1e-14)
    assert tiles.starts[0] == 0 and tiles.starts[-1] + box == length
    # Neighbours overlap by at least the requested overlap.
    assert all(b - a <= box - overlap for a, b in zip(tiles.starts, tiles.starts[1:]))


def test_windows_are_smooth_and_complementary():
    # Box 64, overlap 32 (CryoFM-2), no margin: between two boxes the weights are sin^2 / cos^2.
    tiles = axis_tiles(96, 64, 32, 0)
    assert tiles.starts == (0, 32)
    left, right = tiles.weights
    assert torch.allclose(left[32:], torch.cos(math.pi * (torch.arange(32, dtype=torch.float64) + 0.5) / 64) ** 2)
    assert torch.allclose(left[:32], torch.ones(32, dtype=torch.float64))  # map border: no taper
    assert torch.allclose(left[32:] + right[:32], torch.ones(32, dtype=torch.float64))


def test_a_40_cube_with_box_16_overlap_8_is_covered():
    tiles = axis_tiles(40, 16, 8, 1)
    assert tiles.starts == (0, 8, 16, 24)
    count = torch.zeros(40, 40, 40)
    for z, y, x in itertools.product(tiles.starts, repeat=3):
        count[z : z + 16, y : y + 16, x : x + 16] += 1
    assert int(count.min()) >= 1
    inner = Pointwise()
    out = TiledPrior(inner, overlap=8, batch_size=64).velocity(torch.zeros(1, 40, 40, 40), 0.0)
    assert sum(len(c) for c in inner.calls) == 64  # 4 boxes per axis
    assert torch.allclose(out, torch.full_like(out, 0.25), atol=1e-6)  # every voxel gets full weight


@pytest.mark.parametrize("shape", [(40, 40, 40), (20, 33, 16), (10, 12, 16), (5, 24, 17)])
def test_pointwise_velocity_is_reproduced_exactly(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *shape, generator=g)
    tiled = TiledPrior(Pointwise(), batch_size=5)
    out = tiled.velocity(x, 0.3)
    assert out.shape == x.shape
    assert float((out - (-x + 0.55)).abs().max()) < 1e-6


def test_local_filter_is_exact_with_a_margin_and_bounded_without():
    g = torch.Generator().manual_seed(1)
    kernel = torch.randn(3, 3, 3, generator=g)
    x = torch.randn(1, 40, 37, 34, generator=g)
    inner = LocalFilter(kernel)
    whole = F.conv3d(x[:, None], kernel[None, None], padding=1)[:, 0]
    # Support radius 1 <= margin 1: every box is used only where its neighbourhood is complete.
    exact = TiledPrior(inner, overlap=8, margin=1).velocity(x, 0.5)
    assert float((exact - whole).abs().max()) < 1e-5
    # Margin 0: a box's wrong edge voxels (missing neighbours, error <= sum|K| max|x|) keep the
    # taper's first weight sin^2(pi / (4 overlap)) along that axis; at most three axes: bound below.
    blended = TiledPrior(inner, overlap=8, margin=0).velocity(x, 0.5)
    err = float((blended - whole).abs().max())
    bound = 3 * math.sin(math.pi / 32) ** 2 * float(kernel.abs().sum()) * float(x.abs().max())
    assert 0 < err < bound, (err, bound)
    assert err < 0.1 * float(whole.abs().max())


def test_batching_gives_the_same_result_as_one_box_at_a_time():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 24, 30, 20, generator=g)
    prior = _gaussian()
    one = TiledPrior(prior, tile=16, batch_size=1).velocity(x, 0.4)
    for size in (7, 64):
        assert torch.allclose(TiledPrior(prior, tile=16, batch_size=size).velocity(x, 0.4), one, atol=1e-6)
    inner = Pointwise()
    TiledPrior(inner, batch_size=7).velocity(x, 0.4)
    assert [len(c) for c in inner.calls] == [7] * 5 + [1]  # 3 maps x (2 x 2 x 3) boxes = 36


def test_gradients_flow_through_the_tiles():
    prior = TiledPrior(_gaussian(), tile=16, batch_size=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 24, 20, 18, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.randn(1, 24, 20, 18, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((u * prior.velocity(x, 0.3)).sum(), x)
    # The Gaussian velocity is linear in x: a central difference is exact up to rounding.
    d = torch.randn(1, 24, 20, 18, generator=g, dtype=torch.float64)
    with torch.no_grad():
        fd = ((u * prior.velocity(x + d, 0.3)).sum() - (u * prior.velocity(x - d, 0.3)).sum()) / 2
    assert float((grad * d).sum()) == pytest.approx(float(fd), rel=1e-9)
    (grad,) = torch.autograd.grad(TiledPrior(Pointwise()).velocity(x, 0.3).sum(), x)
    assert torch.allclose(grad, -torch.ones_like(grad))


def test_tiled_gaussian_runs_in_flow_posterior_euler():
    n = 24
    prior = TiledPrior(_gaussian(16), tile=16)
    op = SpectralNoise(noise_power=[0.3] * n_shells(n))
    g = torch.Generator().manual_seed(5)
    y = op.simulate(_gaussian(n).draw(1, n, g)[0], g)
    likelihood = Likelihood([Observation(op, y)])
    out = FlowPosteriorEuler(steps=5, guidance="cryofm").run(prior, likelihood, torch.randn(2, n, n, n, generator=g), g)
    assert out.shape == (2, n, n, n) and bool(torch.isfinite(out).all())
    # Tiling breaks the closed form, so exact guidance refuses with its message.
    with pytest.raises(SpecError, match="closed-form conditional"):
        FlowPosteriorEuler(steps=2, guidance="exact").run(prior, likelihood, torch.randn(1, n, n, n), g)


def test_bad_tiling_parameters_are_refused():
    with pytest.raises(ValueError, match="needs a box edge"):
        TiledPrior(_gaussian())
    with pytest.raises(ValueError, match="0 <= overlap < box"):
        TiledPrior(Pointwise(), overlap=16)
    with pytest.raises(ValueError, match="2 \\* margin <= overlap"):
        TiledPrior(Pointwise(), overlap=4, margin=3)


# --- adapt_prior: resampling to the prior's voxel size --------------------------------------


def test_adapt_prior_builds_only_what_the_map_needs():
    gaussian = _gaussian()
    assert adapt_prior(gaussian, (24, 24, 24), 1.0) is gaussian  # any box, any voxel size
    same = Pointwise(box=16, voxel_size=1.5)
    assert adapt_prior(same, (16, 16, 16), 1.5) is same
    assert adapt_prior(same, (16, 16, 16), 1.5005) is same  # within rtol
    tiled = adapt_prior(same, (40, 40, 40), 1.5, overlap=4, batch_size=3)
    assert isinstance(tiled, TiledPrior) and (tiled.tile, tiled.overlap, tiled.batch_size) == (16, 4, 3)
    resampled = adapt_prior(same, (32, 32, 32), 0.75)
    assert isinstance(resampled, ResampledPrior) and resampled.prior is same  # 32 at 0.75 A = one box at 1.5 A
    both = adapt_prior(same, (32, 32, 32), 1.0)
    assert isinstance(both, ResampledPrior) and isinstance(both.prior, TiledPrior)
    assert both.prior_shape == (21, 21, 21) and both.box is None and both.voxel_size is None
    assert adapt_prior(both, (32, 32, 32), 1.0) is both


def _band_limited(shape, keep, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    return resample_tensor(resample_tensor(x, keep), shape).float()


def test_map_finer_than_the_prior_keeps_its_band_and_drops_the_rest():
    # 48^3 at 1 A, prior at 2 A with box 16: resampled to 24^3 and tiled by 2 x 2 x 2 boxes.
    inner = Pointwise(box=16, voxel_size=2.0)
    prior = adapt_prior(inner, (48, 48, 48), 1.0)
    assert prior.prior_shape == (24, 24, 24)
    s = prior.scale
    assert s == pytest.approx(0.5**1.5)  # (a_map / a_prior)^1.5: map-grid units per model unit
    low = _band_limited((48, 48, 48), (23, 23, 23))
    t = 0.3
    assert float((prior.velocity(low, t) - (-low + s * (0.25 + t))).abs().max()) < 1e-5
    # Frequencies beyond the prior's Nyquist follow the flow of a zero signal: v = -x / (1 - t).
    high = torch.randn(2, 48, 48, 48, generator=torch.Generator().manual_seed(1))
    high = high - resample_tensor(resample_tensor(high, (24, 24, 24)), (48, 48, 48))
    v = prior.velocity(low + high, t)
    assert float((v - (-low + s * (0.25 + t) - high / (1 - t))).abs().max()) < 1e-4
    # So unconditional sampling ends with nothing beyond the prior's resolution.
    out = PriorSampler(steps=4).run(prior, None, torch.randn(1, 48, 48, 48))
    rest = out - resample_tensor(resample_tensor(out, (24, 24, 24)), (48, 48, 48))
    assert float(rest.abs().max()) < 1e-5 * float(out.abs().max())


@pytest.mark.parametrize("map_edge, map_voxel, prior_edge", [(48, 1.0, 24), (16, 3.0, 32)])
def test_the_prior_sees_white_unit_noise_at_t0(map_edge, map_voxel, prior_edge):
    # The sampler starts from N(0, I) on the map's grid; the prior must see N(0, I) on its own
    # grid, at every frequency, as in training (value-preserving resampling gives 1/8 or 8 times
    # the power in the band both grids hold).
    inner = Pointwise(box=None, voxel_size=2.0 if map_voxel == 1.0 else 1.5)
    prior = adapt_prior(inner, (map_edge,) * 3, map_voxel)
    assert prior.prior_shape == (prior_edge,) * 3
    prior.velocity(torch.randn(8, map_edge, map_edge, map_edge, generator=torch.Generator().manual_seed(2)), 0.0)
    seen = inner.calls[0].double()
    power = shell_average(fftn(seen).abs().square().mean(0))[: prior_edge // 2]
    assert torch.allclose(power[1:], torch.ones_like(power[1:]), rtol=0.15), power


def test_map_coarser_than_the_prior_fills_what_the_map_cannot_hold():
    # 16^3 at 3 A, prior at 1.5 A with box 16: the prior works on 32^3 in 3 x 3 x 3 boxes.
    inner = Pointwise(box=16, voxel_size=1.5)
    prior = adapt_prior(inner, (16, 16, 16), 3.0, batch_size=32)
    assert prior.prior_shape == (32, 32, 32) and prior.scale == pytest.approx(8**0.5)
    x = torch.randn(4, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    v = prior.velocity(x, 0.0)
    assert float((v - (-x + prior.scale * 0.25)).abs().max()) < 1e-5  # cropping removes the fill exactly
    assert float(torch.cat(inner.calls).std()) == pytest.approx(1.0, rel=0.05)
    inner.calls.clear()
    prior.velocity(x, 0.5)  # (1/8 + 0.5^2 7/8)^0.5 = 0.59: the map's band plus the shrinking fill
    assert float(torch.cat(inner.calls).std()) == pytest.approx(0.59, rel=0.05)
    assert torch.equal(prior.velocity(x, 0.2), prior.velocity(x, 0.2))  # deterministic


class StrictBox(Pointwise):
    """Refuses, like `cryofm`, to be prepared for any shape but its box or another voxel size."""

    def prepare(self, ctx):
        assert ctx.shape == (self.box,) * 3 and ctx.voxel_size == self.voxel_size, (ctx.shape, ctx.voxel_size)
        super().prepare(ctx)


@pytest.mark.parametrize("shape, voxel_size", [((40, 40, 40), 1.5), ((30, 30, 30), 1.0), ((16, 16, 16), 3.0)])
def test_the_inner_prior_is_prepared_for_its_own_box_and_voxel_size(shape, voxel_size):
    inner = StrictBox(box=16, voxel_size=1.5)
    prior = adapt_prior(inner, shape, voxel_size)
    observation = Volume(torch.rand(*shape) + 1.0, voxel_size)
    prior.prepare(PrepareContext(shape, voxel_size, torch.device("cpu"), observation, ["an operator"]))
    seen = inner.prepared.observation  # the whole map, at the prior's voxel size
    assert seen.voxel_size == 1.5 and seen.shape == tuple(round(n * voxel_size / 1.5) for n in shape)


def test_resampled_prior_is_differentiable_and_prepares_the_inner_prior_at_its_voxel_size():
    inner = Pointwise(box=16, voxel_size=2.0)
    prior = adapt_prior(inner, (30, 30, 30), 1.0)  # -> 15^3 at 2 A: one padded box
    x = torch.randn(1, 30, 30, 30, requires_grad=True)
    (grad,) = torch.autograd.grad(prior.velocity(x, 0.5).sum(), x)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0
    observation = Volume(torch.rand(30, 30, 30) + 1.0, 1.0, (4.0, 5.0, 6.0))
    prior.prepare(PrepareContext((30, 30, 30), 1.0, torch.device("cpu"), observation, ["an operator"]))
    ctx = inner.prepared  # through the TiledPrior: the boxes' shape, the whole resampled map
    assert ctx.shape == (16, 16, 16) and ctx.voxel_size == 2.0 and ctx.operators == []
    assert ctx.observation.shape == (15, 15, 15) and ctx.observation.voxel_size == 2.0
    assert ctx.observation.origin == (4.0, 5.0, 6.0)
    assert float(ctx.observation.data.mean()) == pytest.approx(float(observation.data.mean()), rel=1e-6)
    # Affine normalisation commutes with resampling: normalising on the map's grid (times s) is
    # normalising on the prior's grid and mapping back by U^T, on the band both grids hold.
    x = _band_limited((30, 30, 30), (15, 15, 15))[0] + 1.0
    via_prior = prior._to_map(inner.normalize(resample_tensor(x, (15, 15, 15))))
    assert torch.allclose(prior.normalize(x), via_prior, atol=1e-5)
    assert torch.allclose(prior.denormalize(prior.normalize(x)), x, atol=1e-5)


# --- non-cubic maps (tomogram crops) ---------------------------------------------------------


class ReflectFilter(Pointwise):
    """v = K * x, a 3x3x3 convolution whose edges mirror the map (torch's 'reflect'), as tiling pads."""

    def __init__(self, kernel, box=16):
        super().__init__(box)
        self.kernel = kernel

    def velocity(self, x, t):
        return reflect_filter(x, self.kernel)


def reflect_filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    padded = F.pad(x[:, None], (1,) * 6, mode="reflect")
    return F.conv3d(padded, kernel[None, None].to(x.dtype))[:, 0]


@pytest.mark.parametrize(
    "shape",
    [(10, 14, 16), (10, 40, 21), (5, 24, 17), (36, 20, 12)],
    ids=["one-padded-box", "padded-z-tiled-y-x", "thin-z", "tiled-z-padded-x"],
)
def test_non_cubic_map_tiled_equals_the_filter_on_the_whole_map(shape):
    # A translation-equivariant velocity of radius 1 that mirrors at edges is the whole map's
    # filter exactly: axes shorter than the box are mirror-padded to it (so the map's edges see
    # mirrored neighbours, as on the whole map), longer ones are tiled with margin 1.
    g = torch.Generator().manual_seed(3)
    kernel = torch.randn(3, 3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    inner = ReflectFilter(kernel)
    tiled = TiledPrior(inner, overlap=8, margin=1, batch_size=4).velocity(x, 0.5)
    whole = reflect_filter(x, kernel)
    assert tiled.shape == x.shape
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-12)
    plans = TiledPrior(inner, overlap=8).plan(shape)
    assert [len(p.starts) for p in plans] == [1 if n <= 16 else math.ceil((n - 8) / 8) for n in shape]
    assert all(c.shape[-3:] == (16, 16, 16) for c in inner.calls)


def test_non_cubic_map_at_another_voxel_size_is_resampled_per_axis():
    # 20x48x30 at 1 A, prior at 2 A: 10x24x15 on the prior's grid (one box along z and x, mirror-
    # padded; two along y). A pointwise prior keeps the band both grids hold exactly.
    inner = Pointwise(box=16, voxel_size=2.0)
    prior = adapt_prior(inner, (20, 48, 30), 1.0)
    assert isinstance(prior, ResampledPrior) and isinstance(prior.prior, TiledPrior)
    assert prior.prior_shape == (10, 24, 15)
    assert prior.scale == pytest.approx(math.sqrt(10 * 24 * 15 / (20 * 48 * 30)))
    low = _band_limited((20, 48, 30), (9, 23, 15))
    t = 0.4
    v = prior.velocity(low, t)
    assert float((v - (-low + prior.scale * (0.25 + t))).abs().max()) < 1e-5
    observation = Volume(torch.rand(20, 48, 30) + 1.0, 1.0, (3.0, -2.0, 1.0))
    prior.prepare(PrepareContext((20, 48, 30), 1.0, torch.device("cpu"), observation, []))
    seen = inner.prepared
    assert seen.shape == (16, 16, 16) and seen.observation.shape == (10, 24, 15) and seen.observation.voxel_size == 2.0
    assert seen.observation.origin == (3.0, -2.0, 1.0)
