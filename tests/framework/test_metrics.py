"""Map-comparison metrics against independent numpy float64 computations and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoinverse.metrics import (
    FAIL_RESOLUTION,
    auc_fsc,
    compare,
    fsc,
    real_space_correlation,
    resolution_at,
    rmse,
)
from cryoinverse.volume import Volume
from tests.reference import directional_fsc_np


def shells_numpy(n: int) -> np.ndarray:
    """Shell index round(|k| n) of every coefficient, k from np.fft.fftfreq (cycles/voxel)."""
    k = np.fft.fftfreq(n)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return np.round(np.sqrt(kz**2 + ky**2 + kx**2) * n).astype(int)


def fsc_numpy(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """FSC of shells 0..Nyquist: per shell Re sum A conj(B) / sqrt(sum |A|^2 sum |B|^2), float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if mask is not None:
        a, b = a * mask, b * mask
    n = a.shape[-1]
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    shell = shells_numpy(n)
    curve = []
    for r in range(n // 2 + 1):
        A, B = fa[shell == r], fb[shell == r]
        curve.append(np.sum(A * np.conj(B)).real / np.sqrt(np.sum(np.abs(A) ** 2) * np.sum(np.abs(B) ** 2)))
    return np.array(curve)


def soft_sphere(n: int, radius: float, width: float = 2.0) -> np.ndarray:
    """A spherical mask, 1 inside `radius` voxels with a raised-cosine edge of `width` voxels."""
    g = np.indices((n, n, n)) - (n - 1) / 2
    r = np.sqrt((g**2).sum(axis=0))
    edge = np.clip((r - radius) / width, 0.0, 1.0)
    return 0.5 * (1 + np.cos(np.pi * edge))


def correlated_pair(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth-ish random map and a noisy, rescaled copy: an FSC curve that falls with frequency."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((n, n, n))
    shell = shells_numpy(n)
    a = np.fft.ifftn(np.fft.fftn(white) / (1.0 + shell)).real + 0.3  # 1/k amplitude, non-zero mean
    b = 0.7 * a + 0.2 * rng.standard_normal((n, n, n))
    return a, b


# --- FSC ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [16, 17])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_fsc_matches_numpy_float64(n, masked):
    a, b = correlated_pair(n, seed=n)
    mask = soft_sphere(n, radius=n / 3) if masked else None

    expected = fsc_numpy(a, b, mask)
    got = fsc(
        torch.from_numpy(a.astype(np.float32)),
        torch.from_numpy(b.astype(np.float32)),
        None if mask is None else torch.from_numpy(mask.astype(np.float32)),
    )

    assert got.dtype == torch.float64
    assert got.shape == (n // 2 + 1,)
    # float32 inputs, float64 arithmetic: agreement to float32 precision
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    assert expected[1] - expected[-1] > 0.3  # the curve really falls: a non-trivial check


def test_fsc_accepts_volumes_and_batches():
    a, b = correlated_pair(16, seed=3)
    va, vb = Volume(torch.from_numpy(a), 2.0), Volume(torch.from_numpy(b), 2.0)
    np.testing.assert_allclose(fsc(va, vb).numpy(), fsc_numpy(a, b), atol=1e-12)

    batch_a = torch.from_numpy(np.stack([a, b]))
    batch_b = torch.from_numpy(np.stack([b, a]))
    curves = fsc(batch_a, batch_b)
    assert curves.shape == (2, 9)
    np.testing.assert_allclose(curves[0].numpy(), fsc_numpy(a, b), atol=1e-12)
    np.testing.assert_allclose(curves[1].numpy(), fsc_numpy(b, a), atol=1e-12)


def test_fsc_of_a_map_with_itself_is_one_and_with_its_negative_minus_one():
    a, _ = correlated_pair(16)
    x = torch.from_numpy(a)
    np.testing.assert_allclose(fsc(x, x).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(fsc(x, 3.0 * x).numpy(), 1.0, atol=1e-12)  # blind to scale
    np.testing.assert_allclose(fsc(x, -x).numpy(), -1.0, atol=1e-12)


def test_fsc_rejects_maps_of_different_shape():
    # Non-cubic maps are compared (tests/test_fourier_noncubic.py); two different shapes are not.
    with pytest.raises(ValueError, match="one shape"):
        fsc(torch.zeros(16, 16, 16), torch.zeros(17, 17, 17))
    with pytest.raises(ValueError, match="one shape"):
        fsc(torch.zeros(16, 16, 12), torch.zeros(16, 12, 16))


@pytest.mark.parametrize("noise_power", [0.5, 3.0])
def test_fsc_of_signal_plus_white_noise_follows_sqrt_s_over_s_plus_n(noise_power):
    """y = x + n with n white of variance N: E FSC_r ~ sqrt(S_r / (S_r + N)) (orthonormal FFT).

    x is fixed; S_r is its mean |X_k|^2 over shell r. The FSC of one draw scatters with standard
    deviation about (1 - rho^2) / sqrt(m_r / 2) over the m_r coefficients of the shell (half of
    them independent), so the mean of D draws must lie within 4 such standard errors
    (1 - rho^2) / sqrt(m_r D / 2), plus 0.005 for the O(1 / m_r) bias of the ratio.
    """
    n, draws = 16, 200
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, n, n))
    shell = shells_numpy(n)
    X = np.fft.fftn(x, norm="ortho")
    shells = range(1, n // 2 + 1)
    signal = np.array([np.mean(np.abs(X[shell == r]) ** 2) for r in shells])
    counts = np.array([np.sum(shell == r) for r in shells])

    y = x + math.sqrt(noise_power) * rng.standard_normal((draws, n, n, n))
    curves = fsc(torch.from_numpy(np.broadcast_to(x, y.shape).copy()), torch.from_numpy(y)).numpy()
    mean = curves[:, 1:].mean(axis=0)

    rho = np.sqrt(signal / (signal + noise_power))
    bound = 4 * (1 - rho**2) / np.sqrt(counts * draws / 2) + 0.005
    assert np.all(np.abs(mean - rho) < bound), (mean - rho, bound)


# --- AUC and resolution ---------------------------------------------------------------------


def test_auc_is_the_mean_over_shells_one_to_nyquist():
    a, b = correlated_pair(16, seed=5)
    curve = fsc(torch.from_numpy(a), torch.from_numpy(b))
    assert auc_fsc(curve) == pytest.approx(np.mean(fsc_numpy(a, b)[1:9]), abs=1e-12)

    synthetic = torch.tensor([1.0, 0.9, 0.7, 0.4, 0.1], dtype=torch.float64)
    assert auc_fsc(synthetic) == pytest.approx((0.9 + 0.7 + 0.4 + 0.1) / 4)


def frequency_of_crossing(curve: list[float], threshold: float, n: int, voxel_size: float) -> float:
    """Linear interpolation in spatial frequency (1/A) between the shells around the first drop."""
    r = next(i for i in range(1, len(curve)) if curve[i] < threshold)
    f_above, f_below = (r - 1) / (n * voxel_size), r / (n * voxel_size)
    return f_above + (f_below - f_above) * (curve[r - 1] - threshold) / (curve[r - 1] - curve[r])


def test_resolution_at_interpolates_a_known_linear_crossing():
    n, voxel = 16, 2.0
    # Linear between shells 3 (0.6) and 4 (0.4): 0.5 is crossed half-way, at 3.5 shells.
    curve = [1.0, 0.95, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.0]
    t = torch.tensor(curve, dtype=torch.float64)

    assert resolution_at(t, voxel, 0.5) == pytest.approx(n * voxel / 3.5, rel=1e-12)  # 9.142857 A
    assert resolution_at(t, voxel, 0.5) == pytest.approx(1 / frequency_of_crossing(curve, 0.5, n, voxel), rel=1e-12)
    # 0.143 lies between shells 5 (0.2) and 6 (0.1): at 5 + 0.57 shells.
    assert resolution_at(t, voxel, 0.143) == pytest.approx(n * voxel / 5.57, rel=1e-12)


def test_resolution_at_reports_the_first_crossing():
    curve = [1.0, 0.9, 0.45, 0.8, 0.7, 0.3, 0.2, 0.1, 0.0]  # dips at shell 2, recovers, falls at 5
    t = torch.tensor(curve, dtype=torch.float64)
    # between shell 1 (0.9) and shell 2 (0.45): 1 + 0.4 / 0.45 shells
    assert resolution_at(t, 1.0, 0.5) == pytest.approx(16 / (1 + 0.4 / 0.45), rel=1e-12)


def test_resolution_at_never_crossing_is_nyquist():
    flat = torch.full((9,), 0.9, dtype=torch.float64)
    assert resolution_at(flat, 1.7, 0.5) == pytest.approx(2 * 1.7)  # even box 16: 2 x voxel
    assert resolution_at(flat, 1.7, 0.5, box=16) == pytest.approx(2 * 1.7)
    # odd box 17: the last shell (8) is at 17 / 8 voxels, just coarser than 2 x voxel
    assert resolution_at(flat, 1.7, 0.5, box=17) == pytest.approx(17 * 1.7 / 8)


def test_resolution_of_real_maps_matches_the_numpy_curve():
    a, b = correlated_pair(16, seed=11)
    curve = fsc_numpy(a, b)
    got = resolution_at(torch.from_numpy(curve), 1.3, 0.5)
    assert got == pytest.approx(1 / frequency_of_crossing(list(curve), 0.5, 16, 1.3), rel=1e-12)


# --- compare, fail flag, real-space metrics -------------------------------------------------


def sign_antisymmetric(n: int) -> np.ndarray:
    """s(k) in {-1, 0, 1} with s(-k) = -s(k) on the FFT grid; 0 where k = -k (DC and Nyquist corners)."""
    j = np.round(np.fft.fftfreq(n) * n).astype(int)
    axis_sign = np.where((j == 0) | (2 * j == -n), 0, np.sign(j))
    sz, sy, sx = np.meshgrid(axis_sign, axis_sign, axis_sign, indexing="ij")
    return np.where(sz != 0, sz, np.where(sy != 0, sy, sx))


def copy_up_to_shell(a: np.ndarray, keep_shells: int) -> np.ndarray:
    """`a` in shells <= keep_shells, in quadrature (i s(k) A_k, same power) beyond: FSC exactly 1, then 0."""
    n = a.shape[-1]
    fa = np.fft.fftn(a)
    fb = np.where(shells_numpy(n) <= keep_shells, fa, 1j * sign_antisymmetric(n) * fa)
    b = np.fft.ifftn(fb)
    assert np.abs(b.imag).max() < 1e-12  # Hermitian symmetry kept: a real map
    return b.real


@pytest.mark.parametrize("voxel_size, failed", [(3.0, True), (2.5, False)])
def test_fail_flag_is_fsc05_resolution_worse_than_30_angstrom(voxel_size, failed):
    assert FAIL_RESOLUTION == 30.0
    n = 16
    a = np.random.default_rng(4).standard_normal((n, n, n))
    b = copy_up_to_shell(a, keep_shells=1)
    np.testing.assert_allclose(fsc_numpy(a, b)[1:], [1, 0, 0, 0, 0, 0, 0, 0], atol=1e-12)  # 0.5 at 1.5 shells
    result = compare(Volume(torch.from_numpy(b), voxel_size), Volume(torch.from_numpy(a), voxel_size))

    expected_resolution = n * voxel_size / 1.5  # 32 A at 3 A/voxel, 26.7 A at 2.5 A/voxel
    assert result.resolution_05 == pytest.approx(expected_resolution, rel=1e-9)
    assert result.failed is failed


def test_compare_collects_every_metric_against_numpy():
    n, voxel = 16, 1.5
    a, b = correlated_pair(n, seed=9)
    result = compare(Volume(torch.from_numpy(b), voxel), Volume(torch.from_numpy(a), voxel))
    curve = fsc_numpy(b, a)

    assert [p[0] for p in result.curve] == pytest.approx([n * voxel / r for r in range(1, 9)])
    np.testing.assert_allclose([p[1] for p in result.curve], curve[1:], atol=1e-12)
    assert result.auc == pytest.approx(curve[1:].mean(), abs=1e-12)
    assert result.correlation == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], abs=1e-12)
    assert result.rmse == pytest.approx(np.sqrt(np.mean((a - b) ** 2)), rel=1e-12)
    d = result.as_dict()
    assert set(d) == {"auc", "resolution_0.5", "resolution_0.143", "failed", "correlation", "rmse", "curve"}


def test_real_space_correlation_and_rmse_match_numpy():
    rng = np.random.default_rng(12)
    a = rng.standard_normal((16, 16, 16))
    b = 0.6 * a + 0.8 * rng.standard_normal((16, 16, 16)) + 2.0
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)

    assert real_space_correlation(ta, tb) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], abs=1e-12)
    assert rmse(ta, tb) == pytest.approx(np.sqrt(np.mean((a - b) ** 2)), rel=1e-12)


def test_masked_real_space_metrics_match_numpy():
    rng = np.random.default_rng(13)
    a = rng.standard_normal((16, 16, 16))
    b = 0.5 * a + rng.standard_normal((16, 16, 16))
    binary = soft_sphere(16, radius=5, width=1e-9) > 0.5
    soft = soft_sphere(16, radius=4, width=3)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)

    # a 0/1 mask: the metrics of the voxels inside it
    m = torch.from_numpy(binary.astype(np.float64))
    assert real_space_correlation(ta, tb, m) == pytest.approx(np.corrcoef(a[binary], b[binary])[0, 1], abs=1e-12)
    assert rmse(ta, tb, m) == pytest.approx(np.sqrt(np.mean((a[binary] - b[binary]) ** 2)), rel=1e-12)

    # a soft mask: weighted Pearson correlation and weighted mean square
    w = soft.ravel()
    cov = np.cov(a.ravel(), b.ravel(), aweights=w)
    s = torch.from_numpy(soft)
    assert real_space_correlation(ta, tb, s) == pytest.approx(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]), abs=1e-12)
    assert rmse(ta, tb, s) == pytest.approx(np.sqrt(np.average((a - b) ** 2, weights=soft)), rel=1e-12)


@pytest.mark.parametrize("n", [7, 8, 15, 16, 65])
def test_every_shell_holds_coefficients_odd_boxes_too(n):
    """n_shells counts shells up to the grid's corner exactly: none is empty (0 / 0 in shell means)."""
    from cryoinverse.fourier import n_shells, shell_counts, shell_index

    assert int(shell_index(n).max()) + 1 == n_shells(n)
    assert bool((shell_counts(n) > 0).all())


# --- directional FSC ------------------------------------------------------------------------


@pytest.mark.parametrize("shape,direction,angle", [((10, 12, 14), (0.0, 0.0, 1.0), 20.0), ((11, 11, 11), (0.3, -0.5, 0.8), 35.0)])
def test_directional_fsc_matches_a_float64_brute_force(shape, direction, angle):
    from cryoinverse.metrics import directional_fsc

    rng = np.random.default_rng(3)
    a = rng.standard_normal(shape)
    b = 0.5 * a + rng.standard_normal(shape)
    got = directional_fsc(torch.from_numpy(a), torch.from_numpy(b), {"d": direction}, angle)["d"].numpy()
    want = directional_fsc_np(a, b, np.array(direction), angle)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    held = ~np.isnan(want)
    np.testing.assert_allclose(got[held], want[held], atol=1e-12)


def test_a_cone_of_90_degrees_is_the_whole_shell():
    from cryoinverse.metrics import directional_fsc

    a, b = correlated_pair(13)
    cones = directional_fsc(torch.from_numpy(a), torch.from_numpy(b), angle=90.0)
    for curve in cones.values():
        np.testing.assert_allclose(curve.numpy(), fsc_numpy(a, b), atol=1e-12)


def test_directional_resolution_of_half_maps_blurred_along_z_follows_the_closed_form():
    """Half maps x * H + noise, H = exp(-k_z^2 / (2 s^2)) a blur along z only, x and the noise white with
    powers S and N: the FSC at k is H^2 S / (H^2 S + N). About x (k_z ~ 0 in the cone) it stays
    S / (S + N) = 0.95 at every shell, so x and y resolve to Nyquist (the first shells of a cone hold
    a few coefficients only, hence the high S / N); about z it falls below 0.5 where H^2 = N / S,
    i.e. |k_z| = s sqrt(ln(S / N)), and FSC-0.5 lands there within the cone's spread (k_z from |k|
    cos 20 deg to |k|). One pair's cone curve scatters by ~0.1 near the crossing (~50 independent
    coefficients per shell), so the curves of 8 independent pairs are averaged."""
    from cryoinverse.metrics import directional_fsc, directional_resolutions

    n, vs, s, snr, pairs = 48, 2.0, 0.15, 20.0, 8
    rng = np.random.default_rng(11)
    x = rng.standard_normal((pairs, n, n, n))
    kz = np.fft.fftfreq(n)[:, None, None]
    blurred = np.fft.ifftn(np.fft.fftn(x, axes=(1, 2, 3)) * np.exp(-kz**2 / (2 * s**2)), axes=(1, 2, 3)).real
    halves = [blurred + rng.standard_normal(x.shape) / math.sqrt(snr) for _ in range(2)]
    curves = directional_fsc(torch.from_numpy(halves[0]), torch.from_numpy(halves[1]))
    report = directional_resolutions({k: c.mean(dim=0) for k, c in curves.items()}, (n, n, n), vs)
    nyquist_a = 2 * vs
    assert report["x"]["resolution_0.5"] == pytest.approx(nyquist_a)
    assert report["y"]["resolution_0.5"] == pytest.approx(nyquist_a)
    k_cross = s * math.sqrt(math.log(snr))  # cycles per voxel along z
    lo, hi = k_cross, k_cross / math.cos(math.radians(20.0))  # |k| at the crossing, cone axis to rim
    assert vs / hi * 0.97 < report["z"]["resolution_0.5"] < vs / lo * 1.03
    assert report["x"]["auc"] == pytest.approx(snr / (1 + snr), abs=0.01)
