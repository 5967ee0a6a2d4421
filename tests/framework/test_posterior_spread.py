"""samples = K: the mean and per-voxel std maps against the exact Gaussian posterior; batching."""

from __future__ import annotations

import pytest
import torch

from cryoinverse.fourier import expand_shells, fftn, ifftn, n_shells
from cryoinverse.mrc import read_volume
from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.runner import execute, run_task
from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
from cryoinverse.specs import Inputs, Outputs, TaskSpec
from cryoinverse.volume import Volume


def _problem(n=16):
    r = torch.arange(n_shells(n), dtype=torch.float64)
    power = 4.0 * torch.exp(-((r / 4.0) ** 2)) + 0.01
    noise = 0.3
    prior = GaussianPrior(power=power.tolist())
    g = torch.Generator().manual_seed(0)
    y = SpectralNoise(noise_variance=noise).simulate(prior.draw(1, n, g)[0], g)
    p = expand_shells(power, n)
    return prior, noise, y, p


def _spec(prior, noise, samples, batch=None, outputs=None):
    return TaskSpec(
        prior=prior, operators=[SpectralNoise(noise_variance=noise)], sampler=FlowPosteriorEuler(steps=60, guidance="exact"),
        inputs=Inputs(), outputs=outputs or Outputs(), samples=samples, batch=batch, seed=1,
    )


def test_std_map_matches_the_posterior_variance(tmp_path):
    prior, noise, y, p = _problem()
    result = execute(_spec(prior, noise, samples=32), observation=Volume(y, 2.0))
    # Posterior variance per voxel is stationary: mean over coefficients of P N / (P + N) (ortho FFT).
    post_var = float((p * noise / (p + noise)).mean())
    var_hat = float(result.std.data.double().square().mean())
    # 32 samples: per-voxel variance estimate has relative SE sqrt(2/31) ~ 25%, averaged over 4096
    # weakly correlated voxels far less; Euler error at 60 steps ~2%. Bound 10%.
    assert var_hat == pytest.approx(post_var, rel=0.10)
    wiener = ifftn(p / (p + noise) * fftn(y.double()))
    assert float((result.volume.data.double() - wiener).square().mean()) < 2 * post_var / 32
    # samples agree with each other only where the data decided: their mean pairwise AUC is below 1
    assert 0.0 < result.report["samples"]["mean_fsc_auc_between_samples"] < 1.0


def test_batches_give_the_same_samples():
    prior, noise, y, _ = _problem(12)
    whole = execute(_spec(prior, noise, samples=6), observation=Volume(y, 2.0))
    batched = execute(_spec(prior, noise, samples=6, batch=4), observation=Volume(y, 2.0))
    torch.testing.assert_close(whole.volume.data, batched.volume.data, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole.std.data, batched.std.data, rtol=1e-5, atol=1e-6)


def test_std_output_is_written(tmp_path, write_map):
    prior, noise, y, _ = _problem(12)
    obs = write_map("obs.mrc", Volume(y, 2.0))
    spec = _spec(prior, noise, samples=3, outputs=Outputs(map=tmp_path / "mean.mrc", std=tmp_path / "std.mrc"))
    spec.inputs = Inputs(observation=obs)
    run_task(spec)
    std = read_volume(tmp_path / "std.mrc")
    assert std.voxel_size == 2.0 and float(std.data.min()) >= 0.0 and float(std.data.mean()) > 0.0
