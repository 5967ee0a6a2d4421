"""Several observations in one task: [[operators]] tables, each with its own observation; likelihoods add."""

from __future__ import annotations

import pytest
import torch

from cryoinverse.errors import SpecError
from cryoinverse.runner import execute
from cryoinverse.specs import load_spec

TWO_HALVES = """
seed = 3
samples = 2
[prior]
kind = "gaussian"
power_from = "ref.mrc"
[[operators]]
kind = "spectral-noise"
noise_variance = 0.02
observation = "h1.mrc"
[[operators]]
kind = "spectral-noise"
noise_variance = 0.02
observation = "h2.mrc"
[sampler]
kind = "flow-posterior-euler"
guidance = "exact"
steps = 10
[inputs]
reference = "ref.mrc"
"""

ONE_AVERAGE = """
seed = 3
samples = 2
[prior]
kind = "gaussian"
power_from = "ref.mrc"
[operator]
kind = "spectral-noise"
noise_variance = 0.01
[sampler]
kind = "flow-posterior-euler"
guidance = "exact"
steps = 10
[inputs]
observation = "avg.mrc"
reference = "ref.mrc"
"""


def test_two_observations_equal_their_average_with_half_the_noise(tmp_path, density, write_map):
    g = torch.Generator().manual_seed(0)
    noise = [0.02**0.5 * torch.randn(density.shape, generator=g) for _ in range(2)]
    write_map("ref.mrc", density)
    write_map("h1.mrc", density.with_data(density.data + noise[0]))
    write_map("h2.mrc", density.with_data(density.data + noise[1]))
    write_map("avg.mrc", density.with_data(density.data + 0.5 * (noise[0] + noise[1])))
    (tmp_path / "two.toml").write_text(TWO_HALVES)
    (tmp_path / "one.toml").write_text(ONE_AVERAGE)
    two = execute(load_spec(tmp_path / "two.toml"))
    one = execute(load_spec(tmp_path / "one.toml"))
    # Gaussian likelihoods of two observations with noise s^2 multiply to one of their mean with
    # noise s^2 / 2: the same posterior, the same samples for the same seed (float32 round-off only).
    torch.testing.assert_close(two.volume.data, one.volume.data, rtol=1e-3, atol=1e-4)
    assert len(two.report["task"]["operators"]) == 2


def test_each_operator_needs_its_observation(tmp_path, density, write_map):
    write_map("ref.mrc", density)
    write_map("h1.mrc", density)
    text = TWO_HALVES.replace('observation = "h2.mrc"\n', "")
    (tmp_path / "task.toml").write_text(text)
    with pytest.raises(SpecError, match=r"\[operators.1\] observation: missing"):
        load_spec(tmp_path / "task.toml")


def test_observation_box_mismatch_is_reported(tmp_path, density, write_map):
    from tests.conftest import blob_density

    write_map("ref.mrc", density)
    write_map("h1.mrc", density)
    write_map("h2.mrc", blob_density(20))
    (tmp_path / "task.toml").write_text(TWO_HALVES)
    with pytest.raises(SpecError, match=r"\[operators.1\] observation: box 20\^3 does not match"):
        load_spec(tmp_path / "task.toml")
