"""A map from particle images of known poses: direct Fourier inversion with a per-shell Wiener term.

The forward model is `cryoinverse.projection` (sinc reading): an image of pose (R, s) is the
central slice R^T (k_x, k_y, 0) of the map's spectrum, shifted by s and multiplied by the image's
CTF. Inverting it, each image is zero-padded to m = `oversampling` n pixels (the padded grid of
`project_fourier`), its centred spectrum Y is unshifted and splatted trilinearly onto the m^3 grid
at R^T k, as data D += w c Y and weight W += w c^2 (w the trilinear weight, c the CTF). The map's
padded spectrum is then

    V = D / (W + W_r / SSNR_r)

per coefficient, W_r the mean weight of shell r and SSNR_r the spectral signal-to-noise ratio of
the data there (RELION's regularised inversion, with the noise folded into the SSNR); then back to
real space and cropped to n^3. Dividing by the splatted weights normalises the trilinear kernel,
so no real-space gridding correction follows (measured on noiseless projections of a 24^3 test
map, 1000 images: with sinc^2 correction the map came back 2.5% low, without it 0.3%, relative
L2 error 2.1% inside the inscribed sphere). The CTF is evaluated on the padded grid, as for a
particle boxed out of a micrograph; images whose CTF was applied on their own box (periodically,
as `cryoinverse.projection.shift_and_filter` and cryoDRGN's simulator do) differ from that model
near the box edge: on 1000 such noiseless images of a 32^3 map at 2 Å, 0.8-2.5 µm defocus, the
relative L2 error is 12.6% and FSC-0.5 against the truth 5.6 Å (Nyquist 4 Å).

The SSNR comes from the data alone: the images are split into two random halves (a seeded
permutation: the halves never share an image), each half reconstructed without regularisation,
and their FSC gives SSNR = 2 FSC / (1 - FSC) for the full set (FSC / (1 - FSC) for each half),
the gold-standard estimate. `Insertion` accumulates images in batches, so a stack of any size
is inverted in memory bounded by the batch and the m^3 grids.
"""

from __future__ import annotations

import math

import attrs
import torch

from .ctf import CTFParams, ctf_grid
from .distributed import share, sum_
from .fourier import n_shells
from .metrics import fsc as fourier_shell_correlation
from .progress import ProgressFactory, silent
from .projection import centred_fft2, centred_ifftn

__all__ = ["Insertion", "reconstruct", "Reconstruction", "split_halves"]

OVERSAMPLING = 2  # padded grid m = 2 n, as `project_fourier`'s sinc reading
FSC_CEILING = 0.999  # noiseless data: the Wiener term then vanishes to a millionth of the weight
WEIGHT_FLOOR = 1e-3  # unregularised halves: weights below this fraction of the mean count as unmeasured


def split_halves(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint random halves of `count` image indices (sorted), from `seed`: every image in exactly one."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order[: (count + 1) // 2].sort().values, order[(count + 1) // 2 :].sort().values


@attrs.define
class Insertion:
    """Data D and weight W of images inserted into the padded spectrum of an n^3 map (m = oversampling n)."""

    n: int
    pixel_size: float
    oversampling: int = OVERSAMPLING
    data: torch.Tensor = attrs.field(init=False)
    weight: torch.Tensor = attrs.field(init=False)
    count: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        m = self.m
        self.data = torch.zeros(m * m * m, dtype=torch.complex128)
        self.weight = torch.zeros(m * m * m, dtype=torch.float64)

    @property
    def m(self) -> int:
        """Edge of the padded grid."""
        return self.oversampling * self.n

    def add(
        self, images: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor | None = None, ctf: CTFParams | None = None,
        ctf_premultiplied: bool = False,
    ) -> None:
        """Insert images (N, n, n) of poses `rotations` (N, 3, 3) and `shifts` (N, 2) in Å (x, y), with their
        CTF parameters (N or 1); `ctf_premultiplied`: the images were multiplied by their CTF already
        (phase-flipped stacks are not that: give their CTF as it is, they are treated as unflipped)."""
        n, m = self.n, self.m
        if images.ndim != 3 or tuple(images.shape[-2:]) != (n, n):
            raise ValueError(f"images must be (N, {n}, {n}); got {tuple(images.shape)}")
        count = images.shape[0]
        lo = m // 2 - n // 2
        padded = torch.nn.functional.pad(images.to(torch.float64), (lo, m - n - lo, lo, m - n - lo))
        spectrum = centred_fft2(padded)  # (N, m, m), frequency 0 at m // 2
        k = torch.arange(m, dtype=torch.float64) - m // 2
        ky, kx = torch.meshgrid(k, k, indexing="ij")
        if shifts is not None:  # content moved by +s: undo with the opposite phase ramp
            s = shifts.to(torch.float64) / self.pixel_size
            phase = 2 * math.pi * (kx[None] * s[:, 0, None, None] + ky[None] * s[:, 1, None, None]) / m
            spectrum = spectrum * torch.polar(torch.ones_like(phase), phase)
        if ctf is not None:
            c = ctf_grid(ctf, m, self.pixel_size, centred=True).expand(count, m, m)
            c2 = c.square()
            if not ctf_premultiplied:  # images already c Y: they are the normal equations' c Y as they are
                spectrum = spectrum * c
        else:
            c2 = torch.ones(count, m, m, dtype=torch.float64)
        inside = (kx.square() + ky.square()) <= (m // 2) ** 2  # the Nyquist disc of the padded grid
        plane = torch.stack([kx[inside], ky[inside], torch.zeros_like(kx[inside])], dim=-1)  # (P, 3) in (x, y, z)
        points = torch.einsum("nji,pj->npi", rotations.to(torch.float64), plane) + m // 2  # R^T k, grid indices (x, y, z)
        values, weights = spectrum[:, inside], c2[:, inside]
        base = points.floor()
        frac = points - base
        base = base.long()
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    w = ((frac[..., 0] if dx else 1 - frac[..., 0]) * (frac[..., 1] if dy else 1 - frac[..., 1])
                         * (frac[..., 2] if dz else 1 - frac[..., 2]))
                    x, y, z = base[..., 0] + dx, base[..., 1] + dy, base[..., 2] + dz
                    ok = (x >= 0) & (x < m) & (y >= 0) & (y < m) & (z >= 0) & (z < m)
                    index = ((z * m + y) * m + x)[ok]
                    self.data.index_add_(0, index, (w * values)[ok])
                    self.weight.index_add_(0, index, (w * weights)[ok])
        self.count += count

    def __add__(self, other: "Insertion") -> "Insertion":
        if (self.n, self.oversampling) != (other.n, other.oversampling):
            raise ValueError("insertions of different grids cannot be added")
        out = Insertion(self.n, self.pixel_size, self.oversampling)
        out.data, out.weight, out.count = self.data + other.data, self.weight + other.weight, self.count + other.count
        return out

    def shell_index(self) -> torch.Tensor:
        """Shell of each padded coefficient, in the n^3 map's shells (r = round(|q| / oversampling))."""
        m = self.m
        k = torch.arange(m, dtype=torch.float64) - m // 2
        z, y, x = torch.meshgrid(k, k, k, indexing="ij")
        return (torch.sqrt(x * x + y * y + z * z) / self.oversampling).round().long().reshape(-1)

    def solve(self, ssnr: torch.Tensor | None = None) -> torch.Tensor:
        """The map (n, n, n) float64: V = D / (W + W_r / SSNR_r) per shell r (`ssnr` None: no Wiener
        term; coefficients with weight under WEIGHT_FLOOR of the mean are left out)."""
        n, m = self.n, self.m
        shell = self.shell_index()
        shells = n_shells(n)
        measured = self.weight > 0
        if ssnr is None:
            floor = WEIGHT_FLOOR * float(self.weight[measured].mean()) if measured.any() else 1.0
            spectrum = torch.where(self.weight > floor, self.data / self.weight.clamp(min=floor), torch.zeros_like(self.data))
        else:
            shells = min(shells, ssnr.numel())  # beyond Nyquist no image has data
            inside = shell < shells
            mean_weight = torch.zeros(shells, dtype=torch.float64).index_add_(0, shell[inside], self.weight[inside])
            counts = torch.zeros(shells, dtype=torch.float64).index_add_(0, shell[inside], torch.ones_like(self.weight[inside]))
            mean_weight = mean_weight / counts.clamp(min=1)
            ratio = ssnr.to(torch.float64).clamp(min=1e-12)
            term = torch.full_like(self.weight, math.inf)
            term[inside] = mean_weight[shell[inside]] / ratio[shell[inside]]
            denominator = self.weight + term
            spectrum = torch.where(torch.isfinite(denominator), self.data / denominator, torch.zeros_like(self.data))
        volume = centred_ifftn(spectrum.reshape(m, m, m), (-3, -2, -1)).real
        lo = m // 2 - n // 2
        return volume[lo : lo + n, lo : lo + n, lo : lo + n]


@attrs.frozen
class Reconstruction:
    """A reconstructed map (n, n, n) float32, its two half maps, their FSC per shell, and the SSNR used."""

    volume: torch.Tensor
    halves: tuple[torch.Tensor, torch.Tensor]
    fsc: torch.Tensor
    ssnr: torch.Tensor
    split: tuple[torch.Tensor, torch.Tensor]


def reconstruct(
    images: torch.Tensor,
    rotations: torch.Tensor,
    pixel_size: float,
    shifts: torch.Tensor | None = None,
    ctf: CTFParams | None = None,
    seed: int = 0,
    batch: int = 256,
    oversampling: int = OVERSAMPLING,
    progress: ProgressFactory = silent,
    ctf_premultiplied: bool = False,
    split: tuple[torch.Tensor, torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
) -> Reconstruction:
    """The map of images (N, n, n) with known poses: rotations (N, 3, 3) volume -> image, shifts (N, 2)
    in Å, CTF parameters (N or 1), the images split into two random halves by `seed` (or as `split`
    gives them: two disjoint index sets).

    Each half is inverted without regularisation; their FSC (of the halves times `mask`, an (n, n, n)
    real-space mask, when given) gives the SSNR of each shell; the full map (and each half map, with
    its own SSNR) is then the regularised inversion (module doc). Under `torchrun` each rank inserts
    its share of each half and the inserted data are summed (`cryoinverse.distributed`).
    """
    count, n = images.shape[0], images.shape[-1]
    if count < 2:
        raise ValueError(f"a reconstruction needs at least 2 images (two half sets); got {count}")
    if rotations.shape != (count, 3, 3):
        raise ValueError(f"rotations must be ({count}, 3, 3); got {tuple(rotations.shape)}")
    if split is None:
        split = split_halves(count, seed)
    elif len(split) != 2 or min(len(s) for s in split) < 1:
        raise ValueError("split must be two non-empty sets of image indices")
    mine = [share(indices) for indices in split]
    parts = []
    with progress(sum(len(m) for m in mine), "reconstruct") as update:
        for indices, own in zip(split, mine):
            part = Insertion(n, pixel_size, oversampling)
            for chunk in own.split(batch):
                part.add(images[chunk], rotations[chunk], None if shifts is None else shifts[chunk],
                         None if ctf is None else (ctf if len(ctf) == 1 else ctf[chunk]), ctf_premultiplied)
                update(len(chunk))
            sum_(part.data), sum_(part.weight)
            part.count = len(indices)  # over all ranks
            parts.append(part)
    raw = [p.solve(None) for p in parts]
    if mask is not None:
        raw = [r * mask.to(r) for r in raw]
    curve = fourier_shell_correlation(raw[0], raw[1]).to(torch.float64).clamp(min=0.0, max=FSC_CEILING)
    ssnr_half = curve / (1 - curve)
    whole = parts[0] + parts[1]
    volume = whole.solve(2 * ssnr_half)
    halves = tuple(p.solve(ssnr_half).to(torch.float32) for p in parts)
    return Reconstruction(volume.to(torch.float32), halves, curve.to(torch.float32), (2 * ssnr_half).to(torch.float32), split)
