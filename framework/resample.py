"""Fourier resampling of maps to another voxel size (centred crop or zero-pad of the spectrum).

A map of n voxels at spacing a is read as samples of the band-limited periodic function whose
Fourier coefficients are its FFT (`cryoinverse.fourier` conventions). Resampling to n' voxels
evaluates that same function at spacing a n / n' over the same extent: the spectrum is cropped
(n' < n, a low-pass) or zero-padded (n' > n, exact interpolation), and scaled by
sqrt(N' / N) (N = number of voxels) so that sample values, and hence the mean density, are kept.

Even edges have a Nyquist coefficient that stands for both +n/2 and -n/2. Padding splits it in
half between the two new coefficients (the interpolant is then real, cos(pi x / a)); cropping to
an even n' folds the coefficients at +n'/2 and -n'/2 into the new Nyquist (the result is then the
exact samples of the function band-limited to |k| <= n'/2). These are scipy.signal.resample's
rules; with them, padding then cropping back is the identity for every map, and cropping then
padding back is an orthogonal projector onto the frequencies both grids hold.

Voxel (0, 0, 0) stays where it was, so the origin in Angstrom is unchanged. Axes are resampled
independently (the operation is separable), so non-cubic maps and odd edges need nothing special.
"""

from __future__ import annotations

import math

import torch

from .errors import DataError
from .volume import Volume

__all__ = ["resampled_shape", "resample_tensor", "resample_to_shape", "fourier_resample", "fit_box"]


def resampled_shape(shape: tuple[int, ...], voxel_size: float, new_voxel_size: float) -> tuple[int, ...]:
    """Edge lengths (voxels) that cover the same extent at `new_voxel_size`: round(n a / a'), at least 1."""
    if not (voxel_size > 0 and new_voxel_size > 0):
        raise DataError(f"voxel sizes must be positive (Angstrom); got {voxel_size} and {new_voxel_size}")
    return tuple(max(1, int(math.floor(n * voxel_size / new_voxel_size + 0.5))) for n in shape)


def _resize_axis(f: torch.Tensor, dim: int, m: int, split: float, fold: float) -> torch.Tensor:
    """Spectrum `f` (fftfreq order along `dim`, n entries) -> m entries: centred crop or zero-pad.

    Padding an even n puts `split` times the Nyquist coefficient at +n/2 and at -n/2; cropping to
    an even m puts `fold` times the sum of +m/2 and -m/2 at the new Nyquist.
    """
    n = f.shape[dim]
    if m == n:
        return f
    if m > n:
        low = f.narrow(dim, 0, (n + 1) // 2)  # frequencies 0 .. ceil(n/2) - 1
        high = f.narrow(dim, n - (n - 1) // 2, (n - 1) // 2)  # frequencies -(ceil(n/2) - 1) .. -1
        zeros_shape = list(f.shape)
        if n % 2:
            zeros_shape[dim] = m - n
            return torch.cat([low, f.new_zeros(zeros_shape), high], dim)
        nyquist = f.narrow(dim, n // 2, 1) * split  # split between +n/2 and -n/2
        zeros_shape[dim] = m - n - 1
        return torch.cat([low, nyquist, f.new_zeros(zeros_shape), nyquist, high], dim)
    low = f.narrow(dim, 0, (m + 1) // 2)
    high = f.narrow(dim, n - (m - 1) // 2, (m - 1) // 2)
    if m % 2:
        return torch.cat([low, high], dim)
    nyquist = (f.narrow(dim, m // 2, 1) + f.narrow(dim, n - m // 2, 1)) * fold
    return torch.cat([low, nyquist, high], dim)


def resample_tensor(x: torch.Tensor, shape: tuple[int, int, int], unitary: bool = False) -> torch.Tensor:
    """Fourier-resample the last three axes of a real tensor (..., D, H, W) to `shape`.

    Keeps dtype and device and is differentiable (a linear map); identity when the shape agrees.
    By default sample values are kept (a map stays the same function of position). With
    `unitary`, orthonormal Fourier coefficients are kept instead (no sqrt(N'/N) scale; Nyquist
    split and fold by 1/sqrt(2)): padding is then an isometry and cropping its adjoint, so white
    noise of variance s^2 stays white noise of variance s^2 on the frequencies both grids hold.
    That is how a flow state, whose noise is N(0, I) on every grid, moves between grids.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"target shape must be three positive edges (z, y, x); got {shape}")
    old = tuple(x.shape[-3:])
    if old == shape:
        return x
    f = torch.fft.fftn(x, dim=(-3, -2, -1), norm="ortho")
    split, fold = (math.sqrt(0.5), math.sqrt(0.5)) if unitary else (0.5, 1.0)
    for axis, m in enumerate(shape):
        f = _resize_axis(f, x.ndim - 3 + axis, m, split, fold)
    scale = 1.0 if unitary else math.sqrt(math.prod(shape) / math.prod(old))
    return torch.fft.ifftn(f, dim=(-3, -2, -1), norm="ortho").real * scale


def resample_to_shape(volume: Volume, shape: tuple[int, int, int]) -> Volume:
    """`volume` resampled onto `shape` voxels over the same extent; origin (Angstrom) kept.

    The new voxel size is a n / n'. Where that ratio differs between axes (a non-cubic target
    that does not scale the map uniformly) the grid is anisotropic and the Volume states the
    mean spacing of the three axes. Computed in float64, returned in the input's dtype.
    """
    shape = tuple(int(s) for s in shape)
    data = resample_tensor(volume.data.to(torch.float64), shape).to(volume.data.dtype)
    spacings = [volume.voxel_size * n / m for n, m in zip(volume.shape, shape)]
    return Volume(data, sum(spacings) / 3, volume.origin)


def fourier_resample(volume: Volume, voxel_size: float) -> Volume:
    """`volume` resampled to `voxel_size` (Angstrom) by Fourier crop (coarser) or zero-pad (finer).

    Each edge becomes round(n a / voxel_size) voxels. Where n a / voxel_size is not a whole
    number the achieved spacing n a / n' differs from `voxel_size` by at most 1 / (2 n')
    relative; the result states `voxel_size` (use `resample_to_shape` for a chosen grid).
    The origin in Angstrom and the mean density are kept.
    """
    shape = resampled_shape(volume.shape, volume.voxel_size, voxel_size)
    data = resample_tensor(volume.data.to(torch.float64), shape).to(volume.data.dtype)
    return Volume(data, voxel_size, volume.origin)


def fit_box(data: torch.Tensor, n: int) -> torch.Tensor:
    """Crop or zero-pad a (z, y, x) map about its centre (index s // 2 -> n // 2) to n^3."""
    for axis in range(3):
        s = data.shape[axis]
        if s > n:
            data = data.narrow(axis, s // 2 - n // 2, n)
        elif s < n:
            before = n // 2 - s // 2
            widths = [0, 0] * 3
            widths[2 * (2 - axis)], widths[2 * (2 - axis) + 1] = before, n - s - before
            data = torch.nn.functional.pad(data, widths)
    return data
