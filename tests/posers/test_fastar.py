"""Poser `fastar`: network predictions tied to the map by anchor searches, then refined locally."""

from __future__ import annotations

import pytest
import torch

from cryoinverse.errors import SpecError
from cryoinverse.planar import planar_maps
from cryoinverse.posers.fastar import FastARPoser
from cryoinverse.posers.fastar_model import FastAROutput
from cryoinverse.poses import Poses, pose_metrics
from cryoinverse.projection import project_fourier
from cryoinverse.rotations import random_rotations
from cryoinverse.so3_grid import axis_angle_to_matrix
from cryoinverse.testing import sample_density

N, PIXEL, COUNT = 24, 2.0, 20


class _Oracle(torch.nn.Module):
    """Returns the planar maps (and shifts, pixels) of known poses, rotations optionally nudged, for the views in the order the poser asks."""

    def __init__(self, rotations: torch.Tensor, views: int, nudge: float = 0.0, shifts_px: torch.Tensor | None = None):
        super().__init__()
        self.rotations, self.views, self.calls = rotations, views, 0
        self.shifts = torch.zeros(rotations.shape[0], 2) if shifts_px is None else shifts_px.float()
        g = torch.Generator().manual_seed(5)
        self.noise = axis_angle_to_matrix(torch.randn(rotations.shape[0], 3, generator=g, dtype=torch.float64) * nudge)

    def forward(self, views: torch.Tensor):
        start = 1 + self.calls * (self.views - 1)
        self.calls += 1
        idx = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(start, start + views.shape[1] - 1)])
        rot = self.rotations[idx] @ self.noise[idx]
        maps = planar_maps(rot, views.shape[-1]).to(torch.float32)[None]
        return FastAROutput(maps, torch.ones(maps.shape[:-1]), self.shifts[idx][None])


@pytest.fixture(scope="module")
def problem():
    volume = sample_density(N, seed=7)[0].double()
    rotations = random_rotations(COUNT, torch.Generator().manual_seed(8))
    shifts = torch.randint(-2, 3, (COUNT, 2), generator=torch.Generator().manual_seed(9)).double() * PIXEL
    images = project_fourier(volume, rotations, shifts, voxel_size=PIXEL, interpolation="sinc")
    return volume, rotations, shifts, images


def test_exact_predictions_are_placed_on_the_map_and_refined(problem):
    volume, rotations, shifts, images = problem
    meta = {"image_size": N, "voxel_size": PIXEL}
    raw = FastARPoser.from_model(_Oracle(rotations, 8, shifts_px=shifts / PIXEL), meta, views=8, anchors=4, refine=False).estimate(images, volume, PIXEL)
    # exact relative rotations: the only error is the reference pose from the anchors (their search error, ~1-2 degrees)
    m = pose_metrics(raw, Poses(rotations, shifts=shifts), align=False)
    assert m["rotation_error_median_deg"] < 3.0 and m["shift_error_mean_A"] < 1e-6  # measured 2.3; the head's shifts pass through in Å
    est = FastARPoser.from_model(_Oracle(rotations, 8, nudge=0.05), meta, views=8, anchors=4, shift_range=6.0).estimate(images, volume, PIXEL)
    m = pose_metrics(est, Poses(rotations, shifts=shifts), align=False)
    # predictions ~5 degrees off are refined to below 1.5 degrees, shifts found
    assert m["rotation_error_median_deg"] < 1.5 and m["shift_error_mean_A"] < 0.5


def test_relative_poses_need_no_map(problem):
    _, rotations, shifts, images = problem
    meta = {"image_size": N, "voxel_size": PIXEL}
    rel = FastARPoser.from_model(_Oracle(rotations, 8, shifts_px=shifts / PIXEL), meta, views=8).relative_poses(images, PIXEL)
    truth = rotations @ rotations[:1].transpose(-1, -2)  # R_i R_0^T: the first image's frame
    assert torch.allclose(rel.rotations, truth, atol=1e-5) and torch.allclose(rel.shifts, shifts, atol=1e-5)


def test_a_network_that_disagrees_with_the_anchors_falls_back_to_global_search(problem):
    volume, rotations, shifts, images = problem
    meta = {"image_size": N, "voxel_size": PIXEL}
    wrong = random_rotations(COUNT, torch.Generator().manual_seed(30))  # a network that knows nothing
    with pytest.warns(UserWarning, match="searching every image globally"):
        est = FastARPoser.from_model(_Oracle(wrong, 8), meta, views=8, anchors=4, shift_range=6.0).estimate(images, volume, PIXEL)
    assert pose_metrics(est, Poses(rotations), align=False)["rotation_error_median_deg"] < 3.0
    # without the fallback the same network's poses stay wrong
    raw = FastARPoser.from_model(_Oracle(wrong, 8), meta, views=8, anchors=4, fallback=False, refine=False).estimate(images, volume, PIXEL)
    assert pose_metrics(raw, Poses(rotations), align=False)["rotation_error_median_deg"] > 60.0


def test_without_weights_or_a_shipped_network_it_says_what_to_do(problem, monkeypatch, tmp_path):
    import cryoinverse.posers.fastar as fastar

    volume, _, _, images = problem
    monkeypatch.setattr(fastar, "DEFAULT_WEIGHTS", tmp_path / "missing.safetensors")
    with pytest.raises(SpecError, match="train one with `cryoinverse train poser`"):
        FastARPoser().estimate(images, volume, PIXEL)
