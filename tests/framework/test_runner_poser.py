"""Tasks whose particle images have unknown poses: the [poser] estimates them against [inputs] initial_map."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import attrs
import pytest
import torch

from cryoinverse.errors import DataError, SpecError
from cryoinverse.particles import read_particle_stack
from cryoinverse.poses import Poses, pose_metrics
from cryoinverse.poses_io import read_poses_star
from cryoinverse.runner import execute, run_task
from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
from cryoinverse.specs import check_structure, load_spec
from tests.framework.test_cli_poses import simulate_stack

TASK = """\
device = "cpu"

[prior]
kind = "gaussian"

[operator]
kind = "projection"
{operator}
noise_variance = 0.01

[poser]
kind = "search"
{poser}

[sampler]
kind = "flow-posterior-euler"
guidance = "cryofm"
steps = 2

[inputs]
{inputs}

[outputs]
map = "out/restored.mrc"
"""


def task(folder: Path, operator: str = 'star = "particles.star"', poser: str = "", inputs: str = 'initial_map = "ref.mrc"') -> Path:
    path = folder / "task.toml"
    path.write_text(TASK.format(operator=operator, poser=poser, inputs=inputs))
    return path


def test_poses_are_estimated_before_sampling_and_written_as_star(tmp_path):
    data = simulate_stack(tmp_path, count=8)
    spec = load_spec(task(tmp_path))
    result = run_task(spec)
    star = tmp_path / "out" / "restored_poses.star"
    assert star in result.written and result.volume.shape == (24, 24, 24)
    entry = result.report["poses"][0]
    assert entry["estimated_by"] == "search" and entry["images"] == 8 and entry["star"] == str(star) and entry["score_median"] > 0.9
    # the STAR is particles.star with the poses: the same rows, images and CTFs, new angles near the truth
    assert pose_metrics(read_poses_star(star), read_poses_star(data["truth"]))["rotation_error_median_deg"] < 2.0
    assert read_particle_stack(star).ctf is not None
    for path in result.written:  # all but the poses STAR: it alone is refused before any work
        if path != star:
            path.unlink()
    with pytest.raises(DataError, match=r"output exists: \S*restored_poses.star; use --overwrite"):
        run_task(load_spec(task(tmp_path)))


def test_a_stack_without_star_gets_a_new_star_pointing_at_it(tmp_path):
    data = simulate_stack(tmp_path, count=6, ctf=False)
    spec = load_spec(task(tmp_path, operator='particles = "truth.mrcs"', poser="level = 1\nrefinements = 0"))
    run_task(spec)
    stack = read_particle_stack(tmp_path / "out" / "restored_poses.star", ctf=False)  # rlnImageName finds the images
    assert stack.rotations.shape == (6, 3, 3) and stack.pixel_size == 3.0 and stack.box == 24
    torch.testing.assert_close(stack.images, read_particle_stack(data["truth"], ctf=False).images)


def test_unknown_poses_need_an_initial_map_or_a_sampler_that_searches(tmp_path):
    simulate_stack(tmp_path, count=2)
    with pytest.raises(SpecError, match=r"\[inputs\] initial_map: missing; the poses of \[operator\] projection are unknown"):
        load_spec(task(tmp_path, inputs=""))
    spec = load_spec(task(tmp_path))
    spec.inputs = attrs.evolve(spec.inputs, initial_map=None)
    spec.sampler = SearchingSampler(steps=1)
    check_structure(spec)  # a sampler that searches poses needs no initial map


def test_an_initial_map_on_another_grid_is_refused(tmp_path):
    from cryoinverse.mrc import write_volume
    from cryoinverse.volume import Volume

    simulate_stack(tmp_path, count=2)
    write_volume(tmp_path / "coarse.mrc", Volume(torch.rand(24, 24, 24), 4.0))
    with pytest.raises(SpecError, match=r"initial_map: coarse.mrc is 24x24x24 voxels of 4 Å but the images .* 24x24 pixels of 3 Å"):
        execute(load_spec(task(tmp_path, inputs='initial_map = "coarse.mrc"')))


@attrs.define
class SearchingSampler(FlowPosteriorEuler):
    """A sampler that claims its own pose search: sets identity poses and records the poser it was given."""

    name: ClassVar[str] = "searching-test"
    searches_poses: ClassVar[bool] = True
    seen: ClassVar[list] = []

    def prepare(self, ctx):
        self.seen.append(ctx.poser)

    def run(self, prior, likelihood, init, generator=None, progress=None):
        op = likelihood.observations[0].operator
        op.set_poses(torch.eye(3, dtype=torch.float64).expand(op.n_images, 3, 3))
        return torch.zeros_like(init)


def test_a_sampler_that_searches_poses_gets_the_poser_and_its_poses_are_written(tmp_path, monkeypatch):
    from cryoinverse.posers.search import Search

    simulate_stack(tmp_path, count=3)
    monkeypatch.setattr(Search, "estimate", lambda *a, **k: pytest.fail("the runner searched though the sampler does"))
    spec = load_spec(task(tmp_path))
    spec.sampler = SearchingSampler(steps=1)
    result = run_task(spec)
    assert isinstance(spec.sampler.seen[0], Search)
    assert result.report["poses"][0]["estimated_by"] == "searching-test"
    assert any("initial_map was not used" in w for w in result.report["warnings"])
    torch.testing.assert_close(read_poses_star(tmp_path / "out" / "restored_poses.star").rotations, torch.eye(3, dtype=torch.float64).expand(3, 3, 3))


@attrs.define
class RecordingSampler(FlowPosteriorEuler):
    """A pose-searching sampler as `flow-posterior-posesearch` is: its poses in `poses`, the operator left as given."""

    name: ClassVar[str] = "recording-test"
    searches_poses: ClassVar[bool] = True
    _poses: list = attrs.field(factory=list, init=False, repr=False)

    @property
    def poses(self) -> list:
        return list(self._poses)

    def prepare(self, ctx):
        pass

    def run(self, prior, likelihood, init, generator=None, progress=None):
        n = likelihood.observations[0].operator.n_images
        turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        self._poses = [Poses(turn.expand(n, 3, 3).clone(), scores=torch.full((n,), 0.5))]
        return torch.zeros_like(init)


def test_poses_a_sampler_records_are_written_though_it_leaves_the_operator_as_given(tmp_path):
    simulate_stack(tmp_path, count=3)
    spec = load_spec(task(tmp_path))
    spec.sampler = RecordingSampler(steps=1)
    result = run_task(spec)
    assert result.report["poses"][0]["estimated_by"] == "recording-test"
    assert not any("left no poses" in w for w in result.report["warnings"])
    written = read_poses_star(tmp_path / "out" / "restored_poses.star").rotations
    torch.testing.assert_close(written[:, 0, 1], torch.full((3,), -1.0, dtype=torch.float64))
