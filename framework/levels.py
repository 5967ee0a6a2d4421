"""Degradation levels: noise spectra set by a target FSC-0.5 resolution of the degraded map.

For y = x + n with a per-shell signal power S and noise power N, the expected FSC between y and
the clean map x is F = sqrt(S / (S + N)) in every shell, so a wanted curve F gives
N = S (1 / F^2 - 1). Two shapes of F:

- `white` (CryoFM's benchmark levels as first implemented here): the same noise power in every
  shell, N = 3 S(r_c), so F = 0.5 at the target shell r_c. F follows the protein's spectrum
  above and below r_c, and hovers near 0.5 out to Nyquist where the spectrum is flat.
- `logistic` (the default; what real half-map FSCs and the CryoFM paper's section 5.1 look like):
  F(r) = floor + (ceiling - floor) / (1 + exp((r - r_c) / w)), the noise variance rising with
  frequency so F falls steeply past the resolution. The width w is `width` x r_c (a fraction of
  the crossing frequency, so the shape does not depend on the box or on the resolution).
- a curve read from a CSV (`read_fsc_curve`: a real half-map FSC, say), stretched along the
  frequency axis.

The target is met by the metric's own definition (`cryoinverse.metrics.resolution_at`: the first
crossing of 0.5 from shell 1, interpolated linearly in frequency between shells) applied to the
expected curve on the map's own shells, solved by bisection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .fourier import Shape, box_text, n_shells, nyquist, reference_edge
from .metrics import resolution_at
from .spectra import radial_power
from .volume import Volume

NOISE_SHAPES = ("logistic", "white")
FSC_FLOOR, FSC_CEILING = 0.01, 0.99  # the logistic's limits: some signal survives everywhere, none is noise-free
DEFAULT_WIDTH = 0.1  # logistic width as a fraction of the crossing frequency (1.5 shells at 6 A on 64^3 at 1.5 A)


def _check_resolution(shape: Shape, voxel_size: float, resolution: float) -> float:
    n = reference_edge(shape)
    shell = n * voxel_size / resolution
    if not 1 <= shell <= nyquist(shape):
        raise ValueError(f"resolution {resolution} A is outside 2 x voxel .. box ({2 * voxel_size:g} .. {n * voxel_size:g} A)")
    return shell


def noise_variance_for_resolution(reference: Volume, resolution: float) -> float:
    """White-noise power putting the FSC-0.5 crossing of reference + noise at `resolution` A.

    For y = x + n, FSC = sqrt(S / (S + N)) per shell in expectation, so FSC = 0.5 where N = 3 S;
    S is the reference power interpolated linearly between the shells around n_ref * voxel / resolution.
    """
    shell = _check_resolution(reference.shape, reference.voxel_size, resolution)
    power = radial_power(reference.data)
    lo = int(shell)
    frac = shell - lo
    signal = float((1 - frac) * power[lo] + frac * power[min(lo + 1, nyquist(reference.shape))])
    return 3.0 * signal


def logistic_fsc(shells: int, crossing: float, width: float, floor: float = FSC_FLOOR, ceiling: float = FSC_CEILING) -> torch.Tensor:
    """F(r) = floor + (ceiling - floor) / (1 + exp((r - crossing) / width)) for r = 0..shells-1 (float64).

    F = (floor + ceiling) / 2 (0.5 with the defaults) at r = `crossing`; `width` is in shells.
    """
    r = torch.arange(shells, dtype=torch.float64)
    return floor + (ceiling - floor) * torch.sigmoid(-(r - crossing) / width)


def noise_power_for_fsc(signal_power: torch.Tensor, curve: torch.Tensor) -> torch.Tensor:
    """Per-shell noise power N = S (1 / F^2 - 1) that makes the expected FSC(x + n, x) equal `curve`."""
    f = curve.to(torch.float64).clamp(FSC_FLOOR / 10, 1.0 - 1e-9)
    return signal_power.to(torch.float64) * (1.0 / f.square() - 1.0)


def _solve_crossing(curve_of, shape: Shape, voxel_size: float, resolution: float, lo: float, hi: float) -> torch.Tensor:
    """Bisect the parameter of `curve_of` in [lo, hi] until the curve's FSC-0.5 resolution is `resolution`.

    The resolution must be monotonic in the parameter (either way).
    """

    def res(param: float) -> float:
        return resolution_at(curve_of(param)[: nyquist(shape) + 1], voxel_size, 0.5, reference_edge(shape))

    r_lo, r_hi = res(lo), res(hi)
    if not min(r_lo, r_hi) <= resolution <= max(r_lo, r_hi):
        raise ValueError(f"no curve of this shape crosses FSC 0.5 at {resolution} A on a {box_text(shape)} box at {voxel_size:g} A/voxel")
    rising = r_hi > r_lo
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if (res(mid) < resolution) == rising:
            lo = mid
        else:
            hi = mid
    return curve_of(0.5 * (lo + hi))


def expected_fsc(
    shape: Shape, voxel_size: float, resolution: float, width: float = DEFAULT_WIDTH, curve: tuple[np.ndarray, np.ndarray] | None = None
) -> torch.Tensor:
    """The expected FSC(degraded, clean) per shell (0..corner, float64) whose first 0.5 crossing is `resolution` A.

    Without `curve`, the logistic of relative `width`; with `curve` = (frequency in 1/A, FSC), that
    curve stretched along the frequency axis (values beyond its ends held). `shape` is the map's
    box (an edge n or (z, y, x)); its shells are those of `cryoinverse.fourier`.
    """
    shell = _check_resolution(shape, voxel_size, resolution)
    total = n_shells(shape)
    n = reference_edge(shape)
    if curve is None:
        if not width > 0:
            raise ValueError(f"width must be > 0; got {width}")
        return _solve_crossing(lambda c: logistic_fsc(total, c, width * c), shape, voxel_size, resolution, 0.5, nyquist(shape) + 1.0)
    freq, values = (np.asarray(a, dtype=np.float64) for a in curve)
    order = np.argsort(freq)
    freq, values = freq[order], np.clip(values[order], FSC_FLOOR, FSC_CEILING)
    shell_freq = np.arange(total, dtype=np.float64) / (n * voxel_size)  # cycles per A

    def stretched(a: float) -> torch.Tensor:
        return torch.from_numpy(np.interp(shell_freq * a, freq, values))

    # a = (frequency on the file's axis) / (frequency on the map's): the file's crossing lands at the target.
    crossing = _first_crossing(freq, values)
    guess = crossing / (shell / (n * voxel_size))
    return _solve_crossing(stretched, shape, voxel_size, resolution, guess / 4, guess * 4)


def _first_crossing(freq: np.ndarray, values: np.ndarray) -> float:
    below = np.nonzero(values < 0.5)[0]
    if len(below) == 0 or below[0] == 0:
        raise ValueError("the FSC curve must start above 0.5 and fall below it")
    i = below[0]
    return float(freq[i - 1] + (values[i - 1] - 0.5) / (values[i - 1] - values[i]) * (freq[i] - freq[i - 1]))


def read_fsc_curve(path: str | Path, half_map: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(frequency in 1/A, FSC) from a CSV with a header naming `fsc` and `resolution_A` or `frequency`.

    `cryoinverse fsc --csv` writes such files. With `half_map`, the curve is a half-map FSC and is
    converted to the full map's FSC against the truth, sqrt(2 F / (1 + F)) (Rosenthal & Henderson 2003).
    """
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read FSC curve ({exc})") from None
    header = [h.strip().lower() for h in lines[0].split(",")] if lines else []
    fsc_col = next((i for i, h in enumerate(header) if h.startswith("fsc")), None)
    res_col = next((i for i, h in enumerate(header) if h.startswith("resolution")), None)
    freq_col = next((i for i, h in enumerate(header) if h.startswith("freq")), None)
    if fsc_col is None or (res_col is None and freq_col is None):
        raise DataError(f"{path}: an FSC curve needs a header with an 'fsc' column and 'resolution_A' or 'frequency' (1/A)")
    try:
        rows = np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]])
    except ValueError as exc:
        raise DataError(f"{path}: not numbers ({exc})") from None
    if rows.ndim != 2 or len(rows) < 2:
        raise DataError(f"{path}: an FSC curve needs at least two rows")
    freq = 1.0 / rows[:, res_col] if freq_col is None else rows[:, freq_col]
    fsc = rows[:, fsc_col]
    if not (np.isfinite(freq).all() and np.isfinite(fsc).all()):
        raise DataError(f"{path}: FSC curve has non-finite values")
    if half_map:
        fsc = np.sqrt(np.clip(2.0 * fsc / (1.0 + fsc), 0.0, 1.0))
    try:
        _first_crossing(freq[np.argsort(freq)], fsc[np.argsort(freq)])
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    return freq, fsc


def noise_power_for_resolution(
    reference: Volume,
    resolution: float,
    shape: str = "logistic",
    width: float = DEFAULT_WIDTH,
    curve: tuple[np.ndarray, np.ndarray] | None = None,
) -> torch.Tensor:
    """Per-shell noise power (float64, shells 0..corner) putting the FSC-0.5 of reference + noise at `resolution` A.

    `shape` is 'logistic' (or a `curve`, see `expected_fsc`) or 'white' (`noise_variance_for_resolution`).
    """
    if shape == "white":
        return torch.full((n_shells(reference.shape),), noise_variance_for_resolution(reference, resolution), dtype=torch.float64)
    if shape != "logistic":
        raise ValueError(f"noise shape must be one of {', '.join(NOISE_SHAPES)}; got {shape!r}")
    signal = radial_power(reference.data)
    return noise_power_for_fsc(signal, expected_fsc(reference.shape, reference.voxel_size, resolution, width, curve))
