"""`search`: poses of particle images by projection matching over SO(3) and in-plane shifts.

Coarse to fine, as cryoDRGN's branch-and-bound search and cryoSPARC's do:

1. Every rotation of the Hopf grid of level `level` (`cryoinverse.so3_grid`; 4608 rotations
   about 15 degrees apart at level 2) is compared with every image on the Fourier coefficients
   inside a low frequency limit, at every shift of a coarse grid within `shift_range`; the best
   `keep` rotations of each image go on.
2. `refinements` rounds: each kept rotation is replaced by its 8 children (a cube of offsets of
   a quarter of the current spacing, so the spacing halves), the shifts by a 3 x 3 grid around
   the image's best shift at half the previous step, and the frequency limit rises from
   `start_resolution` to `final_resolution`; the best ones go on (`keep`, halving each round,
   down to 1).

From given poses (`estimate(..., init=poses)`, as `cryoinverse refine` calls it) the global stage is
skipped: each round searches a 3 x 3 x 3 cube of rotations about the current one, the first at
`local_step` degrees (default half the grid spacing), and the first round's shifts lie within
`local_shift_range` Å of each given shift (default the whole `shift_range`).

Only the coefficients inside the limit are computed (`cryoinverse.fourier_slice`): reference
coefficients are sampled from the volume's padded spectrum, shifts are phase ramps on the image
coefficients and every (image, rotation, shift) score is one entry of a matrix product, so no
image-sized FFT or projection is made per candidate. Shifts are continuous (no whole-pixel
restriction).

Scores, with the image coefficients Y, the CTF c and the reference P on the band:
- `correlation` (default): Re<Y, cP> / (|cP| |Y|), the normalised cross-correlation; free of the
  map's density scale, so it serves maps and images in any units.
- `likelihood`: (Re<Y, cP> - |cP|^2 / 2) / n^2, the white-noise Gaussian log-likelihood up to
  constants; right when the map is in the images' units.
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import torch

from cryoinverse.fourier_slice import SliceSampler, grid_values, half_plane, image_coefficients
from cryoinverse.hookspecs import hookimpl
from cryoinverse.params import non_negative, one_of, param, positive
from cryoinverse.poses import Poses
from cryoinverse.so3_grid import axis_angle_to_matrix, grid_spacing, local_grid, so3_grid


def _children(rotations: torch.Tensor, spacing_degrees: float) -> torch.Tensor:
    """The 8 rotations R exp(delta), delta = (+-1, +-1, +-1) spacing / 4 (radians): (..., 3, 3) -> (..., 8, 3, 3)."""
    q = math.radians(spacing_degrees) / 4
    signs = torch.tensor([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=rotations.dtype, device=rotations.device)
    return rotations[..., None, :, :] @ axis_angle_to_matrix(signs * q)


def _offsets(count: int, step: float, device) -> torch.Tensor:
    """(2 count + 1)^2 shifts (x, y) on a square grid of spacing `step` centred on 0."""
    k = torch.arange(-count, count + 1, dtype=torch.float64, device=device) * step
    y, x = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1)


@attrs.frozen
class ImageSpectrum:
    """Sums over a stack of images, per 2D Fourier shell r = round(|k|) <= n // 2: each image's mean
    power in the shell (orthonormal `fft2`) and its CTF's mean square there, and the image count.

    Sums, so the statistics of a whole stack are those of its parts added (`+`), in any split."""

    power: torch.Tensor
    ctf_power: torch.Tensor
    count: int

    @classmethod
    def of(cls, images: torch.Tensor, ctf: torch.Tensor | None = None) -> "ImageSpectrum":
        """The sums of `images` (N, n, n) with their CTFs (N, n, n, `fft2` order; None: 1)."""
        n = images.shape[-1]
        k = torch.fft.fftfreq(n, dtype=torch.float64) * n
        shell = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2).round().long().reshape(-1)
        reach = n // 2 + 1
        inside = shell < reach
        pixels = torch.zeros(reach, dtype=torch.float64).index_add_(0, shell[inside], torch.ones(int(inside.sum()), dtype=torch.float64))

        def shell_sums(values: torch.Tensor) -> torch.Tensor:
            flat = values.reshape(values.shape[0], -1)[:, inside].sum(0)
            return torch.zeros(reach, dtype=torch.float64).index_add_(0, shell[inside], flat) / pixels.clamp(min=1)

        power = shell_sums(torch.fft.fft2(images.to(torch.float64), norm="ortho").abs().square())
        if ctf is None:
            ctf_power = torch.full((reach,), float(images.shape[0]), dtype=torch.float64)
        else:
            ctf_power = shell_sums(ctf.to(torch.float64).square())
        return cls(power, ctf_power, int(images.shape[0]))

    def __add__(self, other: "ImageSpectrum") -> "ImageSpectrum":
        if self.power.shape != other.power.shape:
            raise ValueError(f"image spectra of {self.power.numel()} and {other.power.numel()} shells cannot be added")
        return ImageSpectrum(self.power + other.power, self.ctf_power + other.ctf_power, self.count + other.count)


def matched_spectrum(volume: torch.Tensor, images: torch.Tensor | ImageSpectrum, ctf: torch.Tensor | None = None) -> torch.Tensor:
    """`volume` with each Fourier shell rescaled so its projections' power matches the images' signal power.

    By the Fourier-slice theorem an image's orthonormal 2D coefficient at |k| = r has power
    c^2 n S(r) + noise for a map of shell power S; the noise is taken as the images' lowest
    shell power over the outer half of the shells (zero for clean images). `images` is a stack
    (N, n, n) with its `ctf`, or the `ImageSpectrum` of one (a whole stack searched in parts).
    """
    from cryoinverse.fourier import expand_shells, fftn, ifftn
    from cryoinverse.spectra import radial_power

    n = volume.shape[-1]
    spectrum = images if isinstance(images, ImageSpectrum) else ImageSpectrum.of(images, ctf)
    reach = n // 2 + 1
    if spectrum.power.numel() != reach:
        raise ValueError(f"the image spectrum has {spectrum.power.numel()} shells; a {n}^3 map needs {reach}")
    p_img = spectrum.power / spectrum.count
    c2_mean = spectrum.ctf_power / spectrum.count
    noise = float(p_img[reach // 2 :].min())
    target = (p_img - noise).clamp(min=0) / (n * c2_mean.clamp(min=1e-6))
    own = radial_power(volume.to(torch.float64))
    gain = torch.zeros_like(own)
    floor = 1e-12 * float(own.max())
    gain[:reach] = (target / own[:reach].clamp(min=floor)).sqrt()
    return ifftn(fftn(volume.to(torch.float64)) * expand_shells(gain, n))


@attrs.define
class Search:
    """Projection matching over an SO(3) grid and in-plane shifts, coarse to fine."""

    name: ClassVar[str] = "search"

    level: int = param(2, help="Hopf grid level of the global search (1: 576 rotations 30 degrees apart; 2: 4608, 15 degrees; each level 8x more)", validator=positive)
    refinements: int = param(4, help="local refinement rounds after the global search, each halving the angular spacing", validator=non_negative)
    keep: int = param(8, help="best rotations per image carried into the first refinement round (halving each round, down to 1)", validator=positive)
    shift_range: float = param(10.0, help="largest in-plane shift searched, Å (each axis)", validator=non_negative)
    shift_step: float | None = param(None, help="shift step of the global search, Å (default: an eighth of start_resolution)", validator=positive)
    start_resolution: float | None = param(
        None, help="frequency limit of the global search, Å (default: from the grid spacing and the box, about 13 Å for a 128 Å box at level 2)", validator=positive
    )
    final_resolution: float | None = param(None, help="frequency limit of the last refinement round, Å (default: Nyquist)", validator=positive)
    score: str = param("correlation", help="correlation (free of the map's density scale) or likelihood (white-noise Gaussian, map in image units)", validator=one_of("correlation", "likelihood"))
    match_spectrum: bool = param(
        True, help="correlation score: rescale the map's shells so its projections have the images' signal spectrum (blurred, sharpened or regularised maps then score as well as the true one)"
    )
    memory_gb: float = param(1.0, help="rough bound on the working memory of one batch of images, GB", validator=positive)
    local_step: float | None = param(None, help="from given poses: angular step of the first local round, degrees (default: half the grid spacing)", validator=positive)
    local_shift_range: float | None = param(
        None, help="from given poses: shifts searched within this many Å of each given shift in the first round (default: all of shift_range)", validator=non_negative
    )

    _stack: ImageSpectrum | None = attrs.field(default=None, init=False, repr=False)

    def stack_statistics(self, images: torch.Tensor, ctf: torch.Tensor | None = None) -> ImageSpectrum:
        """What the matched spectrum needs of `images` (N, n, n) and their CTFs: added over a stack's parts."""
        return ImageSpectrum.of(images, ctf)

    def with_stack_statistics(self, statistics: ImageSpectrum) -> "Search":
        """This search, matching the map's spectrum to the whole stack's `statistics` rather than to the
        images of each `estimate` call, so the poses of a stack do not depend on how it is split."""
        poser = attrs.evolve(self)
        poser._stack = statistics
        return poser

    def estimate(
        self,
        images: torch.Tensor,
        volume: torch.Tensor,
        pixel_size: float,
        ctf: torch.Tensor | None = None,
        init: Poses | None = None,
    ) -> Poses:
        """Poses of `images` (N, n, n) against `volume` (n, n, n), both at `pixel_size` Å.

        `ctf` (N, n, n, `torch.fft.fft2` order) multiplies each reference; `init` skips the
        global search and refines locally around the given poses (about +-1 global spacing).
        """
        n_img, n = images.shape[0], images.shape[-1]
        if images.ndim != 3 or images.shape[-2] != n:
            raise ValueError(f"images must be a stack (N, n, n) of square images; got {tuple(images.shape)}")
        if volume.shape != (n, n, n):
            raise ValueError(f"the volume is {tuple(volume.shape)} but the images are {n}x{n}: a ({n}, {n}, {n}) volume is needed")
        if ctf is not None and tuple(ctf.shape) != (n_img, n, n):
            raise ValueError(f"ctf must be ({n_img}, {n}, {n}) in torch.fft.fft2 order; got {tuple(ctf.shape)}")
        if init is not None and len(init) != n_img:
            raise ValueError(f"init holds {len(init)} poses for {n_img} images")
        if self.match_spectrum and self.score == "correlation":
            volume = matched_spectrum(volume, self._stack if self._stack is not None else ImageSpectrum.of(images, ctf))
        sampler = SliceSampler(volume)
        resolutions = self.resolutions(n, pixel_size)
        spacing = grid_spacing(self.level)
        coarse_step = self.shift_step if self.shift_step is not None else resolutions[0] / 8
        count = math.ceil(self.shift_range / coarse_step - 1e-9) if self.shift_range > 0 else 0
        coarse_step = self.shift_range / count if count else 0.0
        limit = self.shift_range / pixel_size
        local_count = count
        if self.local_shift_range is not None and count:
            local_count = min(count, math.ceil(self.local_shift_range / coarse_step - 1e-9))
        rotations, scores, shifts = [], [], []
        for sl in self._batches(n_img, n, (2 * count + 1) ** 2):
            imgs = images[sl]
            c = None if ctf is None else ctf[sl]
            if init is None:
                rot, best_shift = self._global(sampler, imgs, c, pixel_size, resolutions[0], count, coarse_step / pixel_size)
                candidates = lambda r, k: _children(r, spacing / 2**k)  # noqa: E731
            else:
                rot = init.rotations[sl].to(torch.float64)[:, None]
                best_shift = init.shifts[sl].to(torch.float64) / pixel_size
                first = self.local_step if self.local_step is not None else spacing / 2
                candidates = lambda r, k: local_grid(r.reshape(-1, 3, 3), first / 2**k).reshape(*r.shape[:2], -1, 3, 3)  # noqa: E731
            score = None
            step = coarse_step / pixel_size / 2 if count else 0.5
            for k, resolution in enumerate(resolutions[1:]):
                cand = candidates(rot, k).reshape(rot.shape[0], -1, 3, 3)
                # from given poses the first round also searches the whole shift range
                offsets = _offsets(local_count, coarse_step / pixel_size, images.device) if (init is not None and k == 0) else _offsets(1, step, images.device)
                keep = max(1, self.keep >> (k + 1))
                rot, score, best_shift = self._local(sampler, imgs, c, pixel_size, resolution, cand, best_shift, offsets, limit, keep)
                step /= 2
            if score is None:  # no refinement: score the global result at its own limit
                rot, score, best_shift = self._local(sampler, imgs, c, pixel_size, resolutions[0], rot[:, :1], best_shift, _offsets(0, 0.0, images.device), limit, 1)
            rotations.append(rot[:, 0])
            scores.append(score)
            shifts.append(best_shift * pixel_size)
        return Poses(torch.cat(rotations), shifts=torch.cat(shifts), scores=torch.cat(scores))

    def resolutions(self, n: int, pixel_size: float) -> list[float]:
        """Frequency limits (Å) of the global search and of each refinement round."""
        nyquist = 2.0 * pixel_size
        final = max(self.final_resolution or nyquist, nyquist)
        start = self.start_resolution
        if start is None:
            # an angular error of one spacing moves the particle's rim (~0.4 box from the centre) by
            # about 0.4 box * spacing: the limit keeps that within one resolution element (measured on
            # held-out 128 Å boxes: 23 Å lost 16% of the images to wrong grid cells, 12-15 Å none)
            start = 0.4 * math.radians(grid_spacing(self.level)) * n * pixel_size
        start = max(start, final)
        return torch.logspace(math.log10(start), math.log10(final), self.refinements + 1, dtype=torch.float64).tolist()

    def _batches(self, n_img: int, n: int, shifts: int):
        """Slices of images processed together, sized by `memory_gb` for the larger of the two stages (`shifts` in all)."""
        per_image = self.bytes_per_image(n, shifts)
        size = max(1, int(self.memory_gb * 2**30 / per_image))
        for start in range(0, n_img, size):
            yield slice(start, min(n_img, start + size))

    def bytes_per_image(self, n: int, shifts: int) -> int:
        """Working memory of one n x n image with `shifts` coarse shifts in all: the global stage's float32
        score tables (rotations x shifts, three of them alive at once) or the refinement's candidate coefficients."""
        rotations = 12 * 4**self.level * 6 * 2**self.level
        band = math.pi * (n / 2) ** 2 / 2  # the widest half disc
        return int(4 * max(rotations * shifts * 3, 8 * self.keep * band * 8))

    def _terms(self, imgs, ctf, pixel_size, resolution):
        """Band frequencies, weights, image coefficients, CTF on the band (or None) and |Y|."""
        n = imgs.shape[-1]
        freqs, weights = half_plane(n, n * pixel_size / resolution, imgs.device)
        # frequency 0 (the total mass) is the same for every pose: it would only dilute the scores
        keep = (freqs != 0).any(dim=-1)
        freqs, weights = freqs[keep], weights[keep]
        y = image_coefficients(imgs.to(torch.float64), freqs)
        c = None if ctf is None else grid_values(ctf.to(torch.float64), freqs)
        y_norm = (weights * y.abs().square()).sum(-1).sqrt()
        return freqs, weights, y, c, y_norm

    @staticmethod
    def _shifted(y, freqs, shifts_px, n):
        """Coefficients of the images moved back by each shift: y (B, K), shifts (B, T, 2) px -> (B, T, K)."""
        phase = (2 * math.pi / n) * (shifts_px[..., None, :] * freqs.to(shifts_px.dtype)).sum(-1)
        return y[:, None, :] * torch.polar(torch.ones_like(phase), phase)

    def _finish(self, cross, norm, y_norm, n):
        """Scores from cross terms Re<Y, cP> (B, T, R) and reference norms |cP|^2 (B, R)."""
        if self.score == "correlation":
            return cross / (norm.clamp(min=1e-30).sqrt()[:, None, :] * y_norm.clamp(min=1e-30)[:, None, None])
        return (cross - norm[:, None, :] / 2) / (n * n)

    def _global(self, sampler, imgs, ctf, pixel_size, resolution, count, step_px):
        """Best `keep` grid rotations (B, keep, 3, 3) and each image's best shift (B, 2) px."""
        n = imgs.shape[-1]
        grid = so3_grid(self.level).to(imgs.device)
        freqs, weights, y, c, y_norm = self._terms(imgs, ctf, pixel_size, resolution)
        refs = sampler.sample(grid, freqs)  # (R, K) complex
        offsets = _offsets(count, step_px, imgs.device)  # (T, 2)
        a = self._shifted(y, freqs, offsets[None].expand(y.shape[0], -1, -1), n)  # (B, T, K)
        if c is not None:
            a = a * c[:, None, :]
        a = a * weights
        # Re(conj(a) P) = Re a Re P + Im a Im P, as one real matrix product
        lhs = torch.cat([a.real, a.imag], dim=-1).to(torch.float32)
        rhs = torch.cat([refs.real, refs.imag], dim=-1).to(torch.float32)
        cross = lhs @ rhs.T  # (B, T, R)
        power = refs.abs().square().to(torch.float32)  # (R, K)
        cw = weights.to(torch.float32) * (c.square().to(torch.float32) if c is not None else 1.0)
        norm = (cw if c is not None else cw[None].expand(y.shape[0], -1)) @ power.T  # (B, R)
        scores = self._finish(cross, norm, y_norm.to(torch.float32), n)
        best, t = scores.max(dim=1)  # over shifts: (B, R)
        top = best.topk(min(self.keep, grid.shape[0]), dim=1)
        first = torch.gather(t, 1, top.indices[:, :1])[:, 0]
        return grid[top.indices], offsets[first]

    def _local(self, sampler, imgs, ctf, pixel_size, resolution, candidates, centre, offsets, limit, keep):
        """Best `keep` of each image's own candidates (B, C, 3, 3), shifts from `centre` (B, 2) + offsets (T, 2) px."""
        n = imgs.shape[-1]
        freqs, weights, y, c, y_norm = self._terms(imgs, ctf, pixel_size, resolution)
        refs = sampler.sample(candidates, freqs)  # (B, C, K)
        shifts = (centre[:, None, :] + offsets[None]).clamp(-limit, limit)  # (B, T, 2)
        a = self._shifted(y, freqs, shifts, n)
        if c is not None:
            a = a * c[:, None, :]
        a = a * weights
        lhs = torch.cat([a.real, a.imag], dim=-1).to(torch.float32)  # (B, T, 2K)
        rhs = torch.cat([refs.real, refs.imag], dim=-1).to(torch.float32)  # (B, C, 2K)
        cross = lhs @ rhs.transpose(-1, -2)  # (B, T, C)
        cw = weights.to(torch.float32) * (c.square().to(torch.float32) if c is not None else 1.0)
        norm = (refs.abs().square().to(torch.float32) * cw[..., None, :]).sum(-1)  # (B, C)
        scores = self._finish(cross, norm, y_norm.to(torch.float32), n)
        best, t = scores.max(dim=1)  # (B, C)
        top = best.topk(min(keep, candidates.shape[1]), dim=1)
        rot = torch.gather(candidates, 1, top.indices[..., None, None].expand(-1, -1, 3, 3))
        first = torch.gather(t, 1, top.indices[:, :1])[:, 0]
        best_shift = torch.gather(shifts, 1, first[:, None, None].expand(-1, 1, 2))[:, 0]
        return rot, top.values[:, 0].to(torch.float64), best_shift


@hookimpl
def register_posers(register):
    register(Search)
