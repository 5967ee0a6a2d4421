"""Map-comparison metrics: FSC, AUC-FSC, resolution, fail rate, real-space correlation, RMSE.

FSC of shell r (see `cryoinverse.fourier` for shells) is
    Re sum_k A_k conj(B_k) / sqrt(sum_k |A_k|^2 sum_k |B_k|^2)
over the coefficients k of the shell, for shells 0..Nyquist, computed in float64. Maps may have
any shape (nz, ny, nx), the same for both: shells are bands of physical frequency, r =
round(|k| n_ref) with n_ref = max(nz, ny, nx), and shell r has resolution n_ref * voxel_size / r.
AUC-FSC is the mean FSC over shells 1..Nyquist. Resolution at a threshold is where the curve
first falls below it (searching from shell 1), linearly interpolated in spatial frequency
between the last shell above and the first below; a curve that never falls below reports the
Nyquist resolution. CryoFM counts a restoration as failed when its FSC-0.5 resolution is
worse than 30 Angstrom.
"""

from __future__ import annotations

import math

import attrs
import torch

from .fourier import fftn, nyquist, reference_edge, shell_index
from .volume import Volume

FAIL_RESOLUTION = 30.0  # Angstrom, CryoFM's fail-rate rule on FSC-0.5

__all__ = [
    "fsc",
    "auc_fsc",
    "resolution_at",
    "real_space_correlation",
    "rmse",
    "compare",
    "Comparison",
    "FAIL_RESOLUTION",
]


def _tensor(x: Volume | torch.Tensor) -> torch.Tensor:
    return x.data if isinstance(x, Volume) else x


def fsc(a: Volume | torch.Tensor, b: Volume | torch.Tensor, mask: Volume | torch.Tensor | None = None) -> torch.Tensor:
    """FSC curve of shells 0..Nyquist (float64) between two maps of one shape, optionally both times `mask`."""
    ta = _tensor(a).to(torch.float64)
    tb = _tensor(b).to(torch.float64)
    if ta.shape != tb.shape:
        raise ValueError(f"FSC needs maps of one shape; got {tuple(ta.shape)} and {tuple(tb.shape)}")
    shape = tuple(ta.shape[-3:])
    if mask is not None:
        m = _tensor(mask).to(torch.float64)
        ta, tb = ta * m, tb * m
    fa, fb = fftn(ta), fftn(tb)
    idx = shell_index(shape, ta.device).reshape(-1)
    keep = idx <= nyquist(shape)
    idx = idx[keep]
    cross = (fa * fb.conj()).real.reshape(*fa.shape[:-3], -1)[..., keep]
    pa = fa.abs().square().reshape(*fa.shape[:-3], -1)[..., keep]
    pb = fb.abs().square().reshape(*fb.shape[:-3], -1)[..., keep]
    size = nyquist(shape) + 1

    def shell_sum(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*v.shape[:-1], size, dtype=v.dtype, device=v.device)
        return out.index_add_(-1, idx, v)

    denom = torch.sqrt(shell_sum(pa) * shell_sum(pb))
    return torch.where(denom > 0, shell_sum(cross) / denom.clamp(min=1e-300), torch.zeros_like(denom))


def auc_fsc(curve: torch.Tensor) -> float:
    """Mean FSC over shells 1..Nyquist."""
    return float(curve[1:].mean())


def resolution_at(curve: torch.Tensor, voxel_size: float, threshold: float, box: int | None = None) -> float:
    """Resolution (Angstrom) where the FSC curve first falls below `threshold`.

    `box` is the reference edge n_ref of the maps' shells (`cryoinverse.fourier.reference_edge`),
    by default 2 * Nyquist (wrong by one for odd edges: pass it).
    """
    n_half = curve.shape[-1] - 1
    n = box or 2 * n_half
    values = [1.0] + [float(v) for v in curve[1:]]  # shell 0 taken as 1 so a first-shell drop interpolates
    for r in range(1, n_half + 1):
        if values[r] < threshold:
            above, below = values[r - 1], values[r]
            frac = (above - threshold) / (above - below) if above != below else 0.0
            freq = (r - 1 + frac) / (n * voxel_size)  # cycles per Angstrom
            return math.inf if freq <= 0 else 1.0 / freq
    return n * voxel_size / n_half


def real_space_correlation(a: Volume | torch.Tensor, b: Volume | torch.Tensor, mask: Volume | torch.Tensor | None = None) -> float:
    """Pearson correlation of voxel values (inside `mask` where given, weighted by it)."""
    ta, tb = _tensor(a).to(torch.float64), _tensor(b).to(torch.float64)
    w = torch.ones_like(ta) if mask is None else _tensor(mask).to(torch.float64)
    sw = w.sum()
    ma, mb = (w * ta).sum() / sw, (w * tb).sum() / sw
    da, db = ta - ma, tb - mb
    return float((w * da * db).sum() / torch.sqrt((w * da * da).sum() * (w * db * db).sum()))


def rmse(a: Volume | torch.Tensor, b: Volume | torch.Tensor, mask: Volume | torch.Tensor | None = None) -> float:
    """Root-mean-square difference of voxel values (inside `mask` where given, weighted by it)."""
    ta, tb = _tensor(a).to(torch.float64), _tensor(b).to(torch.float64)
    w = torch.ones_like(ta) if mask is None else _tensor(mask).to(torch.float64)
    return float(torch.sqrt((w * (ta - tb) ** 2).sum() / w.sum()))


@attrs.frozen
class Comparison:
    """All metrics of one map against a reference."""

    curve: list[tuple[float, float]]  # (resolution in Angstrom, FSC) for shells 1..Nyquist
    auc: float
    resolution_05: float
    resolution_0143: float
    failed: bool
    correlation: float
    rmse: float

    def as_dict(self) -> dict:
        """JSON-ready dict; keys follow `cryoinverse fsc --json`."""
        return {
            "auc": self.auc,
            "resolution_0.5": self.resolution_05,
            "resolution_0.143": self.resolution_0143,
            "failed": self.failed,
            "correlation": self.correlation,
            "rmse": self.rmse,
            "curve": [list(p) for p in self.curve],
        }


def compare(map_: Volume, reference: Volume, mask: Volume | None = None) -> Comparison:
    """FSC, AUC-FSC, resolutions, fail flag, real-space correlation and RMSE of `map_` vs `reference`."""
    if map_.shape != reference.shape:
        raise ValueError(f"maps differ in shape: {map_.shape} vs {reference.shape}")
    curve = fsc(map_, reference, mask)
    n = reference_edge(map_.shape)
    vs = reference.voxel_size
    points = [(n * vs / r, float(curve[r])) for r in range(1, curve.shape[-1])]
    r05 = resolution_at(curve, vs, 0.5, n)
    return Comparison(
        curve=points,
        auc=auc_fsc(curve),
        resolution_05=r05,
        resolution_0143=resolution_at(curve, vs, 0.143, n),
        failed=r05 > FAIL_RESOLUTION,
        correlation=real_space_correlation(map_, reference, mask),
        rmse=rmse(map_, reference, mask),
    )
