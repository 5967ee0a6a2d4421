"""SO(3) grids: sizes like cryoDRGN's, valid rotations, coverage halving per level, local refinement."""

from __future__ import annotations

import math

import pytest
import torch

from cryoinverse.rotations import geodesic_distance, random_rotations
from cryoinverse.so3_grid import axis_angle_to_matrix, grid_size, local_grid, so3_grid, sphere_directions


def _coverage(grid: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """For each probe rotation, the angle (degrees) to the nearest grid rotation."""
    cos = (torch.einsum("pij,gij->pg", probes, grid) - 1) / 2  # cos of the angle of probe^T grid
    return torch.rad2deg(torch.acos(cos.clamp(-1, 1)).min(dim=1).values)


def test_sizes_match_the_hopf_grids_of_cryodrgn():
    assert so3_grid(1).shape == (576, 3, 3) and so3_grid(2).shape == (4608, 3, 3)
    assert grid_size(3) == (768, 48)


def test_grid_rotations_are_rotations():
    g = so3_grid(2)
    eye = torch.eye(3, dtype=torch.float64).expand_as(g)
    torch.testing.assert_close(g @ g.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(g), torch.ones(len(g), dtype=torch.float64), atol=1e-12, rtol=0)


def test_directions_are_unit_and_balanced():
    d = sphere_directions(500)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(500, dtype=torch.float64))
    assert float(d.mean(0).norm()) < 0.01  # no hemisphere favoured


def test_coverage_halves_with_each_level():
    probes = random_rotations(300, torch.Generator().manual_seed(0))
    c1, c2 = _coverage(so3_grid(1), probes), _coverage(so3_grid(2), probes)
    # measured: nearest grid rotation at most 22.5 / 11.0 degrees away, 13.8 / 6.9 on average
    assert float(c1.max()) < 26 and float(c2.max()) < 13 and float(c1.mean()) < 16
    assert 0.4 < float(c2.mean() / c1.mean()) < 0.6


def test_axis_angle_matches_a_known_rotation():
    r = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    torch.testing.assert_close(r @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    v = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    angle = geodesic_distance(axis_angle_to_matrix(v), torch.eye(3, dtype=torch.float64))
    assert float(angle) == pytest.approx(float(v.norm()), rel=1e-9) or float(angle) == pytest.approx(math.degrees(float(v.norm())), rel=1e-9)


def test_local_refinement_finds_a_rotation_between_grid_points():
    target = random_rotations(1, torch.Generator().manual_seed(3))[0]
    grid = so3_grid(1)
    best = grid[int((torch.einsum("ij,gij->g", target, grid)).argmax())]
    step = 15.0
    for _ in range(5):  # keep the best neighbour, halve the step
        cands = local_grid(best[None], step)[0]
        assert cands.shape == (27, 3, 3)
        best = cands[int(torch.einsum("ij,gij->g", target, cands).argmax())]
        step /= 2
    err = float(_coverage(best[None], target[None]))
    assert err < 1.5, err
