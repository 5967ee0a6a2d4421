"""What a run with half maps reports without a reference: each half restored, FSCs, data overridden."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from cryoinverse.levels import noise_power_for_resolution
from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.runner import execute, run_task
from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
from cryoinverse.samplers.prior import PriorSampler
from cryoinverse.specs import Outputs, TaskSpec
from tests.conftest import blob_density
from tests.reference import directional_fsc_np, fsc_np


@pytest.fixture
def halves(write_map):
    clean = blob_density(20, seed=1, n_atoms=60, voxel_size=1.5)
    power = noise_power_for_resolution(clean, 6.0)
    op = SpectralNoise(noise_power=(2 * power).tolist())
    g = torch.Generator().manual_seed(0)
    h1, h2 = (clean.with_data(op.simulate(clean.data, g)) for _ in range(2))
    return write_map("h1.mrc", h1), write_map("h2.mrc", h2), h1, h2


def _spec(paths, sampler, tmp_path=None, check=True):
    outputs = Outputs(map=tmp_path / "out.mrc") if tmp_path is not None else Outputs()
    return TaskSpec(
        prior=GaussianPrior(), operators=[SpectralNoise(half_maps=list(paths))], sampler=sampler,
        outputs=outputs, seed=0, check_halves=check,
    )


def test_report_gives_the_half_map_fsc_and_each_half_restored(halves):
    p1, p2, h1, h2 = halves
    report = execute(_spec((p1, p2), FlowPosteriorEuler(steps=10, guidance="exact"))).report
    checks = report["half_maps"]
    want = fsc_np(h1.data.double().numpy(), h2.data.double().numpy())[1:]
    assert checks["input"]["auc"] == pytest.approx(want.mean(), abs=1e-9)
    np.testing.assert_allclose([c["fsc_input_halves"] for c in checks["curve"]], want, atol=1e-9)
    # the FSC the input has with the truth, from the half-map FSC (Rosenthal & Henderson)
    np.testing.assert_allclose([c["fsc_input_vs_truth_expected"] for c in checks["curve"]], np.sqrt(2 * np.clip(want, 0, None) / (1 + np.clip(want, 0, None))), atol=1e-9)
    assert -1 <= checks["restored"]["auc"] <= 1
    # the same FSC by direction, in cones of 20 degrees about z, y and x
    for axis, direction in (("z", (1.0, 0, 0)), ("y", (0, 1.0, 0)), ("x", (0, 0, 1.0))):
        cone = directional_fsc_np(h1.data.double().numpy(), h2.data.double().numpy(), np.array(direction), 20.0)[1:]
        got = [v for _, v in checks["directional"]["input"][axis]["curve"]]
        np.testing.assert_allclose(got, cone, atol=1e-9)
    assert set(checks["directional"]["restored"]) == {"cone_angle", "x", "y", "z"}
    # an exact Gaussian posterior never overrides strong data
    assert checks["overridden_resolutions_A"] == [] and report["warnings"] == []


def test_the_mean_shortfall_over_strong_shells(halves):
    """shortfall_mean = mean over shells with half-map FSC >= 0.5 of sqrt(2F / (1 + F)) - FSC(restored, input),
    float64 from the maps; a posterior mean shares the input's noise, so it agrees with the input more
    than the truth does (shortfall < 0), while samples that ignore the data fall far short."""
    from cryoinverse.engine import OVERRIDE_MEAN_MARGIN

    p1, p2, h1, h2 = halves
    result = execute(_spec((p1, p2), FlowPosteriorEuler(steps=10, guidance="exact")))
    f_in = fsc_np(h1.data.double().numpy(), h2.data.double().numpy())[1:]
    observation = (h1.data.double().numpy() + h2.data.double().numpy()) / 2
    agreement = fsc_np(result.volume.data.double().numpy(), observation)[1:]
    strong = f_in >= 0.5
    expected = np.sqrt(2 * np.clip(f_in, 0, None) / (1 + np.clip(f_in, 0, None)))
    shortfall = result.report["half_maps"]["shortfall_mean"]
    assert shortfall == pytest.approx(float((expected[strong] - agreement[strong]).mean()), abs=1e-5)
    assert shortfall < 0
    spec = _spec((p1, p2), PriorSampler(steps=10))
    spec.prior = GaussianPrior(power_from=p1)
    assert execute(spec).report["half_maps"]["shortfall_mean"] > OVERRIDE_MEAN_MARGIN


def test_a_restoration_that_ignores_the_data_is_flagged(halves):
    """Unconditional prior samples agree with the input far less than the input agrees with the truth."""
    p1, p2, *_ = halves
    prior = GaussianPrior(power_from=p1)
    spec = _spec((p1, p2), PriorSampler(steps=10))
    spec.prior = prior
    report = execute(spec).report
    assert report["half_maps"]["overridden_resolutions_A"]
    assert any("overrode the data" in w for w in report["warnings"])


def test_half_map_checks_can_be_turned_off(halves):
    p1, p2, *_ = halves
    report = execute(_spec((p1, p2), FlowPosteriorEuler(steps=5, guidance="exact"), check=False)).report
    assert "half_maps" not in report


def test_run_writes_a_slices_png(halves, tmp_path):
    p1, p2, *_ = halves
    result = run_task(_spec((p1, p2), FlowPosteriorEuler(steps=5, guidance="exact"), tmp_path=tmp_path))
    png = tmp_path / "out_slices.png"
    assert png in result.written and png.read_bytes()[:4] == b"\x89PNG"


def test_slices_are_the_central_planes():
    from cryoinverse.slices import central_slices

    data = torch.arange(5 * 6 * 7, dtype=torch.float32).reshape(5, 6, 7)
    z, y, x = central_slices(data)
    np.testing.assert_array_equal(z, data[2].numpy())
    np.testing.assert_array_equal(y, data[:, 3].numpy())
    np.testing.assert_array_equal(x, data[:, :, 3].numpy())


def test_half_maps_of_different_boxes_are_named(write_map):
    from cryoinverse.errors import SpecError

    a = write_map("a.mrc", blob_density(16, voxel_size=1.5))
    b = write_map("b.mrc", blob_density(20, voxel_size=1.5))
    c = write_map("c.mrc", blob_density(16, voxel_size=2.0))
    for other, message in ((b, "box 20^3 does not match"), (c, "voxel size 2 A does not match")):
        with pytest.raises(SpecError, match=re.escape(message)):
            execute(_spec((a, other), FlowPosteriorEuler(steps=2, guidance="exact")))


def test_a_result_far_off_the_input_scale_is_warned():
    from cryoinverse.engine import _absurd
    from cryoinverse.volume import Volume

    y = Volume(torch.randn(8, 8, 8), 1.0)
    assert _absurd(y.with_data(0.5 * y.data), y) == []
    (warning,) = _absurd(y.with_data(540.0 * y.data), y)
    assert "540 times the input's" in warning and "meaningless" in warning
    assert _absurd(y.with_data(1e-4 * y.data), y)
