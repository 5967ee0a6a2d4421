"""Signal power and the Wiener estimate from Fourier-diagonal observations, against numpy float64."""

from __future__ import annotations

import numpy as np
import torch

from cryoinverse.components import Likelihood, Observation, PrepareContext
from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.priors.cryofm import CryoFMPrior, percentile_scale
from cryoinverse.spectra import signal_power, wiener_estimate
from tests.conftest import blob_density


def _shells(n):
    k = np.fft.fftfreq(n)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return np.round(np.sqrt(kz**2 + ky**2 + kx**2) * n).astype(int)


def test_wiener_estimate_is_the_per_shell_wiener_filter():
    n = 16
    clean = blob_density(n, seed=2)
    noise = 0.05 + 0.01 * np.arange(30)
    op = SpectralNoise(noise_power=noise.tolist())
    y = op.simulate(clean.data, torch.Generator().manual_seed(0))
    info, stat = Likelihood([Observation(op, y)]).fourier_information()
    got = wiener_estimate(info, stat).numpy()

    shells = _shells(n)
    fy = np.fft.fftn(y.double().numpy(), norm="ortho")
    power = np.array([np.mean(np.abs(fy[shells == r]) ** 2) for r in range(shells.max() + 1)])
    s = np.clip(power - noise[: shells.max() + 1], 0, None)
    s = np.maximum(s, 1e-6 * s.max())
    filt = s[shells] / (s[shells] + noise[shells])
    want = np.fft.ifftn(filt * fy, norm="ortho").real
    np.testing.assert_allclose(got, want, atol=1e-10)
    np.testing.assert_allclose(signal_power(info, stat).numpy(), s[shells], rtol=1e-10)


def test_two_observations_combine_like_their_average():
    """Two maps with noise 2N each hold the information of their average with noise N."""
    n = 12
    clean = blob_density(n, seed=3)
    g = torch.Generator().manual_seed(1)
    half = SpectralNoise(noise_variance=0.2)
    y1, y2 = half.simulate(clean.data, g), half.simulate(clean.data, g)
    both = Likelihood([Observation(half, y1), Observation(half, y2)]).fourier_information()
    mean = Likelihood([Observation(SpectralNoise(noise_variance=0.1), 0.5 * (y1 + y2))]).fourier_information()
    torch.testing.assert_close(wiener_estimate(*both), wiener_estimate(*mean), rtol=1e-4, atol=1e-6)  # float32 inputs


def test_noise_free_operators_give_no_estimate():
    info = torch.full((4, 4, 4), float("inf"), dtype=torch.float64)
    assert wiener_estimate(info, torch.zeros(4, 4, 4, dtype=torch.complex128)) is None


def test_cryofm_scale_comes_from_the_signal_estimate():
    clean = blob_density(32, seed=4, n_atoms=80, voxel_size=1.5)
    noisy = clean.with_data(clean.data + 0.5 * torch.randn(clean.data.shape, generator=torch.Generator().manual_seed(0)))
    estimate = clean.with_data(0.9 * clean.data)
    ctx = PrepareContext((32, 32, 32), 1.5, torch.device("cpu"), noisy, [], estimate)
    prior = CryoFMPrior()
    prior.prepare(ctx)
    assert prior.density_scale == percentile_scale(estimate.data, 99.999)
    raw = CryoFMPrior(scale_from="observation")
    raw.prepare(ctx)
    assert raw.density_scale == percentile_scale(noisy.data, 99.999) > prior.density_scale
