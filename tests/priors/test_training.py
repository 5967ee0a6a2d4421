"""Prior training: data pipeline, loss, checkpoint/resume, and the saved prior loading as `cryofm`."""

from __future__ import annotations

import math

import json

import numpy as np
import pytest
import torch

from cryoinverse.priors.training import TrainConfig, _rot24, cryofm_normalize, flow_matching_loss, random_crop, train_prior
from tests.conftest import blob_density


def test_cube_rotations_are_24_distinct_exact_rotations():
    x = torch.randn(5, 5, 5, dtype=torch.float64)
    seen = {tuple(_rot24(x, i).reshape(-1).tolist()) for i in range(24)}
    assert len(seen) == 24
    for i in range(24):  # a permutation of voxels: values and their multiset are kept exactly
        assert torch.equal(_rot24(x, i).reshape(-1).sort().values, x.reshape(-1).sort().values)


def test_so3_crop_keeps_a_centred_sphere_and_constants():
    g = torch.Generator().manual_seed(0)
    n = 48
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"))
    sphere = ((grid - (n - 1) / 2).square().sum(0) <= 8.0**2).float()
    # a crop of the centre of a sphere-symmetric map is the same under any rotation
    crops = [random_crop(sphere, 16, g, rot24=False) for _ in range(3)]
    assert torch.all((crops[0] >= -1e-5) & (crops[0] <= 1 + 1e-5))
    assert random_crop(torch.full((20, 20, 20), 3.0), 12, g, rot24=False).sub(3.0).abs().max() < 1e-5


def test_cryofm_normalisation_matches_numpy():
    x = torch.randn(20, 20, 20)
    z, scale = cryofm_normalize(x)
    clipped = np.clip(x.numpy().astype(np.float64), 0, None)
    expected_scale = np.sort(clipped.reshape(-1))[int(np.ceil(0.99999 * clipped.size)) - 1]
    assert scale == pytest.approx(expected_scale)
    np.testing.assert_allclose(z.numpy(), (clipped / expected_scale - 0.04) / 0.09, rtol=1e-5, atol=1e-5)


def test_loss_of_the_exact_velocity_is_the_irreducible_part():
    # For data x1 = 0 the optimal velocity is E[x1 - x0 | x_t] = -x_t / (1 - t); its loss is 0.
    x1 = torch.zeros(4, 8, 8, 8)
    g = torch.Generator().manual_seed(0)
    exact = lambda x, t: -x / (1 - t.view(-1, 1, 1, 1))  # noqa: E731
    assert float(flow_matching_loss(exact, x1, g)) < 1e-10
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    assert float(flow_matching_loss(zero, x1, g)) == pytest.approx(1.0, rel=0.1)  # E|x0|^2 = 1


@pytest.fixture
def maps(tmp_path, write_map):
    (tmp_path / "maps").mkdir()
    for i in range(2):
        write_map(f"maps/m{i}.mrc", blob_density(20, seed=i, n_atoms=40, voxel_size=3.0))
    return tmp_path / "maps"


def _cfg(maps, out, steps):
    return TrainConfig(data=maps, out=out, arch="tiny", box=16, voxel_size=3.0, steps=steps, batch_size=2, lr=1e-3, warmup=2, checkpoint_every=5, log_every=5, device="cpu")


def _run(cfg):
    from cryoinverse.priors.cryofm import save_prior
    from cryoinverse.priors.hdit import build_model

    return train_prior(cfg, build_model, save_prior, echo=lambda s: None)


def test_cosine_schedule_closed_form(tmp_path):
    from cryoinverse.priors.training import _lr_at

    cfg = TrainConfig(data=tmp_path, out=tmp_path, steps=1001, lr=1.0, warmup=1, schedule="cosine")
    # warm-up ends at step 0; then lr = 0.1 + 0.45 (1 + cos(pi p)), p = (step - 1) / 999
    assert _lr_at(0, cfg) == pytest.approx(1.0)
    assert _lr_at(1, cfg) == pytest.approx(1.0)
    assert _lr_at(500, cfg) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 499 / 999)))
    assert _lr_at(1000, cfg) == pytest.approx(0.1)
    constant = TrainConfig(data=tmp_path, out=tmp_path, steps=1001, lr=1.0, warmup=4)
    assert [_lr_at(i, constant) for i in (0, 3, 1000)] == pytest.approx([0.25, 1.0, 1.0])
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(data=tmp_path, out=tmp_path, schedule="linear")


def test_resume_continues_exactly(maps, tmp_path):
    straight = _run(_cfg(maps, tmp_path / "a", 10))
    _run(_cfg(maps, tmp_path / "b", 5))
    resumed = _run(_cfg(maps, tmp_path / "b", 10))
    from safetensors.torch import load_file

    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [5, 10]


def test_trained_prior_loads_and_samples(maps, tmp_path):
    weights = _run(_cfg(maps, tmp_path / "p", 5))
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert meta["voxel_size"] == 3.0 and meta["box"] == 16
    assert [m["file"] for m in meta["training"]["maps"]] == ["m0.mrc", "m1.mrc"]
    from cryoinverse.registry import get_registry

    prior = get_registry().get("prior", "cryofm")(weights=weights)
    v = prior.velocity(torch.randn(2, 16, 16, 16), 0.3)
    assert v.shape == (2, 16, 16, 16) and torch.isfinite(v).all()


def test_scale_jitter_is_a_renormalisation_with_another_scale():
    """jitter_scale(z) equals CryoFM-1 normalisation of the same density with the scale divided by exp(u)."""
    from cryoinverse.priors.training import jitter_scale

    x = torch.rand(3, 6, 6, 6, dtype=torch.float64)
    s = 0.7
    z = (x / s - 0.04) / 0.09
    g = torch.Generator().manual_seed(4)
    out = jitter_scale(z, 0.3, g)
    u = (torch.rand(3, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 - 1) * 0.3
    for i in range(3):
        torch.testing.assert_close(out[i], (x[i] / (s / math.exp(float(u[i]))) - 0.04) / 0.09)
    assert float(u.abs().max()) <= 0.3


def test_init_starts_from_given_weights(maps, tmp_path):
    from safetensors.torch import load_file

    start = _run(_cfg(maps, tmp_path / "start", 5))
    cfg = TrainConfig(**{**attrs_dict(_cfg(maps, tmp_path / "next", 1)), "lr": 1e-12, "init": str(start)})
    weights = _run(cfg)
    a, b = load_file(str(start)), load_file(str(weights))
    for k in a:  # one step at lr 1e-12: the saved (EMA) weights are the initial ones
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    meta = json.loads(weights.with_suffix(".json").read_text())
    assert meta["training"]["init"] == str(start)
    with pytest.raises(Exception, match="architecture"):
        _run(TrainConfig(**{**attrs_dict(_cfg(maps, tmp_path / "bad", 1)), "arch": "compact", "init": str(start)}))


def attrs_dict(cfg):
    import attrs

    return attrs.asdict(cfg, recurse=False)


class _Payload:
    """Stands for anything a pickle could construct (and run) on load."""


def test_a_checkpoint_with_objects_is_refused(maps, tmp_path):
    from cryoinverse.errors import DataError

    out = tmp_path / "evil"
    out.mkdir()
    torch.save({"step": 1, "payload": _Payload()}, out / "checkpoint.pt")
    with pytest.raises(DataError, match="could run code"):
        _run(_cfg(maps, out, 2))


@pytest.mark.parametrize("command", [["prior"], ["poser", "--maps"]])
def test_train_with_a_missing_data_folder_prints_one_error_and_no_progress(tmp_path, command):
    """Off a terminal a progress bar prints its label: it must not appear before an error found at the start."""
    from click.testing import CliRunner

    from cryoinverse.cli import build_cli

    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:  # click 8.2+ keeps stderr apart always
        runner = CliRunner()
    option = command[1] if len(command) > 1 else "--data"
    missing = tmp_path / "no-such-folder"
    result = runner.invoke(build_cli(), ["train", command[0], option, str(missing), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.splitlines() == [f"Error: {missing}: folder not found"]
