"""Task specs: the message a user sees for each bad input, `--set` overrides, paths, Python use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cryoinverse.errors import SpecError
from cryoinverse.mrc import read_volume
from cryoinverse.registry import get_registry
from cryoinverse.runner import run_task
from cryoinverse.specs import Inputs, Outputs, TaskSpec, apply_overrides, load_spec, parse_override
from cryoinverse.volume import Volume
from tests.conftest import TINY_TASK

TASK = "seed = 3\n" + TINY_TASK


def edit(text: str, old: str, new: str) -> str:
    """`text` with `old` replaced; fails if `old` is absent, so no case silently tests the good spec."""
    assert old in text, f"{old!r} not in the task text"
    return text.replace(old, new)


@pytest.fixture
def maps(tmp_path, write_map, density) -> Path:
    """tmp_path with observation.mrc (density + noise), reference.mrc and a few misfit maps."""
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, density.shape).astype(np.float32))
    write_map("observation.mrc", density.with_data(density.data + noise))
    write_map("reference.mrc", density)
    write_map("box12.mrc", Volume(density.data[:12, :12, :12], density.voxel_size))
    write_map("slab.mrc", Volume(density.data[:, :, :12], density.voxel_size))
    write_map("coarse.mrc", Volume(density.data, 3.0))
    return tmp_path


def write_task(folder: Path, text: str, name: str = "task.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def spec_error(path: Path, overrides=()) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides=list(overrides))
    return info.value


def test_good_task_loads(maps):
    spec = load_spec(write_task(maps, TASK))
    assert spec.prior.name == "gaussian"
    assert [op.name for op in spec.operators] == ["spectral-noise"]
    assert spec.operators[0].noise_variance == 0.01
    assert (spec.sampler.steps, spec.sampler.guidance) == (10, "exact")
    assert spec.inputs.observation == maps / "observation.mrc"
    assert (spec.seed, spec.device, spec.samples) == (3, "cpu", 1)
    assert spec.source == maps / "task.toml"


# Each case: (edit of the good task, section in brackets, field, phrases the message must hold).
BAD_TASKS = {
    "unknown kind": (
        ('kind = "gaussian"', 'kind = "gausian"'),
        "[prior]", "kind",
        ["unknown prior 'gausian'", "Did you mean 'gaussian'?", "Known priors: ", "gaussian"],
    ),
    "unknown field": (
        ("steps = 10", "stepz = 10"),
        "[sampler]", "stepz",
        ["unknown field", "did you mean 'steps'?", "lam_base"],
    ),
    "float for int": (
        ("steps = 10", "steps = 2.5"),
        "[sampler]", "steps",
        ["expected int or 'auto', got float 2.5", "number of Euler steps"],
    ),
    "string for int": (
        ("steps = 10", 'steps = "abc"'),
        "[sampler]", "steps",
        ["expected int or 'auto', got string 'abc'"],
    ),
    "string for bool": (
        ("steps = 10", 'normalize_gradient = "yes"'),
        "[sampler]", "normalize_gradient",
        ["expected bool, got string 'yes'"],
    ),
    "negative steps": (
        ("steps = 10", "steps = -1"),
        "[sampler]", "steps",
        ["must be > 0", "-1"],
    ),
    "unknown choice": (
        ('guidance = "exact"', 'guidance = "nope"'),
        "[sampler]", "guidance",
        ["'cryofm'", "'exact'", "'nope'"],
    ),
    "missing kind": (
        ('kind = "gaussian"', "power_floor = 0.001"),
        "[prior]", "kind",
        ["missing", "known priors: ", "gaussian"],
    ),
    "missing observation file": (
        ('observation = "observation.mrc"', 'observation = "nowhere.mrc"'),
        "[inputs]", "observation",
        ["file not found", "nowhere.mrc"],
    ),
    "no observation for the operator": (
        ('observation = "observation.mrc"', ""),
        "[inputs]", "observation",
        ["missing", "the operator needs an observed map"],
    ),
    "non-cubic map of another shape": (
        ('observation = "observation.mrc"', 'observation = "slab.mrc"'),
        "[inputs]", "reference",
        ["box 16^3 does not match [inputs] observation (16x16x12)"],
    ),
    "mismatched boxes": (
        ('reference = "reference.mrc"', 'reference = "box12.mrc"'),
        "[inputs]", "reference",
        ["box 12^3 does not match [inputs] observation (16^3)"],
    ),
    "mismatched voxel sizes": (
        ('reference = "reference.mrc"', 'reference = "coarse.mrc"'),
        "[inputs]", "reference",
        ["voxel size 3 A does not match [inputs] observation (2 A)"],
    ),
    "std with one sample": (
        ("[inputs]", '[outputs]\nstd = "std.mrc"\n\n[inputs]'),
        "[outputs]", "std",
        ["needs samples >= 2"],
    ),
    "non-positive voxel size": (
        ("[inputs]", "[inputs]\nvoxel_size = 0"),
        "[inputs]", "voxel_size",
        ["must be > 0"],
    ),
}


@pytest.mark.parametrize("change, section, field, phrases", BAD_TASKS.values(), ids=BAD_TASKS.keys())
def test_bad_task_message_names_file_section_and_field(maps, change, section, field, phrases):
    path = write_task(maps, edit(TASK, *change))
    error = spec_error(path)
    assert len(error.problems) == 1, error.problems
    message = error.problems[0]
    assert message.startswith(f"{path}: {section}")
    assert f"{section} {field}" in message
    for phrase in phrases:
        assert phrase in message


def test_missing_section_names_the_known_kinds(maps):
    text = TASK[: TASK.index("[sampler]")] + TASK[TASK.index("[inputs]") :]
    error = spec_error(write_task(maps, text))
    known = ", ".join(get_registry().names("sampler"))  # flow-posterior-euler, prior, and any plugin's
    assert "flow-posterior-euler" in known
    assert error.problems == [f"{maps / 'task.toml'}: [sampler]: missing section (known samplers: {known})"]


def test_unknown_section_suggests_the_right_one(maps):
    error = spec_error(write_task(maps, edit(TASK, "[inputs]", "[input]")))
    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"{maps / 'task.toml'}: [input]: unknown section; did you mean 'inputs'?")


def test_invalid_toml_names_file_and_line(maps):
    text = edit(TASK, "steps = 10", "steps = = 10")
    line = text.splitlines().index("steps = = 10") + 1
    path = write_task(maps, text)
    message = str(spec_error(path))
    assert message.startswith(f"{path}: invalid TOML")
    assert f"line {line}" in message


def test_top_level_setting_of_wrong_type(maps):
    path = write_task(maps, edit(TASK, "seed = 3", "seed = 1.5"))
    message = str(spec_error(path))
    assert message.startswith(f"{path}: ")
    assert "seed: expected int, got float 1.5" in message


def test_missing_task_file(tmp_path):
    assert str(spec_error(tmp_path / "nope.toml")) == f"{tmp_path / 'nope.toml'}: task file not found"


def test_every_problem_is_reported_at_once(maps):
    text = edit(TASK, 'kind = "gaussian"', 'kind = "gausian"')
    text = edit(text, "steps = 10", "steps = 2.5\nlam_bse = 1.0")
    text = edit(text, "[inputs]", "[outputz]\n\n[inputs]")
    error = spec_error(write_task(maps, text))
    assert len(error.problems) == 4
    joined = str(error)
    for part in ("[prior] kind", "[sampler] steps", "[sampler] lam_bse", "[outputz]"):
        assert part in joined
    assert all(p.startswith(f"{maps / 'task.toml'}: [") for p in error.problems)


def test_every_file_problem_is_reported_at_once(maps, write_map, density):
    write_map("thin.mrc", Volume(density.data[:, :, :4], density.voxel_size))
    text = edit(TASK, '"observation.mrc"', '"nowhere.mrc"')
    text = edit(text, '"reference.mrc"', '"thin.mrc"')
    error = spec_error(write_task(maps, text))
    assert len(error.problems) == 2
    assert "[inputs] observation: file not found" in error.problems[0]
    assert "[inputs] reference: thin.mrc is 16x16x4 voxels; at least 8 per edge" in error.problems[1]


def test_every_validator_problem_of_one_section_is_reported(maps):
    text = edit(TASK, "steps = 10", "steps = -1\nlam_max = 0")
    text = edit(text, 'guidance = "exact"', 'guidance = "nope"')
    text = edit(text, 'device = "cpu"', 'device = "gpu"')
    error = spec_error(write_task(maps, text))
    assert len(error.problems) == 4, error.problems
    joined = str(error)
    for part in ("[sampler] steps: must be > 0", "[sampler] lam_max: must be > 0", "[sampler] guidance: must be one of", "device: must be"):
        assert part in joined


# --- --set overrides ------------------------------------------------------------------------


def test_parse_override_reads_toml_values_else_strings():
    assert parse_override("sampler.steps=7") == (["sampler", "steps"], 7)
    assert parse_override("sampler.lam_base = 1.5") == (["sampler", "lam_base"], 1.5)
    assert parse_override("sampler.guidance=exact") == (["sampler", "guidance"], "exact")
    assert parse_override('sampler.guidance="exact"') == (["sampler", "guidance"], "exact")
    assert parse_override("sampler.normalize_gradient=false") == (["sampler", "normalize_gradient"], False)
    assert parse_override("prior.power=[1, 0.5]") == (["prior", "power"], [1, 0.5])
    with pytest.raises(SpecError, match="expected SECTION.FIELD=VALUE"):
        parse_override("sampler.steps")


def test_apply_overrides_sets_values_and_creates_nested_tables():
    raw = {"sampler": {"kind": "flow-posterior-euler", "steps": 10}}
    apply_overrides(raw, ["sampler.steps=7", "sampler.guidance=exact", "outputs.fsc_csv=fsc.csv", "a.b.c=1"])
    assert raw["sampler"] == {"kind": "flow-posterior-euler", "steps": 7, "guidance": "exact"}
    assert type(raw["sampler"]["steps"]) is int
    assert raw["outputs"] == {"fsc_csv": "fsc.csv"}
    assert raw["a"] == {"b": {"c": 1}}

    one_operator = {"operators": [{"kind": "spectral-noise", "noise_variance": 0.01}]}
    apply_overrides(one_operator, ["operator.noise_variance=0.5"])
    assert one_operator["operators"][0]["noise_variance"] == 0.5

    with pytest.raises(SpecError, match="'steps' is not a section"):
        apply_overrides(raw, ["sampler.steps.x=1"])


def test_load_spec_applies_overrides(maps):
    path = write_task(maps, TASK)
    spec = load_spec(path, overrides=["sampler.steps=7", "sampler.guidance=cryofm", "outputs.fsc_csv=curve.csv"])
    assert spec.sampler.steps == 7 and type(spec.sampler.steps) is int
    assert spec.sampler.guidance == "cryofm"
    assert spec.outputs.fsc_csv == maps / "curve.csv"  # a new field of a new section, path resolved


def test_bad_override_is_reported_like_a_bad_file_value(maps):
    path = write_task(maps, TASK)
    error = spec_error(path, ["sampler.steps=abc"])
    assert error.problems[0].startswith(f"{path}: [sampler] steps: expected int or 'auto', got string 'abc'")
    error = spec_error(path, ["sampler.stepz=3"])
    assert "[sampler] stepz: unknown field; did you mean 'steps'?" in error.problems[0]


# --- paths ----------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_task_folder(maps, tmp_path, monkeypatch):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    text = edit(TASK, '"observation.mrc"', '"../observation.mrc"')
    text = edit(text, '"reference.mrc"', f'"{maps / "reference.mrc"}"')  # absolute stays as is
    text = edit(text, 'kind = "gaussian"', 'kind = "gaussian"\npower_from = "../reference.mrc"')
    text += '\n[outputs]\nmap = "out/restored.mrc"\nfsc_plot = "out/fsc.png"\n'
    path = write_task(tasks, text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    spec = load_spec(path)
    assert spec.inputs.observation == maps / "observation.mrc"  # normalised: no "tasks/.."
    assert spec.inputs.reference == maps / "reference.mrc"
    assert spec.prior.power_from == maps / "reference.mrc"
    assert spec.outputs.map == tasks / "out" / "restored.mrc"
    assert spec.outputs.report_path == tasks / "out" / "restored.json"
    assert spec.outputs.fsc_plot == tasks / "out" / "fsc.png"


def test_default_outputs_go_beside_the_task_file(maps, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec(write_task(maps, TASK))
    assert spec.outputs.map == maps / "restored.mrc"
    assert spec.outputs.report_path == maps / "restored.json"


# --- the same spec in Python ----------------------------------------------------------------


def python_spec(maps: Path, out: Path, **inputs) -> TaskSpec:
    from cryoinverse.operators.spectral_noise import SpectralNoise
    from cryoinverse.priors.gaussian import GaussianPrior
    from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler

    return TaskSpec(
        prior=GaussianPrior(),
        operators=[SpectralNoise(noise_variance=0.01)],
        sampler=FlowPosteriorEuler(steps=10, guidance="exact"),
        inputs=Inputs(**{"observation": maps / "observation.mrc", "reference": maps / "reference.mrc", **inputs}),
        outputs=Outputs(map=out / "restored.mrc"),
        seed=3,
        device="cpu",
    )


def test_python_spec_runs_like_the_toml_file(maps):
    result = run_task(python_spec(maps, maps / "python"))
    assert sorted(p.name for p in (maps / "python").iterdir()) == ["restored.json", "restored.mrc", "restored_slices.png"]

    toml = load_spec(write_task(maps, TASK + '\n[outputs]\nmap = "toml/restored.mrc"\n'))
    from_toml = run_task(toml)

    torch.testing.assert_close(result.volume.data, from_toml.volume.data, rtol=0, atol=1e-6)
    written = read_volume(maps / "python" / "restored.mrc")
    torch.testing.assert_close(written.data, result.volume.data, rtol=0, atol=0)
    assert written.voxel_size == pytest.approx(2.0)
    assert result.report["metrics"]["restored"]["auc"] == pytest.approx(
        from_toml.report["metrics"]["restored"]["auc"], abs=1e-6
    )
    assert result.report["task"]["sampler"] == from_toml.report["task"]["sampler"]


def test_python_spec_is_validated_like_the_toml_file(maps):
    spec = python_spec(maps, maps / "python", reference=maps / "box12.mrc")
    with pytest.raises(SpecError) as info:
        run_task(spec)
    assert info.value.problems == ["[inputs] reference: box 12^3 does not match [inputs] observation (16^3)"]
    assert not (maps / "python").exists()
