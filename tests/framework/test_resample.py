"""Fourier resampling: against scipy.signal.resample, analytic band-limited functions, and Angstrom geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoinverse.errors import DataError
from cryoinverse.resample import fourier_resample, resample_tensor, resample_to_shape, resampled_shape
from cryoinverse.volume import Volume

# Edge pairs (n -> m) covering odd/even on both sides, padding and cropping.
PAIRS = [(16, 24), (15, 20), (16, 21), (17, 32), (24, 16), (24, 15), (21, 16), (20, 9), (16, 17), (17, 16)]


@pytest.mark.parametrize("n, m", PAIRS)
def test_matches_scipy_resample_axis_by_axis(n, m):
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(n * 100 + m).normal(size=(n, n + 1, n + 2))
    shape = (m, m + 1, m + 2)
    ref = x
    for axis, size in enumerate(shape):
        ref = signal.resample(ref, size, axis=axis)
    out = resample_tensor(torch.from_numpy(x), shape).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-12)


@pytest.mark.parametrize("n, m", [(16, 24), (15, 20), (16, 21), (17, 32), (12, 13)])
def test_finer_grid_and_back_is_the_identity(n, m):
    # Padding then cropping is the identity for every map (the Nyquist plane is split, then folded).
    g = torch.Generator().manual_seed(n + m)
    x = torch.randn(2, n, n + 3, n + 1, generator=g)
    up = resample_tensor(x, (m, m + 3, m + 1))
    back = resample_tensor(up, (n, n + 3, n + 1))
    assert back.dtype == torch.float32
    assert float((back - x).abs().max()) < 1e-5


def test_band_limited_map_survives_a_coarser_grid_and_back():
    # Crop then pad is a projector: exact on maps holding only frequencies both grids hold.
    n, m = 24, 15
    g = torch.Generator().manual_seed(0)
    x = resample_tensor(torch.randn(n, n, n, generator=g, dtype=torch.float64), (m, m, m))
    x = resample_tensor(x, (n, n, n))  # band-limited to |k| < 7.5 cycles per box
    assert float((resample_tensor(resample_tensor(x, (m, m, m)), (n, n, n)) - x).abs().max()) < 1e-12


def _cosines(n: int, voxel: float, origin, waves) -> np.ndarray:
    """Sum of a cos(2 pi k . r / L + phi) on an n^3 grid, r in Angstrom, L = n voxel (periodic)."""
    extent = n * voxel
    r = [origin[a] + voxel * np.arange(n) for a in range(3)]
    z, y, x = np.meshgrid(*r, indexing="ij")
    out = np.zeros((n, n, n))
    for amp, (kz, ky, kx), phase in waves:
        out += amp * np.cos(2 * np.pi * (kz * (z - origin[0]) + ky * (y - origin[1]) + kx * (x - origin[2])) / extent + phase)
    return out


@pytest.mark.parametrize("n, m", [(24, 36), (24, 16), (21, 28), (20, 15)])
def test_band_limited_cosines_equal_the_function_on_the_new_grid(n, m):
    voxel, origin = 1.5, (3.0, -4.5, 12.0)
    waves = [(1.0, (0, 0, 0), 0.0), (0.7, (1, 2, -3), 0.3), (0.5, (-4, 1, 2), 1.1), (0.3, (5, -5, 6), -0.7)]
    vol = Volume(torch.from_numpy(_cosines(n, voxel, origin, waves)).float(), voxel, origin)
    new_voxel = voxel * n / m
    out = fourier_resample(vol, new_voxel)
    assert out.shape == (m, m, m)
    assert out.origin == origin and out.voxel_size == pytest.approx(new_voxel)
    expected = _cosines(m, new_voxel, origin, waves)
    np.testing.assert_allclose(out.data.numpy(), expected, atol=2e-6)


def test_nyquist_frequencies_are_split_and_folded():
    # Padding an even grid: the Nyquist cosine interpolates as cos(pi x / a), not a complex wave.
    n, voxel = 16, 1.0
    nyq = _cosines(n, voxel, (0, 0, 0), [(1.0, (n // 2, 0, 0), 0.0)])
    up = resample_tensor(torch.from_numpy(nyq), (24, 24, 24)).numpy()
    np.testing.assert_allclose(up, _cosines(24, voxel * n / 24, (0, 0, 0), [(1.0, (n // 2, 0, 0), 0.0)]), atol=1e-12)
    # Cropping to an even grid whose Nyquist a wave sits on: samples of that wave (both signs folded).
    wave = [(1.0, (6, 0, 0), 0.4), (0.5, (0, -6, 3), 0.9)]
    down = resample_tensor(torch.from_numpy(_cosines(20, 1.0, (0, 0, 0), wave)), (12, 12, 12)).numpy()
    np.testing.assert_allclose(down, _cosines(12, 20 / 12, (0, 0, 0), wave), atol=1e-12)


def _moments(vol: Volume) -> tuple[np.ndarray, float]:
    """Centroid (z, y, x) and isotropic sigma, both in Angstrom, of a positive blob."""
    d = vol.data.double().numpy()
    coords = [vol.origin[a] + vol.voxel_size * np.arange(vol.shape[a]) for a in range(3)]
    grids = np.meshgrid(*coords, indexing="ij")
    w = d / d.sum()
    centre = np.array([(w * g).sum() for g in grids])
    var = sum((w * (g - c) ** 2).sum() for g, c in zip(grids, centre)) / 3
    return centre, math.sqrt(var)


@pytest.mark.parametrize("new_voxel", [1.5, 0.75, 1.2])
def test_gaussian_blob_keeps_its_size_and_place_in_angstrom(new_voxel):
    n, voxel, sigma, origin = 48, 1.0, 4.0, (10.0, -5.0, 3.0)
    centre = np.array([origin[0] + 20.3, origin[1] + 25.1, origin[2] + 22.7])
    coords = [origin[a] + voxel * np.arange(n) for a in range(3)]
    grids = np.meshgrid(*coords, indexing="ij")
    blob = np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / (2 * sigma**2))
    vol = Volume(torch.from_numpy(blob).float(), voxel, origin)
    out = fourier_resample(vol, new_voxel)
    assert out.shape == resampled_shape(vol.shape, voxel, new_voxel) == (round(n * voxel / new_voxel),) * 3
    got_centre, got_sigma = _moments(out)
    np.testing.assert_allclose(got_centre, centre, atol=1e-3)
    assert got_sigma == pytest.approx(sigma, rel=1e-4)
    # The peak value is a sample of the same function: the maximum density is kept.
    assert float(out.data.max()) == pytest.approx(1.0, abs=0.05)


def test_mean_is_kept_and_affine_maps_commute():
    # Linear and constant-preserving: resample(a x + b) = a resample(x) + b, the property that
    # lets an affine normalisation be applied on either grid (cryoinverse.tiling.ResampledPrior).
    g = torch.Generator().manual_seed(3)
    x = torch.rand(18, 20, 22, generator=g, dtype=torch.float64) + 0.5
    for shape in [(27, 30, 33), (12, 13, 15), (9, 10, 11)]:
        out = resample_tensor(x, shape)
        assert float(out.mean()) == pytest.approx(float(x.mean()), rel=1e-12)
        np.testing.assert_allclose(resample_tensor(3 * x + 2, shape).numpy(), (3 * out + 2).numpy(), atol=1e-12)


def test_volume_geometry_and_rounding():
    vol = Volume(torch.zeros(30, 30, 30), 1.1, (1.0, 2.0, 3.0))
    out = fourier_resample(vol, 1.5)
    assert out.shape == (22, 22, 22)  # 30 * 1.1 / 1.5 = 22
    assert out.voxel_size == 1.5 and out.origin == (1.0, 2.0, 3.0)
    exact = resample_to_shape(vol, (33, 33, 33))
    assert exact.voxel_size == pytest.approx(1.0) and exact.origin == vol.origin
    assert out.data.dtype == torch.float32
    assert resampled_shape((64, 63, 1), 1.0, 1.5) == (43, 42, 1)
    with pytest.raises(DataError, match="voxel sizes must be positive"):
        resampled_shape((8, 8, 8), 1.0, 0.0)
    with pytest.raises(DataError, match="three positive edges"):
        resample_tensor(torch.zeros(4, 4, 4), (4, 0, 4))
