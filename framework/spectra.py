"""Radial power spectra, half-map FSC statistics and noise estimates (conventions in `cryoinverse.fourier`).

Noise estimates may be restricted to the *measured* coefficients of a box (a boolean
(nz, ny, nx) mask, e.g. inside a tomogram's missing wedge): coefficients that were never
measured hold no information about the noise, only zeros or reconstruction artefacts.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import DataError
from .fourier import Shape, expand_shells, fftn, grid_shape, ifftn, n_shells, reference_edge, shell_average, shell_counts, shell_index


def radial_power(x: torch.Tensor) -> torch.Tensor:
    """Shell-averaged |F(x)|^2 (ortho FFT) of a (..., nz, ny, nx) map, float64, shells 0..corner."""
    return shell_average(fftn(x.to(torch.float64)).abs().square())


MIN_POOLED = 64  # coefficients the lowest shells pool for their noise estimate


def _pooled_low_shells(per_shell: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Replace the lowest shells' values by their coefficient-weighted mean until they hold MIN_POOLED.

    `counts`: the coefficients behind each shell's value (all of the shell's, or its measured ones).
    """
    counts = counts.to(per_shell.dtype)
    last = int(torch.searchsorted(counts.cumsum(0), torch.tensor(float(MIN_POOLED), dtype=counts.dtype)))
    last = min(last, per_shell.numel() - 1)
    out = per_shell.clone()
    out[: last + 1] = (per_shell[: last + 1] * counts[: last + 1]).sum() / counts[: last + 1].sum()
    return out


def measured_shell_average(values: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
    """Mean of a real (..., nz, ny, nx) array over the measured coefficients of each shell -> (..., n_shells).

    A shell without measured coefficients takes the value of the nearest lower shell that has
    some (shell 0, the DC term, is measured in any tilt series), so the spectrum is defined on
    every shell and never divides by zero.
    """
    shape = tuple(values.shape[-3:])
    idx = shell_index(shape, values.device).reshape(-1)
    flat = (values * measured.to(values.device, values.dtype)).reshape(*values.shape[:-3], -1)
    sums = torch.zeros(*flat.shape[:-1], n_shells(shape), dtype=flat.dtype, device=flat.device)
    sums.index_add_(-1, idx, flat)
    counts = measured_shell_counts(measured).to(values.device)
    out = sums / counts.clamp(min=1).to(values.dtype)
    return _fill_empty_shells(out, counts)


def measured_shell_counts(measured: torch.Tensor) -> torch.Tensor:
    """Number of measured coefficients in each shell of a boolean (nz, ny, nx) mask, (n_shells,) int64."""
    shape = tuple(measured.shape[-3:])
    idx = shell_index(shape, measured.device).reshape(-1)
    return torch.bincount(idx[measured.reshape(-1)], minlength=n_shells(shape))


def _fill_empty_shells(per_shell: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Shells with count 0 take the value of the nearest lower shell with coefficients (the first non-empty one below shell 0)."""
    have = (counts > 0).nonzero().reshape(-1)
    if have.numel() == 0:
        return per_shell
    source = torch.arange(per_shell.shape[-1], device=per_shell.device)
    position = torch.searchsorted(have, source, right=True) - 1
    source = have[position.clamp(min=0)]
    return per_shell[..., source]


def spectrum_on_box(spectrum: torch.Tensor, edge: int, shape: Shape) -> torch.Tensor:
    """A per-shell spectrum of a box with reference edge `edge`, resampled to the shells of `shape`.

    Shell r of a box is the physical frequency r / n_ref cycles per voxel (`cryoinverse.fourier`),
    so shell r of `shape` reads the spectrum at shell r n_ref(shape)^-1 edge, linearly
    interpolated; beyond its last shell the spectrum's last value holds. A noise power spectrum
    (ortho FFT) is a density in physical frequency, so this is the same noise on another box;
    on a box of the same reference edge it returns the spectrum's own values.
    """
    values = spectrum.to(torch.float64).reshape(-1)
    r = torch.arange(n_shells(shape), dtype=torch.float64, device=values.device) * (edge / reference_edge(shape))
    r = r.clamp(max=values.numel() - 1)
    low = r.floor().to(torch.long)
    high = (low + 1).clamp(max=values.numel() - 1)
    frac = r - low.to(torch.float64)
    return values[low] * (1 - frac) + values[high] * frac


def half_map_statistics(half1: torch.Tensor, half2: torch.Tensor, measured: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-shell FSC and power of two half maps, and the noise powers they imply (float64).

    With half maps h_i = s + n_i (independent noise of equal power), FSC = S / (S + N_half) per
    shell, so N_half = (1 - FSC) P_half with P_half the mean half-map power (the reference-code
    weight 1 / ((1 - FSC) P)). The full map (h1 + h2) / 2 has noise power N_half / 2 and
    SNR = 2 FSC / (1 - FSC), the gold-standard relation.

    The noise power is taken as |F1 - F2|^2 / 2 per shell (equal to (1 - FSC) P_half when both
    halves have the same power), pooled over the lowest shells until they hold `MIN_POOLED`
    coefficients: shell 0 holds one coefficient, whose FSC is always +-1, so alone it would claim
    a noise-free DC term that likelihood-guided samplers then chase.

    `measured` (boolean, the box's shape) restricts every shell average to the measured
    coefficients, as for odd/even tomograms inside their missing wedge: outside it both halves
    hold no data, and their agreement there (zeros, or the same artefacts) is not signal.
    Shells without measured coefficients take the nearest lower shell's values.
    """
    f1, f2 = fftn(half1.to(torch.float64)), fftn(half2.to(torch.float64))
    shape = tuple(half1.shape[-3:])
    if measured is None:
        average, counts = shell_average, shell_counts(shape)
    else:
        if tuple(measured.shape) != shape:
            raise ValueError(f"measured mask has shape {tuple(measured.shape)}; the half maps are {shape}")
        measured = measured.to(f1.device, torch.bool)
        counts = measured_shell_counts(measured)

        def average(values: torch.Tensor) -> torch.Tensor:
            return measured_shell_average(values, measured)

    cross = average((f1 * f2.conj()).real)
    p1 = average(f1.abs().square())
    p2 = average(f2.abs().square())
    fsc = (cross / torch.sqrt(p1 * p2).clamp(min=1e-300)).clamp(-1.0, 1.0)
    p_half = 0.5 * (p1 + p2)
    fsc_pos = fsc.clamp(min=0.0, max=1.0 - 1e-6)
    noise_half = _pooled_low_shells(average((f1 - f2).abs().square()) / 2.0, counts)
    noise_half = noise_half.clamp(min=1e-12 * ac_max(p_half))
    return {
        "fsc": fsc,
        "power_half": p_half,
        "noise_half": noise_half,
        "noise_full": noise_half / 2.0,
        "snr_full": 2.0 * fsc_pos / (1.0 - fsc_pos),
        "signal": (p_half - noise_half).clamp(min=0.0),
    }


def ac_max(spectrum: torch.Tensor) -> float:
    """The largest value of a per-shell spectrum beyond shell 0: what floors are set relative to.

    Shell 0 holds the map's mean, which says nothing about the power of its fluctuations: a real
    tomogram's mean (~100 in its units) puts ~1e10 there against ~1e3 in the other shells, and a
    floor of a millionth of that would exceed the noise in every high shell.
    """
    values = spectrum.reshape(-1)
    return float(values[1:].max()) if values.numel() > 1 else float(values.max())


def signal_power(info: torch.Tensor, stat: torch.Tensor) -> torch.Tensor:
    """Per-coefficient signal power (nz, ny, nx) of a map estimated from Fourier-diagonal observations.

    `info` and `stat` are a likelihood's sufficient statistics (`Likelihood.fourier_information`):
    the combined observation stat / info has noise power 1 / info where info > 0. A shell's signal
    power is its mean observed power minus its mean noise power over the observed coefficients
    (empirical Bayes), floored at a millionth of the largest shell's beyond shell 0 (`ac_max`) so
    weights stay finite.
    """
    seen = info > 0
    safe = info.clamp(min=1e-300)
    combined = torch.where(seen, stat / safe, torch.zeros_like(stat))
    power = shell_average(torch.where(seen, combined.abs().square(), torch.zeros_like(info)))
    noise = shell_average(torch.where(seen, 1.0 / safe, torch.zeros_like(info)))
    fraction = shell_average(seen.to(info.dtype)).clamp(min=1e-12)
    shell = ((power - noise) / fraction).clamp(min=0.0)
    shell = shell.clamp(min=1e-6 * ac_max(shell))
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


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The map `x` (nz, ny, nx) convolved with a periodic Gaussian of `sigma` voxels, float64:
    exp(-2 pi^2 sigma^2 k^2) on k in cycles per voxel. It keeps the total (k = 0)."""
    kz2, ky2, kx2 = _frequency_squared_parts(x.shape[-3:])
    return ifftn(fftn(x.to(torch.float64)) * torch.exp(-2 * math.pi**2 * sigma**2 * (kz2 + ky2 + kx2)).to(x.device))


def low_pass(x: torch.Tensor, voxel_size: float | None, resolution: float) -> torch.Tensor:
    """The map `x` (nz, ny, nx) seen at `resolution` A, float64: a periodic Gaussian low-pass.

    exp(-(resolution * k)^2) on frequency k in 1/A: amplitude 1/e at 1/resolution; in real space a
    Gaussian of sigma = resolution / (pi sqrt 2) (`gaussian_blur`). It keeps the total (k = 0) and
    the sign of a non-negative map. Without a voxel size `resolution` is in voxels; it is never
    less than 4 voxels.
    """
    edge = max(resolution / voxel_size if voxel_size else resolution, 4.0)
    return gaussian_blur(x, edge / (math.pi * math.sqrt(2.0)))


def _taper(n: int, width: int) -> torch.Tensor:
    """A 1D window of n samples: 1 in the middle, a raised-cosine edge of `width` samples at each end."""
    w = torch.ones(n, dtype=torch.float64)
    ramp = 0.5 * (1 - torch.cos(math.pi * (torch.arange(width, dtype=torch.float64) + 0.5) / width))
    w[:width] = ramp
    w[n - width :] = ramp.flip(0)
    return w


def _cube_starts(n: int, cube: int) -> list[int]:
    """Corners along one axis of cubes of edge `cube` overlapping by half, the last flush with the edge."""
    step = max(cube // 2, 1)
    starts = list(range(0, n - cube + 1, step))
    if starts[-1] != n - cube:
        starts.append(n - cube)
    return starts


QUIET_FACTOR = 1.5
"""Cubes whose low-pass variance is within this factor of the quiet quantile count as background."""


def background_noise_power(
    volume: torch.Tensor,
    measured: Callable[[Shape], torch.Tensor] | None = None,
    cube: int = 20,
    fraction: float = 0.25,
    smoothing: float = 2.0,
) -> torch.Tensor:
    """Noise power per shell of a tomogram estimated from its signal-free cubes, on the shells of its box (float64).

    For a tomogram with no odd/even halves. The (nz, ny, nx) volume is cut into cubes of edge c =
    min(`cube`, shortest edge), overlapping by half. Each cube is scored by the variance inside it
    of the volume low-passed by a Gaussian of `smoothing` voxels (particles and membranes raise
    it, noise barely does); the quiet level is the `fraction` quantile of the scores, and every
    cube scoring at most QUIET_FACTOR times that is background (at least the 4 quietest). Keeping
    all quiet cubes, not only the quietest `fraction`, matters: the score holds the cubes' own
    low-frequency noise, so keeping only the lowest would select low noise and underestimate it.

    Each background cube loses its window-weighted mean, is multiplied by a separable window w
    (flat, with raised-cosine edges of a quarter of the cube) and its |F|^2 (ortho FFT) is
    averaged over the cubes. The power that the window and the mean removal leave of noise on
    the measured coefficients is computed per coefficient, R(k) (exact for noise of equal power
    on every measured coefficient, see `_windowed_response`), and the estimate at k is
    |F|^2 / R(k), taken over the measured coefficients with R(k) at least half of mean(w^2) (not
    at the wedge's edge, nor at the removed mean) and averaged per shell of the cube. `measured(shape)`
    gives the boolean mask M of the measured coefficients of a box (a missing wedge:
    `MissingWedge.mask`); None: all. The cube's spectrum is then read at the physical frequencies
    of the volume's shells (`spectrum_on_box`): it resolves nothing finer than 1 / c cycles per
    voxel, and below 1 / c (the cubes' mean, which is removed) it holds its value at 1 / c.

    Assumes: the noise is stationary (one spectrum everywhere in the tomogram, so background
    cubes speak for the cubes with particles); the background cubes hold no signal (faint density
    that does not raise a cube's low-pass variance, e.g. small proteins in thin ice, is counted as
    noise, mostly at low frequency); the noise spectrum is smooth on the scale of 1 / c; and at
    least a `fraction` of the cubes are background.

    Precision is set by how much background there is: with a dozen cubes' worth of it, shells
    below 2 / c cycles per voxel (a cube's shell 1, a dozen measured coefficients a cube) are
    within about 30%, higher shells within about 20% and mostly 5% (tests/framework/test_spectra.py).
    """
    x = volume.detach().to("cpu", torch.float64)
    if x.ndim != 3:
        raise DataError(f"background noise: the volume must be 3D (z, y, x); got shape {tuple(x.shape)}")
    shape = tuple(x.shape)
    c = min(int(cube), min(shape))
    if c < 8:
        raise DataError(f"background noise: the volume's shortest edge is {min(shape)} voxels; cubes need at least 8")
    if not 0 < fraction <= 1:
        raise ValueError(f"background noise: fraction must be in (0, 1]; got {fraction}")
    low = gaussian_blur(x, smoothing)
    starts = [torch.tensor(_cube_starts(n, c)) for n in shape]
    scores = _cube_variances(low - low.mean(), starts, c).reshape(-1)
    corners = torch.cartesian_prod(*starts).reshape(-1, 3)
    quiet = float(torch.quantile(scores, fraction))
    chosen = (scores <= QUIET_FACTOR * quiet) | (scores <= scores.sort().values[min(3, scores.numel() - 1)])
    corners = corners[chosen]

    edge = _taper(c, max(2, c // 4))
    window = edge[:, None, None] * edge[None, :, None] * edge[None, None, :]
    offsets = torch.arange(c)
    power = torch.zeros(c, c, c, dtype=torch.float64)
    for batch in corners.split(CUBE_BATCH):  # the cubes of a large tomogram a few hundred at a time
        z, y, xx = (batch[:, i, None] + offsets for i in range(3))
        blocks = x[z[:, :, None, None], y[:, None, :, None], xx[:, None, None, :]]
        blocks = blocks - (window * blocks).sum(dim=(1, 2, 3), keepdim=True) / window.sum()
        power += fftn(window * blocks).abs().square().sum(0)
    power /= len(corners)

    mask = torch.ones(c, c, c, dtype=torch.bool) if measured is None else measured((c, c, c)).to("cpu", torch.bool)
    response = _windowed_response(window, mask)
    usable = mask & (response >= 0.5 * float(window.square().mean()))
    per_shell = measured_shell_average(torch.where(usable, power / response.clamp(min=1e-300), torch.zeros_like(power)), usable)
    return spectrum_on_box(per_shell, c, shape)


CUBE_BATCH = 256


def _cube_variances(volume: torch.Tensor, starts: list[torch.Tensor], c: int) -> torch.Tensor:
    """Variance of `volume` inside every cube of edge c whose corner is in the product of the per-axis `starts`, (len z, len y, len x).

    From integral volumes (summed-volume tables): each cube's sums are 8 table reads, whatever its size.
    """

    def box_sums(values: torch.Tensor) -> torch.Tensor:
        table = torch.zeros(tuple(n + 1 for n in values.shape), dtype=torch.float64)
        table[1:, 1:, 1:] = values.cumsum(0).cumsum(1).cumsum(2)
        z0, y0, x0 = starts[0][:, None, None], starts[1][None, :, None], starts[2][None, None, :]
        z1, y1, x1 = z0 + c, y0 + c, x0 + c
        return (
            table[z1, y1, x1] - table[z0, y1, x1] - table[z1, y0, x1] - table[z1, y1, x0]
            + table[z0, y0, x1] + table[z0, y1, x0] + table[z1, y0, x0] - table[z0, y0, x0]
        )

    count = c**3
    mean = box_sums(volume) / count
    return box_sums(volume.square()) / count - mean.square()


def _windowed_response(window: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """E|F(w (n - m))_k|^2 per coefficient for noise n of power 1 on the coefficients of `mask` (0 elsewhere).

    m = sum(w n) / sum(w) is the window-weighted mean. With W = F(w) (ortho) and c^3 = N voxels,
    F(w n)_k = N^-1/2 sum_q W(k - q) F(n)_q, so E|F(w n)_k|^2 = (K * M)(k) with K = |W|^2 / N,
    E[F(w n)_k conj F(w n)_0] = X(k) = N^-1 sum_q W(k - q) W(q) M(q) (w real: conj W(-q) = W(q)), sum(w n) = N^1/2 F(w n)_0,
    and E|F(w n)_k - m W_k|^2 = (K * M)(k) - 2 Re(conj(W_k) X(k)) N^1/2 / S + |W_k|^2 (K * M)(0) N / S^2
    with S = sum(w). The convolutions are circular, as the FFT of a cube is.
    """
    count = window.numel()
    w_hat = fftn(window)
    m = mask.to(torch.float64)

    def convolve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (a * b)(k) = sum_q a(k - q) b(q)
        return torch.fft.ifftn(torch.fft.fftn(a) * torch.fft.fftn(b))

    kernel = w_hat.abs().square() / count
    spread = convolve(kernel, m).real
    cross = convolve(w_hat, w_hat * m) / count  # conj W(-q) = W(q): w is real
    total = float(window.sum())
    return spread - 2 * (w_hat.conj() * cross).real * math.sqrt(count) / total + w_hat.abs().square() * float(spread[0, 0, 0]) * count / total**2


def _frequency_squared_parts(shape: Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(k_z^2, k_y^2, k_x^2) broadcastable over a box, cycles per voxel squared."""
    nz, ny, nx = grid_shape(shape)
    kz, ky, kx = (torch.fft.fftfreq(n, dtype=torch.float64) ** 2 for n in (nz, ny, nx))
    return kz[:, None, None], ky[None, :, None], kx[None, None, :]
