"""Clean density maps from atomic models: `simulate_density` and the `cryoinverse simulate` command.

Physics. An atom with electron form factor f(s) = sum_i a_i exp(-b_i s^2 / 4) (s = 1/d in 1/A,
`cryoinverse.atoms`) and isotropic B-factor B (Debye-Waller factor exp(-B s^2 / 4)) has the
real-space density

    rho(r) = occupancy * sum_i a_i (4 pi / (b_i + B))^(3/2) exp(-4 pi^2 r^2 / (b_i + B)),

the inverse 3D Fourier transform of f(s) exp(-B s^2 / 4). Its integral is occupancy * f(0).

Units. The map holds rho in 1/A^2 (form factor in A per A^3 of volume): the sum of the map times
the voxel volume is sum over atoms of occupancy * f(0), in A. Multiplying by
h^2 / (2 pi m0 e) = 47.878 V A^2 gives the electrostatic (Coulomb) potential in volts.

Sampling. The density is evaluated at voxel centres, each atom within a cube of half-width
`cutoff` standard deviations of its broadest Gaussian, and added without wrap-around. Point
samples of the closed form at the requested voxel size (`oversample=1`) alias whatever the form
factor holds beyond Nyquist, 1 / (2 voxel): the narrow inner Gaussians (b_1 ~ 0.25 A^2) make
that a lot unless B is large (measured at 1.5 A voxels against a band-limited reference: 31 %
of the peak at B = 30 A^2, 9 % at B = 60). So by default (`oversample=2`) the density is
evaluated on a twice finer grid and Fourier-cropped to the requested voxel size: the map is then
band-limited to Nyquist (1.5e-2 at B = 10, 5e-5 at B = 30) and its sum is the atoms' f(0)s.

Geometry. Arrays are (z, y, x); voxel (0, 0, 0) lies at `Volume.origin`. With `centre=True`
the scattering-weighted centre of the atoms (weights occupancy * f(0)) falls on voxel n // 2 of
each axis, and the origin is set so that the map still overlays the model in a viewer.

Low-pass. `resolution=R` multiplies the Fourier transform of the box by 1 below |k| = 1/R - w,
a half cosine from there to 0 at 1/R, and 0 beyond, with w = 3 / (n voxel) (three Fourier
shells of the longest box edge, or less when 1/R itself is smaller). The filter is periodic in
the box, like every Fourier operation here: density within about R of a face rings across it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .atoms import Atoms, form_factor, gaussian_form_factor
from .errors import DataError
from .volume import Volume

__all__ = ["simulate_density", "lowpass_filter", "FORMS", "VOLT_A2_PER_DENSITY"]

FORMS = ("5gaussian", "gaussian")
VOLT_A2_PER_DENSITY = 47.878
"""h^2 / (2 pi m0 e) in V A^2: map values (1/A^2) times this are Coulomb potentials in volts."""

_EDGE_SHELLS = 3
_CHUNK_ENTRIES = 1 << 22  # voxels evaluated per batch of atoms: bounds memory to ~100 MB


def box_shape(box) -> tuple[int, int, int]:
    shape = (int(box),) * 3 if np.ndim(box) == 0 else tuple(int(n) for n in box)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"box must be a positive edge length or (z, y, x) edges; got {box!r}")
    return shape


def _coefficients(atoms: Atoms, form: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom Gaussian amplitudes a (N, C) in A and widths b (N, C) in A^2, before B."""
    table = form_factor if form == "5gaussian" else gaussian_form_factor
    names, index = np.unique(atoms.elements.astype(str), return_inverse=True)
    coefficients = [table(name) for name in names]
    a = np.stack([c[0] for c in coefficients])[index]
    b = np.stack([c[1] for c in coefficients])[index]
    return a, b


def _atom_bfactors(atoms: Atoms, bfactor: float | None, bfactor_mode: str) -> np.ndarray:
    if bfactor_mode not in ("replace", "add"):
        raise ValueError(f"bfactor_mode must be 'replace' or 'add'; got {bfactor_mode!r}")
    if bfactor is None:
        b = atoms.b_factors
    elif bfactor_mode == "replace":
        b = np.full(len(atoms), float(bfactor))
    else:
        b = atoms.b_factors + float(bfactor)
    if not np.isfinite(b).all() or (b < 0).any():
        raise DataError(f"{atoms.source}: {int((~(b >= 0)).sum())} atoms would have a negative or non-finite B-factor")
    return b


def simulate_density(
    atoms: Atoms,
    box,
    voxel_size: float,
    bfactor: float | None = None,
    form: str = "5gaussian",
    resolution: float | None = None,
    *,
    bfactor_mode: str = "replace",
    centre: bool = True,
    allow_clip: bool = False,
    oversample: int = 2,
    cutoff: float = 4.0,
    dtype: torch.dtype = torch.float32,
) -> Volume:
    """The density (1/A^2) of `atoms` on a `box` (edge, or (z, y, x) edges) of `voxel_size` A.

    bfactor: a global B (A^2) replacing every atom's own B (`bfactor_mode="replace"`) or added to
    it ("add"); None keeps the file's B. form: "5gaussian" (tabulated form factors) or "gaussian"
    (one Gaussian per atom with the same f(0) and radius of gyration). resolution: low-pass to
    this many A (cosine edge ending at 1/resolution). oversample: evaluate on an m-times finer
    grid and Fourier-crop (1: plain point samples of the closed form, aliased; 2: band-limited).
    Atoms outside the box are an error unless `allow_clip`, which drops what falls outside.
    Density is computed in float64 and returned as `dtype`. The module docstring states units,
    geometry and sampling.
    """
    shape = box_shape(box)
    voxel_size = float(voxel_size)
    if not voxel_size > 0:
        raise ValueError(f"voxel size must be positive (A); got {voxel_size}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}; got {form!r}")
    if resolution is not None and not resolution >= 2 * voxel_size:
        raise ValueError(
            f"resolution {resolution:g} A is finer than Nyquist (2 x voxel size = {2 * voxel_size:g} A)"
        )
    if int(oversample) != oversample or oversample < 1:
        raise ValueError(f"oversample must be a positive integer; got {oversample}")
    if len(atoms) == 0:
        raise DataError(f"{atoms.source}: no atoms")

    a, b = _coefficients(atoms, form)
    a = a * atoms.occupancies[:, None]
    widths = b + _atom_bfactors(atoms, bfactor, bfactor_mode)[:, None]
    weights = a.sum(axis=1)
    if not weights.sum() > 0:
        raise DataError(f"{atoms.source}: every atom has zero occupancy")
    positions = atoms.positions[:, ::-1]  # (x, y, z) -> (z, y, x)
    centre_index = np.array([n // 2 for n in shape], dtype=np.float64)
    if centre:
        centroid = (positions * weights[:, None]).sum(axis=0) / weights.sum()
        origin = centroid - centre_index * voxel_size
    else:
        origin = np.zeros(3)
    voxels = (positions - origin) / voxel_size
    outside = ((voxels < -0.5) | (voxels > np.array(shape) - 0.5)).any(axis=1)
    if outside.any() and not allow_clip:
        hint = ""
        if centre:  # voxel n // 2 reaches (n - 1) // 2 + 1/2 voxels to either side
            reach = np.abs(voxels - centre_index).max()
            hint = f" (it fits a box of {2 * int(math.ceil(reach - 0.5)) + 1} voxels)"
        raise DataError(
            f"{atoms.source}: {int(outside.sum())} of {len(atoms)} atoms lie outside the "
            f"{'x'.join(map(str, shape))} box at {voxel_size:g} A{hint}; "
            "enlarge --box or --voxel-size, or pass --allow-clip"
        )

    m = int(oversample)
    if m == 1:
        grid = _splat(voxels, a, widths, shape, voxel_size, cutoff)
    else:
        # A margin as wide as the widest atom keeps the crop from wrapping density across faces:
        # the padded grid falls to zero at its own faces, so periodicity there costs nothing.
        margin = int(math.ceil(cutoff * math.sqrt(widths.max() / (8 * math.pi**2)) / voxel_size)) + 1
        padded = tuple(n + 2 * margin for n in shape)
        grid = _splat((voxels + margin) * m, a, widths, tuple(n * m for n in padded), voxel_size / m, cutoff)
        grid = _fourier_crop(grid, padded)[margin:-margin, margin:-margin, margin:-margin]
    if resolution is not None:
        grid = lowpass_filter(grid, voxel_size, resolution)
    return Volume(grid.to(dtype), voxel_size, tuple(origin))


def _splat(
    voxels: np.ndarray, a: np.ndarray, widths: np.ndarray, shape: tuple[int, int, int], voxel_size: float, cutoff: float
) -> torch.Tensor:
    """Sum of point-sampled Gaussian mixtures (float64), atoms grouped by their window size.

    Each Gaussian is separable: its value on a cube of voxels is an outer product of three 1D
    factors, so a batch of atoms costs one batched matrix product per batch.
    """
    grid = torch.zeros(math.prod(shape), dtype=torch.float64)
    sigma_max = np.sqrt(widths.max(axis=1) / (8 * math.pi**2))
    half_widths = np.maximum(np.ceil(cutoff * sigma_max / voxel_size).astype(np.int64), 1)
    dims = torch.tensor(shape)
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1])
    for w in np.unique(half_widths):
        members = np.flatnonzero(half_widths == w)
        k = 2 * int(w) + 1
        offsets = torch.arange(-int(w), int(w) + 1)
        per_batch = max(1, _CHUNK_ENTRIES // k**3)
        for start in range(0, members.size, per_batch):
            chosen = members[start : start + per_batch]
            u = torch.from_numpy(voxels[chosen])  # (B, 3) continuous voxel coordinates
            amp = torch.from_numpy(a[chosen])  # (B, C)
            width = torch.from_numpy(widths[chosen])  # (B, C)
            index = torch.round(u).to(torch.long)[:, :, None] + offsets  # (B, 3, K)
            distance = (index - u[:, :, None]) * voxel_size  # A
            inside = (index >= 0) & (index < dims[None, :, None])
            # 1D factor (4 pi / b')^(1/2) exp(-4 pi^2 d^2 / b') per component and axis: (B, C, 3, K)
            factor = torch.sqrt(4 * math.pi / width)[:, :, None, None] * torch.exp(
                -4 * math.pi**2 * distance[:, None] ** 2 / width[:, :, None, None]
            )
            factor = factor * inside[:, None]  # no wrap-around: what falls outside is dropped
            fz = factor[:, :, 0] * amp[:, :, None]
            zy = (fz[:, :, :, None] * factor[:, :, 1, None, :]).reshape(len(chosen), -1, k * k)
            block = torch.bmm(zy.transpose(1, 2), factor[:, :, 2])  # sum over components: (B, K*K, K)
            flat = torch.minimum(index.clamp_min(0), dims[None, :, None] - 1) * strides[None, :, None]
            linear = flat[:, 0, :, None, None] + flat[:, 1, None, :, None] + flat[:, 2, None, None, :]
            grid.index_add_(0, linear.reshape(-1), block.reshape(-1))
    return grid.reshape(shape)


def _fourier_crop(grid: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Band-limit a finer grid (edges m x `shape`) to `shape`: keep its lowest frequencies.

    Coarse voxel j lands on fine voxel m j, so the origin stays; values are scaled so the sum
    times the voxel volume (the integrated density) is unchanged.
    """
    spectrum = torch.fft.rfftn(grid)[:, :, : shape[2] // 2 + 1]
    for axis in (0, 1):  # frequencies 0 .. (n - 1) // 2, then -(n // 2) .. -1, as fftfreq(n) orders them
        n, fine = shape[axis], grid.shape[axis]
        low = spectrum.narrow(axis, 0, (n + 1) // 2)
        high = spectrum.narrow(axis, fine - n // 2, n // 2)
        spectrum = torch.cat([low, high], dim=axis)
    return torch.fft.irfftn(spectrum, s=shape) * (math.prod(shape) / math.prod(grid.shape))


def lowpass_filter(data: torch.Tensor, voxel_size: float, resolution: float) -> torch.Tensor:
    """Multiply the Fourier transform of `data` (z, y, x) by a cosine-edged low-pass ending at 1/resolution."""
    shape = data.shape[-3:]
    freqs = [torch.fft.fftfreq(n, d=voxel_size, dtype=torch.float64) for n in shape[:2]]
    freqs.append(torch.fft.rfftfreq(shape[2], d=voxel_size, dtype=torch.float64))
    kz, ky, kx = torch.meshgrid(*freqs, indexing="ij")
    k = torch.sqrt(kz**2 + ky**2 + kx**2)
    stop = 1.0 / resolution
    width = min(_EDGE_SHELLS / (max(shape) * voxel_size), stop)
    ramp = ((k - (stop - width)) / width).clamp(0, 1)
    mask = 0.5 * (1 + torch.cos(math.pi * ramp))
    mask = torch.where(k >= stop, torch.zeros_like(mask), mask)
    spectrum = torch.fft.rfftn(data.to(torch.float64), dim=(-3, -2, -1))
    return torch.fft.irfftn(spectrum * mask, s=tuple(shape), dim=(-3, -2, -1)).to(data.dtype)


def model_stem(path: Path) -> str:
    name = path.name[: -len(".gz")] if path.name.lower().endswith(".gz") else path.name
    return Path(name).stem
