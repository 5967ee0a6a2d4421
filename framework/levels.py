"""Degradation levels as the CryoFM paper states them: noise set by a target FSC-0.5 resolution."""

from __future__ import annotations

from .spectra import radial_power
from .volume import Volume


def noise_variance_for_resolution(reference: Volume, resolution: float) -> float:
    """White-noise power putting the FSC-0.5 crossing of reference + noise at `resolution` A.

    For y = x + n, FSC = sqrt(S / (S + N)) per shell in expectation, so FSC = 0.5 where N = 3 S;
    S is the reference power interpolated linearly between the shells around n * voxel / resolution.
    """
    n = reference.shape[-1]
    shell = n * reference.voxel_size / resolution
    if not 1 <= shell <= n // 2:
        raise ValueError(f"resolution {resolution} A is outside 2 x voxel .. box ({2 * reference.voxel_size:g} .. {n * reference.voxel_size:g} A)")
    power = radial_power(reference.data)
    lo = int(shell)
    frac = shell - lo
    signal = float((1 - frac) * power[lo] + frac * power[min(lo + 1, n // 2)])
    return 3.0 * signal
