"""The learned prior shipped with the package: its files, what it was trained on, and that it
restores a map it never saw better than the gaussian prior, measured by FSC against the clean map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cryoinverse.demo import demo_map
from cryoinverse.levels import noise_variance_for_resolution
from cryoinverse.metrics import compare
from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.priors.cryofm import DEFAULT_WEIGHTS, CryoFMPrior, meta_path
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.runner import execute
from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
from cryoinverse.specs import Inputs, TaskSpec

HELD_OUT = Path(__file__).resolve().parents[2] / "bench" / "default_prior_heldout.txt"


def test_shipped_files_are_small_float16_and_described():
    assert DEFAULT_WEIGHTS.is_file() and meta_path(DEFAULT_WEIGHTS).is_file()
    assert DEFAULT_WEIGHTS.stat().st_size < 5e6
    assert {t.dtype for t in load_file(DEFAULT_WEIGHTS).values()} == {torch.float16}
    meta = json.loads(meta_path(DEFAULT_WEIGHTS).read_text())
    assert meta["architecture"]["name"] == "compact"
    assert meta["box"] == 32 and meta["voxel_size"] == 1.5
    assert meta["training"]["steps"] > 0 and meta["training"]["stored_dtype"] == "float16"


def test_no_held_out_model_went_into_training():
    held_out = {line.strip() for line in HELD_OUT.read_text().splitlines() if line.strip() and not line.startswith("#")}
    trained = {m["file"].rsplit("_b", 1)[0] for m in json.loads(meta_path(DEFAULT_WEIGHTS).read_text())["training"]["maps"]}
    assert "3nbkA" in held_out  # the source of the bundled demo map used below
    assert trained and not trained & held_out


def test_cryofm_without_weights_is_the_shipped_prior():
    prior = CryoFMPrior()
    assert prior.weights == "auto" and prior.weights_path == DEFAULT_WEIGHTS and prior.box == 32 and prior.voxel_size == 1.5
    assert prior.for_voxel_size(1.2).weights_path == DEFAULT_WEIGHTS and prior.for_voxel_size(3.0).weights == "default"
    assert CryoFMPrior(weights="default").weights_path == DEFAULT_WEIGHTS
    assert CryoFMPrior(weights=str(DEFAULT_WEIGHTS)).for_voxel_size(10.0).weights_path == DEFAULT_WEIGHTS  # a file given is kept


def test_tomogram_voxel_sizes_pick_the_tomogram_prior():
    from cryoinverse.priors.cryofm import TOMO_WEIGHTS

    if not TOMO_WEIGHTS.exists():
        pytest.skip("the tomogram prior is not in this checkout")
    prior = CryoFMPrior().for_voxel_size(10.52)
    assert prior.weights == "tomo" and prior.voxel_size == 10.0 and prior.box == 32
    assert CryoFMPrior(weights="tomo").voxel_size == 10.0


def _restore(prior, sampler, degraded, operator):
    spec = TaskSpec(prior=prior, sampler=sampler, operators=[operator], inputs=Inputs(box=degraded.shape[-1]), seed=0, device="cpu")
    return execute(spec, observation=degraded).volume


def test_restores_a_held_out_map_better_than_the_gaussian_prior():
    # The demo map (PDB 3NBK chain A, held out) with white noise putting its FSC-0.5 at 6 A.
    clean = demo_map()
    operator = SpectralNoise(noise_variance=noise_variance_for_resolution(clean, 6.0))
    degraded = clean.with_data(operator.simulate(clean.data, torch.Generator().manual_seed(0)))
    learned = _restore(CryoFMPrior(), FlowPosteriorEuler(steps=20, guidance="cryofm"), degraded, operator)
    gaussian = _restore(GaussianPrior(), FlowPosteriorEuler(steps=20, guidance="exact"), degraded, operator)
    before, wiener, after = compare(degraded, clean), compare(gaussian, clean), compare(learned, clean)
    assert after.auc > before.auc + 0.1 and after.auc > wiener.auc + 0.1
    assert after.resolution_05 < before.resolution_05 - 1.0  # Angstrom
    assert after.correlation > before.correlation + 0.15


def test_restores_a_held_out_map_under_noise_like_real_data():
    """FSC-shaped noise (variance rising with frequency) estimated from two half maps, as users face it.

    The same map and noise as the demo. Measured: AUC-FSC 0.481 -> 0.57 with one sample (0.597 with
    the demo's 4), FSC-0.5 6.01 -> 5.0 A; the gaussian prior's sample stays at or below the input.
    """
    from cryoinverse.levels import noise_power_for_resolution

    clean = demo_map()
    half = SpectralNoise(noise_power=(2 * noise_power_for_resolution(clean, 6.0)).tolist())
    g = torch.Generator().manual_seed(0)
    h1, h2 = half.simulate(clean.data, g), half.simulate(clean.data, g)
    operator = SpectralNoise.estimate(h1, h2)
    degraded = clean.with_data(0.5 * (h1 + h2))
    learned = _restore(CryoFMPrior(), FlowPosteriorEuler(steps=10), degraded, operator)
    gaussian = _restore(GaussianPrior(), FlowPosteriorEuler(steps=20, guidance="exact"), degraded, operator)
    before, wiener, after = compare(degraded, clean), compare(gaussian, clean), compare(learned, clean)
    assert after.auc > before.auc + 0.06 and after.auc > wiener.auc + 0.06
    assert after.resolution_05 < before.resolution_05 - 0.7  # Angstrom
    assert not after.failed
