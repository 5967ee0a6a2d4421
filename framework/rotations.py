"""Rotations of cryoinverse, stated once here and obeyed everywhere.

- A rotation is a 3x3 matrix R acting on (x, y, z) column vectors: x' = R x. Batches are
  (..., 3, 3). Coordinates are relative to the box centre, voxel n // 2 on every axis.
- A *pose* of a particle image is (R, shift): a volume point at position r (Å, volume frame)
  appears in the image at (R r)_xy + shift, so the projection along z is
      image(u, v) = integral over w of  volume(R^T (u - s_x, v - s_y, w)) dw.
  R maps volume coordinates to image (camera) coordinates; its third row is the viewing direction
  in the volume frame.
- Euler angles are RELION's (Heymann, Chagoyen & Belnap 2005 ZYZ; degrees; rot, tilt, psi), and
  `euler_zyz_to_matrix` returns exactly RELION's `Euler_angles2matrix(rot, tilt, psi)` matrix A.
  RELION projects by sampling the volume's spectrum at A^T (k_x, k_y, 0), i.e. A maps volume
  coordinates to image coordinates: the projection operator uses R = A, unchanged. As an *active*
  rotation, A = Rz(-psi) Ry(-tilt) Rz(-rot) (each factor a right-handed rotation of vectors), the
  inverse of the intrinsic ZYZ rotation Rz(rot) Ry(tilt) Rz(psi); the viewing direction is
  A^T e_z = (sin tilt cos rot, sin tilt sin rot, cos tilt).
- `matrix_to_euler_zyz` returns tilt in [0, 180] and rot, psi in (-180, 180]; at tilt = 0 or 180
  (gimbal lock) it returns rot = 0 and puts the whole in-plane angle into psi.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "euler_zyz_to_matrix",
    "matrix_to_euler_zyz",
    "axis_rotation",
    "quaternion_to_matrix",
    "random_rotations",
    "geodesic_distance",
]


def _angles(*values, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    if dtype is None:
        given = [v.dtype for v in values if isinstance(v, torch.Tensor) and torch.is_floating_point(v)]
        dtype = given[0] if given else torch.float64
    tensors = [torch.as_tensor(v, dtype=dtype) for v in values]
    tensors = [t.to(dtype) for t in tensors]
    return list(torch.broadcast_tensors(*tensors))


def euler_zyz_to_matrix(rot, tilt, psi, dtype: torch.dtype | None = None) -> torch.Tensor:
    """RELION's Euler_angles2matrix: angles in degrees (broadcast together) -> (..., 3, 3).

    The dtype follows the angles (float64 for Python numbers) unless `dtype` is given.
    """
    a, b, g = (torch.deg2rad(t) for t in _angles(rot, tilt, psi, dtype=dtype))
    ca, sa, cb, sb, cg, sg = a.cos(), a.sin(), b.cos(), b.sin(), g.cos(), g.sin()
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def matrix_to_euler_zyz(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `euler_zyz_to_matrix`: (..., 3, 3) -> (rot, tilt, psi) in degrees."""
    m = torch.as_tensor(matrix)
    if not torch.is_floating_point(m):
        m = m.to(torch.float64)
    sin_tilt = torch.sqrt(m[..., 2, 0] ** 2 + m[..., 2, 1] ** 2)
    tilt = torch.atan2(sin_tilt, m[..., 2, 2])
    rot = torch.atan2(m[..., 2, 1], m[..., 2, 0])
    psi = torch.atan2(m[..., 1, 2], -m[..., 0, 2])
    # Gimbal lock: only rot + psi (tilt = 0) or psi - rot (tilt = 180) is defined; take rot = 0.
    locked = sin_tilt < (1e-6 if m.dtype == torch.float64 else 1e-3)
    up = m[..., 2, 2] > 0
    psi_locked = torch.where(up, torch.atan2(m[..., 0, 1], m[..., 0, 0]), torch.atan2(m[..., 0, 1], -m[..., 0, 0]))
    tilt = torch.where(locked, torch.where(up, torch.zeros_like(tilt), torch.full_like(tilt, math.pi)), tilt)
    rot = torch.where(locked, torch.zeros_like(rot), rot)
    psi = torch.where(locked, psi_locked, psi)
    return torch.rad2deg(rot), torch.rad2deg(tilt), torch.rad2deg(psi)


def axis_rotation(axis: str, degrees, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Active right-handed rotation by `degrees` about 'x', 'y' or 'z' -> (..., 3, 3)."""
    if axis not in ("x", "y", "z"):
        raise ValueError(f"axis must be 'x', 'y' or 'z'; got {axis!r}")
    (t,) = _angles(degrees, dtype=dtype)
    t = torch.deg2rad(t)
    c, s = t.cos(), t.sin()
    one, zero = torch.ones_like(t), torch.zeros_like(t)
    if axis == "x":
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == "y":
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) ordered (w, x, y, z) -> active rotation matrices (..., 3, 3)."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def random_rotations(
    n: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """n rotations (n, 3, 3) uniform on SO(3) (Haar): normalised 4D Gaussian quaternions."""
    q = torch.randn((n, 4), generator=generator, dtype=torch.float64, device=device)
    return quaternion_to_matrix(q).to(dtype)


def geodesic_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in degrees of the rotation a b^T (0 for equal rotations), batched."""
    rel = a @ b.transpose(-1, -2)
    cos = ((rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))
