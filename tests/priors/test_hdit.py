"""The HDiT network of the cryofm prior: sizes of the paper's configs, shapes, time conditioning,
and neighborhood attention against a float64 loop reference (and natten where installed)."""

from __future__ import annotations

import warnings

import pytest
import torch

from cryoinverse.priors.hdit import (
    CONFIGS,
    PAPER_PARAMETERS,
    HDiT,
    HDiTConfig,
    count_parameters,
    dense_attention,
    natten_attention,
    natten_available,
    neighborhood_attention,
)


def randomized(config: HDiTConfig, seed: int = 0) -> HDiT:
    """A model whose zero-initialised projections (outputs, AdaRMSNorm) are made random, so that
    it depends on its input and on t as a trained network does."""
    torch.manual_seed(seed)
    model = HDiT(config)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("name", ["cryofm-s", "cryofm-l"])
def test_paper_configs_have_the_papers_parameter_counts(name):
    count = count_parameters(CONFIGS[name])  # built on the meta device: instant, no memory
    assert count == pytest.approx(PAPER_PARAMETERS[name], rel=0.02), count


def test_small_configs_are_small():
    assert count_parameters(CONFIGS["tiny"]) < 0.5e6
    assert 1e6 < count_parameters(CONFIGS["small"]) < 10e6
    assert count_parameters(CONFIGS["compact"]) * 2 < 5e6  # the shipped prior stays under 5 MB as float16


def test_config_round_trip_and_backend_swap():
    for config in CONFIGS.values():
        assert HDiTConfig.from_dict(config.to_dict()) == config
    swapped = CONFIGS["cryofm-l"].with_local_attention("natten")
    assert [lv.attention for lv in swapped.levels] == ["natten", "natten", "dense"]
    with pytest.raises(ValueError, match="unknown field"):
        HDiTConfig.from_dict({**CONFIGS["tiny"].to_dict(), "depthz": 3})
    with pytest.raises(ValueError, match="multiple of 4"):
        HDiTConfig(name="bad", box=18, patch=2, levels=CONFIGS["tiny"].levels)


def test_tiny_forward_shape_and_finite():
    model = randomized(CONFIGS["tiny"])
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        v = model(x, torch.tensor([0.2, 0.7]))
    assert v.shape == x.shape and v.dtype == torch.float32
    assert torch.isfinite(v).all() and v.abs().mean() > 1e-3
    # also on a larger grid (any multiple of patch x 2^(levels - 1))
    with torch.no_grad():
        assert model(torch.randn(1, 24, 16, 8), 0.5).shape == (1, 24, 16, 8)
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.randn(1, 18, 16, 16), 0.5)


def test_untrained_model_outputs_zero():
    # HDiT zero-initialises its output projection: training starts from v = 0.
    model = HDiT(CONFIGS["tiny"])
    with torch.no_grad():
        assert not model(torch.randn(1, 16, 16, 16), 0.3).any()


def test_time_conditioning_changes_the_output():
    model = randomized(CONFIGS["tiny"])
    x = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        early, late, again = model(x, 0.1), model(x, 0.9), model(x, 0.1)
    assert torch.equal(early, again)
    assert (early - late).norm() > 0.05 * early.norm()


# --- neighborhood attention --------------------------------------------------------------------


def loop_reference(q, k, v, kernel: int, scale: float) -> torch.Tensor:
    """Neighborhood attention query by query (natten's definition, written out independently):
    along an axis of n tokens, query i sees k' = min(kernel, n) keys from
    start = max(i - kernel // 2, 0), moved back to n - k' where the window would pass the end."""

    def window(i: int, n: int) -> slice:
        kk = min(kernel, n)
        start = max(i - kernel // 2, 0)
        if start + kk > n:
            start = n - kk
        return slice(start, start + kk)

    b, X, Y, Z, h, d = q.shape
    out = torch.zeros_like(q)
    for x in range(X):
        for y in range(Y):
            for z in range(Z):
                ks = k[:, window(x, X), window(y, Y), window(z, Z)].reshape(b, -1, h, d)  # (B, K, h, d)
                vs = v[:, window(x, X), window(y, Y), window(z, Z)].reshape(b, -1, h, d)
                w = torch.softmax(torch.einsum("bhd,bkhd->bhk", q[:, x, y, z], ks) * scale, dim=-1)
                out[:, x, y, z] = torch.einsum("bhk,bkhd->bhd", w, vs)
    return out


def qkv(grid, heads=2, head_dim=8, batch=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *grid, heads, head_dim, generator=g, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("method", ["masked", "tiled"])
@pytest.mark.parametrize("kernel", [3, 5])
def test_neighborhood_matches_loop_reference(kernel, method):
    q, k, v = qkv((6, 6, 6))
    ref = loop_reference(q, k, v, kernel, scale=0.7)
    out = neighborhood_attention(q, k, v, kernel, scale=0.7, method=method)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["masked", "tiled"])
def test_neighborhood_on_uneven_grid_and_kernel_larger_than_an_axis(method):
    q, k, v = qkv((6, 4, 5), seed=1)  # kernel 5 > 4 tokens along y: that axis is seen whole
    ref = loop_reference(q, k, v, 5, scale=0.5)
    torch.testing.assert_close(neighborhood_attention(q, k, v, 5, scale=0.5, method=method), ref, rtol=1e-12, atol=1e-12)


def test_neighborhood_covering_the_grid_is_dense_attention():
    q, k, v = qkv((4, 4, 4), seed=2)
    torch.testing.assert_close(neighborhood_attention(q, k, v, 7), dense_attention(q, k, v), rtol=1e-12, atol=1e-12)


def test_neighborhood_gradients_agree_between_methods():
    q, k, v = (t.requires_grad_(True) for t in qkv((6, 6, 6), seed=3))
    grads = []
    for method in ("masked", "tiled"):
        out = neighborhood_attention(q, k, v, 3, method=method)
        grads.append(torch.autograd.grad((out * out).sum(), (q, k, v)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not natten_available(), reason="natten is not installed")
def test_neighborhood_matches_natten():
    # natten has no float64 and (on CPU, through flex attention) no backward: compare forward in float32.
    q, k, v = qkv((6, 6, 6), heads=2, head_dim=16, batch=1, dtype=torch.float32, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kernel in (3, 5):
            expected = natten_attention(q, k, v, kernel, scale=0.3)
            torch.testing.assert_close(neighborhood_attention(q, k, v, kernel, scale=0.3), expected, rtol=1e-5, atol=1e-5)
