"""Fourier planar maps and confidence-weighted Kabsch: the geometry of a learned multi-view poser.

A particle image of pose R (volume -> image, `cryoinverse.rotations`) holds, by the Fourier-slice
theorem, the volume's spectrum on the plane R^T (k_x, k_y, 0). Seen from a reference view of pose
R_0, the 2D frequency q = (k_x, k_y, 0) of view i sits at

    P_i(q) = R_0 R_i^T q        (the view's "Fourier planar map", CryoFastAR),

a rotated copy of the image plane. A network predicts P_i per pixel with a confidence w; the
rotation M_i = R_0 R_i^T is recovered by the weighted Kabsch solution of min_M sum w |M q - P|^2
(an SVD, with the determinant forced to +1), and R_i = M_i^T R_0 (R_0 = identity: the frame of
the reference view, since a set of poses is only known up to one global rotation).

Frequencies are those of `torch.fft.fftfreq` on an n x n image, scaled by 2 (so |q| <= 1 at
Nyquist), in (y, x) image order like the images.
"""

from __future__ import annotations

import torch

__all__ = ["plane_coordinates", "planar_maps", "weighted_kabsch", "rotations_from_planar_maps"]


def plane_coordinates(n: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(n, n, 3) coordinates (x, y, 0) of the centred frequency grid of an n x n image, |q| <= 1 at Nyquist."""
    k = torch.fft.fftshift(torch.fft.fftfreq(n, dtype=torch.float64)) * 2.0
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([kx, ky, torch.zeros_like(kx)], dim=-1).to(dtype=dtype, device=device)


def planar_maps(rotations: torch.Tensor, n: int, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Planar maps (N, n, n, 3) of views with `rotations` (N, 3, 3) in the frame of `reference` (default: the first view)."""
    ref = rotations[0] if reference is None else reference
    m = ref @ rotations.transpose(-1, -2)  # (N, 3, 3): R_0 R_i^T
    q = plane_coordinates(n, rotations.dtype, rotations.device)
    return torch.einsum("nij,yxj->nyxi", m, q)


def weighted_kabsch(source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Rotations (B, 3, 3) minimising sum_k w_k |M s_k - t_k|^2 for point sets (B, K, 3) and weights (B, K) >= 0."""
    w = weights.clamp(min=0).unsqueeze(-1)
    h = (w * target).transpose(-1, -2) @ source  # (B, 3, 3): sum w t s^T
    u, _, vh = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(u @ vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    fix = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
    return u @ fix @ vh


def rotations_from_planar_maps(maps: torch.Tensor, confidence: torch.Tensor | None = None) -> torch.Tensor:
    """Rotations R_i (N, 3, 3) (in the reference view's frame) from planar maps (N, n, n, 3) and confidences (N, n, n)."""
    n_views, n = maps.shape[0], maps.shape[1]
    q = plane_coordinates(n, maps.dtype, maps.device).reshape(1, -1, 3).expand(n_views, -1, -1)
    w = torch.ones(maps.shape[:3], dtype=maps.dtype, device=maps.device) if confidence is None else confidence
    m = weighted_kabsch(q, maps.reshape(n_views, -1, 3), w.reshape(n_views, -1))
    return m.transpose(-1, -2)  # R_i = M_i^T with R_0 = I
