"""Rigid alignment of one map onto another: rotation, translation and optionally handedness.

A map rotated by R is v'(r) = v(R^T r) (a point at r moves to R r; rotations as in
`cryoinverse.rotations`, about the box centre n // 2), sampled trilinearly (the moved map that
`align_maps` returns on a grid Fourier-padded to twice the box, to keep its high frequencies). `align_maps` searches
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


def rotate_volume(volume: torch.Tensor, rotations: torch.Tensor, oversampling: int = 1) -> torch.Tensor:
    """v'(r) = v(R^T r) for each of `rotations` (B, 3, 3): (n, n, n) -> (B, n, n, n), trilinear, zero outside.

    `oversampling` 2: interpolated on the map Fourier-padded to twice the box and cropped back (trilinear
    interpolation damps the highest frequencies of a map: at Nyquist by sinc^2; on the padded grid they
    sit at half its Nyquist, where the damping is far smaller)."""
    if oversampling > 1:
        n = volume.shape[-1]
        fine = resample_tensor(volume[None].to(torch.float64), (oversampling * n,) * 3)[0]
        out = rotate_volume(fine, rotations, 1)
        return resample_tensor(out, (n, n, n)).to(volume.dtype)
    n = volume.shape[-1]
    c = torch.arange(n, dtype=volume.dtype, device=volume.device) - n // 2
    gz, gy, gx = torch.meshgrid(c, c, c, indexing="ij")
    xyz = torch.stack([gx, gy, gz], dim=-1)  # (n, n, n, 3) in (x, y, z)
    src = torch.einsum("bji,zyxj->bzyxi", rotations.to(volume.dtype), xyz)  # R^T r
    grid = (src + n // 2) / (n - 1) * 2 - 1
    out = F.grid_sample(volume[None, None].expand(rotations.shape[0], 1, n, n, n), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0]


def _best_shift(reference: torch.Tensor, moved: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correlation, shift (B, 3) voxels z-y-x) maximising sum_x ref(x) moved(x - s) / (|ref| |moved|).

    The shift is the whole-voxel peak plus, per axis, the vertex of the parabola through the peak and
    its two neighbours, and the correlation that vertex's height: a half-voxel error turns the phase
    of the finest shells by 90 degrees, and scoring rotations at whole-voxel shifts only would let a
    small wrong rotation stand in for the missing fraction."""
    n = reference.shape[-1]
    cc = ifftn(fftn(reference.to(torch.float64))[None] * fftn(moved.to(torch.float64)).conj())
    norms = reference.to(torch.float64).norm() * moved.to(torch.float64).reshape(moved.shape[0], -1).norm(dim=1)
    value, index = cc.reshape(cc.shape[0], -1).max(dim=1)
    peak = torch.stack([index // (n * n), (index // n) % n, index % n], dim=-1)  # (B, 3) z, y, x
    batch = torch.arange(cc.shape[0])
    fraction = torch.zeros(cc.shape[0], 3, dtype=torch.float64)
    height = value.clone()
    for axis in range(3):
        sides = []
        for d in (-1, 1):
            at = peak.clone()
            at[:, axis] = (at[:, axis] + d) % n
            sides.append(cc[batch, at[:, 0], at[:, 1], at[:, 2]])
        curvature = sides[0] - 2 * value + sides[1]
        ok = curvature < 0
        delta = torch.where(ok, 0.5 * (sides[0] - sides[1]) / torch.where(ok, curvature, -1.0), 0.0).clamp(-0.5, 0.5)
        fraction[:, axis] = torch.where(delta.abs() < 1e-9, 0.0, delta)  # a symmetric peak: exactly whole
        height = height - torch.where(ok, 0.125 * (sides[0] - sides[1]) ** 2 / torch.where(ok, curvature, -1.0), 0.0)
    shift = torch.where(peak > n // 2, peak - n, peak).to(torch.float64) + fraction
    # the orthonormal transforms give sum_x ref(x) moved(x - s) / sqrt(n^3)
    return height * n**1.5 / norms.clamp(min=1e-300), shift


def _polish_shift(reference: torch.Tensor, moved: torch.Tensor, shift: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """`shift` (z, y, x voxels) moved to the maximum of c(s) = sum_x ref(x) moved(x - s), evaluated exactly as
    Re sum_k R(k) conj(M(k)) e^(2 pi i k.s), by Newton steps (each at most half a voxel per axis)."""
    n = reference.shape[-1]
    product = (torch.fft.fftn(reference.to(torch.float64)) * torch.fft.fftn(moved.to(torch.float64)).conj()).reshape(-1)
    k = torch.fft.fftfreq(n, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    freqs = torch.stack([kz.reshape(-1), ky.reshape(-1), kx.reshape(-1)], dim=-1)  # (K, 3)
    shift = shift.to(torch.float64).clone()
    for _ in range(iterations):
        term = product * torch.polar(torch.ones(1, dtype=torch.float64), 2 * math.pi * (freqs @ shift))
        gradient = -2 * math.pi * (freqs * term.imag[:, None]).sum(0)
        hessian = -4 * math.pi**2 * (freqs.T * term.real) @ freqs
        if bool(torch.linalg.eigvalsh(hessian).max() >= 0):
            break  # not at a maximum: leave the shift as the search found it
        step = torch.linalg.solve(hessian, gradient).clamp(-0.5, 0.5)
        shift = shift - step
        if float(step.abs().max()) < 1e-6:
            break
    return shift


def _phase_shift(volume: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """`volume` moved by `shift` voxels (z, y, x), fractions too, as a phase ramp (periodic, band-limited)."""
    n = volume.shape[-1]
    k = torch.fft.fftfreq(n, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    phase = -2 * math.pi * (kz * float(shift[0]) + ky * float(shift[1]) + kx * float(shift[2]))
    return torch.fft.ifftn(torch.fft.fftn(volume) * torch.polar(torch.ones_like(phase), phase)).real


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
        moved = rotate_volume(mov.to(torch.float64), rotation[None], oversampling=2)[0]
    if not torch.equal(shift, shift.round()):
        shift = _polish_shift(reference, moved, shift)
    if torch.equal(shift, shift.round()):
        moved = torch.roll(moved, shifts=tuple(int(s) for s in shift), dims=(-3, -2, -1))
    else:
        moved = _phase_shift(moved, shift)
    alignment = Alignment(rotation, tuple(float(s) * voxel_size for s in shift), mirror, value)
    return alignment, moved.to(moving.dtype)


def rotation_angle(rotation: torch.Tensor) -> float:
    """Angle of a rotation in degrees."""
    return math.degrees(math.acos(max(-1.0, min(1.0, (float(rotation.trace()) - 1) / 2))))
