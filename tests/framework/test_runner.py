"""The runner's own steps: a prior chosen by the map's voxel size before it is tiled or resampled."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.runner import execute
from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
from cryoinverse.specs import Inputs, TaskSpec
from cryoinverse.volume import Volume


@attrs.define
class PickyGaussian(GaussianPrior):
    """A gaussian prior that records the voxel size it was chosen for, as cryofm's "auto" weights are."""

    name: ClassVar[str] = "picky-gaussian"
    chosen_for: float | None = None

    def for_voxel_size(self, voxel_size: float | None) -> "PickyGaussian":
        return attrs.evolve(self, chosen_for=voxel_size)


def test_execute_runs_the_prior_for_the_maps_voxel_size_and_reports_it():
    prior = PickyGaussian()
    spec = TaskSpec(prior=prior, operators=[SpectralNoise(noise_variance=0.1)], sampler=FlowPosteriorEuler(steps=2, guidance="exact"),
                    inputs=Inputs(box=12), device="cpu")
    result = execute(spec, observation=Volume(torch.randn(12, 16, 10, generator=torch.Generator().manual_seed(0)), 10.0))
    assert result.report["task"]["prior"]["chosen_for"] == 10.0
    assert prior.chosen_for is None and spec.prior is prior  # the caller's spec is left as it was


def test_prior_sampling_takes_a_non_cubic_box_from_the_task_file():
    from cryoinverse.samplers.prior import PriorSampler
    from cryoinverse.specs import spec_from_dict

    from cryoinverse.fourier import n_shells

    white = [1.0] * n_shells((6, 8, 10))
    spec = spec_from_dict({"device": "cpu", "prior": {"kind": "gaussian", "power": white}, "sampler": {"kind": "prior", "steps": 2},
                           "inputs": {"box": [6, 8, 10], "voxel_size": 2.0}})
    assert spec.inputs.box == (6, 8, 10) and isinstance(spec.sampler, PriorSampler)
    assert execute(spec).volume.shape == (6, 8, 10)
    assert spec_from_dict({"prior": {"kind": "gaussian"}, "sampler": {"kind": "prior"}, "inputs": {"box": 12}}).inputs.box == 12


def test_a_box_that_is_not_one_or_three_positive_edges_is_refused():
    import pytest

    for bad in ([4, 4], [4, 0, 4], 0, 2.5, True, "12"):
        with pytest.raises(ValueError, match="box: an edge n > 0 or three edges"):
            Inputs(box=bad)


def test_input_warnings_of_components_go_to_the_report_once(tmp_path):
    """A prior that warns (InputWarning) in prepare: the report lists it once (prepare also runs for each
    half map, whose warnings are dropped: noisier copies of the same map); it is not also shown as a Python
    warning (the CLI prints the report's)."""
    import warnings

    from cryoinverse.errors import InputWarning
    from cryoinverse.mrc import write_volume
    from tests.conftest import blob_density

    class Wary(GaussianPrior):
        def prepare(self, ctx):
            super().prepare(ctx)
            warnings.warn("[prior] wary: this map looks odd", InputWarning)

    clean = blob_density()
    g = torch.Generator().manual_seed(0)
    halves = [clean.with_data(clean.data + 0.1 * torch.randn(clean.shape, generator=g)) for _ in range(2)]
    for i, h in enumerate(halves):
        write_volume(tmp_path / f"half{i}.mrc", h)
    op = SpectralNoise(half_maps=[str(tmp_path / "half0.mrc"), str(tmp_path / "half1.mrc")])
    spec = TaskSpec(prior=Wary(), operators=[op], sampler=FlowPosteriorEuler(steps=4), device="cpu")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        result = execute(spec)
    assert result.report["warnings"].count("[prior] wary: this map looks odd") == 1
    assert "half_maps" in result.report  # prepare also ran for the two halves
    assert not [w for w in shown if issubclass(w.category, InputWarning)]
