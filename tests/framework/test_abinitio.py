"""Ab initio: a map from images alone, compared with the truth over both hands; resume; the command."""

from __future__ import annotations

import json

import pytest
import torch

from cryoinverse.abinitio import MIRROR, AbInitio, hand_aware_pose_errors, run_abinitio
from cryoinverse.align import align_maps
from cryoinverse.ctf import CTFParams, ctf_grid
from cryoinverse.metrics import fsc, resolution_at
from cryoinverse.mrc import read_volume
from cryoinverse.projection import project_fourier, shift_and_filter
from cryoinverse.rotations import random_rotations
from cryoinverse.testing import sample_density
from tests.framework.test_cli_poses import simulate_stack
from tests.framework.test_reconstruct import invoke

N, PIXEL = 24, 3.0
SMALL = AbInitio(resolution=9.0, start_resolution=24.0, iterations=6, starts=2, trial_iterations=2, batch=200)


@pytest.fixture(scope="module")
def stack():
    """200 noiseless CTF-modulated, shifted projections of a 24^3 test map at 3 Å."""
    volume = sample_density(N, seed=3, voxel_size=PIXEL)[0].double()
    g = torch.Generator().manual_seed(5)
    rotations = random_rotations(200, g)
    shifts = (torch.rand(200, 2, generator=g, dtype=torch.float64) - 0.5) * 8
    defocus = 8000 + 17000 * torch.rand(200, generator=g, dtype=torch.float64)
    ctf = CTFParams(defocus_u=defocus, defocus_v=defocus + 300, defocus_angle=30.0)
    images = shift_and_filter(project_fourier(volume, rotations, None, PIXEL, interpolation="sinc"), shifts / PIXEL, ctf_grid(ctf, N, PIXEL))
    return volume, rotations, images.float(), ctf


def test_a_small_clean_stack_gives_its_map_back_in_either_hand(stack):
    """Measured FSC-0.5 9.7 and 10.5 Å against the truth after alignment over both hands (two stacks;
    the target is 9 Å, Nyquist 6 Å; the true poses give 6 Å), in 4 s on 2 cores."""
    volume, rotations, images, ctf = stack
    result = run_abinitio(images, PIXEL, ctf, SMALL)
    assert result.volume.shape == (N, N, N) and len(result.poses) == 200
    alignment, moved = align_maps(volume, result.volume.double(), PIXEL, allow_mirror=True)
    assert resolution_at(fsc(moved, volume), PIXEL, 0.5, N) < 13.0
    errors, _ = hand_aware_pose_errors(result.poses.rotations, rotations)
    assert float(errors.median()) < 35.0  # at chance: ~126 degrees
    assert [h["iteration"] for h in result.history] == list(range(1, 7))
    assert set(result.history[0]["score_median"]) == {"0", "1"} and len(result.history[-1]["score_median"]) == 1


def test_poses_of_the_mirror_map_are_recognised():
    """J R J G (the mirror map's poses, any global rotation G) have zero error over both hands."""
    g = torch.Generator().manual_seed(0)
    rotations, turn = random_rotations(30, g), random_rotations(1, g)[0]
    errors, mirror = hand_aware_pose_errors(MIRROR @ rotations @ MIRROR @ turn, rotations)
    assert mirror and float(errors.max()) < 1e-4  # degrees: acos near 1 resolves ~1e-6
    errors, mirror = hand_aware_pose_errors(rotations @ turn, rotations)
    assert not mirror and float(errors.max()) < 1e-4


def test_a_resumed_run_equals_an_uninterrupted_one(stack):
    _, _, images, ctf = stack
    settings = AbInitio(resolution=12.0, start_resolution=24.0, iterations=4, starts=2, trial_iterations=2, batch=100)
    whole = run_abinitio(images, PIXEL, ctf, settings)
    saved = []

    def stop_after_three(state):
        saved.append(state)
        if len(state["history"]) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_abinitio(images, PIXEL, ctf, settings, checkpoint=stop_after_three)
    resumed = run_abinitio(images, PIXEL, ctf, settings, state=saved[-1])
    assert torch.equal(resumed.volume, whole.volume)
    assert torch.equal(resumed.poses.rotations, whole.poses.rotations) and resumed.history == whole.history


def test_the_command_writes_map_poses_report_and_pictures(tmp_path):
    data = simulate_stack(tmp_path, count=60)
    out = tmp_path / "ab"
    args = ("abinitio", data["particles"], "--out-dir", out, "--resolution", "12", "--start-resolution", "24", "--iterations", "3",
            "--starts", "1", "--json")
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert "mirror image" in summary["hand"] and summary["images"] == 60
    assert sorted(p.name for p in out.iterdir()) == ["map.mrc", "map_slices.png", "poses.star", "report.json", "sky.png"]
    report = json.loads((out / "report.json").read_text())
    assert [h["iteration"] for h in report["iterations"]] == [1, 2, 3] and report["settings"]["starts"] == 1
    assert read_volume(out / "map.mrc").shape == (24, 24, 24)
    again = invoke(*args)
    assert again.exit_code == 1 and "output exists" in again.stderr
    finer = invoke("abinitio", data["particles"], "--out-dir", tmp_path / "x", "--resolution", "4")
    assert finer.exit_code != 0 and "finer than the images' Nyquist (6 Å)" in finer.stderr


def test_two_classes_sort_a_mixed_stack_by_particle():
    """150 clean CTF images each of the bundled demo map and of a random test density (32^3 at 3 Å): with two
    classes, measured 96% of the images in their own particle's class, and each class map nearer its own truth
    (FSC-0.5 16 and 19 Å; 25-26 Å against the other particle)."""
    from cryoinverse.demo import demo_map
    from cryoinverse.resample import fourier_resample

    n, pixel, count = 32, 3.0, 150
    demo = fourier_resample(demo_map(), pixel).data.double()
    lo = (demo.shape[-1] - n) // 2
    maps = [demo[lo : lo + n, lo : lo + n, lo : lo + n], sample_density(n, seed=11, voxel_size=pixel)[0].double()]
    maps = [m / m.std() for m in maps]
    g = torch.Generator().manual_seed(5)
    images, defoci = [], []
    for volume in maps:
        rotations = random_rotations(count, g)
        shifts = (torch.rand(count, 2, generator=g, dtype=torch.float64) - 0.5) * 8
        defocus = 8000 + 17000 * torch.rand(count, generator=g, dtype=torch.float64)
        ctf = CTFParams(defocus_u=defocus, defocus_v=defocus + 300, defocus_angle=30.0)
        images.append(shift_and_filter(project_fourier(volume, rotations, None, pixel, interpolation="sinc"), shifts / pixel, ctf_grid(ctf, n, pixel)))
        defoci.append(defocus)
    defocus = torch.cat(defoci)
    ctf = CTFParams(defocus_u=defocus, defocus_v=defocus + 300, defocus_angle=30.0)
    settings = AbInitio(resolution=9.0, start_resolution=24.0, iterations=6, starts=2, trial_iterations=2, batch=200, classes=2)
    result = run_abinitio(torch.cat(images).float(), pixel, ctf, settings)
    truth = torch.cat([torch.zeros(count), torch.ones(count)]).long()
    agree = float((result.classes == truth).double().mean())
    assert max(agree, 1 - agree) > 0.85
    assert result.class_volumes.shape == (2, n, n, n) and "class_sizes" in result.history[-1]
    own = [k if agree > 0.5 else 1 - k for k in range(2)]  # the particle each class holds
    for k in range(2):
        at = [resolution_at(fsc(align_maps(m, result.class_volumes[k].double(), pixel, allow_mirror=True)[1], m), pixel, 0.5, n) for m in maps]
        assert at[own[k]] < at[1 - own[k]]


def test_the_command_with_classes_writes_each_class_and_its_column(tmp_path):
    from cryoinverse.star import read_star

    data = simulate_stack(tmp_path, count=40)
    out = tmp_path / "ab"
    result = invoke("abinitio", data["particles"], "--out-dir", out, "--resolution", "12", "--start-resolution", "24", "--iterations", "2",
                    "--starts", "1", "--classes", "2", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert sum(summary["class_sizes"]) == 40 and len(summary["class_sizes"]) == 2
    assert {"class_1.mrc", "class_2.mrc"} <= {p.name for p in out.iterdir()}
    column = read_star(out / "poses.star")["particles"].table["rlnClassNumber"]
    assert sorted(set(column.tolist())) <= [1, 2] and [int((column == k).sum()) for k in (1, 2)] == summary["class_sizes"]
    orphan = invoke("abinitio", data["particles"], "--out-dir", tmp_path / "x", "--prior-param", "weights=default")
    assert orphan.exit_code != 0 and "without --prior" in orphan.stderr
