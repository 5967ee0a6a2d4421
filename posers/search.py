"""`search`: poses of particle images by projection matching over SO(3) and in-plane shifts.

Coarse to fine, as cryoDRGN's pose search does: every rotation of the Hopf grid of level `level`
(`cryoinverse.so3_grid`; 576 at level 1) is projected (Fourier slice), multiplied by each
image's CTF and compared with the image on the Fourier pixels inside a frequency limit; the best
`keep` rotations of each image are then refined `refinements` times on a local cube of rotations
whose step halves each time, while the frequency limit rises from `start_resolution` to
`final_resolution`. For every (image, rotation) the best whole-pixel shift within `shift_range`
comes from one FFT cross-correlation. The score is the Gaussian log-likelihood up to constants,
<image, CTF P> - |CTF P|^2 / 2 on the band, so it serves any noise level.
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import torch

from cryoinverse.hookspecs import hookimpl
from cryoinverse.params import param, positive
from cryoinverse.poses import Poses
from cryoinverse.projection import project_fourier
from cryoinverse.so3_grid import grid_spacing, local_grid, so3_grid


def _band(n: int, pixel_size: float, resolution: float | None, device) -> torch.Tensor:
    """Mask (n, n), fft2 order, of the frequencies up to 1 / resolution (all up to Nyquist for None)."""
    k = torch.fft.fftfreq(n, d=pixel_size, device=device, dtype=torch.float64)
    radius = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    limit = 0.5 / pixel_size if resolution is None else min(1.0 / resolution, 0.5 / pixel_size)
    return radius <= limit


def _shift_window(n: int, max_px: int, device) -> torch.Tensor:
    """Mask (n, n) of circular shifts (fft2 index order) with |dx|, |dy| <= max_px."""
    k = torch.arange(n, device=device)
    d = torch.minimum(k, n - k)
    return (d[:, None] <= max_px) & (d[None, :] <= max_px)


@attrs.define
class Search:
    """Projection matching over an SO(3) grid and in-plane shifts, coarse to fine."""

    name: ClassVar[str] = "search"

    level: int = param(1, help="base Hopf grid level (1: 576 rotations about 30 degrees apart; each level 8x more)", validator=positive)
    refinements: int = param(4, help="local refinement rounds after the grid search, the angular step halving each round", validator=positive)
    keep: int = param(8, help="best rotations per image carried from the grid search into refinement", validator=positive)
    shift_range: float = param(10.0, help="largest in-plane shift searched, Å (each axis)")
    start_resolution: float = param(20.0, help="frequency limit of the grid search, Å", validator=positive)
    final_resolution: float | None = param(None, help="frequency limit of the last refinement, Å (default: Nyquist)", validator=positive)
    batch: int = param(64, help="projections per batch (memory grows with it times the number of images)", validator=positive)

    def estimate(
        self,
        images: torch.Tensor,
        volume: torch.Tensor,
        pixel_size: float,
        ctf: torch.Tensor | None = None,
        init: Poses | None = None,
    ) -> Poses:
        """Poses of `images` (N, n, n) against `volume` (n, n, n), both at `pixel_size` Å.

        `ctf` (N, n, n, fft2 order) multiplies each reference projection; `init` skips the grid
        search and refines locally from the given rotations.
        """
        images = images.to(torch.float64)
        volume = volume.to(torch.float64)
        n_img, n = images.shape[0], images.shape[-1]
        if volume.shape != (n, n, n):
            raise ValueError(f"the volume is {tuple(volume.shape)} but the images are {n}x{n}: a ({n}, {n}, {n}) volume is needed")
        spectra = torch.fft.fft2(images)
        max_px = max(0, int(self.shift_range / pixel_size))
        window = _shift_window(n, max_px, images.device)
        final = self.final_resolution
        resolutions = torch.logspace(
            math.log10(self.start_resolution), math.log10(final if final is not None else 2 * pixel_size), self.refinements + 1
        ).tolist()
        if init is None:
            grid = so3_grid(self.level)
            band = _band(n, pixel_size, resolutions[0], images.device)
            scores, shifts = self._score_shared(spectra, volume, grid, ctf, band, window)
            best = scores.topk(min(self.keep, grid.shape[0]), dim=1)
            rotations = grid[best.indices]  # (N, K, 3, 3)
            step = grid_spacing(self.level) / 2
        else:
            rotations = init.rotations.to(torch.float64)[:, None]
            step = grid_spacing(self.level) / 2 ** (self.refinements + 1)
        score = shift = None
        for k, resolution in enumerate(resolutions[1:]):
            band = _band(n, pixel_size, resolution, images.device)
            candidates = local_grid(rotations.reshape(-1, 3, 3), step).reshape(n_img, -1, 3, 3)
            scores, shifts = self._score_own(spectra, volume, candidates, ctf, band, window)
            keep = 1 if k == len(resolutions) - 2 else min(self.keep, candidates.shape[1])
            top = scores.topk(keep, dim=1)
            rotations = torch.gather(candidates, 1, top.indices[..., None, None].expand(-1, -1, 3, 3))
            score = top.values[:, 0]
            shift = torch.gather(shifts, 1, top.indices[..., None].expand(-1, -1, 2))[:, 0]
            step /= 2
        return Poses(rotations[:, 0], shifts=shift * pixel_size, scores=score)

    def _scores(self, spectra: torch.Tensor, refs: torch.Tensor, ctf: torch.Tensor | None, band: torch.Tensor, window: torch.Tensor):
        """Best score and shift (px, (x, y)) of each image against its references: spectra (N, n, n), refs (N, R, n, n) spectra."""
        n = spectra.shape[-1]
        if ctf is not None:
            refs = refs * ctf.to(refs.dtype)[:, None]
        refs = refs * band
        # <image, ref shifted by s> for every circular shift s at once; ortho scaling by n^2
        cross = torch.fft.ifft2(spectra[:, None] * band * refs.conj()).real
        cross = torch.where(window, cross, torch.full_like(cross, -math.inf))
        flat = cross.reshape(*cross.shape[:2], -1)
        value, index = flat.max(dim=-1)
        norm = refs.abs().square().sum(dim=(-2, -1)) / (2 * n * n)
        dy, dx = index // n, index % n
        dy = torch.where(dy > n // 2, dy - n, dy)
        dx = torch.where(dx > n // 2, dx - n, dx)
        return value - norm, torch.stack([dx, dy], dim=-1).to(torch.float64)

    def _score_shared(self, spectra, volume, rotations, ctf, band, window):
        """Scores (N, R) and shifts (N, R, 2) of every image against the same R rotations."""
        scores, shifts = [], []
        for start in range(0, rotations.shape[0], self.batch):
            proj = project_fourier(volume, rotations[start : start + self.batch])
            refs = torch.fft.fft2(proj)[None].expand(spectra.shape[0], -1, -1, -1)
            s, t = self._scores(spectra, refs, ctf, band, window)
            scores.append(s)
            shifts.append(t)
        return torch.cat(scores, dim=1), torch.cat(shifts, dim=1)

    def _score_own(self, spectra, volume, rotations, ctf, band, window):
        """Scores (N, C) and shifts (N, C, 2) of each image against its own C candidate rotations."""
        n_img, count = rotations.shape[:2]
        per = max(1, self.batch // count)
        scores, shifts = [], []
        for start in range(0, n_img, per):
            rot = rotations[start : start + per]
            proj = project_fourier(volume, rot.reshape(-1, 3, 3)).reshape(rot.shape[0], count, *spectra.shape[-2:])
            s, t = self._scores(spectra[start : start + per], torch.fft.fft2(proj), None if ctf is None else ctf[start : start + per], band, window)
            scores.append(s)
            shifts.append(t)
        return torch.cat(scores), torch.cat(shifts)


@hookimpl
def register_posers(register):
    register(Search)
