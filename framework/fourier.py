"""Fourier conventions of cryoinverse, stated once here and obeyed everywhere.

- Arrays are (z, y, x) = (D, H, W); leading dimensions are batch dimensions.
- Transforms are `torch.fft.fftn(..., norm="ortho")` over the last three axes, not centred
  (frequency 0 at index 0, `fftfreq` order). With this normalisation, white real-space noise of
  variance s^2 has E|F_k|^2 = s^2 at every coefficient k, so a noise *power spectrum* is the
  expected |F_k|^2 per coefficient and does not depend on the box size.
- The radial shell of coefficient k is r = round(|k| n) for k from `fftfreq(n)` (cycles/voxel),
  on cubic boxes of edge n. Shell r has resolution n * voxel_size / r Angstrom; Nyquist is n // 2.
  Shells beyond Nyquist (the corners, up to round(sqrt(3) n / 2)) exist and are kept.
- A per-shell spectrum is a 1D tensor indexed by shell; `expand_shells` turns it into a full
  (n, n, n) per-coefficient array.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = [
    "fftn",
    "ifftn",
    "shell_index",
    "shell_counts",
    "n_shells",
    "nyquist",
    "shell_average",
    "expand_shells",
    "shell_resolutions",
    "spectrum_for_box",
]


def fftn(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 3D FFT over the last three axes (no centring)."""
    return torch.fft.fftn(x, dim=(-3, -2, -1), norm="ortho")


def ifftn(f: torch.Tensor) -> torch.Tensor:
    """Inverse of `fftn`, real part (inputs are Hermitian-symmetric spectra of real maps)."""
    return torch.fft.ifftn(f, dim=(-3, -2, -1), norm="ortho").real


def nyquist(n: int) -> int:
    """Shell index of the Nyquist frequency for box edge n."""
    return n // 2


def n_shells(n: int) -> int:
    """Number of shells of an n^3 box, corners included."""
    return int(round(math.sqrt(3) * (n // 2))) + 1  # the corner of the grid: |k| n <= sqrt(3) (n // 2)


@functools.lru_cache(maxsize=16)
def _shell_index_cpu(n: int) -> torch.Tensor:
    k = torch.fft.fftfreq(n, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    radius = torch.sqrt(kz**2 + ky**2 + kx**2) * n
    return torch.round(radius).to(torch.long)


def shell_index(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Integer shell index r = round(|k| n) of every coefficient of an n^3 box."""
    idx = _shell_index_cpu(n)
    return idx if device is None else idx.to(device)


def shell_average(values: torch.Tensor) -> torch.Tensor:
    """Mean of a real (..., n, n, n) per-coefficient array over each shell -> (..., n_shells)."""
    n = values.shape[-1]
    idx = shell_index(n, values.device).reshape(-1)
    flat = values.reshape(*values.shape[:-3], -1)
    sums = torch.zeros(*flat.shape[:-1], n_shells(n), dtype=flat.dtype, device=flat.device)
    sums.index_add_(-1, idx, flat)
    return sums / shell_counts(n, flat.device).to(flat.dtype)


def shell_counts(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Number of coefficients in each shell of an n^3 box, (n_shells,) int64."""
    return torch.bincount(shell_index(n, device).reshape(-1), minlength=n_shells(n))


def expand_shells(spectrum: torch.Tensor, n: int) -> torch.Tensor:
    """Per-shell values (..., n_shells) -> per-coefficient array (..., n, n, n)."""
    idx = shell_index(n, spectrum.device)
    return spectrum[..., idx]


def spectrum_for_box(values, n: int, what: str = "spectrum") -> torch.Tensor:
    """A user-given per-shell list as a float64 tensor of exactly `n_shells(n)` entries.

    It must cover shells 0..Nyquist; shells beyond Nyquist (the corners) repeat the last value.
    """
    t = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    need = nyquist(n) + 1
    if t.numel() < need:
        raise ValueError(
            f"{what} has {t.numel()} shells but a {n}^3 box needs at least {need} (0 to Nyquist)"
        )
    total = n_shells(n)
    if t.numel() >= total:
        return t[:total].clone()
    return torch.cat([t, t[-1].repeat(total - t.numel())])


def shell_resolutions(n: int, voxel_size: float) -> torch.Tensor:
    """Resolution in Angstrom of shells 0..Nyquist (shell 0 is infinite)."""
    r = torch.arange(nyquist(n) + 1, dtype=torch.float64)
    with torch.no_grad():
        return torch.where(r > 0, n * voxel_size / r.clamp(min=1), torch.tensor(math.inf))
