"""The gaussian prior: its velocity against a dense-covariance reference, and its samples' spectrum."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import attrs
import pytest
import torch

from cryoinverse.fourier import n_shells
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.samplers.prior import PriorSampler
from cryoinverse.spectra import radial_power
from tests.reference import fourier_covariance


def _spectrum(n: int) -> torch.Tensor:
    r = torch.arange(n_shells(n), dtype=torch.float64)
    return 3.0 * torch.exp(-((r / 3.0) ** 2)) + 0.05


@pytest.mark.parametrize("t", [0.05, 0.3, 0.5, 0.9])
def test_velocity_matches_score_of_dense_gaussian(t):
    # For x_t ~ N(t mu, t^2 C + (1 - t)^2 I) the flow velocity is v = (x_t + (1 - t) score) / t
    # (DESIGN.md section 8); the score comes from a dense float64 solve, independent of the FFT path.
    n = 6
    spectrum = _spectrum(n)
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(n, n, n))
    x_t = rng.normal(size=(n, n, n)) * 2
    cov = fourier_covariance(spectrum.numpy(), n)
    sigma_t = t * t * cov + (1 - t) ** 2 * np.eye(n**3)
    score = -np.linalg.solve(sigma_t, (x_t - t * mu).reshape(-1)).reshape(n, n, n)
    expected = (x_t + (1 - t) * score) / t

    prior = GaussianPrior(power=spectrum.tolist())
    prior._mean = torch.from_numpy(mu)
    got = prior.velocity(torch.from_numpy(x_t)[None], t)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_velocity_at_endpoints():
    n = 8
    prior = GaussianPrior(power=_spectrum(n).tolist())
    x = torch.randn(2, n, n, n, dtype=torch.float64)
    # t = 0: x_t = x0 is independent of x1, so v = E[x1] - x0 = -x0 (zero mean).
    torch.testing.assert_close(prior.velocity(x, 0.0), -x)
    # t = 1: x_t = x1, E[x0 | x1] = 0, so v = x1.
    torch.testing.assert_close(prior.velocity(x, 1.0), x)


def test_conditional_mean_is_data_estimate_of_velocity():
    # E[x1 | x_t] must equal x1_hat = x_t + (1 - t) v for the same prior.
    n, t = 8, 0.4
    prior = GaussianPrior(power=_spectrum(n).tolist())
    x = torch.randn(3, n, n, n, dtype=torch.float64)
    c = prior.conditional(x, t)
    torch.testing.assert_close(c.mean, x + (1 - t) * prior.velocity(x, t))


def test_prior_sampler_reproduces_the_spectrum():
    n, batch = 16, 64
    spectrum = _spectrum(n)
    prior = GaussianPrior(power=spectrum.tolist())
    g = torch.Generator().manual_seed(0)
    samples = PriorSampler(steps=100).run(prior, None, torch.randn(batch, n, n, n, generator=g), g)
    power = radial_power(samples).mean(0)
    exact = radial_power(prior.draw(batch, n, g)).mean(0)
    shells = slice(2, n // 2 + 1)  # shells 0-1 hold too few coefficients for a tight bound
    # Monte Carlo: shell r averages >= 64 * 50 squared Gaussians, relative SE <= 3%; Euler error of
    # 100 steps on this linear ODE is below 1%. Bound 10% is >3 standard errors.
    rel = (power[shells] / spectrum[shells] - 1).abs()
    assert rel.max() < 0.10, rel
    rel_exact = (exact[shells] / spectrum[shells] - 1).abs()
    assert rel_exact.max() < 0.10, rel_exact


def test_from_map_and_floor(density):
    prior = GaussianPrior.from_map(density, power_floor=1e-3)
    spec = prior.spectrum(density.shape[-1])
    raw = radial_power(density.data)
    reference = raw[1:].max()  # shell 0 is the map's mean: floors ignore it
    assert spec.min() >= 1e-3 * reference * (1 - 1e-12)
    big = raw >= 1e-3 * reference
    torch.testing.assert_close(spec[big], raw[big])
    assert int((~big).sum()) > 0 and torch.allclose(spec[~big], torch.full_like(spec[~big], 1e-3 * float(reference)))


def test_power_list_too_short_is_an_error():
    prior = GaussianPrior(power=[1.0, 1.0])
    with pytest.raises(ValueError, match="needs at least 9"):
        prior.spectrum(16)


@attrs.define
class _Blur:
    """y = G x + n: a Gaussian blur (Fourier-diagonal) with white noise, as a plugin would write it."""

    name: ClassVar[str] = "test-blur"
    sigma: float = 1.0  # voxels
    noise: float = 1.0

    def fourier_diagonal(self, n):
        from cryoinverse.fourier import expand_shells, n_shells

        k = torch.arange(n_shells(n), dtype=torch.float64) / n  # cycles per voxel
        a = expand_shells(torch.exp(-2 * (torch.pi * k * self.sigma) ** 2), n)
        return a, torch.full_like(a, self.noise)

    def forward(self, x):
        from cryoinverse.fourier import fftn, ifftn

        a, _ = self.fourier_diagonal(x.shape[-1])
        return ifftn(a.to(x.device) * fftn(x.double())).to(x.dtype)

    def log_likelihood(self, x, y):
        return -0.5 * (self.forward(x) - y).square().sum(dim=(-3, -2, -1)) / self.noise

    def simulate(self, x, generator=None):
        return self.forward(x) + self.noise**0.5 * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def test_default_spectrum_survives_a_blur_that_kills_high_frequencies():
    """Shells a blur nearly removes borrow their spectrum: no explosion, a sane restoration."""
    from cryoinverse.metrics import real_space_correlation
    from cryoinverse.runner import execute
    from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
    from cryoinverse.specs import Inputs, TaskSpec
    from tests.conftest import blob_density

    clean = blob_density(24, seed=5, n_atoms=60, voxel_size=1.5)
    op = _Blur(sigma=2.5, noise=1e-4)
    y = clean.with_data(op.simulate(clean.data, torch.Generator().manual_seed(0)))
    spec = TaskSpec(prior=GaussianPrior(), operators=[op], sampler=FlowPosteriorEuler(steps=30, guidance="exact"), inputs=Inputs(box=24), samples=2, seed=0)
    result = execute(spec, observation=y)
    out = result.volume.data
    rms = lambda v: float(v.double().square().mean().sqrt())  # noqa: E731
    assert rms(out) < 3 * rms(clean.data)
    assert real_space_correlation(out, clean.data) > 0.5
    assert result.report["warnings"] == []


def test_extrapolation_continues_an_exponential_tail_exactly():
    from cryoinverse.priors.gaussian import _extrapolate

    r = torch.arange(20, dtype=torch.float64)
    spectrum = torch.exp(-0.3 * r)
    reliable = r < 10
    garbage = torch.where(reliable, spectrum, torch.full_like(spectrum, 1e9))
    torch.testing.assert_close(_extrapolate(garbage, reliable), spectrum, rtol=1e-9, atol=0)
    rising = torch.where(reliable, torch.exp(0.1 * r), torch.full_like(r, 1e9))
    assert float(_extrapolate(rising, reliable)[10:].max()) == pytest.approx(float(torch.exp(torch.tensor(0.9))))  # never rises
