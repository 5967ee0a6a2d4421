"""Fourier conventions of cryoinverse, stated once here and obeyed everywhere.

- Arrays are (z, y, x) = (D, H, W); leading dimensions are batch dimensions. Boxes may have any
  shape (nz, ny, nx); voxels are cubic (one voxel size, in Angstrom, for all three axes).
- Transforms are `torch.fft.fftn(..., norm="ortho")` over the last three axes, not centred
  (frequency 0 at index 0, `fftfreq` order). With this normalisation, white real-space noise of
  variance s^2 has E|F_k|^2 = s^2 at every coefficient k, so a noise *power spectrum* is the
  expected |F_k|^2 per coefficient and does not depend on the box size.
- Coefficient k = (k_z, k_y, k_x) of a (nz, ny, nx) box has the physical frequency
  k_z = fftfreq(nz), k_y = fftfreq(ny), k_x = fftfreq(nx) in cycles per voxel (`frequency_grid`).
  Its radial shell is r = round(|k| n_ref) with the reference edge n_ref = max(nz, ny, nx), so a
  shell is one band of physical frequency whatever the box, and on a cube of edge n this is
  round(|k| n) as always (on other boxes |k| n_ref can be exactly m + 1/2: such ties round to
  even, as `torch.round` does). Shell r has resolution n_ref * voxel_size / r Angstrom; Nyquist
  (0.5 cycles per voxel) is shell n_ref // 2. Along the longest axis the frequencies are spaced
  one shell apart, so every shell 0..Nyquist holds coefficients; shells beyond Nyquist (the
  corners, up to the corner's |k| n_ref) exist and are kept. An average over a shell without
  coefficients is 0, never a division by zero.
- Functions that take a box take `shape`: an int n (the cube n^3) or a (z, y, x) tuple.
  Hooks that receive a box (an operator's `fourier_diagonal`) receive `compact_shape(shape)`:
  n for a cube, so code written for cubes keeps working, else the (z, y, x) tuple.
- A per-shell spectrum is a 1D tensor indexed by shell; `expand_shells` turns it into a full
  (nz, ny, nx) per-coefficient array.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Sequence, Union

import torch

__all__ = [
    "Shape",
    "fftn",
    "ifftn",
    "grid_shape",
    "compact_shape",
    "box_text",
    "reference_edge",
    "frequency_grid",
    "shell_index",
    "shell_counts",
    "n_shells",
    "nyquist",
    "shell_average",
    "expand_shells",
    "shell_resolutions",
    "spectrum_for_box",
]

Shape = Union[int, Sequence[int]]
"""A box: an edge n (the cube n^3) or a (z, y, x) shape."""


def fftn(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 3D FFT over the last three axes (no centring)."""
    return torch.fft.fftn(x, dim=(-3, -2, -1), norm="ortho")


def ifftn(f: torch.Tensor) -> torch.Tensor:
    """Inverse of `fftn`, real part (inputs are Hermitian-symmetric spectra of real maps)."""
    return torch.fft.ifftn(f, dim=(-3, -2, -1), norm="ortho").real


def grid_shape(shape: Shape) -> tuple[int, int, int]:
    """(nz, ny, nx) of a box given as an edge n (the cube n^3) or as a (z, y, x) shape."""
    try:
        n = operator.index(shape)
    except TypeError:
        edges = tuple(int(s) for s in shape)
    else:
        edges = (n, n, n)
    if len(edges) != 3 or min(edges) < 1:
        raise ValueError(f"a box is an edge n or three positive edges (z, y, x); got {shape!r}")
    return edges


def compact_shape(shape: Shape) -> int | tuple[int, int, int]:
    """n for a cube n^3, else the (z, y, x) tuple: what hooks that receive a box are given."""
    edges = grid_shape(shape)
    return edges[0] if len(set(edges)) == 1 else edges


def box_text(shape: Shape) -> str:
    """'16^3' for a cube, '36x206x94' otherwise (z x y x x): a box as messages show it."""
    edges = grid_shape(shape)
    return f"{edges[0]}^3" if len(set(edges)) == 1 else "x".join(map(str, edges))


def reference_edge(shape: Shape) -> int:
    """n_ref = max(nz, ny, nx): the edge whose frequency spacing defines the shells."""
    return max(grid_shape(shape))


def nyquist(shape: Shape) -> int:
    """Shell index of the Nyquist frequency (0.5 cycles per voxel): n_ref // 2."""
    return reference_edge(shape) // 2


def _corner_radius(edges: tuple[int, int, int]) -> torch.Tensor:
    """|k| n_ref at the grid's corner (the largest |k| on each axis), computed as `shell_index` does."""
    kz, ky, kx = (torch.fft.fftfreq(n, dtype=torch.float64)[n // 2].abs() for n in edges)
    return torch.sqrt(kz**2 + ky**2 + kx**2) * max(edges)


def n_shells(shape: Shape) -> int:
    """Number of shells of a box, corners included (the largest shell index + 1)."""
    edges = grid_shape(shape)
    if len(set(edges)) == 1:
        n = edges[0]
        return int(round(math.sqrt(3) * (n // 2))) + 1  # the corner of the grid: |k| n <= sqrt(3) (n // 2)
    return int(torch.round(_corner_radius(edges))) + 1


@functools.lru_cache(maxsize=16)
def _frequency_grid_cpu(edges: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    axes = [torch.fft.fftfreq(n, dtype=torch.float64) for n in edges]
    return tuple(torch.meshgrid(*axes, indexing="ij"))


def frequency_grid(shape: Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k_z, k_y, k_x), each (nz, ny, nx) float64 on the CPU: every coefficient's frequency in cycles per voxel."""
    return _frequency_grid_cpu(grid_shape(shape))


@functools.lru_cache(maxsize=16)
def _shell_index_cpu(edges: tuple[int, int, int]) -> torch.Tensor:
    kz, ky, kx = _frequency_grid_cpu(edges)
    radius = torch.sqrt(kz**2 + ky**2 + kx**2) * max(edges)
    return torch.round(radius).to(torch.long)


def shell_index(shape: Shape, device: torch.device | str | None = None) -> torch.Tensor:
    """Integer shell index r = round(|k| n_ref) of every coefficient of a box, (nz, ny, nx) int64."""
    idx = _shell_index_cpu(grid_shape(shape))
    return idx if device is None else idx.to(device)


def shell_counts(shape: Shape, device: torch.device | str | None = None) -> torch.Tensor:
    """Number of coefficients in each shell of a box, (n_shells,) int64 (0 for an empty shell)."""
    return torch.bincount(shell_index(shape, device).reshape(-1), minlength=n_shells(shape))


def shell_average(values: torch.Tensor) -> torch.Tensor:
    """Mean of a real (..., nz, ny, nx) per-coefficient array over each shell -> (..., n_shells); 0 for an empty shell."""
    shape = tuple(values.shape[-3:])
    idx = shell_index(shape, values.device).reshape(-1)
    flat = values.reshape(*values.shape[:-3], -1)
    sums = torch.zeros(*flat.shape[:-1], n_shells(shape), dtype=flat.dtype, device=flat.device)
    sums.index_add_(-1, idx, flat)
    return sums / shell_counts(shape, flat.device).clamp(min=1).to(flat.dtype)


def expand_shells(spectrum: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Per-shell values (..., n_shells) -> per-coefficient array (..., nz, ny, nx)."""
    idx = shell_index(shape, spectrum.device)
    return spectrum[..., idx]


def spectrum_for_box(values, shape: Shape, what: str = "spectrum") -> torch.Tensor:
    """A user-given per-shell list as a float64 tensor of exactly `n_shells(shape)` entries.

    It must cover shells 0..Nyquist; shells beyond Nyquist (the corners) repeat the last value.
    """
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    need = nyquist(shape) + 1
    if t.numel() < need:
        raise ValueError(
            f"{what} has {t.numel()} shells but a {box_text(shape)} box needs at least {need} (0 to Nyquist)"
        )
    total = n_shells(shape)
    if t.numel() >= total:
        return t[:total].clone()
    return torch.cat([t, t[-1].repeat(total - t.numel())])


def shell_resolutions(shape: Shape, voxel_size: float) -> torch.Tensor:
    """Resolution in Angstrom, n_ref * voxel_size / r, of shells r = 0..Nyquist (shell 0 is infinite)."""
    n = reference_edge(shape)
    r = torch.arange(nyquist(shape) + 1, dtype=torch.float64)
    with torch.no_grad():
        return torch.where(r > 0, n * voxel_size / r.clamp(min=1), torch.tensor(math.inf))
