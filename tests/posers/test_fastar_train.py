"""Poser training: simulated sets, progressive schedule, checkpoint/resume, the saved poser loading back, the CLI."""

from __future__ import annotations

import json
import math

import attrs
import mrcfile
import numpy as np
import pytest
import torch

from cryoinverse.posers.fastar_train import PoserTrainConfig, load_poser, load_poser_maps, simulate_sets, stage_at, train_poser
from cryoinverse.testing import sample_density


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    folder = tmp_path_factory.mktemp("maps")
    for i in range(2):
        with mrcfile.new(folder / f"m{i}.mrc") as mrc:
            mrc.set_data(sample_density(32, seed=i)[0].numpy().astype(np.float32))
            mrc.voxel_size = 1.5
    return folder


def _cfg(maps, out, **kw) -> PoserTrainConfig:
    base = dict(maps=maps, out=out, arch="tiny", steps=12, views=4, batch_size=2, voxel_size=1.5, warmup=3, device="cpu",
                checkpoint_every=6, log_every=3, shift_max=1.0, ema_decay=0.9)
    return PoserTrainConfig(**{**base, **kw})


def test_schedule_starts_with_three_clean_views_and_ends_with_everything(maps, tmp_path):
    cfg = _cfg(maps, tmp_path, steps=100, views=8)
    first, last = stage_at(0, cfg), stage_at(99, cfg)
    assert (first.views, first.snr_floor, first.ctf) == (3, math.inf, False)
    assert stage_at(0, _cfg(maps, tmp_path, steps=100, views=8, min_views=2)).views == 2
    assert last.views == 8 and last.ctf and last.snr_floor == pytest.approx(cfg.snr_min)
    views = [stage_at(s, cfg).views for s in range(100)]
    assert views == sorted(views)  # never fewer views later
    assert not math.isfinite(stage_at(99, _cfg(maps, tmp_path, snr_max=math.inf)).snr_floor)
    assert not math.isfinite(stage_at(99, _cfg(maps, tmp_path, snr_max=0.0)).snr_floor)


def test_stage_one_can_project_one_molecule_only(maps, tmp_path):
    cfg = _cfg(maps, tmp_path, steps=100, stage1_maps=1, batch_size=6)
    first, later = stage_at(0, cfg), stage_at(99, cfg)
    assert first.maps == 1 and later.maps == 0
    volumes, _ = load_poser_maps(maps, cfg.voxel_size, 32)
    a = simulate_sets(volumes, first, cfg, torch.Generator().manual_seed(3))[0]
    b = simulate_sets([volumes[0], volumes[0]], first, cfg, torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)  # the second map is never projected in stage 1
    c = simulate_sets(volumes, attrs_evolve(first, maps=0), cfg, torch.Generator().manual_seed(3))[0]
    d = simulate_sets([volumes[0], volumes[0]], attrs_evolve(first, maps=0), cfg, torch.Generator().manual_seed(3))[0]
    assert not torch.equal(c, d)  # while with all maps it is (6 draws from 2 maps)


def test_simulated_sets_have_the_requested_snr_and_shapes(maps, tmp_path):
    cfg = _cfg(maps, tmp_path, batch_size=3, shift_max=0.0, snr_min=0.5, snr_max=0.5)
    volumes, summary = load_poser_maps(maps, cfg.voxel_size, 32)
    assert [s["file"] for s in summary] == ["m0.mrc", "m1.mrc"] and volumes[0].shape == (32, 32, 32)
    stage = stage_at(cfg.steps - 1, cfg)
    clean, rotations, _, _ = simulate_sets(volumes, attrs_evolve(stage, snr_floor=math.inf), cfg, torch.Generator().manual_seed(1))
    noisy, rotations2, shifts, snr = simulate_sets(volumes, stage, cfg, torch.Generator().manual_seed(1))
    assert noisy.shape == (3, stage.views, 32, 32) and rotations.shape == (3, stage.views, 3, 3)
    assert torch.equal(rotations, rotations2) and torch.allclose(snr, torch.full((3,), 0.5, dtype=torch.float64))
    ratio = clean.reshape(3, -1).var(dim=1) / (noisy - clean).reshape(3, -1).var(dim=1)
    assert torch.allclose(ratio, torch.full((3,), 0.5), rtol=0.1)


def attrs_evolve(stage, **changes):
    import attrs

    return attrs.evolve(stage, **changes)


def test_resumed_training_is_bit_identical_and_the_poser_loads(maps, tmp_path):
    whole = train_poser(_cfg(maps, tmp_path / "whole"), echo=lambda s: None)
    messages = []
    train_poser(_cfg(maps, tmp_path / "split"), echo=messages.append, stop_after=5)  # between checkpoints
    assert not (tmp_path / "split" / "poser.safetensors").exists()
    split = train_poser(_cfg(maps, tmp_path / "split"), echo=messages.append)
    assert messages == [f"resumed from {tmp_path / 'split' / 'checkpoint.pt'} at step 5"]
    a, meta = load_poser(whole)
    b, _ = load_poser(split.parent)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    a_ck = torch.load(whole.parent / "checkpoint.pt", weights_only=True)
    b_ck = torch.load(split.parent / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a_ck["model"][k], b_ck["model"][k]) for k in a_ck["model"])

    assert meta["arch"] == "tiny" and meta["config"]["image_size"] == 32 and meta["voxel_size"] == 1.5
    assert [m["file"] for m in meta["maps"]] == ["m0.mrc", "m1.mrc"] and meta["training"]["steps"] == 12
    # the loaded network is the saved EMA: same outputs as the checkpoint's EMA weights
    from cryoinverse.posers.fastar_model import CONFIGS, FastAR

    ema = FastAR(CONFIGS["tiny"]).eval()
    ema.load_state_dict(a_ck["ema"])
    images = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for x, y in zip(a(images), ema(images)):
            assert (x is None and y is None) or torch.equal(x, y)

    lines = [json.loads(line) for line in (whole.parent / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [3, 6, 9, 12]
    assert all(math.isfinite(e["loss"]) and 0 <= e["rotation_error_deg"] <= 180 for e in lines)


def test_the_absolute_head_trains_with_its_loss_logs_its_error_and_loads(maps, tmp_path):
    cfg = attrs.evolve(_cfg(maps, tmp_path / "abs"), absolute_weight=1.0)
    weights = train_poser(cfg, echo=lambda s: None)
    model, meta = load_poser(weights)
    assert meta["config"]["absolute_head"] is True and meta["training"]["absolute_weight"] == 1.0
    out = model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    r = out.absolute.double()
    torch.testing.assert_close(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(2, 3, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(2, 3, dtype=torch.float64), atol=1e-5, rtol=0)
    lines = [json.loads(line) for line in (weights.parent / "log.jsonl").read_text().splitlines()]
    assert all(0 <= e["absolute_error_deg"] <= 180 for e in lines)
    # without the option the network has no such head and logs no such error
    plain, plain_meta = load_poser(train_poser(_cfg(maps, tmp_path / "plain"), echo=lambda s: None))
    assert plain.absolute is None and plain_meta["config"]["absolute_head"] is False


def test_a_checkpoint_that_could_run_code_is_refused(maps, tmp_path):
    from cryoinverse.errors import DataError

    out = tmp_path / "evil"
    out.mkdir()
    torch.save({"config": PoserTrainConfig}, out / "checkpoint.pt")  # pickles a class: not weights-only
    with pytest.raises(DataError, match="could run code"):
        train_poser(_cfg(maps, out), echo=lambda s: None)


def test_cli_trains_a_poser(maps, tmp_path):
    from click.testing import CliRunner

    from cryoinverse.cli import build_cli

    out = tmp_path / "cli"
    result = CliRunner().invoke(build_cli(), ["train", "poser", "--maps", str(maps), "--out", str(out), "--steps", "2", "--views", "3",
                                       "--batch-size", "1", "--voxel-size", "1.5", "--no-ctf", "--device", "cpu", "--log-every", "1"])
    assert result.exit_code == 0, result.output
    assert (out / "poser.safetensors").exists() and json.loads((out / "poser.json").read_text())["training"]["ctf"] is False


def test_the_logged_rotation_error_is_zero_for_the_true_planar_maps():
    from cryoinverse.planar import planar_maps
    from cryoinverse.posers.fastar_train import _median_rotation_error
    from cryoinverse.rotations import random_rotations

    rotations = random_rotations(12, torch.Generator().manual_seed(3)).reshape(3, 4, 3, 3)
    truth = torch.stack([planar_maps(r, 16) for r in rotations]).float()
    assert _median_rotation_error(truth, torch.ones(truth.shape[:-1]), rotations) < 0.05
    shuffled = truth[:, [0, 2, 3, 1]]
    assert _median_rotation_error(shuffled, torch.ones(truth.shape[:-1]), rotations) > 10
