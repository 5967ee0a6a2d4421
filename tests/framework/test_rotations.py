"""Rotations: RELION's Euler matrix against an independent composition, round trips, Haar sampling,
and a peer's data (cryoDRGN's rotations parsed from the same STAR file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoinverse.rotations import (
    axis_rotation,
    euler_zyz_to_matrix,
    geodesic_distance,
    matrix_to_euler_zyz,
    quaternion_to_matrix,
    random_rotations,
)


def _rz(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def _ry(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])


def _angles(n: int = 50, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)], axis=1)


def test_euler_matrix_is_the_inverse_of_the_intrinsic_zyz_rotation():
    # The documented reading: A = Rz(-psi) Ry(-tilt) Rz(-rot) with right-handed active factors.
    for rot, tilt, psi in _angles():
        expected = _rz(-psi) @ _ry(-tilt) @ _rz(-rot)
        got = euler_zyz_to_matrix(rot, tilt, psi).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_euler_matrix_is_a_batched_proper_rotation():
    a = torch.from_numpy(_angles(20))
    m = euler_zyz_to_matrix(a[:, 0], a[:, 1], a[:, 2])
    assert m.shape == (20, 3, 3) and m.dtype == torch.float64
    torch.testing.assert_close(m @ m.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(20, 3, 3))
    torch.testing.assert_close(torch.linalg.det(m), torch.ones(20, dtype=torch.float64))
    m32 = euler_zyz_to_matrix(a[:, 0].float(), a[:, 1].float(), a[:, 2].float())
    assert m32.dtype == torch.float32
    torch.testing.assert_close(m32.double(), m, atol=1e-6, rtol=0)


def test_viewing_direction_is_the_third_row():
    # A maps volume coordinates to image coordinates; the image's z axis seen from the volume is A^T e_z.
    for rot, tilt, psi in _angles(10, seed=1):
        a = euler_zyz_to_matrix(rot, tilt, psi).numpy()
        r, t = np.deg2rad(rot), np.deg2rad(tilt)
        np.testing.assert_allclose(a.T @ [0, 0, 1], [np.sin(t) * np.cos(r), np.sin(t) * np.sin(r), np.cos(t)], atol=1e-12)


def test_matrix_to_euler_round_trip():
    a = torch.from_numpy(_angles(200, seed=2))
    m = euler_zyz_to_matrix(a[:, 0], a[:, 1], a[:, 2])
    rot, tilt, psi = matrix_to_euler_zyz(m)
    torch.testing.assert_close(rot, a[:, 0], atol=1e-9, rtol=0)
    torch.testing.assert_close(tilt, a[:, 1], atol=1e-9, rtol=0)
    torch.testing.assert_close(psi, a[:, 2], atol=1e-9, rtol=0)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_matrix_to_euler_at_gimbal_lock(tilt):
    m = euler_zyz_to_matrix(37.0, tilt, -71.0)
    rot, tilt_back, psi = matrix_to_euler_zyz(m)
    assert float(rot) == 0.0 and float(tilt_back) == pytest.approx(tilt, abs=1e-9)
    torch.testing.assert_close(euler_zyz_to_matrix(rot, tilt_back, psi), m, atol=1e-12, rtol=0)


def test_axis_rotation_is_right_handed():
    torch.testing.assert_close(axis_rotation("z", 90.0) @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-15, rtol=0)
    torch.testing.assert_close(axis_rotation("x", 90.0) @ torch.tensor([0.0, 1, 0], dtype=torch.float64),
                               torch.tensor([0.0, 0, 1], dtype=torch.float64), atol=1e-15, rtol=0)
    torch.testing.assert_close(axis_rotation("y", 90.0) @ torch.tensor([0.0, 0, 1], dtype=torch.float64),
                               torch.tensor([1.0, 0, 0], dtype=torch.float64), atol=1e-15, rtol=0)
    # RELION's rot alone is the active rotation by -rot about z.
    torch.testing.assert_close(euler_zyz_to_matrix(30.0, 0.0, 0.0), axis_rotation("z", -30.0))
    assert float(geodesic_distance(axis_rotation("y", 30.0), torch.eye(3, dtype=torch.float64))) == pytest.approx(30.0)
    with pytest.raises(ValueError, match="axis must be"):
        axis_rotation("w", 1.0)


def test_quaternion_matches_axis_angle():
    half = np.deg2rad(40.0) / 2
    q = torch.tensor([np.cos(half), np.sin(half), 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(quaternion_to_matrix(q), axis_rotation("x", 40.0))


def test_random_rotations_are_haar_uniform():
    n = 20000
    r = random_rotations(n, torch.Generator().manual_seed(3))
    assert r.shape == (n, 3, 3)
    torch.testing.assert_close(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(n, 3, 3))
    # Haar measure: E[R] = 0, E[R_ij^2] = 1/3, and the angle theta has density (1 - cos theta) / pi,
    # so E[cos theta] = -1/2. Standard errors at n = 20000 are <= 0.005: bounds of 0.02 are 4 SE.
    assert float(r.mean(0).abs().max()) < 0.02
    assert float((r.square().mean(0) - 1 / 3).abs().max()) < 0.02
    cos_theta = (r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    assert float(cos_theta.mean()) == pytest.approx(-0.5, abs=0.02)
    torch.testing.assert_close(random_rotations(n, torch.Generator().manual_seed(3)), r)  # reproducible


def test_cryodrgn_rotations_of_a_relion_star_file_equal_ours(shared_data):
    # cryoDRGN parsed sta_testing_bin8.star into sta_ribosome_poses.npz: its rotation of each particle
    # is RELION's Euler_angles2matrix, the matrix our projection uses (see also the toy projections).
    from cryoinverse.star import read_particles

    table = read_particles(shared_data / "particles" / "sta_testing_bin8.star")
    ours = euler_zyz_to_matrix(*(torch.from_numpy(table[c]) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
    theirs = torch.from_numpy(np.load(shared_data / "particles" / "sta_ribosome_poses.npz")["rotations"]).double()
    assert ours.shape == theirs.shape == (219, 3, 3)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
