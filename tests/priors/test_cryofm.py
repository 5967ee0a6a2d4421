"""The `cryofm` prior: weights + JSON round trip, the errors a user sees when loading, CryoFM-1
normalisation, the time convention, and posterior sampling through it (Python and TOML)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from cryoinverse.components import Likelihood, Observation, PrepareContext
from cryoinverse.errors import DataError, SpecError
from cryoinverse.mrc import write_volume
from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.priors.cryofm import CryoFMPrior, load_prior, meta_path, percentile_scale, read_meta, save_prior
from cryoinverse.priors.hdit import CONFIGS, natten_available
from cryoinverse.registry import get_registry
from cryoinverse.runner import run_task
from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
from cryoinverse.specs import load_spec

from tests.conftest import blob_density
from tests.priors.test_hdit import randomized

N = 16
META = {"voxel_size": 2.0, "training": {"maps": 0, "note": "random weights for tests"}}


@pytest.fixture
def model():
    return randomized(CONFIGS["tiny"], seed=5)


@pytest.fixture
def weights(tmp_path, model):
    return save_prior(tmp_path / "tiny.safetensors", model, CONFIGS["tiny"], META)


def noise(batch=2, seed=0):
    return torch.randn(batch, N, N, N, generator=torch.Generator().manual_seed(seed))


def test_registered():
    assert get_registry().get("prior", "cryofm") is CryoFMPrior


def test_save_writes_safetensors_and_json(weights):
    assert sorted(p.name for p in weights.parent.iterdir()) == ["tiny.json", "tiny.safetensors"]  # no temporaries left
    meta = json.loads(meta_path(weights).read_text())
    assert meta["architecture"]["name"] == "tiny" and meta["architecture"]["family"] == "hdit"
    assert meta["normalization"] == {"kind": "cryofm-1", "percentile": 99.999, "offset": 0.04, "scale": 0.09}
    assert meta["voxel_size"] == 2.0 and meta["box"] == 16 and meta["time_convention"] == "noise-at-0"
    assert read_meta(weights).architecture == CONFIGS["tiny"]


def test_round_trip_gives_identical_outputs(weights, model):
    loaded, meta = load_prior(weights)
    x = noise()
    with torch.no_grad():
        assert torch.equal(loaded(x, 0.3), model(x, 0.3))
    assert not any(p.requires_grad for p in loaded.parameters())
    prior = CryoFMPrior(weights=weights)
    with torch.no_grad():
        assert torch.equal(prior.velocity(x, 0.3), model(x, 0.3))
    assert prior.box == 16 and prior.voxel_size == 2.0


def test_float16_storage_halves_the_file_and_loads_as_float32(tmp_path, weights, model):
    half = save_prior(tmp_path / "half.safetensors", model, CONFIGS["tiny"], META, dtype=torch.float16)
    stored = load_file(half)
    assert all(t.dtype == torch.float16 for t in stored.values())
    assert half.stat().st_size < 0.55 * weights.stat().st_size
    loaded, _ = load_prior(half)
    for name, p in loaded.state_dict().items():
        assert p.dtype == torch.float32
        assert torch.equal(p, model.state_dict()[name].to(torch.float16).to(torch.float32)), name  # exact fp16 rounding
    x = noise()
    with torch.no_grad():
        ref, out = model(x, 0.3), loaded(x, 0.3)
    assert (out - ref).norm() / ref.norm() < 5e-3  # fp16 keeps 11 significant bits


def test_architecture_by_name_only(weights, model):
    path = meta_path(weights)
    meta = json.loads(path.read_text())
    meta["architecture"] = {"name": "tiny"}
    path.write_text(json.dumps(meta))
    loaded, _ = load_prior(weights)
    with torch.no_grad():
        assert torch.equal(loaded(noise(1), 0.5), model(noise(1), 0.5))


def test_noise_at_1_networks_are_converted_at_the_boundary(tmp_path, model):
    # A network trained with noise at t = 1 (CryoFM's public code) is called at 1 - t, negated.
    path = save_prior(tmp_path / "flipped.safetensors", model, meta={"time_convention": "noise-at-1"})
    x = noise(1)
    with torch.no_grad():
        torch.testing.assert_close(CryoFMPrior(weights=path).velocity(x, 0.2), -model(x, 0.8))


def test_normalisation_cryofm1(weights):
    prior = CryoFMPrior(weights=weights)
    density = blob_density(N, seed=1)
    observed = density.data - 0.05  # some negative densities
    prior.prepare(PrepareContext(shape=(N, N, N), voxel_size=2.0, device=torch.device("cpu"), observation=density.with_data(observed)))
    s = prior.density_scale
    ranked = observed.clamp(min=0).flatten().sort().values  # nearest rank: ceil(4096 x 0.99999) = 4096th
    assert s == float(ranked[-1])
    z = prior.normalize(observed)
    torch.testing.assert_close(z, (observed.clamp(min=0) / s - 0.04) / 0.09)
    # denormalize inverts normalize where densities are >= 0; the clip loses negative densities
    torch.testing.assert_close(prior.denormalize(z), observed.clamp(min=0), rtol=1e-5, atol=1e-6)
    assert CryoFMPrior(weights=weights, scale=3.0).denormalize(torch.zeros(1)).item() == pytest.approx(0.12)


def test_a_background_is_taken_out_and_put_back(weights):
    """background b: z = (max(x - b, 0) / s - 0.04) / 0.09 with s the percentile of x - b, and x = (0.09 z + 0.04) s + b;
    a map raised by c with background = c restores as the map itself, raised by c."""
    from cryoinverse.operators.spectral_noise import SpectralNoise
    from cryoinverse.runner import execute
    from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
    from cryoinverse.specs import TaskSpec

    density = blob_density(N, seed=1)
    c = 0.7
    prior = CryoFMPrior(weights=weights, background=c)
    raised = density.data + c
    prior.prepare(PrepareContext(shape=(N, N, N), voxel_size=2.0, device=torch.device("cpu"), observation=density.with_data(raised)))
    s = prior.density_scale
    assert s == percentile_scale(density.data, 99.999)
    z = prior.normalize(raised)
    torch.testing.assert_close(z, (density.data.clamp(min=0) / s - 0.04) / 0.09)
    torch.testing.assert_close(prior.denormalize(z), raised.clamp(min=c), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="background: must be a density"):
        CryoFMPrior(weights=weights, background="median")

    g = torch.Generator().manual_seed(0)
    noisy = density.data + 0.05 * torch.randn(density.shape, generator=g)
    def restored(data, background):  # the shipped prior: a random network amplifies float rounding chaotically
        spec = TaskSpec(prior=CryoFMPrior(weights="default", background=background), operators=[SpectralNoise(noise_variance=0.0025)],
                        sampler=FlowPosteriorEuler(steps=3), device="cpu", seed=0)
        return execute(spec, observation=density.with_data(data)).volume.data
    plain = restored(noisy, 0.0)
    torch.testing.assert_close(restored(noisy + c, c), plain + c, rtol=0, atol=2e-4)
    # with "mean" the result does not depend on the level the map sits at
    torch.testing.assert_close(restored(noisy + c, "mean") - c, restored(noisy + 2.0, "mean") - 2.0, rtol=0, atol=2e-4)


def test_percentile_is_nearest_rank_of_the_clipped_map():
    values = torch.arange(64**3, dtype=torch.float32).reshape(64, 64, 64) - 10.0
    # ceil(262144 x 0.99999) = 262142nd smallest value = 262141 - 10
    assert percentile_scale(values, 99.999) == 262131.0
    with pytest.raises(DataError, match="no positive densities"):
        percentile_scale(-torch.ones(4, 4, 4), 99.999)


# --- the errors a user sees -------------------------------------------------------------------


def _rewrite(weights, edit):
    tensors = load_file(weights)
    edit(tensors)
    save_file(tensors, weights)


def test_missing_tensor_is_named_with_its_shape(weights):
    _rewrite(weights, lambda t: t.pop("mid_level.0.ff.up_proj.weight"))
    with pytest.raises(DataError) as err:
        load_prior(weights)
    message = str(err.value)
    assert "do not match architecture 'tiny'" in message and "tiny.json" in message
    assert "missing (1): mid_level.0.ff.up_proj.weight (256, 64)" in message


def test_wrong_shape_is_named_with_both_shapes(weights):
    _rewrite(weights, lambda t: t.update({"patch_in.proj.weight": torch.zeros(32, 27)}))
    with pytest.raises(DataError, match=r"wrong shape \(1\): patch_in.proj.weight: file \(32, 27\), architecture \(32, 8\)"):
        load_prior(weights)


def test_unexpected_tensors_are_listed_together_with_missing_ones(weights):
    def edit(t):
        t["extra.bias"] = torch.zeros(3)
        t["mapping.blocks.0.up_proj.weight.renamed"] = t.pop("mapping.blocks.0.up_proj.weight")

    _rewrite(weights, edit)
    with pytest.raises(DataError) as err:
        load_prior(weights)
    with pytest.raises(ValueError) as at_spec:  # a task naming these weights is refused at validation
        CryoFMPrior(weights=weights)
    for message in (str(err.value), str(at_spec.value)):
        assert "unexpected (2): extra.bias (3,), mapping.blocks.0.up_proj.weight.renamed (128, 32)" in message
        assert "missing (1): mapping.blocks.0.up_proj.weight (128, 32)" in message


def test_missing_json(weights):
    meta_path(weights).unlink()
    with pytest.raises(DataError, match=r"tiny.json: JSON config not found; the weights tiny.safetensors need tiny.json beside them"):
        load_prior(weights)
    with pytest.raises(ValueError, match="weights: .*tiny.json: JSON config not found"):
        CryoFMPrior(weights=weights)


def test_missing_weights_file(tmp_path):
    with pytest.raises(DataError, match="nothing.safetensors: weights file not found"):
        load_prior(tmp_path / "nothing.safetensors")
    with pytest.raises(DataError, match="expected a .safetensors file"):
        load_prior(tmp_path / "model.pt")


def test_unknown_architecture(weights):
    path = meta_path(weights)
    meta = json.loads(path.read_text())
    meta["architecture"] = {"name": "cryofm-xl"}
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="unknown architecture 'cryofm-xl'; known: compact, cryofm-l, cryofm-s, small, tiny"):
        load_prior(weights)
    meta["architecture"] = {"family": "unet", "name": "tiny"}
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="unknown family 'unet'"):
        load_prior(weights)


def test_other_box_is_refused(weights):
    prior = CryoFMPrior(weights=weights)
    with pytest.raises(DataError, match=r"the map is 32x32x32 voxels but tiny.safetensors was trained on 16\^3 boxes"):
        prior.prepare(PrepareContext(shape=(32, 32, 32), voxel_size=2.0, device=torch.device("cpu")))
    with pytest.raises(DataError, match="trained on 16"):
        prior.velocity(torch.zeros(1, 32, 32, 32), 0.5)


# --- sampling through the network --------------------------------------------------------------


@pytest.fixture
def problem():
    """A 16^3 spectral-noise problem: blob density plus white noise."""
    density = blob_density(N, seed=2)
    op = SpectralNoise(noise_variance=0.05)
    y = op.simulate(density.data, torch.Generator().manual_seed(1))
    return density, op, y


def test_autograd_flows_through_the_network(weights):
    prior = CryoFMPrior(weights=weights)
    x = noise(1).requires_grad_(True)
    (g,) = torch.autograd.grad(prior.velocity(x, 0.4).square().sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_flow_posterior_euler_with_cryofm(weights, problem):
    density, op, y = problem
    prior = CryoFMPrior(weights=weights)
    prior.prepare(PrepareContext(shape=(N, N, N), voxel_size=2.0, device=torch.device("cpu"), observation=density.with_data(y), operators=[op]))
    out = FlowPosteriorEuler(steps=3).run(prior, Likelihood([Observation(op, y)]), noise(2, seed=4))
    assert out.shape == (2, N, N, N) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])  # different noise, different samples


TASK = """\
seed = 1
device = "cpu"
samples = 2

[prior]
kind = "cryofm"
weights = "tiny.safetensors"

[operator]
kind = "spectral-noise"
noise_variance = 0.05

[sampler]
kind = "flow-posterior-euler"
steps = 3

[inputs]
observation = "observation.mrc"

[outputs]
map = "restored.mrc"
"""


def test_toml_task_with_cryofm(tmp_path, weights, problem):
    density, _, y = problem
    write_volume(tmp_path / "observation.mrc", density.with_data(y))
    (tmp_path / "task.toml").write_text(TASK)
    spec = load_spec(tmp_path / "task.toml")
    assert isinstance(spec.prior, CryoFMPrior) and spec.prior.weights == weights
    result = run_task(spec)
    assert (tmp_path / "restored.mrc").is_file() and torch.isfinite(result.volume.data).all()
    assert result.report["task"]["prior"]["kind"] == "cryofm"


def test_toml_task_with_missing_weights(tmp_path):
    (tmp_path / "task.toml").write_text(TASK)
    with pytest.raises(SpecError, match=r"task.toml: \[prior\] weights: .*tiny.safetensors: weights file not found"):
        load_spec(tmp_path / "task.toml")


@pytest.mark.skipif(not natten_available(), reason="natten is not installed")
def test_natten_backend_gives_the_same_velocity(weights):
    x = noise(1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        natten = CryoFMPrior(weights=weights, attention="natten").velocity(x, 0.6)
        torch.testing.assert_close(natten, CryoFMPrior(weights=weights).velocity(x, 0.6), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(natten_available(), reason="natten is installed")
def test_natten_backend_without_natten_says_so(weights):
    with pytest.raises(SpecError, match=r"\[prior\] attention: 'natten' needs the natten package"):
        CryoFMPrior(weights=weights, attention="natten").velocity(noise(1), 0.5)
