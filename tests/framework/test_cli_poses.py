"""`cryoinverse poses`: a small simulated stack with known poses, searched against its own map."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cryoinverse.cli import build_cli
from cryoinverse.ctf import CTFParams, ctf_grid
from cryoinverse.mrc import write_volume
from cryoinverse.particles import read_particle_stack
from cryoinverse.operators.projection import write_particles
from cryoinverse.poses import pose_metrics
from cryoinverse.poses_io import checkpoint_path, read_poses_star, viewing_directions
from cryoinverse.projection import project_fourier, shift_and_filter
from cryoinverse.rotations import euler_zyz_to_matrix, random_rotations
from cryoinverse.star import read_star, write_star
from cryoinverse.testing import sample_density
from cryoinverse.volume import Volume

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N, COUNT, PIXEL = 24, 16, 3.0
POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst")


@functools.cache
def density() -> torch.Tensor:
    """The 24^3 test density the images are projected from (made once: it takes a while)."""
    return sample_density(N, seed=3, voxel_size=PIXEL)[0]


def simulate_stack(folder: Path, count: int = COUNT, ctf: bool = True) -> dict[str, Path]:
    """Noiseless projections of a 24^3 test density with random poses and shifts (and CTFs):
    ref.mrc, truth.star (with the poses) and particles.star (the same rows without them), one stack."""
    volume = density()
    write_volume(folder / "ref.mrc", Volume(volume, PIXEL))
    g = torch.Generator().manual_seed(1)
    rotations = random_rotations(count, g)
    shifts = (torch.rand(count, 2, generator=g, dtype=torch.float64) - 0.5) * 6
    params = CTFParams(defocus_u=torch.linspace(8000, 15000, count), defocus_v=torch.linspace(8200, 15300, count), defocus_angle=30.0) if ctf else None
    images = project_fourier(volume.double(), rotations, None, PIXEL)
    images = shift_and_filter(images, shifts / PIXEL, None if params is None else ctf_grid(params, N, PIXEL)).float()
    write_particles(folder / "truth.mrcs", folder / "truth.star", images, rotations, shifts, PIXEL, params)
    blocks = read_star(folder / "truth.star", keep_text=True)
    for column in POSE_COLUMNS:
        blocks["particles"].drop_column(column)
    write_star(folder / "particles.star", blocks)
    return {"map": folder / "ref.mrc", "truth": folder / "truth.star", "particles": folder / "particles.star", "stack": folder / "truth.mrcs"}


@pytest.fixture(scope="module")
def cli():
    return build_cli()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return simulate_stack(tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="module")
def full_run(cli, data, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted run in chunks of 8, with --truth, --plot and --json."""
    out = tmp_path_factory.mktemp("full") / "poses.star"
    result = invoke(cli, "poses", data["particles"], "--map", data["map"], "--out", out, "--truth", data["truth"],
                    "--plot", out.with_name("sky.png"), "--chunk", 8, "--json")
    assert result.exit_code == 0, result.stderr
    return out, json.loads(result.stdout)


def invoke(cli, *args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def assert_user_error(result, *phrases: str) -> None:
    assert result.exit_code != 0 and "Error:" in result.stderr and "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


def test_poses_are_recovered_and_written_as_star(full_run, data):
    out, summary = full_run
    assert summary["images"] == COUNT and summary["resumed"] == 0 and summary["ctf"] is True
    assert summary["metrics"]["rotation_error_median_deg"] < 2.0
    assert summary["metrics"]["shift_error_mean_A"] < 0.5
    # the STAR itself holds poses that agree with the truth, and every other column as it was
    metrics = pose_metrics(read_poses_star(out), read_poses_star(data["truth"]))
    assert metrics["rotation_error_median_deg"] < 2.0 and metrics["within_10_deg"] == 1.0
    written, source = read_star(out, keep_text=True)["particles"], read_star(data["particles"], keep_text=True)["particles"]
    assert list(written.text["rlnDefocusU"]) == list(source.text["rlnDefocusU"])
    torch.testing.assert_close(read_particle_stack(out).images, read_particle_stack(data["truth"]).images)  # found from out's folder
    assert written.table["cryoinverseScore"].shape == (COUNT,) and np.median(written.table["cryoinverseScore"]) == pytest.approx(summary["score_median"])
    assert not checkpoint_path(out).exists()  # removed once the run is complete


def test_plot_is_a_png(full_run):
    out, summary = full_run
    png = out.with_name("sky.png")
    assert str(png) in summary["outputs"] and png.read_bytes()[:8] == PNG_MAGIC


def test_viewing_directions_are_relion_rot_and_tilt():
    rot, tilt = torch.tensor([30.0, -120.0, 75.0], dtype=torch.float64), torch.tensor([10.0, 90.0, 170.0], dtype=torch.float64)
    azimuth, elevation = viewing_directions(euler_zyz_to_matrix(rot, tilt, torch.tensor([5.0, 50.0, -80.0], dtype=torch.float64)))
    torch.testing.assert_close(azimuth, rot)
    torch.testing.assert_close(elevation, 90.0 - tilt)


def test_resume_after_a_crash_gives_the_same_poses(cli, data, full_run, tmp_path, monkeypatch):
    from cryoinverse.posers.search import Search

    out = tmp_path / "poses.star"
    estimate, calls = Search.estimate, []

    def crash_on_second_chunk(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return estimate(self, *args, **kwargs)

    monkeypatch.setattr(Search, "estimate", crash_on_second_chunk)
    args = ("poses", data["particles"], "--map", data["map"], "--out", out, "--chunk", 8)
    assert_user_error(invoke(cli, *args), "interrupted", "--resume")
    assert not out.exists() and checkpoint_path(out).exists()
    with np.load(checkpoint_path(out)) as saved:
        assert saved["rotations"].shape == (8, 3, 3)
    monkeypatch.setattr(Search, "estimate", estimate)

    assert_user_error(invoke(cli, *args), "checkpoint of a stopped run", "--resume")  # neither --resume nor --overwrite
    assert_user_error(invoke(cli, *args, "--resume", "-p", "level=1"), "other inputs or settings", "changed: poser")
    assert_user_error(invoke(cli, *args[:-1], 12, "--resume"), "changed: chunk")
    assert_user_error(invoke(cli, *args, "--resume", "--no-ctf"), "changed: ctf")

    result = invoke(cli, *args, "--resume", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["resumed"] == 8
    resumed, whole = read_poses_star(out), read_poses_star(full_run[0])
    torch.testing.assert_close(resumed.rotations, whole.rotations, atol=1e-6, rtol=0)
    torch.testing.assert_close(resumed.shifts, whole.shifts, atol=1e-6, rtol=0)
    assert not checkpoint_path(out).exists()


def test_existing_outputs_are_refused_before_any_work(cli, data, full_run, monkeypatch):
    from cryoinverse.posers.search import Search

    monkeypatch.setattr(Search, "estimate", lambda *a, **k: pytest.fail("searched despite an existing output"))
    out = full_run[0]
    before = out.read_bytes()
    assert_user_error(invoke(cli, "poses", data["particles"], "--map", data["map"], "--out", out), "output exists", "--overwrite")
    assert_user_error(invoke(cli, "poses", data["particles"], "--map", data["map"], "--out", out.with_name("new.star"),
                             "--plot", out.with_name("sky.png")), "output exists", "sky.png")
    assert out.read_bytes() == before


def test_a_map_on_another_grid_is_resampled_or_refused(cli, data, tmp_path):
    coarse = tmp_path / "coarse.mrc"
    write_volume(coarse, Volume(sample_density(16, seed=3, voxel_size=4.5)[0], 4.5))
    refused = invoke(cli, "poses", data["particles"], "--map", coarse, "--out", tmp_path / "p.star", "--no-resample")
    assert_user_error(refused, "24x24 pixels of 3 Å", "16^3 voxels of 4.5 Å")
    resampled = invoke(cli, "poses", data["particles"], "--map", coarse, "--out", tmp_path / "p.star", "--json",
                       "-p", "level=1", "-p", "refinements=0")
    assert resampled.exit_code == 0, resampled.stderr
    assert json.loads(resampled.stdout)["box"] == 16 and json.loads(resampled.stdout)["pixel_size"] == 4.5


def test_mixed_pixel_sizes_ask_for_resample(cli, data, tmp_path):
    blocks = read_star(data["particles"], keep_text=True)
    optics = {k: np.repeat(v, 2) for k, v in blocks["optics"].table.items()}
    optics.update(rlnOpticsGroup=np.array([1, 2]), rlnImagePixelSize=np.array([3.0, 3.5]))
    particles = blocks["particles"]
    particles.set_column("rlnOpticsGroup", np.where(np.arange(len(particles)) < COUNT // 2, 1, 2))
    particles.set_column("rlnImageName", np.array([f"{i + 1}@{data['stack'].resolve()}" for i in range(len(particles))]))
    mixed = write_star(tmp_path / "mixed.star", {"optics": optics, "particles": particles})
    result = invoke(cli, "poses", mixed, "--map", data["map"], "--out", tmp_path / "p.star")
    assert_user_error(result, "differ in pixel size", "--resample")


def test_truth_with_other_rows_is_refused(cli, data, tmp_path):
    blocks = read_star(data["truth"])
    short = write_star(tmp_path / "short.star", {"optics": blocks["optics"], "particles": {k: v[:5] for k, v in blocks["particles"].table.items()}})
    result = invoke(cli, "poses", data["particles"], "--map", data["map"], "--out", tmp_path / "p.star", "--truth", short)
    assert_user_error(result, "has 5 particle rows", f"has {COUNT}")


def test_an_output_where_no_file_can_be_created_is_found_before_any_work(cli, data, monkeypatch):
    from cryoinverse.posers.search import Search

    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc, where no user (root included) can create files")
    monkeypatch.setattr(Search, "estimate", lambda *a, **k: pytest.fail("searched before finding the output unwritable"))
    result = invoke(cli, "poses", data["particles"], "--map", data["map"], "--out", "/proc/cryoinverse-poses.star")
    assert_user_error(result, "/proc/cryoinverse-poses.star: cannot be created", "/proc is not writable")


def test_negative_defocus_is_refused_naming_the_convention(cli, data, tmp_path):
    blocks = read_star(data["particles"], keep_text=True)
    particles = blocks["particles"]
    for column in ("rlnDefocusU", "rlnDefocusV"):
        particles.set_column(column, -np.asarray(particles.table[column], dtype=np.float64))
    particles.set_column("rlnImageName", np.array([f"{i + 1}@{data['stack'].resolve()}" for i in range(len(particles))]))
    flipped = write_star(tmp_path / "flipped.star", blocks)
    result = invoke(cli, "poses", flipped, "--map", data["map"], "--out", tmp_path / "p.star")
    assert_user_error(result, "negative defocus", "every row (row 1, 2, 3, 4, 5, ...", "positive underfocus")
    assert not (tmp_path / "p.star").exists()


def test_stacks_in_another_folder_are_found_with_datadir(cli, data, tmp_path):
    moved = tmp_path / "stacks"
    moved.mkdir()
    (moved / data["stack"].name).write_bytes(data["stack"].read_bytes())
    star = tmp_path / "particles.star"
    star.write_text(data["particles"].read_text())  # names the stack relative to the STAR, which is not beside it now
    missing = invoke(cli, "poses", star, "--map", data["map"], "--out", tmp_path / "p.star")
    assert_user_error(missing, f"image stack {data['stack'].name} not found", "--datadir DIR")
    found = invoke(cli, "poses", star, "--map", data["map"], "--out", tmp_path / "p.star", "--datadir", moved,
                   "-p", "level=1", "-p", "refinements=0", "--json")
    assert found.exit_code == 0, found.stderr
    assert json.loads(found.stdout)["images"] == COUNT
    assert_user_error(invoke(cli, "poses", star, "--map", data["map"], "--out", tmp_path / "q.star", "--datadir", tmp_path / "nowhere"),
                      "--datadir", "folder not found")


def test_poses_do_not_depend_on_the_chunk_size():
    """What the search computes over the stack (the matched spectrum) is the whole stack's, not each chunk's."""
    from cryoinverse.posers.search import Search
    from cryoinverse.poses_io import estimate_in_chunks

    volume = density().double()
    g = torch.Generator().manual_seed(4)
    rotations = random_rotations(12, g)
    images = project_fourier(volume, rotations, None, PIXEL)
    images = (images + images.std() * torch.randn(images.shape, generator=g, dtype=torch.float64)).float()
    search = Search(level=1, refinements=2, shift_range=0.0)
    small, _ = estimate_in_chunks(search, images, volume.float(), PIXEL, chunk=3)
    whole, _ = estimate_in_chunks(search, images, volume.float(), PIXEL, chunk=12)
    assert torch.equal(small.rotations, whole.rotations)
    torch.testing.assert_close(small.scores, whole.scores, rtol=1e-6, atol=0)
