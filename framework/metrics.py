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

Directional FSC (`directional_fsc`, as 3DFSC) is the same sum restricted to the coefficients inside
a double cone about a direction d: the angle between k and +d or -d at most the cone's half-angle
(|k . d| >= |k| cos(half-angle); k = 0 belongs to every cone). Directions are unit vectors in
(z, y, x) order like the arrays; `AXES` names the three axes of the box. Resolution per direction
follows the rules above on each cone's curve.
"""

from __future__ import annotations

import math

import attrs
import torch

from .directions import unit_frequencies
from .fourier import fftn, nyquist, reference_edge, shell_index
from .volume import Volume

FAIL_RESOLUTION = 30.0  # Angstrom, CryoFM's fail-rate rule on FSC-0.5
CONE_ANGLE = 20.0  # degrees, default half-angle of the cones of the directional FSC (3DFSC's)
AXES = {"x": (0.0, 0.0, 1.0), "y": (0.0, 1.0, 0.0), "z": (1.0, 0.0, 0.0)}  # (z, y, x) unit vectors

__all__ = [
    "fsc",
    "directional_fsc",
    "directional_resolutions",
    "directional_report",
    "auc_fsc",
    "resolution_at",
    "real_space_correlation",
    "rmse",
    "compare",
    "Comparison",
    "FAIL_RESOLUTION",
    "CONE_ANGLE",
    "AXES",
]


def _tensor(x: Volume | torch.Tensor) -> torch.Tensor:
    return x.data if isinstance(x, Volume) else x


def _spectra(a: Volume | torch.Tensor, b: Volume | torch.Tensor, mask: Volume | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
    ta = _tensor(a).to(torch.float64)
    tb = _tensor(b).to(torch.float64)
    if ta.shape != tb.shape:
        raise ValueError(f"FSC needs maps of one shape; got {tuple(ta.shape)} and {tuple(tb.shape)}")
    if mask is not None:
        m = _tensor(mask).to(torch.float64)
        ta, tb = ta * m, tb * m
    return fftn(ta), fftn(tb), tuple(ta.shape[-3:])


def _shell_fsc(fa: torch.Tensor, fb: torch.Tensor, shape: tuple[int, int, int], select: torch.Tensor | None = None) -> torch.Tensor:
    """FSC of shells 0..Nyquist over the coefficients where `select` (nz, ny, nx, bool) holds (all where None);
    a shell without selected coefficients gets NaN."""
    idx = shell_index(shape, fa.device).reshape(-1)
    keep = idx <= nyquist(shape)
    if select is not None:
        keep = keep & select.to(fa.device).reshape(-1)
    idx = idx[keep]
    cross = (fa * fb.conj()).real.reshape(*fa.shape[:-3], -1)[..., keep]
    pa = fa.abs().square().reshape(*fa.shape[:-3], -1)[..., keep]
    pb = fb.abs().square().reshape(*fb.shape[:-3], -1)[..., keep]
    size = nyquist(shape) + 1

    def shell_sum(v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*v.shape[:-1], size, dtype=v.dtype, device=v.device)
        return out.index_add_(-1, idx, v)

    denom = torch.sqrt(shell_sum(pa) * shell_sum(pb))
    curve = torch.where(denom > 0, shell_sum(cross) / denom.clamp(min=1e-300), torch.zeros_like(denom))
    if select is not None:
        empty = torch.zeros(size, dtype=fa.dtype, device=fa.device).index_add_(0, idx, torch.ones_like(idx, dtype=fa.dtype)) == 0
        curve = torch.where(empty, torch.full_like(curve, math.nan), curve)
    return curve


def fsc(a: Volume | torch.Tensor, b: Volume | torch.Tensor, mask: Volume | torch.Tensor | None = None) -> torch.Tensor:
    """FSC curve of shells 0..Nyquist (float64) between two maps of one shape, optionally both times `mask`."""
    fa, fb, shape = _spectra(a, b, mask)
    return _shell_fsc(fa, fb, shape)


def cone(shape: tuple[int, int, int], direction: tuple[float, float, float], angle: float) -> torch.Tensor:
    """(nz, ny, nx) bool: the coefficients within `angle` degrees of the line through 0 along `direction` (z, y, x),
    k = 0 included and the rim kept (unlike `cryoinverse.directions.cone_mask`: an FSC cone of 90 degrees is the whole shell)."""
    if not 0.0 < angle <= 90.0:
        raise ValueError(f"cone half-angle {angle}: degrees in (0, 90] are needed")
    d = torch.tensor(direction, dtype=torch.float64)
    if not float(d.norm()) > 0:
        raise ValueError(f"direction {direction} has no length")
    inside = (unit_frequencies(shape) @ (d / d.norm())).abs() >= math.cos(math.radians(angle)) - 1e-12
    inside[0, 0, 0] = True
    return inside


def directional_fsc(
    a: Volume | torch.Tensor, b: Volume | torch.Tensor, directions: dict[str, tuple[float, float, float]] | None = None,
    angle: float = CONE_ANGLE, mask: Volume | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """FSC curves (shells 0..Nyquist, float64) in double cones of half-angle `angle` degrees about each named
    direction ((z, y, x) vectors; default `AXES`); a shell with no coefficient in a cone is NaN."""
    fa, fb, shape = _spectra(a, b, mask)
    return {name: _shell_fsc(fa, fb, shape, cone(shape, d, angle)) for name, d in (directions or AXES).items()}


def directional_resolutions(curves: dict[str, torch.Tensor], shape: tuple[int, int, int], voxel_size: float) -> dict[str, dict]:
    """Per direction: AUC-FSC (over the shells the cone holds), FSC-0.5 and FSC-0.143 resolutions (Angstrom), the curve."""
    n = reference_edge(shape)
    out = {}
    for name, curve in curves.items():
        held = ~torch.isnan(curve[1:])
        bridged = _bridge(curve)
        out[name] = {
            "auc": float(curve[1:][held].mean()) if bool(held.any()) else math.nan,
            "resolution_0.5": resolution_at(bridged, voxel_size, 0.5, n),
            "resolution_0.143": resolution_at(bridged, voxel_size, 0.143, n),
            "curve": [[n * voxel_size / r, float(curve[r])] for r in range(1, curve.shape[-1])],
        }
    return out


def directional_report(
    a: Volume | torch.Tensor, b: Volume | torch.Tensor, voxel_size: float, angle: float = CONE_ANGLE, mask: Volume | torch.Tensor | None = None,
) -> dict:
    """{"cone_angle": angle, "x": ..., "y": ..., "z": ...}: `directional_resolutions` of the FSC between `a` and `b` about the axes."""
    shape = tuple(_tensor(a).shape[-3:])
    return {"cone_angle": angle, **directional_resolutions(directional_fsc(a, b, angle=angle, mask=mask), shape, voxel_size)}


def _bridge(curve: torch.Tensor) -> torch.Tensor:
    """Empty shells (NaN) take the value of the nearest shell below that holds coefficients (shell 0: 1)."""
    out = curve.clone()
    last = 1.0
    for r in range(out.shape[-1]):
        if math.isnan(float(out[r])):
            out[r] = last
        else:
            last = float(out[r])
    return out


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
