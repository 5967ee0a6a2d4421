"""Central slices of a volume's spectrum at chosen in-plane frequencies, for pose search.

Where `cryoinverse.projection.project_fourier` makes whole images, pose search needs only the
Fourier coefficients of a projection inside a frequency band, for thousands of rotations: a
`SliceSampler` holds the volume's spectrum (zero-padded `oversampling` times, gridding-corrected
as in `project_fourier`) and returns, for rotations R and integer frequencies k = (k_x, k_y)
(cycles per box), the spectrum of the projection along z after R at k,

    P_R(k) = sum over voxels r of x(r) exp(-2 pi i (R^T (k_x, k_y, 0)) . r / n),

r measured from the centre voxel n // 2 (`cryoinverse.projection` conventions). It equals the
2D DFT of the projection image with phases relative to its centre pixel:
`torch.fft.fft2(torch.fft.ifftshift(image))[k_y mod n, k_x mod n]`, up to the trilinear
interpolation between the padded grid's points.

`half_plane(n, radius)` lists the frequencies of one half of a disc (the other half is their
complex conjugate for real images) with weights 1 (frequency 0) or 2, so that
sum_k w_k Re(conj(A_k) B_k) over the list is the full-plane sum over the disc.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .projection import _gridding_correction, centred_fftn

__all__ = ["SliceSampler", "half_plane", "image_coefficients"]


def half_plane(n: int, radius: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer frequencies (K, 2) = (k_x, k_y) with |k| <= radius (< n / 2) and k_x > 0 or (k_x = 0, k_y >= 0),
    and their weights (K,): 1 for k = 0, else 2."""
    radius = min(float(radius), n / 2 - 0.5)
    r = int(radius)
    k = torch.arange(-r, r + 1, device=device)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    keep = (kx.square() + ky.square() <= radius * radius) & ((kx > 0) | ((kx == 0) & (ky >= 0)))
    freqs = torch.stack([kx[keep], ky[keep]], dim=-1)
    weights = torch.where((freqs == 0).all(dim=-1), 1.0, 2.0)
    return freqs, weights


def image_coefficients(images: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Coefficients (..., K) of images (..., n, n) at `freqs` (K, 2), phases relative to the centre pixel n // 2."""
    n = images.shape[-1]
    spectrum = torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1)))
    return spectrum[..., freqs[:, 1] % n, freqs[:, 0] % n]


def grid_values(grid: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Values (..., K) of a per-image frequency grid (..., n, n) in `torch.fft.fft2` order (a CTF) at `freqs`."""
    n = grid.shape[-1]
    return grid[..., freqs[:, 1] % n, freqs[:, 0] % n]


class SliceSampler:
    """The spectrum of one volume (n, n, n), ready to be sliced along any rotation."""

    def __init__(self, volume: torch.Tensor, oversampling: int = 2, dtype: torch.dtype = torch.float32, chunk: int = 1 << 22):
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise ValueError(f"volume must be cubic (n, n, n); got {tuple(volume.shape)}")
        n = volume.shape[-1]
        m = oversampling * n
        x = volume.to(torch.float64)
        corr = _gridding_correction(m, n, torch.float64, x.device)
        x = x * corr[:, None, None] * corr[None, :, None] * corr[None, None, :]
        lo = m // 2 - n // 2
        x = F.pad(x, (lo, m - n - lo) * 3)
        spectrum = centred_fftn(x, (-3, -2, -1))
        channels = torch.view_as_real(spectrum).permute(3, 0, 1, 2)[None]  # (1, 2, m, m, m)
        # one wrapped plane past the highest frequency, as in project_fourier
        self._channels = F.pad(channels, (0, 1, 0, 1, 0, 1), mode="circular").to(dtype).contiguous()
        self.n, self.m, self.dtype, self.chunk = n, m, dtype, chunk

    def sample(self, rotations: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        """Complex coefficients (..., K) of the projections after `rotations` (..., 3, 3) at `freqs` (K, 2)."""
        lead = rotations.shape[:-2]
        rot_t = rotations.reshape(-1, 3, 3).to(self.dtype).transpose(-1, -2)
        plane = torch.cat([freqs.to(self.dtype), torch.zeros(freqs.shape[0], 1, dtype=self.dtype, device=freqs.device)], dim=-1)
        plane = plane * (self.m / self.n)
        per = max(1, self.chunk // max(1, freqs.shape[0]))
        out = []
        for start in range(0, rot_t.shape[0], per):
            p = torch.einsum("rij,kj->rki", rot_t[start : start + per], plane)
            grid = ((p + self.m // 2) * (2.0 / self.m) - 1.0).reshape(1, 1, 1, -1, 3)
            s = F.grid_sample(self._channels, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            s = s.reshape(2, p.shape[0], p.shape[1])
            out.append(torch.complex(s[0], s[1]))
        return torch.cat(out).reshape(*lead, freqs.shape[0])
