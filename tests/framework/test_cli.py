"""The command line, in-process with click's CliRunner: JSON and files checked, not line layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cryoinverse.cli import build_cli
from cryoinverse.metrics import compare, fsc
from cryoinverse.mrc import read_volume
from cryoinverse.volume import Volume
from tests.conftest import TINY_TASK

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TASK = TINY_TASK


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch) -> Path:
    """Run from a scratch folder: relative paths must resolve against the task file, not here."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture(scope="module")
def cli():
    return build_cli()


def runner() -> CliRunner:
    """A runner that captures stderr apart from stdout (click 8.1 needs mix_stderr=False; 8.2+ always does)."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def invoke(cli, *args: str | Path):
    """Run the CLI; a user error must end in SystemExit (a clean exit), never another exception."""
    result = runner().invoke(cli, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def assert_user_error(result, *phrases: str) -> None:
    """Exit code != 0, an 'Error:' message holding `phrases`, no traceback."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    assert "Error:" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for phrase in phrases:
        assert phrase in result.stderr


@pytest.fixture
def maps(tmp_path, write_map, density) -> Path:
    """tmp_path with reference.mrc (a 16^3 blob map) and observation.mrc (it plus white noise)."""
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, density.shape).astype(np.float32))
    write_map("reference.mrc", density)
    write_map("observation.mrc", density.with_data(density.data + noise))
    return tmp_path


# --- fsc ------------------------------------------------------------------------------------


def test_fsc_json_matches_the_library(cli, maps):
    a, b = maps / "observation.mrc", maps / "reference.mrc"
    result = invoke(cli, "fsc", a, b, "--json")
    assert result.exit_code == 0, result.output

    printed = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert {"auc", "resolution_0.5", "resolution_0.143", "curve"} <= set(printed)
    expected = compare(read_volume(a), read_volume(b))
    assert printed["auc"] == pytest.approx(expected.auc, abs=1e-12)
    assert printed["resolution_0.5"] == pytest.approx(expected.resolution_05, rel=1e-12)
    assert printed["resolution_0.143"] == pytest.approx(expected.resolution_0143, rel=1e-12)
    assert printed["failed"] is expected.failed

    curve = fsc(read_volume(a), read_volume(b))
    assert len(printed["curve"]) == 8  # shells 1..Nyquist of a 16^3 box
    for r, (resolution, value) in enumerate(printed["curve"], start=1):
        assert resolution == pytest.approx(16 * 2.0 / r)
        assert value == pytest.approx(float(curve[r]), abs=1e-12)


def test_fsc_writes_csv_and_png(cli, maps):
    a, b = maps / "observation.mrc", maps / "reference.mrc"
    csv, png = maps / "out" / "fsc.csv", maps / "out" / "fsc.png"
    result = invoke(cli, "fsc", a, b, "--csv", csv, "--plot", png)
    assert result.exit_code == 0, result.output

    lines = csv.read_text().splitlines()
    assert lines[0].split(",")[:2] == ["shell", "resolution_A"]
    rows = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    curve = fsc(read_volume(a), read_volume(b)).numpy()
    np.testing.assert_array_equal(rows[:, 0], np.arange(1, 9))
    np.testing.assert_allclose(rows[:, 1], 32.0 / np.arange(1, 9), atol=1e-4)
    np.testing.assert_allclose(rows[:, 2], curve[1:], atol=1e-6)
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_fsc_directional_gives_each_axis_cone(cli, maps):
    from cryoinverse.metrics import directional_fsc

    a, b = maps / "observation.mrc", maps / "reference.mrc"
    csv = maps / "out" / "dfsc.csv"
    result = invoke(cli, "fsc", a, b, "--directional", "--cone-angle", "30", "--json", "--csv", csv)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)["directional"]
    assert printed["cone_angle"] == 30.0
    cones = directional_fsc(read_volume(a), read_volume(b), angle=30.0)
    rows = np.array([[float(v) for v in line.split(",")] for line in csv.read_text().splitlines()[1:]])
    assert csv.read_text().splitlines()[0].endswith("fsc_x,fsc_y,fsc_z")
    for column, axis in enumerate("xyz", start=3):
        np.testing.assert_allclose([v for _, v in printed[axis]["curve"]], cones[axis][1:].numpy(), atol=1e-12)
        np.testing.assert_allclose(rows[:, column], cones[axis][1:].numpy(), atol=1e-6)
    table = invoke(cli, "fsc", a, b, "--directional")
    assert "about z" in table.output and "half-angle 20 deg" in table.output


def test_fsc_of_maps_of_different_boxes_is_a_user_error(cli, maps, write_map, density):
    small = write_map("small.mrc", Volume(density.data[:12, :12, :12], 2.0))
    assert_user_error(invoke(cli, "fsc", maps / "reference.mrc", small), "small.mrc", "(12, 12, 12)")


# --- run ------------------------------------------------------------------------------------


def test_run_writes_map_and_report(cli, maps, elsewhere):
    task = maps / "task.toml"
    task.write_text(TASK)
    result = invoke(cli, "run", task, "--quiet")
    assert result.exit_code == 0, result.output
    # default outputs: restored.mrc and restored.json beside the task file, not in the current folder
    assert sorted(p.name for p in maps.iterdir() if p.name.startswith("restored")) == ["restored.json", "restored.mrc", "restored_slices.png"]
    assert list(elsewhere.iterdir()) == []

    restored = read_volume(maps / "restored.mrc")
    observation = read_volume(maps / "observation.mrc")
    assert restored.shape == (16, 16, 16)
    assert restored.voxel_size == pytest.approx(observation.voxel_size)
    assert restored.origin == pytest.approx(observation.origin)

    report = json.loads((maps / "restored.json").read_text())
    expected = compare(restored, read_volume(maps / "reference.mrc")).as_dict()
    got = report["metrics"]["restored"]
    for key in ("auc", "resolution_0.5", "resolution_0.143", "correlation", "rmse"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    assert "observation" in report["metrics"]
    assert report["task"]["sampler"]["kind"] == "flow-posterior-euler"
    assert report["task"]["sampler"]["steps"] == 10
    assert report["task"]["operators"][0]["noise_variance"] == 0.01
    assert report["task"]["inputs"]["observation"] == str(maps / "observation.mrc")
    assert report["seed"] == 0
    assert {"python", "torch", "numpy"} <= set(report["versions"])
    assert report["timings"]["sample_s"] >= 0 and report["timings"]["load_s"] >= 0
    assert report["source"] == str(task)


def test_run_refuses_to_overwrite_then_overwrites(cli, maps):
    task = maps / "task.toml"
    task.write_text(TASK)
    assert invoke(cli, "run", task, "-q").exit_code == 0
    outputs = [maps / "restored.mrc", maps / "restored.json"]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outputs}

    again = invoke(cli, "run", task, "-q", "--set", "sampler.steps=3")
    assert_user_error(again, "restored.mrc", "restored.json", "--overwrite")
    assert again.stderr.startswith("Error:")
    assert again.stderr.strip().count("\n") == 0  # one line
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outputs} == before

    result = invoke(cli, "run", task, "-q", "--overwrite", "--set", "sampler.steps=3")
    assert result.exit_code == 0, result.output
    report = json.loads((maps / "restored.json").read_text())
    assert report["task"]["sampler"]["steps"] == 3
    assert (maps / "restored.mrc").read_bytes() != before[maps / "restored.mrc"][0]


# --- validate, list, describe ---------------------------------------------------------------


def test_validate_good_and_bad_specs(cli, maps):
    good = maps / "good.toml"
    good.write_text(TASK)
    result = invoke(cli, "validate", good)
    assert result.exit_code == 0
    assert "valid" in result.stdout and "flow-posterior-euler" in result.stdout

    bad = maps / "bad.toml"
    bad.write_text(TASK.replace("steps = 10", "steps = 2.5").replace('"gaussian"', '"gausian"'))
    result = invoke(cli, "validate", bad)
    assert_user_error(result, "[sampler] steps: expected int or 'auto', got float 2.5", "Did you mean 'gaussian'?")
    assert not (maps / "restored.mrc").exists()

    assert_user_error(invoke(cli, "validate", good, "--set", "sampler.steps=-1"), "[sampler] steps: must be > 0")


def test_validate_refuses_a_task_that_cannot_fit_in_memory(cli, maps, monkeypatch):
    from cryoinverse import resources

    task = maps / "task.toml"
    task.write_text("samples = 1000000000\n" + TASK)
    result = invoke(cli, "validate", task)
    # 1e9 samples x 16^3 voxels x 8 bytes (initial noise and map, float32) = 30.5 TiB
    assert_user_error(result, "samples: 1000000000 samples of a 16^3 map need at least", "TiB of memory", "lower samples")
    monkeypatch.setattr(resources, "physical_memory", lambda: 2**19)  # 512 KiB: 4 samples of 16^3 fit, not 4 at once
    task.write_text("samples = 4\n" + TASK)
    assert_user_error(invoke(cli, "validate", task), "batch: 4 maps of 16^3 sampled at once", "lower batch")
    task.write_text("samples = 4\nbatch = 1\n" + TASK)
    assert invoke(cli, "validate", task).exit_code == 0


def test_a_poser_that_would_never_run_is_an_error_naming_its_section(cli, maps):
    task = maps / "task.toml"
    task.write_text(TASK + '\n[poser]\nkind = "search"\n')
    result = invoke(cli, "validate", task)
    assert_user_error(result, "[poser] search: no operator of this task observes images with poses (operators: spectral-noise)", "remove [poser]")


@pytest.mark.parametrize("damage", ["truncated", "not safetensors"])
def test_validate_reads_the_weights_header_as_run_does(cli, maps, damage):
    from cryoinverse.priors.cryofm import DEFAULT_WEIGHTS, meta_path

    weights = maps / "broken.safetensors"
    data = DEFAULT_WEIGHTS.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"PK\x03\x04 a zip file, not tensors" * 4)
    meta_path(weights).write_text(meta_path(DEFAULT_WEIGHTS).read_text())
    task = maps / "task.toml"
    task.write_text(TASK.replace('kind = "gaussian"', 'kind = "cryofm"\nweights = "broken.safetensors"').replace('guidance = "exact"', 'guidance = "wiener"'))
    result = invoke(cli, "validate", task)
    assert_user_error(result, "[prior] weights:", "broken.safetensors: not a readable safetensors file")


def test_list_shows_every_kind_or_one(cli):
    everything = invoke(cli, "list").stdout
    for heading in ("priors:", "operators:", "samplers:", "posers:"):
        assert heading in everything
    for name in ("gaussian", "spectral-noise", "flow-posterior-euler", "prior"):
        assert name in everything

    samplers = invoke(cli, "list", "sampler")
    assert samplers.exit_code == 0
    assert "flow-posterior-euler" in samplers.stdout
    assert "gaussian" not in samplers.stdout and "priors:" not in samplers.stdout


def test_describe_shows_fields_with_help(cli):
    result = invoke(cli, "describe", "gaussian")
    assert result.exit_code == 0
    assert "prior 'gaussian'" in result.stdout
    assert "power_floor (float, default 1e-06): smallest power" in result.stdout
    assert "power_from (path or nothing, default None)" in result.stdout


def test_describe_unknown_name_suggests_and_lists(cli):
    assert_user_error(invoke(cli, "describe", "nope"), "unknown component 'nope'", "gaussian", "spectral-noise")
    assert_user_error(invoke(cli, "describe", "gausian"), "Did you mean 'gaussian'?")


# --- degrade --------------------------------------------------------------------------------


def test_degrade_adds_noise_of_the_given_variance_and_keeps_geometry(cli, tmp_path, write_map, density):
    clean = write_map("clean.mrc", Volume(density.data, 2.0, (4.0, -6.0, 10.0)))
    out = tmp_path / "degraded.mrc"
    result = invoke(cli, "degrade", clean, out, "-k", "spectral-noise", "-p", "noise_variance=0.01")
    assert result.exit_code == 0, result.output

    degraded, original = read_volume(out), read_volume(clean)
    assert degraded.voxel_size == pytest.approx(2.0)
    assert degraded.origin == pytest.approx((4.0, -6.0, 10.0))
    diff = (degraded.data - original.data).double().numpy()
    # sample variance of 4096 values: relative standard error sqrt(2 / 4096) = 2.2%; bound 10%
    assert diff.var() == pytest.approx(0.01, rel=0.1)
    assert abs(diff.mean()) < 4 * 0.1 / 64  # 4 standard errors of the mean

    assert_user_error(invoke(cli, "degrade", clean, out, "-k", "spectral-noise", "-p", "noise_variance=0.01"), "--overwrite")


def test_degrade_bad_operator_or_parameter(cli, write_map, density, tmp_path):
    clean = write_map("clean.mrc", density)
    out = tmp_path / "out.mrc"
    assert_user_error(invoke(cli, "degrade", clean, out, "-k", "spectral-nois"), "Did you mean 'spectral-noise'?")
    assert_user_error(
        invoke(cli, "degrade", clean, out, "-k", "spectral-noise", "-p", "noise_varance=0.01"),
        "noise_varance: unknown field; did you mean 'noise_variance'?",
    )
    assert_user_error(invoke(cli, "degrade", clean, out, "-k", "spectral-noise", "-p", "noise_variance=-1"), "must be > 0")
    assert not out.exists()


# --- demo -----------------------------------------------------------------------------------


def test_demo_writes_maps_and_report_at_the_requested_resolution(cli, tmp_path):
    out = tmp_path / "demo"
    result = invoke(cli, "demo", "--out-dir", out, "--steps", "3", "--samples", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    for name in ("reference.mrc", "degraded.mrc", "restored.mrc", "report.json"):
        assert (out / name).is_file(), name

    reference, degraded = read_volume(out / "reference.mrc"), read_volume(out / "degraded.mrc")
    n, voxel = reference.shape[-1], reference.voxel_size
    resolution = compare(degraded, reference).resolution_05
    # within one shell of 6 A: shell n * voxel / 6 = 16 on the 64^3, 1.5 A map
    target_shell = n * voxel / 6.0
    assert n * voxel / (target_shell + 1) <= resolution <= n * voxel / (target_shell - 1)

    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["observation"]["resolution_0.5"] == pytest.approx(resolution, rel=1e-6)
    assert report["demo"]["target_resolution_A"] == 6.0
    assert report["task"]["samples"] == 2 and report["task"]["sampler"]["steps"] == 3
    # the default demo restores with the shipped learned prior
    assert report["task"]["prior"]["kind"] == "cryofm" and report["demo"]["prior"] == "learned"


def test_demo_with_the_gaussian_prior_explains_its_fsc(cli, tmp_path):
    result = invoke(cli, "demo", "--out-dir", tmp_path / "d", "--prior", "gaussian", "--steps", "5", "--samples", "2")
    assert result.exit_code == 0, result.output
    assert "Wiener filter" in result.output
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["task"]["prior"]["kind"] == "gaussian" and report["task"]["sampler"]["guidance"] == "exact"


# --- bad input in general -------------------------------------------------------------------


def test_bad_input_is_a_one_line_error_without_traceback(cli, maps):
    cases = [
        (("run", maps / "missing.toml"), "task file not found"),
        (("fsc", maps / "reference.mrc", maps / "missing.mrc"), "missing.mrc: file not found"),
        (("fsc", maps / "reference.mrc", maps), "is a directory"),
        (("demo", "--out-dir", maps / "d", "--resolution", "1.0", "--steps", "1"), "outside"),
    ]
    for args, phrase in cases:
        assert_user_error(invoke(cli, *args), phrase)


def test_describe_cryofm_shows_attention_backends_and_natten(cli):
    result = invoke(cli, "describe", "cryofm")
    assert result.exit_code == 0, result.output
    assert "level 0: neighborhood, level 1: dense" in result.output
    assert "natten: " in result.output and "forward only" in result.output


def test_unwritable_outputs_are_refused_before_any_work(cli, maps, tmp_path, monkeypatch):
    """An output under a file, or in a read-only folder, is an error before sampling starts."""
    from cryoinverse import runner

    task = tmp_path / "task.toml"
    (tmp_path / "blocker").write_text("a file, not a folder")
    task.write_text(TASK.replace('[inputs]', '[outputs]\nmap = "blocker/restored.mrc"\n\n[inputs]'))
    called = []
    monkeypatch.setattr(runner, "execute", lambda *a, **k: called.append(1))
    result = invoke(cli, "run", task, "--quiet")
    assert result.exit_code == 1 and "is a file, not a folder" in result.output and not called


def test_outputs_in_a_read_only_folder_are_refused_before_any_work(cli, maps, tmp_path, monkeypatch):
    from cryoinverse import runner

    task = tmp_path / "task.toml"
    called = []
    monkeypatch.setattr(runner, "execute", lambda *a, **k: called.append(1))
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        task.write_text(TASK.replace('[inputs]', '[outputs]\nmap = "readonly/restored.mrc"\n\n[inputs]'))
        result = invoke(cli, "run", task, "--quiet")
        assert result.exit_code == 1 and "is not writable" in result.output and not called
    finally:
        ro.chmod(0o700)


UNWRITABLE = Path("/proc/cryoinverse-output")  # no one, root included, creates files in /proc


def unwritable_or_skip() -> Path:
    """A folder where file creation fails for every user, or a skip where the system has none."""
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc, where no user can create files")
    return UNWRITABLE


def test_an_output_on_a_file_system_that_refuses_writes_is_found_before_any_work(cli, maps, tmp_path, monkeypatch):
    """Permission bits pass for root on /proc and read-only mounts: creating a file there is the test."""
    from cryoinverse import runner

    folder = unwritable_or_skip()
    task = tmp_path / "task.toml"
    called = []
    monkeypatch.setattr(runner, "execute", lambda *a, **k: called.append(1))
    task.write_text(TASK.replace('[inputs]', f'[outputs]\nmap = "{folder}/restored.mrc"\n\n[inputs]'))
    result = invoke(cli, "run", task, "--quiet")
    assert_user_error(result, "cannot be created", "/proc is not writable")
    assert not called


def test_fsc_plot_under_a_file_is_refused_before_reading(cli, tmp_path):
    (tmp_path / "blocker").write_text("x")
    result = invoke(cli, "fsc", tmp_path / "missing_a.mrc", tmp_path / "missing_b.mrc", "--plot", tmp_path / "blocker" / "fsc.png")
    assert result.exit_code == 1 and "is a file, not a folder" in result.output


def test_simulate_refuses_a_box_larger_than_memory(cli, tmp_path, shared_data):
    model = next((shared_data / "models").glob("*.pdb"))
    result = invoke(cli, "simulate", model, "--out-dir", tmp_path / "out", "--box", "1200", "--voxel-size", "1.5")
    assert result.exit_code == 1
    assert "a 1200^3 map at 2x oversampling needs about" in result.output and "GiB" in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_map_too_small_is_refused_at_validation(cli, tmp_path, write_map, density):
    write_map("tiny.mrc", density.with_data(density.data[:1, :1, :1].contiguous()))
    (tmp_path / "task.toml").write_text(TASK.replace('observation = "observation.mrc"\nreference = "reference.mrc"', 'observation = "tiny.mrc"'))
    result = invoke(cli, "validate", tmp_path / "task.toml")
    assert result.exit_code == 1 and "tiny.mrc is 1x1x1 voxels; at least 8 per edge are needed" in result.output


def test_loglik_refuses_a_map_too_small(cli, tmp_path, write_map, density):
    path = write_map("tiny.mrc", density.with_data(density.data[:1, :1, :1].contiguous()))
    result = invoke(cli, "loglik", path, "--prior", "gaussian", "-p", f"power_from={path}")
    assert result.exit_code == 1 and "1x1x1 voxels; at least 4 per edge" in result.output


# --- non-cubic maps (tomogram crops) -------------------------------------------------------------

SLAB_SHAPE = (12, 40, 20)  # (z, y, x)
SLAB_VOXEL = 1.5  # the cryofm prior's voxel size: it is tiled, not resampled
SLAB_ORIGIN = (4.5, -3.0, 7.5)


@pytest.fixture
def slab(tmp_path, write_map) -> Path:
    """tmp_path with a non-cubic clean map (reference.mrc) and it plus noise (observation.mrc)."""
    rng = np.random.default_rng(2)
    grid = np.indices(SLAB_SHAPE).astype(np.float64)
    clean = np.zeros(SLAB_SHAPE)
    for _ in range(40):
        centre = np.array(SLAB_SHAPE) / 2 + rng.normal(scale=np.array(SLAB_SHAPE) / 6)
        clean += np.exp(-sum((grid[a] - centre[a]) ** 2 for a in range(3)) / (2 * 1.3**2))
    noise = rng.normal(0, 0.1, SLAB_SHAPE)
    write_map("reference.mrc", Volume(torch.from_numpy(clean.astype(np.float32)), SLAB_VOXEL, SLAB_ORIGIN))
    write_map("observation.mrc", Volume(torch.from_numpy((clean + noise).astype(np.float32)), SLAB_VOXEL, SLAB_ORIGIN))
    return tmp_path


NON_CUBIC_TASKS = {
    "gaussian-spectral-noise": TASK,
    "gaussian-missing-wedge": TASK.replace('kind = "spectral-noise"\nnoise_variance = 0.01', 'kind = "missing-wedge"\nnoise_variance = 0.0')
    .replace('kind = "flow-posterior-euler"\nsteps = 10\nguidance = "exact"', 'kind = "flow-posterior-pseudoinverse"\nsteps = 5'),
    "cryofm-missing-wedge": TASK.replace('kind = "gaussian"', 'kind = "cryofm"')
    .replace('kind = "spectral-noise"\nnoise_variance = 0.01', 'kind = "missing-wedge"\nnoise_variance = 0.0')
    .replace('kind = "flow-posterior-euler"\nsteps = 10\nguidance = "exact"', 'kind = "flow-posterior-pseudoinverse"\nsteps = 3'),
}


@pytest.mark.parametrize("name", NON_CUBIC_TASKS)
def test_run_on_a_non_cubic_map_keeps_its_shape_voxel_size_and_origin(cli, slab, name):
    task = slab / "task.toml"
    text = NON_CUBIC_TASKS[name]
    prior, operator = name.split("-", 1)
    assert f'kind = "{prior}"' in text and f'kind = "{operator}"' in text  # the edits of the tiny task took
    task.write_text(text)
    result = invoke(cli, "run", task, "--quiet")
    assert result.exit_code == 0, result.output + result.stderr

    restored = read_volume(slab / "restored.mrc")
    assert restored.shape == SLAB_SHAPE
    assert restored.voxel_size == pytest.approx(SLAB_VOXEL, rel=1e-6)
    assert restored.origin == pytest.approx(SLAB_ORIGIN)
    assert bool(torch.isfinite(restored.data).all())
    report = json.loads((slab / "restored.json").read_text())
    got = report["metrics"]["restored"]
    expected = compare(restored, read_volume(slab / "reference.mrc")).as_dict()
    assert got["auc"] == pytest.approx(expected["auc"], rel=1e-6)
    # shells 1..Nyquist of the longest edge (40): shell r is 40 * 1.5 / r Angstrom
    assert [p[0] for p in got["curve"]] == pytest.approx([40 * SLAB_VOXEL / r for r in range(1, 21)])
    assert got["correlation"] > 0.5, got["correlation"]
    assert report["warnings"] == []


def test_fsc_of_non_cubic_maps_and_alignment_refusing_them(cli, slab):
    a, b = slab / "observation.mrc", slab / "reference.mrc"
    result = invoke(cli, "fsc", a, b, "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    curve = fsc(read_volume(a), read_volume(b))
    assert len(printed["curve"]) == 20
    for r, (resolution, value) in enumerate(printed["curve"], start=1):
        assert resolution == pytest.approx(40 * SLAB_VOXEL / r)
        assert value == pytest.approx(float(curve[r]), abs=1e-12)
    # a rotation search needs cubes; it still says so
    assert_user_error(invoke(cli, "align", a, b, "--out", slab / "aligned.mrc"), "is not cubic; alignment needs cubic boxes")


def test_non_cubic_maps_of_different_shapes_are_refused_at_validation(cli, slab, write_map):
    write_map("other.mrc", Volume(torch.zeros(12, 20, 40), SLAB_VOXEL))
    task = slab / "task.toml"
    task.write_text(TASK.replace('reference = "reference.mrc"', 'reference = "other.mrc"'))
    assert_user_error(invoke(cli, "validate", task), "[inputs] reference: box 12x20x40 does not match [inputs] observation (12x40x20)")
