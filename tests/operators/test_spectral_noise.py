"""spectral-noise: noise statistics, likelihood against a dense reference, half-map estimation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoinverse.fourier import n_shells
from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.spectra import half_map_statistics, radial_power
from tests.reference import fourier_covariance


def _noise(n: int) -> torch.Tensor:
    r = torch.arange(n_shells(n), dtype=torch.float64)
    return 0.1 + 0.05 * r


def test_simulated_noise_has_the_given_spectrum():
    n = 16
    op = SpectralNoise(noise_power=_noise(n).tolist())
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(32, n, n, n)
    power = radial_power(op.simulate(x, g)).mean(0)
    shells = slice(2, n // 2 + 1)
    # shell r holds >= 32 * 50 coefficients: relative SE <= 2.5%; bound 10% is 4 SE.
    assert ((power[shells] / _noise(n)[shells]) - 1).abs().max() < 0.10


def test_white_noise_variance_in_real_space():
    op = SpectralNoise(noise_variance=0.25)
    g = torch.Generator().manual_seed(1)
    noise = op.simulate(torch.zeros(4, 16, 16, 16), g)
    # 16384 samples of variance 0.25: SE of the variance estimate ~0.003.
    assert abs(float(noise.var()) - 0.25) < 0.015


def test_log_likelihood_matches_dense_gaussian():
    n = 6
    spectrum = _noise(n)
    op = SpectralNoise(noise_power=spectrum.tolist())
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2, n, n, n))
    cov = fourier_covariance(spectrum.numpy(), n)
    r = (x - y).reshape(-1)
    expected = -0.5 * r @ np.linalg.solve(cov, r)
    got = op.log_likelihood(torch.from_numpy(x)[None], torch.from_numpy(y))
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(expected, rel=1e-9)


def test_log_likelihood_gradient_is_precision_times_residual():
    n = 8
    op = SpectralNoise(noise_variance=0.5)
    x = torch.randn(1, n, n, n, dtype=torch.float64, requires_grad=True)
    y = torch.randn(n, n, n, dtype=torch.float64)
    (g,) = torch.autograd.grad(op.log_likelihood(x, y).sum(), x)
    torch.testing.assert_close(g[0], -(x[0] - y).detach() / 0.5)


def test_half_map_estimate_recovers_the_noise():
    # Simulated gold-standard half maps: a shared signal plus independent noise of known spectrum.
    n = 32
    g = torch.Generator().manual_seed(3)
    r = torch.arange(n_shells(n), dtype=torch.float64)
    signal_power = 4.0 * torch.exp(-((r / 6.0) ** 2)) + 1e-3
    noise_half = 0.05 + 0.01 * r
    signal = GaussianPrior(power=signal_power.tolist()).draw(1, n, g)[0]
    noise_op = SpectralNoise(noise_power=noise_half.tolist())
    h1, h2 = noise_op.simulate(signal, g), noise_op.simulate(signal, g)
    op = SpectralNoise.estimate(h1, h2)
    estimated = op.shell_noise_power(n)
    shells = slice(3, n // 2 + 1)
    # The full map (h1 + h2)/2 has noise N_half / 2. Shells >= 3 hold >= 100 coefficients; the FSC-based
    # estimate is a ratio of sums, with relative error ~ sqrt(2 / count) plus signal leakage: 20% bound.
    rel = (estimated[shells] / (noise_half[shells] / 2) - 1).abs()
    assert rel.max() < 0.20, rel
    # Gold-standard identity SNR_full = 2 FSC / (1 - FSC) with SNR = S / N_full, checked where the
    # true SNR is in [0.5, 10]: below, one shell's FSC is dominated by its sampling error; above, by the
    # signal x noise cross terms (relative error ~ sqrt(SNR / count) of 1 - FSC).
    stats = half_map_statistics(h1, h2)
    snr_true = signal_power / (noise_half / 2)
    keep = (snr_true >= 0.5) & (snr_true <= 10) & (torch.arange(snr_true.numel()) >= 3) & (torch.arange(snr_true.numel()) <= n // 2)
    assert keep.sum() >= 4
    ratio = stats["snr_full"][keep] / snr_true[keep]
    assert (ratio.log().abs() < np.log(1.3)).all(), ratio


def test_half_map_estimate_of_the_lowest_shells_is_not_noise_free():
    # Shell 0 is one coefficient, whose FSC is +-1 whatever the noise: on its own it would say the DC
    # term has no noise. Pooled with shells 1-2 (>= 64 coefficients, ~32 independent complex values,
    # relative error ~ 0.18) the estimate must be the true white level within a factor of 1.6.
    n, variance = 32, 0.3
    g = torch.Generator().manual_seed(11)
    signal = 5.0 * GaussianPrior(power=[1.0] * n_shells(n)).draw(1, n, g)[0]
    noise_op = SpectralNoise(noise_variance=2 * variance)  # each half: twice the full map's noise
    h1, h2 = noise_op.simulate(signal, g), noise_op.simulate(signal, g)
    low = SpectralNoise.estimate(h1, h2).shell_noise_power(n)[:3]
    assert (low / variance).log().abs().max() < np.log(1.6), low / variance


def test_only_one_noise_source():
    with pytest.raises(ValueError, match="only one of"):
        SpectralNoise(noise_variance=1.0, noise_power=[1.0] * 9)
