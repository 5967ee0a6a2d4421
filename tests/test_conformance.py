"""The conformance kit (cryoinverse.testing) over every built-in component and the plugin example."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from cryoinverse import testing
from cryoinverse.operators.anisotropic_noise import AnisotropicNoise
from cryoinverse.operators.missing_wedge import MissingWedge
from cryoinverse.operators.projection import Projection
from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.priors.cryofm import CryoFMPrior
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.registry import get_registry
from cryoinverse.rotations import random_rotations
from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
from cryoinverse.samplers.flow_posterior_pseudoinverse import FlowPosteriorPseudoinverse
from cryoinverse.samplers.flow_posterior_posesearch import FlowPosteriorPosesearch
from cryoinverse.samplers.prior import PriorSampler


def _projection():
    rotations = random_rotations(6, torch.Generator().manual_seed(0)).to(torch.float32)
    return Projection.from_poses(rotations, noise_variance=0.01, pixel_size=1.5)


OPERATORS = {
    "spectral-noise": lambda: SpectralNoise(noise_variance=0.01),
    "anisotropic-noise": lambda: AnisotropicNoise(noise_variance=0.01, factor=5.0, cone_half_angle=30.0),
    "missing-wedge": lambda: MissingWedge(tilt_min=-50.0, tilt_max=50.0, noise_variance=0.01),
    "projection": _projection,
}
PRIORS = {"gaussian": lambda: GaussianPrior(), "cryofm": lambda: CryoFMPrior()}
SAMPLERS = {
    "flow-posterior-euler": lambda: FlowPosteriorEuler(steps=5),
    "flow-posterior-pseudoinverse": lambda: FlowPosteriorPseudoinverse(steps=5),
    "prior": lambda: PriorSampler(steps=5),
    "flow-posterior-posesearch": lambda: FlowPosteriorPosesearch(steps=4, search_every=2, cg_iterations=2),
}


def test_every_built_in_component_is_covered():
    registry = get_registry()
    builtin = {(e.kind, e.name) for e in registry.entries() if e.plugin.startswith("cryoinverse.")}
    covered = {("operator", n) for n in OPERATORS} | {("prior", n) for n in PRIORS} | {("sampler", n) for n in SAMPLERS}
    covered |= {("poser", "search"), ("poser", "fastar")}  # tests/posers/test_search.py and test_fastar.py run check_poser
    assert builtin == covered


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operator_conforms(name):
    testing.check_operator(OPERATORS[name]())


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_prior_conforms(name):
    testing.check_prior(PRIORS[name]())


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_conforms(name):
    testing.check_sampler(SAMPLERS[name]())


def test_plugin_example_operator_conforms(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "plugin_example"))
    module = __import__("cryoinverse_scale_example")
    try:
        testing.check_operator(module.ScaledNoise(scale=2.0, noise_variance=0.05))
    finally:
        sys.modules.pop("cryoinverse_scale_example", None)


def test_a_broken_law_is_named():
    """An operator whose simulate adds twice the noise its likelihood assumes fails the noise check, by name."""

    class Loud(SpectralNoise):
        def simulate(self, x, generator=None):
            return x + 2 * (super().simulate(x, generator) - x)

    with pytest.raises(AssertionError, match="Loud fails check_simulate_noise_matches_likelihood"):
        testing.check_operator(Loud(noise_variance=0.01))
