"""Rigid alignment of one map onto another: rotation, translation and optionally handedness.

A map rotated by R is v'(r) = v(R^T r) (a point at r moves to R r; rotations as in
`cryoinverse.rotations`, about the box centre n // 2), sampled trilinearly. `align_maps` searches
the Hopf grid of level 1 (`cryoinverse.so3_grid`) on both maps Fourier-cropped to at most 32^3,
with the translation of every rotation from one 3D FFT cross-correlation, then refines the best
few rotations (and the identity) locally at full size, the step halving each round; a map
aligned onto itself comes back unchanged (rotation exactly the identity, no interpolation). With
`allow_mirror` the mirror image of the moving map (x -> -x) is searched too; the better of the
two wins. A constant map has no orientation and is refused.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F

from .fourier import fftn, ifftn
from .resample import resample_tensor
from .so3_grid import grid_spacing, local_grid, so3_grid

__all__ = ["rotate_volume", "align_maps", "Alignment", "constant_map_problem"]

COARSE_EDGE = 32  # voxels: the grid search runs on maps Fourier-cropped to at most this


def rotate_volume(volume: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """v'(r) = v(R^T r) for each of `rotations` (B, 3, 3): (n, n, n) -> (B, n, n, n), trilinear, zero outside."""
    n = volume.shape[-1]
    c = torch.arange(n, dtype=volume.dtype, device=volume.device) - n // 2
    gz, gy, gx = torch.meshgrid(c, c, c, indexing="ij")
    xyz = torch.stack([gx, gy, gz], dim=-1)  # (n, n, n, 3) in (x, y, z)
    src = torch.einsum("bji,zyxj->bzyxi", rotations.to(volume.dtype), xyz)  # R^T r
    grid = (src + n // 2) / (n - 1) * 2 - 1
    out = F.grid_sample(volume[None, None].expand(rotations.shape[0], 1, n, n, n), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0]


def _best_shift(reference: torch.Tensor, moved: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correlation, shift (B, 3) voxels z-y-x) maximising sum_x ref(x) moved(x - s) / (|ref| |moved|)."""
    n = reference.shape[-1]
    cc = ifftn(fftn(reference.to(torch.float64))[None] * fftn(moved.to(torch.float64)).conj())
    norms = reference.to(torch.float64).norm() * moved.to(torch.float64).reshape(moved.shape[0], -1).norm(dim=1)
    value, index = cc.reshape(cc.shape[0], -1).max(dim=1)
    z, y, x = index // (n * n), (index // n) % n, index % n
    shift = torch.stack([z, y, x], dim=-1)
    shift = torch.where(shift > n // 2, shift - n, shift)
    # the orthonormal transforms give sum_x ref(x) moved(x - s) / sqrt(n^3)
    return value * n**1.5 / norms.clamp(min=1e-300), shift.to(torch.float64)


@attrs.frozen
class Alignment:
    """Moving map onto reference: rotate by `rotation`, then shift by `shift_A` (z, y, x in Å); `mirror` first flips x."""

    rotation: torch.Tensor
    shift_A: tuple[float, float, float]
    mirror: bool
    correlation: float


def _search(reference: torch.Tensor, moving: torch.Tensor, rounds: int, keep: int, batch: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    n = reference.shape[-1]
    m = min(n, COARSE_EDGE)
    ref_c = resample_tensor(reference[None].to(torch.float64), (m, m, m))[0]
    mov_c = resample_tensor(moving[None].to(torch.float64), (m, m, m))[0]
    grid = so3_grid(1)
    scores = []
    for start in range(0, grid.shape[0], batch):
        value, _ = _best_shift(ref_c, rotate_volume(mov_c, grid[start : start + batch]))
        scores.append(value)
    # the identity joins the grid's best: a map aligned onto itself (or onto a copy) is found
    # exactly, with no interpolation, rather than at the nearest refined grid point
    identity = torch.eye(3, dtype=grid.dtype)[None]
    best = torch.cat([identity, grid[torch.cat(scores).topk(keep).indices]])
    step = grid_spacing(1) / 2
    reference = reference.to(torch.float64)
    moving = moving.to(torch.float64)
    for _ in range(rounds):
        cands = local_grid(best, step).reshape(-1, 3, 3)
        values, shifts = [], []
        for start in range(0, cands.shape[0], batch):
            v, s = _best_shift(reference, rotate_volume(moving, cands[start : start + batch]))
            values.append(v)
            shifts.append(s)
        values, shifts = torch.cat(values), torch.cat(shifts)
        top = values.topk(min(keep, values.numel()))
        best = cands[top.indices]
        step /= 2
    i = int(values.argmax())
    return cands[i], shifts[i], float(values[i])


def constant_map_problem(volume: torch.Tensor) -> str | None:
    """Why `volume` cannot be aligned (None when it can): a constant map (all zero, say) has no
    orientation, and every rotation scores alike (or NaN)."""
    lo, hi = float(volume.min()), float(volume.max())
    if lo == hi:
        return f"is constant (every voxel {lo:g}): it has no orientation to align"
    return None


def align_maps(reference: torch.Tensor, moving: torch.Tensor, voxel_size: float, allow_mirror: bool = False, rounds: int = 5, keep: int = 4, batch: int = 32) -> tuple[Alignment, torch.Tensor]:
    """Align `moving` (n, n, n) onto `reference`: the alignment and the moved map."""
    if reference.shape != moving.shape or len(set(reference.shape)) != 1:
        raise ValueError(f"alignment needs two cubic maps of one shape; got {tuple(reference.shape)} and {tuple(moving.shape)}")
    for label, volume in (("reference", reference), ("moving", moving)):
        problem = constant_map_problem(volume)
        if problem:
            raise ValueError(f"the {label} map {problem}")
    tries = [(False, moving)] + ([(True, moving.flip(-1))] if allow_mirror else [])
    results = []
    for mirror, mov in tries:
        rotation, shift, value = _search(reference, mov, rounds, keep, batch)
        results.append((value, mirror, rotation, shift, mov))
    value, mirror, rotation, shift, mov = max(results, key=lambda r: r[0])
    if torch.equal(rotation, torch.eye(3, dtype=rotation.dtype)):
        moved = mov.to(torch.float64)  # no rotation: the map itself, not an interpolated copy
    else:
        moved = rotate_volume(mov.to(torch.float64), rotation[None])[0]
    moved = torch.roll(moved, shifts=tuple(int(s) for s in shift), dims=(-3, -2, -1))
    alignment = Alignment(rotation, tuple(float(s) * voxel_size for s in shift), mirror, value)
    return alignment, moved.to(moving.dtype)


def rotation_angle(rotation: torch.Tensor) -> float:
    """Angle of a rotation in degrees."""
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(rotation.trace()) - 1) / 2))))
