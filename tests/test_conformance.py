"""The conformance kit (cryoinverse.testing) over every built-in component and the plugin example."""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import pytest
import torch

from cryoinverse import testing
from cryoinverse.operators.anisotropic_noise import AnisotropicNoise
from cryoinverse.operators.missing_wedge import MissingWedge
from cryoinverse.operators.projection import Projection
from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.posers.fastar import FastARPoser
from cryoinverse.posers.search import Search
from cryoinverse.poses import Poses
from cryoinverse.priors.cryofm import CryoFMPrior
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.registry import get_registry
from cryoinverse.rotations import random_rotations
from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
from cryoinverse.samplers.flow_posterior_posesearch import FlowPosteriorPosesearch
from cryoinverse.samplers.flow_posterior_pseudoinverse import FlowPosteriorPseudoinverse
from cryoinverse.samplers.prior import PriorSampler


def _projection():
    rotations = random_rotations(6, torch.Generator().manual_seed(0)).to(torch.float32)
    return Projection.from_poses(rotations, noise_variance=0.01, pixel_size=1.5)


BUILT_IN = {
    "operator": [
        SpectralNoise(noise_variance=0.01),
        AnisotropicNoise(noise_variance=0.01, factor=5.0, cone_half_angle=30.0),
        MissingWedge(tilt_min=-50.0, tilt_max=50.0, noise_variance=0.01),
        _projection(),
    ],
    "prior": [GaussianPrior(), CryoFMPrior()],
    "sampler": [
        FlowPosteriorEuler(steps=5),
        FlowPosteriorPseudoinverse(steps=5),
        PriorSampler(steps=5),
        FlowPosteriorPosesearch(steps=4, search_every=2, cg_iterations=2),
    ],
    "poser": [Search(level=1), FastARPoser()],  # fastar with the shipped network (posers/data/)
}

EXPECTED_FAILURES = {
    "fastar": {
        "check_relative_poses_recover_noiseless_projections": (
            "the shipped network is a placeholder at chance (median error ~125 degrees, posers/data/README.md); "
            "estimate falls back to search"
        ),
    },
}


def test_every_built_in_component_is_covered():
    registry = get_registry()
    builtin = {(e.kind, e.name) for e in registry.entries() if e.plugin.startswith("cryoinverse.")}
    assert builtin == {(kind, c.name) for kind, built in BUILT_IN.items() for c in built}


@testing.parametrize_with_checks(
    [c for built in BUILT_IN.values() for c in built], expected_failures=lambda c: EXPECTED_FAILURES.get(c.name, {})
)
@pytest.mark.filterwarnings("ignore:.*searching every image globally:UserWarning")  # fastar's shipped network, as expected
def test_built_in_component(component, check):
    check(component)


def test_plugin_example_operator_conforms(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugin_example"))
    module = __import__("cryoinverse_scale_example")
    try:
        testing.check_operator(module.ScaledNoise(scale=2.0, noise_variance=0.05))
    finally:
        sys.modules.pop("cryoinverse_scale_example", None)


class Loud(SpectralNoise):
    """Simulates twice the noise its likelihood assumes."""

    def simulate(self, x, generator=None):
        return x + 2 * (super().simulate(x, generator) - x)


def test_a_broken_law_is_named():
    with pytest.raises(AssertionError, match="Loud fails check_simulate_noise_matches_likelihood"):
        testing.check_operator(Loud(noise_variance=0.01))


@attrs.define
class Still(Search):
    """Finds every image at the identity rotation, unshifted."""

    def estimate(self, images, volume, pixel_size, ctf=None, init=None):
        count = images.shape[0]
        return Poses(torch.eye(3, dtype=torch.float64).expand(count, 3, 3), scores=torch.zeros(count))


def test_a_poser_that_finds_no_poses_fails_recovery():
    with pytest.raises(AssertionError, match="Still fails check_recovers_poses_of_noiseless_projections: rotation errors"):
        testing.check_poser(Still(level=1))


def test_expected_failures_are_passed_over_and_must_fail():
    testing.check_operator(Loud(noise_variance=0.01), expected_failures={"check_simulate_noise_matches_likelihood": "louder on purpose"})
    with pytest.raises(AssertionError, match="SpectralNoise: check_operator_is_linear passed; remove it from expected_failures"):
        testing.check_operator(SpectralNoise(noise_variance=0.01), expected_failures={"check_operator_is_linear": "it is linear"})
    with pytest.raises(ValueError, match="check_pseudo_inverse, not a check of SpectralNoise"):
        testing.check_operator(SpectralNoise(noise_variance=0.01), expected_failures={"check_pseudo_inverse": "it has none"})


def _names(checks):
    return {name for name, _ in checks}


def test_checks_follow_capabilities():
    """Capability checks come with the capability (isinstance), not with a flag."""
    wedge = _names(testing.operator_checks(MissingWedge(tilt_min=-50.0, tilt_max=50.0, noise_variance=0.01)))
    assert {"check_fourier_diagonal_agrees_with_forward", "check_pseudo_inverse", "check_non_cubic_maps"} <= wedge
    projection = _names(testing.operator_checks(_projection()))
    assert "check_takes_poses" in projection
    assert not projection & {"check_fourier_diagonal_agrees_with_forward", "check_pseudo_inverse", "check_non_cubic_maps"}
    assert "check_conditional" in _names(testing.prior_checks(GaussianPrior())) - _names(testing.prior_checks(CryoFMPrior()))
    search = _names(testing.poser_checks(Search()))
    assert {"check_stack_statistics", "check_resolutions"} <= search and "check_relative_poses" not in search


def test_a_misspelt_capability_is_named():
    class Misspelt(SpectralNoise):
        def pseudo_inverses(self, x, y):
            return x

    with pytest.raises(AssertionError, match="pseudo_inverses looks like PseudoInverse's pseudo_inverse"):
        testing.check_capabilities(Misspelt(noise_variance=0.01))


def test_parametrize_with_checks_gives_one_test_per_check():
    mark = testing.parametrize_with_checks([Loud(noise_variance=0.01)], expected_failures={"check_simulate_noise_matches_likelihood": "louder on purpose"})
    assert mark.args[0] == "component, check"
    params = {p.id: p.values for p in mark.args[1]}
    assert list(params) == [f"Loud-{name}" for name, _ in testing.operator_checks(Loud(noise_variance=0.01))]
    component, check = params["Loud-check_simulate_noise_matches_likelihood"]
    with pytest.raises(pytest.xfail.Exception, match="louder on purpose"):
        check(component)
    component, check = params["Loud-check_operator_is_linear"]
    check(component)
    mark = testing.parametrize_with_checks([SpectralNoise(noise_variance=0.01)], expected_failures={"check_operator_is_linear": "it is linear"})
    component, check = {p.id: p.values for p in mark.args[1]}["SpectralNoise-check_operator_is_linear"]
    with pytest.raises(AssertionError, match="check_operator_is_linear passed; remove it from expected_failures"):
        check(component)
    with pytest.raises(ValueError, match="check_pseudo_inverse, not a check of any of the components"):
        testing.parametrize_with_checks([SpectralNoise(noise_variance=0.01)], expected_failures={"check_pseudo_inverse": "none"})
