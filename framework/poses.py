"""Poses of particle images and how far one set is from another (CryoFastAR appendix D).

`Poses` holds rotations (N, 3, 3) (volume to image, `cryoinverse.rotations`), shifts (N, 2) in
Å (x, y; content moves by +shift) and a score per image (higher is better; NaN where none).
An ab initio map comes out in an arbitrary frame: before comparing, `align_rotations` finds the
one rotation G that best maps the estimated set onto the true one (R_est ~ R_true G), and errors
are geodesic angles in degrees after it.
"""

from __future__ import annotations

import attrs
import torch

from .rotations import geodesic_distance

__all__ = ["Poses", "align_rotations", "rotation_errors", "pose_metrics"]


def _rotations(value) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.ndim != 3 or t.shape[1:] != (3, 3):
        raise ValueError(f"rotations must be (N, 3, 3); got {tuple(t.shape)}")
    return t


@attrs.frozen
class Poses:
    """Rotations (N, 3, 3), shifts (N, 2) in Å and scores (N,) of N particle images."""

    rotations: torch.Tensor = attrs.field(converter=_rotations)
    shifts: torch.Tensor = attrs.field(default=None)
    scores: torch.Tensor = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        n = self.rotations.shape[0]
        shifts = torch.zeros(n, 2, dtype=torch.float64) if self.shifts is None else torch.as_tensor(self.shifts, dtype=torch.float64)
        scores = torch.full((n,), float("nan"), dtype=torch.float64) if self.scores is None else torch.as_tensor(self.scores, dtype=torch.float64)
        if shifts.shape != (n, 2):
            raise ValueError(f"shifts must be ({n}, 2) in Å; got {tuple(shifts.shape)}")
        if scores.shape != (n,):
            raise ValueError(f"scores must be ({n},); got {tuple(scores.shape)}")
        object.__setattr__(self, "shifts", shifts)
        object.__setattr__(self, "scores", scores)

    def __len__(self) -> int:
        return self.rotations.shape[0]


def align_rotations(estimated: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The rotation G minimising sum_i |R_est,i - R_true,i G|^2 (the projection of sum_i R_true,i^T R_est,i onto SO(3))."""
    m = (truth.transpose(-1, -2) @ estimated).sum(0)
    u, _, vh = torch.linalg.svd(m)
    d = torch.sign(torch.linalg.det(u @ vh))
    fix = torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d]))
    return u @ fix @ vh


def rotation_errors(estimated: torch.Tensor, truth: torch.Tensor, align: bool = True) -> torch.Tensor:
    """Geodesic angle (degrees) between each estimated and true rotation, after the best global alignment."""
    est, tru = _rotations(estimated), _rotations(truth)
    if est.shape != tru.shape:
        raise ValueError(f"pose sets differ in size: {est.shape[0]} and {tru.shape[0]}")
    g = align_rotations(est, tru) if align else torch.eye(3, dtype=torch.float64)
    return geodesic_distance(est, tru @ g)


def pose_metrics(estimated: Poses, truth: Poses, align: bool = True) -> dict:
    """Median and mean rotation error (degrees), fractions within 5 and 10 degrees, mean shift error (Å)."""
    err = rotation_errors(estimated.rotations, truth.rotations, align)
    shift = (estimated.shifts - truth.shifts).norm(dim=1)
    return {
        "rotation_error_median_deg": float(err.median()),
        "rotation_error_mean_deg": float(err.mean()),
        "within_5_deg": float((err <= 5).double().mean()),
        "within_10_deg": float((err <= 10).double().mean()),
        "shift_error_mean_A": float(shift.mean()),
    }
