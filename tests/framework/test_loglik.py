"""Log-density under a prior by the probability-flow ODE: solver, divergence, normalisation, CLI.

The `gaussian` prior is the oracle: x ~ N(mu, C) with C diagonal in Fourier space (orthonormal
FFT, variance P_k per coefficient), so log p(x) = -(1/2) (sum_k log P_k + sum_k |F(x - mu)_k|^2 / P_k
+ N log 2 pi) over all N = n^3 coefficients, computed here directly with numpy.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cryoinverse.cli import build_cli
from cryoinverse.components import PrepareContext
from cryoinverse.errors import CryoinverseError, DataError
from cryoinverse.fourier import expand_shells, nyquist
from cryoinverse.loglik import (
    ODESolverError,
    divergence_exact,
    divergence_hutchinson,
    dopri5,
    dopri_step,
    draw_probes,
    log_density,
)
from cryoinverse.mrc import read_volume
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.volume import Volume


def _power(n: int) -> list[float]:
    """A decaying radial spectrum, shells 0..Nyquist (the prior repeats the last one in the corners)."""
    return [2.0 / (1.0 + 0.5 * r * r) + 0.02 for r in range(nyquist(n) + 1)]


def _closed_form(prior: GaussianPrior, x: torch.Tensor, scale: float = 1.0, shift: float = 0.0) -> float:
    """log N(x; shift + scale mu, scale^2 C) in float64 numpy (the prior's C and mu)."""
    n = x.shape[-1]
    p = expand_shells(prior.spectrum(n), n).numpy() * scale**2
    mu = shift + scale * prior.mean(x.to(torch.float64)).numpy()
    f = np.fft.fftn(x.numpy().astype(np.float64) - mu, norm="ortho")
    return float(-0.5 * (np.log(p).sum() + (np.abs(f) ** 2 / p).sum() + n**3 * math.log(2 * math.pi)))


@pytest.fixture(autouse=True)
def _few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


# --- Dormand-Prince 5(4) -------------------------------------------------------------------


def _decay(t: float, y):
    """dy/dt = -y t (y(t) = y(0) exp(-t^2 / 2)) and dz/dt = y (z = integral of y)."""
    return (-y[0] * t, y[0])


def test_dopri5_scalar_ode_forwards_and_backwards():
    y0 = torch.tensor([1.0], dtype=torch.float64)
    sol = dopri5(_decay, (y0, torch.zeros(1, dtype=torch.float64)), 0.0, 2.0, rtol=1e-9, atol=1e-12)
    assert sol.t == 2.0
    assert abs(float(sol.y[0]) - math.exp(-2.0)) < 1e-8
    integral = math.sqrt(math.pi / 2) * math.erf(math.sqrt(2.0))  # integral_0^2 exp(-t^2/2) dt
    assert abs(float(sol.y[1]) - integral) < 1e-8
    back = dopri5(_decay, (sol.y[0], torch.zeros(1, dtype=torch.float64)), 2.0, 0.0, rtol=1e-9, atol=1e-12)
    assert back.t == 0.0
    assert abs(float(back.y[0]) - 1.0) < 1e-8
    assert abs(float(back.y[1]) + integral) < 1e-8


def test_dopri5_error_follows_tolerance():
    errors, nfes = [], []
    for tol in (1e-4, 1e-7, 1e-10):
        sol = dopri5(lambda t, y: (-y[0] * t,), torch.ones(1, dtype=torch.float64), 0.0, 3.0, rtol=tol, atol=tol)
        errors.append(abs(float(sol.y[0]) - math.exp(-4.5)))
        nfes.append(sol.nfe)
    assert errors[0] < 1e-4 and errors[1] < 1e-7 and errors[2] < 1e-10
    assert nfes[0] < nfes[1] < nfes[2]
    # pure relative tolerance, with a component that starts at exactly 0
    sol = dopri5(_decay, (torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)), 0.0, 2.0, rtol=1e-8, atol=0.0)
    assert abs(float(sol.y[0]) - math.exp(-2.0)) < 1e-8


def test_dopri_step_is_fifth_order():
    """Fixed steps: halving h divides the global error by about 2^5 (checks the tableau)."""

    def f(t, y):
        return (-y[0] * t + torch.sin(torch.tensor(3.0 * t, dtype=torch.float64)),)

    def integrate(steps: int) -> float:
        y, t, h = (torch.ones(1, dtype=torch.float64),), 0.0, 2.0 / steps
        for _ in range(steps):
            y, _, _ = dopri_step(f, t, y, h, f(t, y))
            t += h
        return float(y[0])

    ref = float(dopri5(f, torch.ones(1, dtype=torch.float64), 0.0, 2.0, rtol=1e-13, atol=1e-14).y[0])
    e1, e2 = abs(integrate(10) - ref), abs(integrate(20) - ref)
    assert 20 < e1 / e2 < 45


def test_dopri5_fails_clearly():
    y0 = torch.ones(1, dtype=torch.float64)
    with pytest.raises(ODESolverError, match=r"within max_steps = 3 steps .* loosen rtol/atol or raise max_steps"):
        dopri5(lambda t, y: (-y[0] * t,), y0, 0.0, 10.0, rtol=1e-10, atol=1e-10, max_steps=3)
    with pytest.raises(ODESolverError, match="not finite at the start t = 0"):
        dopri5(lambda t, y: (y[0] * float("nan"),), y0, 0.0, 1.0)
    # y' = y^2, y(0) = 1 blows up at t = 1: the solver must stop with an error, never return.
    with pytest.raises(ODESolverError, match="underflow|max_steps"):
        dopri5(lambda t, y: (y[0] ** 2,), y0, 0.0, 2.0, max_steps=5000)


# --- divergence ----------------------------------------------------------------------------


def _mixing_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """A non-linear velocity that couples voxels (neighbour roll) and depends on t."""
    return torch.tanh(x) * (1 + t) + 0.3 * torch.roll(x, 1, dims=-1) * x.sin() - 0.2 * x**2


def test_exact_divergence_is_the_jacobian_trace():
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v, div = divergence_exact(_mixing_velocity, x, 0.3, batch=7)  # batches that split the voxels unevenly
    assert torch.allclose(v, _mixing_velocity(x, 0.3))
    for b in range(2):
        jac = torch.autograd.functional.jacobian(lambda y: _mixing_velocity(y, 0.3), x[b])
        assert float(div[b]) == pytest.approx(float(jac.reshape(27, 27).trace()), rel=1e-12)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_divergence_averages_to_the_trace(kind):
    x = torch.randn(1, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, exact = divergence_exact(_mixing_velocity, x, 0.7)
    probes = draw_probes(tuple(x.shape), 4000, kind, torch.Generator().manual_seed(2))
    _, estimate = divergence_hutchinson(_mixing_velocity, x, 0.7, probes)
    jac = torch.autograd.functional.jacobian(lambda y: _mixing_velocity(y, 0.7), x[0]).reshape(27, 27)
    sym = (jac + jac.T) / 2
    var = 2 * float(sym.square().sum() - (sym.diagonal().square().sum() if kind == "rademacher" else 0))
    assert abs(float(estimate[0] - exact[0])) < 4 * math.sqrt(var / 4000)


def test_divergence_needs_a_differentiable_velocity():
    def frozen(x, t):
        with torch.no_grad():
            return -x

    with pytest.raises(CryoinverseError, match="not differentiable"):
        divergence_hutchinson(frozen, torch.zeros(1, 2, 2, 2), 0.5, torch.ones(1, 1, 2, 2, 2))


# --- the gaussian prior as oracle ----------------------------------------------------------


@pytest.mark.parametrize("n, with_mean", [(6, True), (8, False)])
def test_exact_divergence_matches_closed_form(n, with_mean, write_map):
    prior = GaussianPrior(power=_power(n))
    if with_mean:
        mean = torch.randn(n, n, n, generator=torch.Generator().manual_seed(5))
        prior = GaussianPrior(power=_power(n), mean_from=write_map("mean.mrc", Volume(mean, 1.0)))
    prior.prepare(PrepareContext(shape=(n, n, n), voxel_size=1.0, device=torch.device("cpu")))
    x = prior.draw(1, n, torch.Generator().manual_seed(3)).to(torch.float64)
    result = log_density(prior, x[0], exact=True, rtol=1e-6, atol=1e-6)
    expected = _closed_form(prior, x[0])
    assert abs(float(result.log_p[0]) - expected) < 1e-4 * abs(expected)
    assert float(result.log_det_normalize[0]) == 0.0  # the gaussian prior's normalize is the identity
    # the backward flow of a Gaussian whitens: F(x0) = F(x - mu) / sqrt(P)
    p = expand_shells(prior.spectrum(n), n)
    white = torch.fft.ifftn(torch.fft.fftn(x[0] - prior.mean(x[0]), norm="ortho") / p.sqrt(), norm="ortho").real
    assert torch.allclose(result.noise[0], white, atol=1e-5)
    assert float(result.bits_per_voxel[0]) == pytest.approx(-expected / (n**3 * math.log(2)), rel=1e-4)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_log_density_is_unbiased(kind):
    """64 maps in one batch, each with its own fixed probe: the mean lies within 4 standard errors.

    With fixed probes e the estimate is exact - (e^T M e - tr M), M = integral_0^1 J dt =
    F^H diag(m) F with m_k = (1/2) log P_k (d/dt log s_t = 2 * gain), so its variance is
    2 (sum m_k^2 - N mean(m)^2) for Rademacher and 2 sum m_k^2 for Gaussian probes.
    """
    n, copies = 6, 64
    prior = GaussianPrior(power=_power(n))
    x = prior.draw(1, n, torch.Generator().manual_seed(4)).to(torch.float64)
    expected = _closed_form(prior, x[0])
    result = log_density(prior, x.expand(copies, n, n, n), probe=kind, generator=torch.Generator().manual_seed(6), rtol=1e-6, atol=1e-6)
    m = 0.5 * expand_shells(prior.spectrum(n), n).log()
    var = 2 * float(m.square().sum() - (m.sum() ** 2 / m.numel() if kind == "rademacher" else 0))
    estimates = result.log_p.numpy()
    assert abs(estimates.mean() - expected) < 4 * math.sqrt(var / copies)
    assert 0.6 < estimates.std(ddof=1) / math.sqrt(var) < 1.5
    assert result.estimator == f"hutchinson-{kind}" and result.n_probes == 1
    # more probes shrink the spread by about sqrt(n_probes)
    more = log_density(prior, x.expand(16, n, n, n), n_probes=16, probe=kind, generator=torch.Generator().manual_seed(7), rtol=1e-6, atol=1e-6)
    assert 0.4 < more.log_p.numpy().std(ddof=1) / math.sqrt(var / 16) < 1.8


# --- normalisation -------------------------------------------------------------------------


class _AffineGaussian:
    """The gaussian prior in units z = (x - shift) / scale: x ~ N(shift + scale mu, scale^2 C)."""

    name = "affine-gaussian"
    box = None

    def __init__(self, inner: GaussianPrior, shift: float, scale: float):
        self.inner, self.shift, self.scale = inner, shift, scale

    def velocity(self, x_t, t):
        return self.inner.velocity(x_t, t)

    def normalize(self, x):
        return (x - self.shift) / self.scale

    def denormalize(self, z):
        return z * self.scale + self.shift

    def log_det_normalize(self, x):
        return -x[0].numel() * math.log(self.scale)  # z = (x - a) / b: -N log b


def test_affine_normalisation_changes_variables():
    n, shift, scale = 6, 0.3, 2.5
    inner = GaussianPrior(power=_power(n))
    prior = _AffineGaussian(inner, shift, scale)
    x = (shift + scale * inner.draw(1, n, torch.Generator().manual_seed(8))).to(torch.float64)
    result = log_density(prior, x, exact=True, rtol=1e-6, atol=1e-6)
    expected = _closed_form(inner, x[0], scale=scale, shift=shift)
    assert abs(float(result.log_p[0]) - expected) < 1e-4 * abs(expected)
    assert float(result.log_det_normalize[0]) == pytest.approx(-(n**3) * math.log(scale))
    assert float(result.log_p_model[0]) == pytest.approx(_closed_form(inner, ((x[0] - shift) / scale)), rel=1e-4)


def test_box_mismatch_is_reported():
    prior = _AffineGaussian(GaussianPrior(power=_power(6)), 0.0, 1.0)
    prior.box = 8  # a prior trained on 8^3 boxes
    with pytest.raises(DataError, match=r"works on 8\^3 boxes; the map is \(6, 6, 6\)"):
        log_density(prior, torch.zeros(6, 6, 6))


# --- command line --------------------------------------------------------------------------


def test_cli_prints_json(write_map):
    n = 6
    prior = GaussianPrior(power=_power(n))
    path = write_map("map.mrc", Volume(prior.draw(1, n, torch.Generator().manual_seed(9))[0], 1.5))
    power = "[" + ", ".join(repr(p) for p in _power(n)) + "]"
    args = ["loglik", str(path), "--prior", "gaussian", "-p", f"power={power}", "--exact", "--rtol", "1e-6", "--atol", "1e-6", "--json"]
    out = CliRunner().invoke(build_cli(), args)
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    expected = _closed_form(prior, read_volume(path).data)
    assert abs(report["log_p_nats"] - expected) < 1e-4 * abs(expected)
    assert report["bits_per_voxel"] == pytest.approx(-report["log_p_nats"] / (n**3 * math.log(2)))
    assert report["nfe"] > 0 and report["estimator"] == "exact" and report["prior"] == "gaussian"
    for key in ("log_p_noise", "divergence_integral", "log_det_normalize", "n_voxels", "steps", "wall_s"):
        assert key in report

    text = CliRunner().invoke(build_cli(), ["loglik", str(path), "-k", "gaussian", "-p", f"power={power}", "--probes", "2"])
    assert text.exit_code == 0, text.output
    assert "bits per voxel" in text.output and "NFE" in text.output and "hutchinson-rademacher (2 probes)" in text.output


def test_cli_reports_user_errors(write_map):
    path = write_map("map.mrc", Volume(torch.zeros(6, 6, 6), 1.0))
    out = CliRunner().invoke(build_cli(), ["loglik", str(path), "--prior", "gausian"])
    assert out.exit_code == 1, out.output
    assert "unknown prior 'gausian'. Did you mean 'gaussian'?" in out.output
    out = CliRunner().invoke(build_cli(), ["loglik", str(path), "--prior", "gaussian"])
    assert out.exit_code == 1 and "give power or power_from" in out.output
