"""A map from particle images alone: projection matching from random poses, the frequency limit rising.

Start: every image gets a random rotation, and their reconstruction (`cryoinverse.reconstruct`),
a blob, is the first map. Then each iteration
1. works on images Fourier-cropped to a box whose Nyquist frequency is about twice the current
   frequency limit (small boxes while the limit is low: most of the time goes there),
2. finds every image's pose against the current map (`search`: a global Hopf grid, local
   refinement, shifts), its frequency limit the iteration's resolution,
3. reconstructs the map from those poses with their CTFs (Wiener term from the two half sets),
   low-passes it at the iteration's resolution and masks it with a soft sphere,
and the resolution falls geometrically from `start_resolution` to `resolution` over `iterations`.
Early iterations see a random subset of the images (`batch` images), so one unlucky start does
not fix every image's pose at once; `starts` independent starts run the first `trial_iterations`
each and the one whose images agree best with its map (the median search score) goes on. The
last iteration uses every image, and the map is reconstructed at the images' own box.

With `classes` K > 1 every start holds K maps (each from its own random poses); each image is
searched against every map and goes, with that pose, to the class whose map it fits best (its
search score), and each class is reconstructed from its own images (hard assignment; a class left
with under 1% of the images keeps its map). The result's map is the largest class's.

With a `regularize` callable (a learned prior's flow posterior on the two half maps of each class,
`cryoinverse.refine.prior_regularizer`), the maps of the iterations after the start is chosen, and
the final map, are the prior's restoration rather than the Wiener-regularised inversion alone.

Projections cannot tell a map from its mirror image: the result has either hand (and any
orientation). Compare it with a known map after alignment over both hands (`cryoinverse align
--allow-mirror`, `hand_aware_pose_errors`).
"""

from __future__ import annotations

import math
from typing import Callable

import attrs
import torch

from .ctf import CTFParams, ctf_grid
from .distributed import gather_rows, share
from .fourier import fftn, ifftn, shell_index
from .params import param, positive
from .particles import resample_images
from .poses import Poses, rotation_errors
from .progress import ProgressFactory, silent
from .reconstruct import reconstruct
from .rotations import random_rotations

__all__ = ["AbInitio", "AbInitioResult", "run_abinitio", "hand_aware_pose_errors", "MIRROR"]

MIRROR = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
"""J: images of a map V at poses R are those of its mirror V(J r) at poses J R J (a projection sums over z)."""

START_SEED = 0x5EEDAB10
MIN_BOX = 24  # pixels: the working box never goes below this (a coarse Hopf grid needs some detail)


@attrs.frozen
class AbInitio:
    """Settings of an ab initio reconstruction (all resolutions in Å)."""

    resolution: float = param(15.0, help="frequency limit of the last iteration, Å", validator=positive)
    start_resolution: float = param(35.0, help="frequency limit of the first iteration, Å", validator=positive)
    iterations: int = param(12, help="iterations from start_resolution to resolution", validator=positive)
    starts: int = param(6, help="independent random starts; the best after trial_iterations goes on", validator=positive)
    trial_iterations: int = param(9, help="iterations each start runs before the best is kept (the search scores tell good starts from bad ones only once the limit nears 20 Å)", validator=positive)
    batch: int = param(400, help="images per iteration before the last ones (a random subset each time; all when fewer)", validator=positive)
    level: int = param(1, help="Hopf grid level of each iteration's global search (1: 576 rotations, 30 degrees)", validator=positive)
    refinements: int = param(3, help="local refinement rounds of each search (each halves the angular step)", validator=positive)
    shift_range: float = param(8.0, help="largest in-plane shift searched, Å", validator=positive)
    mask_radius: float = param(0.45, help="radius of the soft spherical mask, as a fraction of the box", validator=positive)
    seed: int = param(0, help="random seed of the starts and the image subsets")
    memory_gb: float = param(1.0, help="rough bound on the working memory of one batch of the pose search, GB", validator=positive)
    classes: int = param(1, help="maps made at once; each image goes to the class whose map it fits best (its search score)", validator=positive)

    def schedule(self) -> list[float]:
        """The frequency limit of each iteration, Å: geometric from start_resolution to resolution."""
        start = max(self.start_resolution, self.resolution)
        if self.iterations == 1:
            return [self.resolution]
        ratio = (self.resolution / start) ** (1.0 / (self.iterations - 1))
        return [start * ratio**i for i in range(self.iterations)]


@attrs.frozen
class AbInitioResult:
    """The map (n, n, n) float32 at the images' pixel size (the largest class's), every image's pose, the
    history of the iterations, the start kept, and with classes every class's map (K, n, n, n) and every
    image's class (N,)."""

    volume: torch.Tensor
    poses: Poses
    history: list[dict]
    start: int
    class_volumes: torch.Tensor | None = None
    classes: torch.Tensor | None = None


def working_pixel(pixel_size: float, n: int, resolution: float) -> tuple[float, int]:
    """(pixel size, box) for work at `resolution` Å: Nyquist at resolution / 2, box at least MIN_BOX, never finer than the images."""
    extent = n * pixel_size
    box = max(MIN_BOX, math.ceil(extent / (resolution / 4.0)))
    box = min(n, box + (box % 2))
    return extent / box, box


def soft_sphere(n: int, radius: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A sphere of `radius` (fraction of the box) with a raised-cosine edge 0.05 of the box wide, (n, n, n)."""
    c = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    distance = torch.sqrt(x * x + y * y + z * z) / n
    soft = torch.clamp((radius - distance) / 0.05, 0.0, 1.0)
    return (0.5 - 0.5 * torch.cos(math.pi * soft)).to(dtype)


def lowpass(volume: torch.Tensor, pixel_size: float, resolution: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """`volume` low-passed at `resolution` Å (cosine edge one shell wide), float64; its shells times `weight` (per shell) when given."""
    n = volume.shape[-1]
    r = shell_index(n, volume.device).to(torch.float64)
    edge = torch.clamp((r - n * pixel_size / resolution) + 0.5, 0.0, 1.0)
    gain = 0.5 * (1 + torch.cos(math.pi * edge))
    if weight is not None:
        shells = r.round().long().clamp(max=weight.numel() - 1)
        gain = gain * weight.to(torch.float64)[shells]
    return ifftn(fftn(volume.to(torch.float64)) * gain)


def _lowpass_and_mask(volume: torch.Tensor, pixel_size: float, resolution: float, radius: float) -> torch.Tensor:
    """`volume` low-passed at `resolution` Å and multiplied by a soft sphere of `radius` (fraction of the box)."""
    return lowpass(volume, pixel_size, resolution) * soft_sphere(volume.shape[-1], radius)


def run_abinitio(
    images: torch.Tensor,
    pixel_size: float,
    ctf: CTFParams | None = None,
    settings: AbInitio = AbInitio(),
    progress: ProgressFactory = silent,
    echo: Callable[[str], None] = lambda line: None,
    state: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    regularize: Callable | None = None,
) -> AbInitioResult:
    """A map and poses from `images` (N, n, n) at `pixel_size` Å with their CTFs (N or 1), from random poses.

    `state` (a dict `checkpoint` was given) continues a stopped run: the iterations in it are not
    run again, and the rest run as they would have (each iteration's randomness comes from the
    seed and its number alone). `checkpoint(state)` is called after every iteration. Under `torchrun`
    each rank searches and inserts its share of the images, and every rank gets every pose.
    `regularize(h1, h2, pixel_size)` (e.g. `cryoinverse.refine.prior_regularizer("cryofm")`) makes each
    class's map, from the iteration after the start is chosen on, the mean of what it returns for the
    class's two half maps (a learned prior's flow posterior) instead of their Wiener-regularised inversion.
    """
    from .posers.search import Search

    count, n = images.shape[0], images.shape[-1]
    if count < 4:
        raise ValueError(f"ab initio needs at least 4 images; got {count}")
    classes = settings.classes
    schedule = settings.schedule()
    trials = min(settings.trial_iterations, len(schedule))
    state = dict(state or {})
    history: list[dict] = list(state.get("history", []))
    maps: dict[int, torch.Tensor] = {int(k): v for k, v in state.get("maps", {}).items()}
    poses: dict[int, Poses] = dict(state.get("poses", {}))
    labels: dict[int, torch.Tensor] = {int(k): v for k, v in state.get("labels", {}).items()}
    done = len(history)
    cache: dict[tuple[float, int], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def working(resolution: float) -> tuple[float, int, torch.Tensor, torch.Tensor | None]:
        pixel, box = working_pixel(pixel_size, n, resolution)
        key = (round(pixel, 6), box)
        if key not in cache:
            cache.clear()
            small = resample_images(images.to(torch.float64), pixel_size, pixel, box).to(torch.float32)
            filters = None if ctf is None else ctf_grid(ctf, box, pixel).expand(count, box, box).to(torch.float32)
            cache[key] = (small, filters)
        return (pixel, box, *cache[key])

    def subset(iteration: int, start: int, final: bool) -> torch.Tensor:
        if final or settings.batch >= count:
            return torch.arange(count)
        g = torch.Generator().manual_seed(START_SEED + 1 + settings.seed * 1_000_003 + iteration * 101 + start)
        return torch.randperm(count, generator=g)[: settings.batch].sort().values

    def ctf_of(indices: torch.Tensor) -> CTFParams | None:
        return None if ctf is None else (ctf if len(ctf) == 1 else ctf[indices])

    def invert(imgs, rotations, shifts, indices, pixel, seed, prior: bool) -> torch.Tensor:
        """One class's map from its images: the Wiener inversion, or the prior's restoration of its halves."""
        result = reconstruct(imgs, rotations, pixel, shifts, ctf_of(indices), seed=seed)
        if prior and regularize is not None:
            h1, h2 = regularize(result.halves[0].to(torch.float64), result.halves[1].to(torch.float64), pixel)
            return 0.5 * (h1 + h2)
        return result.volume

    def iterate(iteration: int, start: int, volumes: torch.Tensor) -> tuple[torch.Tensor, Poses, torch.Tensor, float, list[int]]:
        resolution = schedule[iteration]
        final = iteration == len(schedule) - 1
        pixel, box, small, filters = working(resolution)
        take = subset(iteration, start, final)
        search = Search(level=settings.level, refinements=settings.refinements, shift_range=settings.shift_range,
                        start_resolution=max(resolution, 2.5 * pixel), final_resolution=max(resolution, 2 * pixel), memory_gb=settings.memory_gb)
        chosen = None if filters is None else filters[take]
        search = search.with_stack_statistics(search.stack_statistics(small[take], chosen))  # the same on every rank
        mine = share(take)  # under torchrun: this rank's images
        found = []
        for k in range(classes):
            part = search.estimate(small[mine], volumes[k].to(torch.float32), pixel, None if filters is None else filters[mine])
            found.append(Poses(*(gather_rows(t.to(torch.float64), len(take)) for t in (part.rotations, part.shifts, part.scores))))
        scores = torch.stack([f.scores for f in found])  # (K, T)
        label = scores.argmax(dim=0)
        rows = torch.arange(len(take))
        best = Poses(torch.stack([f.rotations for f in found])[label, rows], torch.stack([f.shifts for f in found])[label, rows],
                     scores[label, rows])
        new, sizes = [], []
        for k in range(classes):
            members = torch.nonzero(label == k)[:, 0]
            sizes.append(len(members))
            if len(members) < max(4, 0.01 * len(take)):  # too few images to reconstruct: the class keeps its map
                new.append(volumes[k].to(torch.float64))
                continue
            volume = invert(small[take][members], best.rotations[members], best.shifts[members], take[members], pixel,
                            settings.seed + iteration, prior=iteration >= trials)
            new.append(_lowpass_and_mask(volume, pixel, resolution, settings.mask_radius))
        return torch.stack(new), best, label, float(best.scores.median()), sizes

    def initial(start: int) -> torch.Tensor:
        pixel, box, small, _ = working(schedule[0])
        out = []
        for k in range(classes):
            # seeds of their own: a stack simulated from the same seed must not start at its true poses
            g = torch.Generator().manual_seed(START_SEED + settings.seed * 7919 + start + 104_729 * k)
            rotations = random_rotations(count, g)
            result = reconstruct(small, rotations, pixel, None, ctf, seed=settings.seed)
            out.append(_lowpass_and_mask(result.volume, pixel, schedule[0], settings.mask_radius))
        return torch.stack(out)

    def resize(volumes: torch.Tensor, resolution: float) -> torch.Tensor:
        """The maps on the working grid of `resolution` (Fourier crop or pad)."""
        from .resample import resample_tensor

        _, box = working_pixel(pixel_size, n, resolution)
        return volumes if volumes.shape[-1] == box else resample_tensor(volumes.to(torch.float64), (box, box, box))

    total = trials * settings.starts + (len(schedule) - trials)
    best = state.get("start")
    with progress(total, "ab initio") as update:
        update(min(done, total))
        for iteration in range(len(schedule)):
            trial = iteration < trials
            starts = range(settings.starts) if trial else [best]
            if iteration < done:
                continue
            scores, sizes = {}, {}
            for s in starts:
                volumes = maps[s] if s in maps else initial(s)
                volumes, found, label, score, size = iterate(iteration, s, resize(volumes, schedule[iteration]))
                maps[s], poses[s], labels[s], scores[s], sizes[s] = volumes, found, label, score, size
                update(1)
            if trial and iteration == trials - 1:
                best = max(scores, key=scores.get)
                maps, poses, labels = {best: maps[best]}, {best: poses[best]}, {best: labels[best]}
            entry = {"iteration": iteration + 1, "resolution_A": schedule[iteration], "box": int(maps[next(iter(maps))].shape[-1]),
                     "score_median": {str(k): v for k, v in scores.items()}}
            if classes > 1:
                entry["class_sizes"] = {str(k): v for k, v in sizes.items()}
            history.append(entry)
            echo(f"iteration {iteration + 1}/{len(schedule)}: {schedule[iteration]:.1f} Å, box {entry['box']}, median score "
                 + ", ".join(f"{v:.3f}" for v in scores.values())
                 + ("" if classes == 1 else "; classes " + ", ".join("/".join(str(c) for c in v) for v in sizes.values())))
            if checkpoint is not None:
                checkpoint({"history": history, "maps": maps, "poses": poses, "labels": labels, "start": best})
    final_poses, label = poses[best], labels[best]
    volumes = []
    for k in range(classes):
        members = torch.nonzero(label == k)[:, 0]
        if len(members) < 2:
            volumes.append(torch.zeros(n, n, n, dtype=torch.float64))
            continue
        whole = invert(images[members], final_poses.rotations[members], final_poses.shifts[members], members, pixel_size,
                       settings.seed, prior=True)
        volumes.append(_lowpass_and_mask(whole, pixel_size, settings.resolution * 0.8, settings.mask_radius))
    volumes = torch.stack(volumes).to(torch.float32)
    largest = int(torch.bincount(label, minlength=classes).argmax())
    return AbInitioResult(volumes[largest], final_poses, history, int(best),
                          volumes if classes > 1 else None, label if classes > 1 else None)


def hand_aware_pose_errors(estimated: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Rotation errors (degrees) after the best global rotation, over both hands: the estimated poses
    as they are, or as J R J (the mirror map's poses); returns the errors of the better and whether it was the mirror."""
    plain = rotation_errors(estimated, truth, True)
    mirrored = rotation_errors(MIRROR @ estimated.to(torch.float64) @ MIRROR, truth, True)
    return (mirrored, True) if float(mirrored.median()) < float(plain.median()) else (plain, False)
