"""Signal power and the Wiener estimate from Fourier-diagonal observations, against numpy float64; noise
estimates restricted to measured coefficients (odd/even tomograms, background cubes).

The simulated tomograms are non-cubic and wedge-masked (tilts -60..60 about y), with coloured noise of
a known per-shell power.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoinverse.components import Likelihood, Observation, PrepareContext
from cryoinverse.fourier import expand_shells, fftn, frequency_grid, ifftn, n_shells, nyquist, reference_edge
from cryoinverse.operators.missing_wedge import wedge_mask
from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.priors.cryofm import CryoFMPrior, percentile_scale
from cryoinverse.spectra import (
    MIN_POOLED,
    _taper,
    _windowed_response,
    background_noise_power,
    half_map_statistics,
    measured_shell_counts,
    signal_power,
    spectrum_on_box,
    wiener_estimate,
)
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
    s = np.maximum(s, 1e-6 * s[1:].max())  # the floor ignores shell 0, the map's mean
    filt = s[shells] / (s[shells] + noise[shells])
    want = np.fft.ifftn(filt * fy, norm="ortho").real
    np.testing.assert_allclose(got, want, atol=1e-10)
    np.testing.assert_allclose(signal_power(info, stat).numpy(), s[shells], rtol=1e-10)


def test_a_map_offset_changes_no_shell_but_the_mean():
    # A real tomogram has a mean of ~100 in its units: ~1e10 in shell 0 against ~1e3 elsewhere. The
    # signal estimate of every other shell, and so the Wiener filter there, must not depend on it;
    # where the clean map has no power the filter must pass almost nothing of the noise.
    n = 16
    clean = blob_density(n, seed=4)
    op = SpectralNoise(noise_variance=0.1)
    y = op.simulate(clean.data, torch.Generator().manual_seed(2)).double()
    shells = torch.as_tensor(_shells(n))
    estimates = []
    for offset in (0.0, 100.0):
        info, stat = Likelihood([Observation(op, y + offset)]).fourier_information()
        power = signal_power(info, stat)
        estimates.append((power, wiener_estimate(info, stat)))
    (p0, w0), (p1, w1) = estimates
    torch.testing.assert_close(p1[shells > 0], p0[shells > 0], rtol=1e-9, atol=0)
    torch.testing.assert_close(w1 - w1.mean(), w0 - w0.mean(), rtol=0, atol=1e-8)
    clean_power = fftn(clean.data.double()).abs().square()
    empty = (shells >= 6) & (clean_power < 1e-6)  # the blobs' power is gone there: pure noise
    assert int(empty.sum()) > 500
    gain = (fftn(w1).abs().square()[empty].sum() / fftn(y).abs().square()[empty].sum()).item()
    assert gain < 0.01


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


def _gaussian_blob(n: int, centre: tuple[float, float, float], sigma: float) -> torch.Tensor:
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float64),) * 3, indexing="ij")
    r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    return torch.exp(-r2 / (2 * sigma**2))


def test_low_pass_is_the_gaussian_blur_of_a_gaussian():
    # exp(-(R k)^2) in Fourier is a Gaussian kernel of sigma_f = R / (pi sqrt 2) (in A): a unit-peak
    # blob of sigma_b comes out with peak (sigma_b^2 / (sigma_b^2 + sigma_f^2))^1.5, a negative one
    # with that trough; two blobs 32 voxels apart (7 sigma) do not touch.
    from cryoinverse.spectra import low_pass

    n, voxel, resolution, sigma_b = 64, 2.0, 30.0, 3.0
    sigma_f = resolution / voxel / (math.pi * math.sqrt(2.0))
    peak = (sigma_b**2 / (sigma_b**2 + sigma_f**2)) ** 1.5
    x = _gaussian_blob(n, (16.0, 16.0, 16.0), sigma_b) - 0.5 * _gaussian_blob(n, (48.0, 48.0, 48.0), sigma_b)
    low = low_pass(x, voxel, resolution)
    assert float(low.max()) == pytest.approx(peak, rel=1e-6)
    assert float(low.min()) == pytest.approx(-0.5 * peak, rel=1e-6)
    assert float(low.sum()) == pytest.approx(float(x.sum()), rel=1e-9)  # k = 0 kept
    # without a voxel size the resolution is in voxels; never below 4 voxels
    torch.testing.assert_close(low_pass(x, None, resolution / voxel), low, rtol=0, atol=1e-12)
    sigma_4 = 4.0 / (math.pi * math.sqrt(2.0))
    assert float(low_pass(x, 2.0, 1.0).max()) == pytest.approx((sigma_b**2 / (sigma_b**2 + sigma_4**2)) ** 1.5, rel=1e-6)


def test_cryofm_background_floor_and_warning():
    import warnings

    from cryoinverse.errors import InputWarning
    from cryoinverse.priors.cryofm import BACKGROUND_LIMIT, CryoFMPrior, background_floor
    from cryoinverse.spectra import low_pass

    # the floor is min / max of the 30 A view; a constant c adds to both (the low-pass keeps k = 0)
    blob = _gaussian_blob(48, (24.0, 24.0, 24.0), 3.0)
    low = low_pass(blob, 2.0, 30.0)
    c = 0.4 * float(low.max())
    assert background_floor(blob + c, 2.0) == pytest.approx((float(low.min()) + c) / (float(low.max()) + c), rel=1e-9)
    assert abs(background_floor(blob, 2.0)) < 1e-3  # a density on a zero solvent reaches 0
    density = blob_density(32, seed=2, n_atoms=80, voxel_size=1.5)
    raised = density.with_data(density.data + 0.4 * float(density.data.max()))
    assert background_floor(raised.data, 1.5) > BACKGROUND_LIMIT

    def prepared(volume, **fields):
        prior = CryoFMPrior(weights="default", **fields)
        prior.prepare(PrepareContext((32, 32, 32), 1.5, torch.device("cpu"), volume, []))
        return prior

    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        prepared(density)
        shifted = prepared(raised, background="mean")  # the map's mean taken out: no warning
    with pytest.warns(InputWarning, match="solvent is not at zero.*background"):
        prepared(raised)
    assert shifted.density_background == pytest.approx(float(raised.data.double().mean()), rel=1e-6)
    assert shifted.density_scale == percentile_scale(raised.data - shifted.density_background, 99.999)


# -- noise on the measured coefficients: odd/even tomograms, background cubes --------------------------


SHAPE = (24, 64, 40)  # z (the beam), y (the tilt axis), x: a tomogram crop


def _field(power: torch.Tensor, shape, generator) -> torch.Tensor:
    """A real Gaussian field with E|F_k|^2 = power_k (a (nz, ny, nx) per-coefficient array)."""
    white = torch.randn(shape, generator=generator, dtype=torch.float64)
    return ifftn(torch.sqrt(power) * fftn(white))


def _wedged(x: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
    return ifftn(measured * fftn(x))


def _numpy_measured_noise(h1: np.ndarray, h2: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Noise power of (h1 + h2) / 2 per shell: mean |F1 - F2|^2 / 4 over each shell's measured coefficients."""
    kz, ky, kx = np.meshgrid(*(np.fft.fftfreq(n) for n in h1.shape), indexing="ij")
    shells = np.round(np.sqrt(kz**2 + ky**2 + kx**2) * max(h1.shape)).astype(int)
    diff = np.abs(np.fft.fftn(h1, norm="ortho") - np.fft.fftn(h2, norm="ortho")) ** 2 / 4
    return np.array([diff[(shells == r) & measured].mean() for r in range(max(h1.shape) // 2 + 1)])


def _odd_even(seed: int = 0):
    """(odd, even, wedge mask, true noise power per shell of their average): signal + independent coloured noise, wedge-masked."""
    g = torch.Generator().manual_seed(seed)
    r = torch.arange(n_shells(SHAPE), dtype=torch.float64)
    signal_power = 5.0 * torch.exp(-((r / 8.0) ** 2)) + 0.01
    noise_half = 0.2 + 0.8 * torch.exp(-((r - 20.0) / 10.0) ** 2)  # a bump at mid frequency, as CTF-weighted noise has
    measured = wedge_mask(SHAPE, -60, 60)
    signal = _field(expand_shells(signal_power, SHAPE), SHAPE, g)
    halves = [_wedged(signal + _field(expand_shells(noise_half, SHAPE), SHAPE, g), measured) for _ in range(2)]
    return halves[0], halves[1], measured, noise_half / 2


def test_odd_even_noise_over_the_measured_coefficients_recovers_the_true_power():
    h1, h2, measured, truth = _odd_even()
    estimate = half_map_statistics(h1, h2, measured=measured)["noise_full"]
    counts = measured_shell_counts(measured)
    top = nyquist(SHAPE) + 1
    # The independent float64 reference, shell by shell above the pooled lowest shells.
    reference = _numpy_measured_noise(h1.numpy(), h2.numpy(), measured.numpy())
    first = int(torch.searchsorted(counts.cumsum(0), torch.tensor(MIN_POOLED))) + 1
    np.testing.assert_allclose(estimate[first:top].numpy(), reference[first:top], rtol=1e-10)
    # Against the truth: a shell of c measured coefficients holds c / 2 independent complex values
    # (Hermitian pairs), so its mean |F1 - F2|^2 has relative standard error sqrt(2 / c); shells 4..Nyquist
    # (>= 90 measured coefficients) must be within 5 standard errors, and all of them together within 3%.
    shells = torch.arange(4, top)
    ratio = estimate[shells] / truth[shells]
    se = torch.sqrt(2.0 / counts[shells].double())
    assert ((ratio - 1).abs() < 5 * se).all(), list(zip(shells.tolist(), ratio.tolist(), (5 * se).tolist()))
    weights = counts[shells].double()
    assert float((ratio * weights).sum() / weights.sum()) == pytest.approx(1.0, abs=0.03)
    # Over all coefficients instead, the empty wedge counts as noise-free agreement: the estimate is
    # the measured fraction (0.7) of the truth, wrong by 30%.
    everywhere = half_map_statistics(h1, h2)["noise_full"][shells] / truth[shells]
    assert float((everywhere * weights).sum() / weights.sum()) == pytest.approx(float(measured.double().mean()), abs=0.05)


def test_odd_even_estimate_ignores_the_unmeasured_coefficients():
    h1, h2, measured, _ = _odd_even(seed=1)
    before = half_map_statistics(h1, h2, measured=measured)
    g = torch.Generator().manual_seed(9)
    # Junk only outside the wedge (reconstruction streaks), different and 100 times louder in each half.
    junk = [_wedged(10.0 * torch.randn(SHAPE, generator=g, dtype=torch.float64), ~measured) for _ in range(2)]
    after = half_map_statistics(h1 + junk[0], h2 + junk[1], measured=measured)
    for key in ("noise_full", "fsc", "power_half"):
        torch.testing.assert_close(after[key], before[key], rtol=1e-9, atol=1e-12)
    unmasked = half_map_statistics(h1 + junk[0], h2 + junk[1])["noise_full"]
    assert float((unmasked / before["noise_full"])[4 : nyquist(SHAPE) + 1].min()) > 10  # the test can tell


def test_measured_shell_average_fills_shells_without_measured_coefficients():
    # Only the tilt-axis line (k_z = k_x = 0) is "measured": shells above its last sample hold its last value.
    shape = (8, 12, 10)
    measured = torch.zeros(shape, dtype=torch.bool)
    measured[0, :, 0] = True
    values = torch.arange(np.prod(shape), dtype=torch.float64).reshape(shape)
    h = half_map_statistics(values, 2 * values, measured=measured)
    assert bool(torch.isfinite(h["noise_full"]).all()) and bool((h["noise_full"] > 0).all())
    counts = measured_shell_counts(measured)
    assert counts[7:].sum() == 0 and counts[6] > 0
    assert bool((h["power_half"][7:] == h["power_half"][6]).all())


def test_spectrum_on_box_reads_physical_frequency():
    cube = 20
    spectrum = 1.0 + 0.1 * torch.arange(n_shells(cube), dtype=torch.float64)  # linear in shell: interpolation is exact
    shape = (36, 96, 64)
    got = spectrum_on_box(spectrum, cube, shape)
    r = torch.arange(n_shells(shape), dtype=torch.float64)
    want = (1.0 + 0.1 * r * cube / reference_edge(shape)).clamp(max=float(spectrum[-1]))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(spectrum_on_box(spectrum, cube, cube), spectrum)  # same edge: its own values


def test_windowed_response_matches_monte_carlo():
    # E|F(w (n - m))_k|^2 for wedge-masked unit-power noise, the window-weighted mean m removed:
    # 3000 draws give a relative standard error of 1.8% per coefficient; the worst of 1000 within 8%.
    c = 10
    edge = _taper(c, 3)
    window = edge[:, None, None] * edge[None, :, None] * edge[None, None, :]
    measured = wedge_mask(c, -50, 50)
    response = _windowed_response(window, measured)
    g = torch.Generator().manual_seed(4)
    noise = _wedged(torch.randn(3000, c, c, c, generator=g, dtype=torch.float64), measured)
    noise = noise - (window * noise).sum(dim=(1, 2, 3), keepdim=True) / window.sum()
    observed = fftn(window * noise).abs().square().mean(0)
    strong = response > 0.1 * float(window.square().mean())
    assert int(strong.sum()) > 300
    assert float(((observed - response) / response)[strong].abs().max()) < 0.08
    assert float(response[0, 0, 0]) == pytest.approx(0.0, abs=1e-12)  # the mean is removed


def _tomogram(seed: int, blobs: bool):
    """A synthetic wedge-masked tomogram (32, 96, 64): coloured noise everywhere, 30 particles in its first half along y."""
    shape = (32, 96, 64)
    g = torch.Generator().manual_seed(seed)
    kz, ky, kx = frequency_grid(shape)

    def power(f):
        return 0.6 + 3.0 * f**2  # noise rising with frequency, as weighted back-projection makes it

    measured = wedge_mask(shape, -60, 60)
    volume = _field(power(torch.sqrt(kz**2 + ky**2 + kx**2)), shape, g)
    if blobs:
        grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij"))
        particles = torch.zeros(shape, dtype=torch.float64)
        for _ in range(30):
            centre = torch.tensor([6 + 20 * torch.rand(1, generator=g).item(), 6 + 36 * torch.rand(1, generator=g).item(), 6 + 52 * torch.rand(1, generator=g).item()])
            particles += 3.0 * torch.exp(-((grid - centre[:, None, None, None]) ** 2).sum(0) / (2 * 3.0**2))
        volume = volume + particles
    r = torch.arange(n_shells(shape), dtype=torch.float64) / reference_edge(shape)
    return _wedged(volume, measured) + 100.0, power(r)  # + 100: a tomogram's mean is far from 0


def test_background_noise_recovers_the_noise_beside_particles():
    volume, truth = _tomogram(seed=0, blobs=True)
    shape = tuple(volume.shape)
    estimate = background_noise_power(volume, lambda box: wedge_mask(box, -60, 60), cube=20)
    assert estimate.shape == (n_shells(shape),)
    # The half without particles holds about 12 cubes of 20^3 of data. A cube's shell 1 (the volume's shells
    # 1-9, below 2 / 20 cycles per voxel) has about 12 measured coefficients, so there the standard error
    # is about 10%; above, under 5%. Over 12 seeds the worst shell was off by 32% below shell 10 and by 19%
    # from shell 10 to Nyquist, and the mean over shells by at most 5% (this seed: 6%, 5%, 0.6%).
    top = nyquist(shape) + 1
    ratio = estimate / truth
    assert float((ratio[1:10] - 1).abs().max()) < 0.35, ratio[1:10]
    assert float((ratio[10:top] - 1).abs().max()) < 0.2, ratio[10:top]
    assert float(ratio[1:top].mean()) == pytest.approx(1.0, abs=0.06)
    # The particles were excluded: with every cube taken as background (fraction 1), the low shells hold
    # the particles' power, over 20 times the noise.
    everything = background_noise_power(volume, lambda box: wedge_mask(box, -60, 60), cube=20, fraction=1.0)
    assert float((everything / truth)[1:8].min()) > 20


def test_background_noise_without_a_wedge_and_bad_inputs():
    g = torch.Generator().manual_seed(5)
    volume = 0.7 * torch.randn(20, 40, 30, generator=g, dtype=torch.float64)
    estimate = background_noise_power(volume, cube=16)  # white, variance 0.49, every coefficient measured
    # The volume holds only 4.4 cubes of 16^3 of data (24 cubes overlapping by half): per shell within 30%,
    # the mean over shells 1..Nyquist within 5%.
    ratio = estimate[1 : nyquist(volume.shape) + 1] / 0.49
    assert float((ratio - 1).abs().max()) < 0.3 and float(ratio.mean()) == pytest.approx(1.0, abs=0.05)
    with pytest.raises(Exception, match="shortest edge is 6 voxels"):
        background_noise_power(torch.zeros(6, 40, 40))
    with pytest.raises(ValueError, match="fraction"):
        background_noise_power(volume, fraction=0.0)
    assert math.isfinite(float(background_noise_power(volume, cube=8).sum()))


@pytest.mark.parametrize("name", ["13pf_MT", "14pf_MT"])
def test_background_noise_of_real_tomograms(shared_data, name):
    # Microtubule crops at 10.52 A (z the beam, tilt axis y, a +-60 degree wedge). Beyond 0.7 Nyquist
    # (30 A) such a tomogram is noise: the estimate must match its own power over the measured
    # coefficients there (it is within 0.95..1.08 of it); at 100-300 A the filament dominates: the noise is
    # a quarter of the power on average (some shells between the lattice's peaks reach two thirds).
    from cryoinverse.mrc import read_volume
    from cryoinverse.operators.missing_wedge import MissingWedge
    from cryoinverse.spectra import measured_shell_average

    volume = read_volume(shared_data / "tomograms" / f"{name}.mrc")
    shape = volume.shape
    op = MissingWedge(background_noise=True).estimate_noise_from_background(volume)
    noise = op.shell_noise_power(shape)
    power = measured_shell_average(fftn(volume.data.double() - volume.data.double().mean()).abs().square(), op.mask(shape))
    top = nyquist(shape)
    ratio = noise / power
    assert float((ratio[int(0.7 * top) : top + 1] - 1).abs().max()) < 0.12, ratio[int(0.7 * top) : top + 1]
    low = [r for r in range(1, top + 1) if 100 <= reference_edge(shape) * volume.voxel_size / r <= 300]
    assert float(ratio[low].mean()) < 0.4, ratio[low]
