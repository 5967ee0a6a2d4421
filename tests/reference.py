"""Independent float64 references built with dense matrices in numpy (small boxes only)."""

from __future__ import annotations

import numpy as np


def shells_np(n: int) -> np.ndarray:
    k = np.fft.fftfreq(n)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return np.round(np.sqrt(kz**2 + ky**2 + kx**2) * n).astype(int)


def fourier_covariance(spectrum: np.ndarray, n: int) -> np.ndarray:
    """Dense real-space covariance (n^3 x n^3) of a stationary field with per-shell power `spectrum`.

    With the unitary DFT matrix W, C = W^H diag(P) W; built column by column from unit impulses.
    """
    p = spectrum[shells_np(n)]
    size = n**3
    cov = np.empty((size, size))
    for j in range(size):
        e = np.zeros(size)
        e[j] = 1.0
        f = np.fft.fftn(e.reshape(n, n, n), norm="ortho")
        cov[:, j] = np.fft.ifftn(p * f, norm="ortho").real.reshape(-1)
    return cov


def fsc_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FSC of shells 0..Nyquist between two cubic maps, in float64 numpy (unnormalised FFT)."""
    n = a.shape[0]
    shells = shells_np(n)
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    out = []
    for r in range(n // 2 + 1):
        m = shells == r
        out.append(np.real(np.sum(fa[m] * np.conj(fb[m]))) / np.sqrt(np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2)))
    return np.array(out)


def directional_fsc_np(a: np.ndarray, b: np.ndarray, direction: np.ndarray, angle: float) -> np.ndarray:
    """Cone FSC by brute force in float64: every coefficient's angle to the line along `direction` (z, y, x)."""
    shape = a.shape
    n_ref = max(shape)
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    d = direction / np.linalg.norm(direction)
    curve = np.full(n_ref // 2 + 1, np.nan)
    sums = {}
    for idx in np.ndindex(*shape):
        k = np.array([np.fft.fftfreq(shape[i])[idx[i]] for i in range(3)])
        radius = np.linalg.norm(k)
        r = int(np.round(radius * n_ref))
        if r > n_ref // 2:
            continue
        inside = radius == 0 or np.degrees(np.arccos(min(1.0, abs(k @ d) / radius))) <= angle + 1e-9
        if inside:
            c, pa, pb = sums.get(r, (0.0, 0.0, 0.0))
            sums[r] = (c + (fa[idx] * np.conj(fb[idx])).real, pa + abs(fa[idx]) ** 2, pb + abs(fb[idx]) ** 2)
    for r, (c, pa, pb) in sums.items():
        curve[r] = c / np.sqrt(pa * pb)
    return curve
