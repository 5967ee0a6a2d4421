"""Pose values and metrics: zero for equal sets and for a set rotated as a whole, exact known errors."""

from __future__ import annotations

import pytest
import torch

from cryoinverse.poses import Poses, align_rotations, pose_metrics, rotation_errors
from cryoinverse.rotations import random_rotations
from cryoinverse.so3_grid import axis_angle_to_matrix


def test_equal_sets_have_no_error():
    r = random_rotations(50, torch.Generator().manual_seed(0))
    m = pose_metrics(Poses(r), Poses(r))
    assert m["rotation_error_median_deg"] < 1e-5 and m["within_5_deg"] == 1.0 and m["shift_error_mean_A"] == 0.0


def test_a_set_rotated_as_a_whole_has_no_error_after_alignment():
    r = random_rotations(50, torch.Generator().manual_seed(1))
    g = random_rotations(1, torch.Generator().manual_seed(2))[0]
    rotated = r @ g
    assert float(rotation_errors(rotated, r).max()) < 1e-5
    torch.testing.assert_close(align_rotations(rotated, r), g, atol=1e-10, rtol=0)
    assert float(rotation_errors(rotated, r, align=False).min()) > 1.0


def test_known_perturbations_give_their_angles():
    r = random_rotations(40, torch.Generator().manual_seed(3))
    axes = torch.nn.functional.normalize(torch.randn(40, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64), dim=1)
    angles = torch.linspace(1.0, 20.0, 40, dtype=torch.float64)
    perturbed = r @ axis_angle_to_matrix(axes * torch.deg2rad(angles)[:, None])
    err = rotation_errors(perturbed, r, align=False)
    torch.testing.assert_close(err, angles, atol=1e-6, rtol=0)
    m = pose_metrics(Poses(perturbed, shifts=torch.ones(40, 2)), Poses(r), align=False)
    assert m["within_10_deg"] == pytest.approx(float((angles <= 10).double().mean()))
    assert m["shift_error_mean_A"] == pytest.approx(2**0.5)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="rotations must be"):
        Poses(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"shifts must be \(2, 2\)"):
        Poses(torch.eye(3).expand(2, 3, 3), shifts=torch.zeros(3, 2))
