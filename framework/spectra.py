"""Radial power spectra and half-map FSC statistics (conventions in `cryoinverse.fourier`)."""

from __future__ import annotations

import torch

from .fourier import Shape, expand_shells, fftn, ifftn, shell_average, shell_counts


def radial_power(x: torch.Tensor) -> torch.Tensor:
    """Shell-averaged |F(x)|^2 (ortho FFT) of a (..., nz, ny, nx) map, float64, shells 0..corner."""
    return shell_average(fftn(x.to(torch.float64)).abs().square())


MIN_POOLED = 64  # coefficients the lowest shells pool for their noise estimate


def _pooled_low_shells(per_shell: torch.Tensor, shape: Shape) -> torch.Tensor:
    """Replace the lowest shells' values by their coefficient-weighted mean until they hold MIN_POOLED."""
    counts = shell_counts(shape).to(per_shell.dtype)
    last = int(torch.searchsorted(counts.cumsum(0), torch.tensor(float(MIN_POOLED), dtype=counts.dtype)))
    last = min(last, per_shell.numel() - 1)
    out = per_shell.clone()
    out[: last + 1] = (per_shell[: last + 1] * counts[: last + 1]).sum() / counts[: last + 1].sum()
    return out


def half_map_statistics(half1: torch.Tensor, half2: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-shell FSC and power of two half maps, and the noise powers they imply (float64).

    With half maps h_i = s + n_i (independent noise of equal power), FSC = S / (S + N_half) per
    shell, so N_half = (1 - FSC) P_half with P_half the mean half-map power (the reference-code
    weight 1 / ((1 - FSC) P)). The full map (h1 + h2) / 2 has noise power N_half / 2 and
    SNR = 2 FSC / (1 - FSC), the gold-standard relation.

    The noise power is taken as |F1 - F2|^2 / 2 per shell (equal to (1 - FSC) P_half when both
    halves have the same power), pooled over the lowest shells until they hold `MIN_POOLED`
    coefficients: shell 0 holds one coefficient, whose FSC is always +-1, so alone it would claim
    a noise-free DC term that likelihood-guided samplers then chase.
    """
    f1, f2 = fftn(half1.to(torch.float64)), fftn(half2.to(torch.float64))
    cross = shell_average((f1 * f2.conj()).real)
    p1 = shell_average(f1.abs().square())
    p2 = shell_average(f2.abs().square())
    fsc = (cross / torch.sqrt(p1 * p2).clamp(min=1e-300)).clamp(-1.0, 1.0)
    p_half = 0.5 * (p1 + p2)
    fsc_pos = fsc.clamp(min=0.0, max=1.0 - 1e-6)
    noise_half = _pooled_low_shells(shell_average((f1 - f2).abs().square()) / 2.0, tuple(half1.shape[-3:]))
    noise_half = noise_half.clamp(min=1e-12 * float(p_half.max()))
    return {
        "fsc": fsc,
        "power_half": p_half,
        "noise_half": noise_half,
        "noise_full": noise_half / 2.0,
        "snr_full": 2.0 * fsc_pos / (1.0 - fsc_pos),
        "signal": (p_half - noise_half).clamp(min=0.0),
    }


def signal_power(info: torch.Tensor, stat: torch.Tensor) -> torch.Tensor:
    """Per-coefficient signal power (nz, ny, nx) of a map estimated from Fourier-diagonal observations.

    `info` and `stat` are a likelihood's sufficient statistics (`Likelihood.fourier_information`):
    the combined observation stat / info has noise power 1 / info where info > 0. A shell's signal
    power is its mean observed power minus its mean noise power over the observed coefficients
    (empirical Bayes), floored at a millionth of the largest shell's so weights stay finite.
    """
    seen = info > 0
    safe = info.clamp(min=1e-300)
    combined = torch.where(seen, stat / safe, torch.zeros_like(stat))
    power = shell_average(torch.where(seen, combined.abs().square(), torch.zeros_like(info)))
    noise = shell_average(torch.where(seen, 1.0 / safe, torch.zeros_like(info)))
    fraction = shell_average(seen.to(info.dtype)).clamp(min=1e-12)
    shell = ((power - noise) / fraction).clamp(min=0.0)
    shell = shell.clamp(min=1e-6 * float(shell.max()))
    return expand_shells(shell, tuple(info.shape[-3:]))


def wiener_estimate(info: torch.Tensor, stat: torch.Tensor) -> torch.Tensor | None:
    """E[x | y] under a zero-mean Gaussian signal with the estimated `signal_power`: S z / (1 + S I).

    The best linear estimate of the clean map from Fourier-diagonal observations (float64, (nz, ny, nx));
    None where the statistics are not finite (a noise-free operator).
    """
    if not (torch.isfinite(info).all() and torch.isfinite(stat).all()):
        return None
    s = signal_power(info, stat)
    return ifftn(s * stat / (1.0 + s * info))
