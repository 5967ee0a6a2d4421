"""Gold-standard refinement: poses and a map from particle images and a starting map.

The images are split into two half sets that never meet (RELION's gold standard): each half has its
own map, both starting from the initial map low-passed at `initial_resolution`, so beyond that
frequency the two maps share nothing and their FSC measures the resolution honestly. Each iteration

1. makes each half's reference: its map low-passed at the current frequency limit, its shells
   weighted by sqrt(2 FSC / (1 + FSC)) of the halves (the expected correlation of the full map
   with the truth), or replaced by what `regularize` makes of it (a learned prior, below), and
   multiplied by a soft spherical mask;
2. searches every image's pose locally around its current one against its own half's reference
   (`search` from given poses: `rounds` rounds of 27 rotations, the angular step halving from the
   iteration's `step`, shifts within `local_shift_range` Å first), on images Fourier-cropped to a
   Nyquist of half the limit;
3. reconstructs each half from its own images at the images' box (`cryoinverse.reconstruct`: the
   Wiener term from the halves' FSC inside the mask);
   In iteration `global_iteration` (the second: its limit is the first the halves' FSC set) a
   global search (Hopf grid of level 2, refined to the same limit, the same spectrum statistics)
   runs beside the local one and each image keeps the better-scoring pose: images an earlier step
   placed far off are out of a local search's reach (measured on 1000 images of a held-out chain
   at SNR 1 from its ab initio poses: median error 5.7° without it, 2.9° with it);
4. sets the next frequency limit from that FSC (the resolution where it falls below 0.143, two
   shells further on so the limit can rise) and halves the step, down to the step that moves the
   particle's rim (the mask radius) by a quarter of the resolution.

It stops when the resolution has not improved for `patience` iterations with the step at its floor,
or after `iterations`. The final map is the regularised inversion of all images, its shells weighted
by the SSNR from the halves' FSC (2 FSC / (1 - FSC)): FSC-weighted, so shells the halves do not
share go to zero.

`regularize(h1, h2, pixel_size)` returns the two references made from the half maps (each from its
own half only, so the halves stay independent); `prior_regularizer("cryofm")` is the flow
posterior of a learned prior with the noise of each half estimated from the two (as `run` with
half maps does), as RELION 5's Blush regularises refinement with a denoiser. The FSC that sets the
limit is always that of the unregularised reconstructions.
"""

from __future__ import annotations

import math
from typing import Callable

import attrs
import torch

from .abinitio import lowpass, soft_sphere, working_pixel
from .ctf import CTFParams, ctf_grid
from .distributed import gather_rows, share
from .metrics import resolution_at
from .params import non_negative, param, positive
from .particles import resample_images
from .poses import Poses
from .progress import ProgressFactory, silent
from .reconstruct import Reconstruction, reconstruct, split_halves
from .resample import resample_tensor
from .rotations import geodesic_distance

__all__ = ["Refinement", "RefinementResult", "run_refinement", "prior_regularizer", "soft_sphere"]

Regularizer = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
THRESHOLD = 0.143  # gold-standard FSC threshold of the resolution


@attrs.frozen
class Refinement:
    """Settings of a gold-standard refinement (resolutions in Å, angles in degrees)."""

    initial_resolution: float = param(30.0, help="low-pass of the initial map, Å: the two half maps share nothing beyond it", validator=positive)
    iterations: int = param(12, help="most iterations (it stops earlier when the resolution stops improving)", validator=positive)
    step: float = param(3.75, help="angular step of the first local round of the first iteration, degrees (halving each iteration)", validator=positive)
    rounds: int = param(3, help="local search rounds of each iteration, the step halving each round", validator=positive)
    shift_range: float = param(8.0, help="largest in-plane shift, Å (absolute)", validator=positive)
    local_shift_range: float = param(3.0, help="shifts searched within this many Å of each image's current shift", validator=non_negative)
    mask_radius: float = param(0.45, help="radius of the soft spherical mask, as a fraction of the box", validator=positive)
    global_iteration: int = param(2, help="iteration whose local search is joined by a global one (each image keeps the better-scoring pose; 0: none)", validator=non_negative)
    patience: int = param(2, help="iterations without a better resolution (step at its floor) before it stops", validator=positive)
    seed: int = param(0, help="random seed of the split into half sets")

    def step_floor(self, resolution: float, box_extent: float) -> float:
        """The finest useful first step at `resolution` Å: it moves the mask's rim by a quarter of the resolution."""
        rim = self.mask_radius * box_extent
        return math.degrees(0.25 * resolution / rim)


@attrs.frozen
class RefinementResult:
    """The FSC-weighted map (n, n, n) float32, the two half maps, their FSC, every image's pose, the split and the history."""

    volume: torch.Tensor
    halves: tuple[torch.Tensor, torch.Tensor]
    fsc: torch.Tensor
    poses: Poses
    split: tuple[torch.Tensor, torch.Tensor]
    history: list[dict]
    resolution: float


def fsc_weight(curve: torch.Tensor) -> torch.Tensor:
    """sqrt(2 FSC / (1 + FSC)) per shell: the expected correlation with the truth of a map of both halves."""
    f = curve.to(torch.float64).clamp(min=0.0, max=1.0)
    return torch.sqrt(2 * f / (1 + f))


def _limit(curve: torch.Tensor, pixel_size: float, n: int, floor: float) -> tuple[float, float]:
    """(resolution at FSC 0.143, next frequency limit two shells further), Å, neither finer than `floor`."""
    resolution = max(floor, resolution_at(curve, pixel_size, THRESHOLD, n))
    shell = n * pixel_size / resolution
    return resolution, max(floor, n * pixel_size / (shell + 2))


def run_refinement(
    images: torch.Tensor,
    pixel_size: float,
    initial_map: torch.Tensor,
    poses: Poses,
    ctf: CTFParams | None = None,
    settings: Refinement = Refinement(),
    regularize: Regularizer | None = None,
    progress: ProgressFactory = silent,
    echo: Callable[[str], None] = lambda line: None,
    state: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    memory_gb: float = 1.0,
) -> RefinementResult:
    """Refine `poses` of `images` (N, n, n) at `pixel_size` Å with their CTFs (N or 1) and a map from
    `initial_map` (n, n, n, on the images' grid, in the frame of `poses`).

    `state` (a dict `checkpoint` was given) continues a stopped run after its last finished
    iteration; `checkpoint(state)` is called after every iteration. Under `torchrun` each rank
    searches and inserts its share of the images (`cryoinverse.distributed`).
    """
    from .posers.search import Search

    count, n = images.shape[0], images.shape[-1]
    if count < 4:
        raise ValueError(f"refinement needs at least 4 images (two half sets); got {count}")
    if tuple(initial_map.shape) != (n, n, n):
        raise ValueError(f"the initial map is {tuple(initial_map.shape)}; the images need ({n}, {n}, {n})")
    if len(poses) != count:
        raise ValueError(f"{len(poses)} poses for {count} images")
    nyquist = 2 * pixel_size
    extent = n * pixel_size
    split = split_halves(count, settings.seed)
    mask = soft_sphere(n, settings.mask_radius)
    state = dict(state or {})
    history: list[dict] = list(state.get("history", []))
    rotations = state.get("rotations", poses.rotations).to(torch.float64).clone()
    shifts = state.get("shifts", poses.shifts).to(torch.float64).clone()
    scores = state.get("scores", poses.scores)
    scores = torch.zeros(count, dtype=torch.float64) if scores is None else scores.to(torch.float64).clone()
    if "halves" in state:
        halves = [h.to(torch.float64) for h in state["halves"]]
        curve = state["fsc"].to(torch.float64)
        limit, step = state["limit"], state["step"]
    else:
        start = lowpass(initial_map, pixel_size, max(settings.initial_resolution, nyquist), None)
        halves, curve = [start, start.clone()], None
        limit, step = max(settings.initial_resolution, nyquist), settings.step
    best = min((h["resolution_A"] for h in history), default=math.inf)
    stale = state.get("stale", 0)
    cache: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def working(resolution: float, indices: torch.Tensor):
        small_pixel, box = working_pixel(pixel_size, n, resolution)
        key = (round(small_pixel, 6), box, int(indices[0]) if len(indices) else -1, len(indices))
        if key not in cache:
            if len(cache) > 1:
                cache.clear()
            small = resample_images(images[indices].to(torch.float64), pixel_size, small_pixel, box).to(torch.float32)
            filters = None
            if ctf is not None:
                part = ctf if len(ctf) == 1 else ctf[indices]
                filters = ctf_grid(part, box, small_pixel).expand(len(indices), box, box).to(torch.float32)
            cache[key] = (small, filters)
        return small_pixel, box, *cache[key]

    result: Reconstruction | None = None
    with progress(settings.iterations, "refine") as update:
        update(len(history))
        for iteration in range(len(history), settings.iterations):
            weight = None if curve is None else fsc_weight(curve)
            if regularize is not None and curve is not None:
                references = list(regularize(halves[0], halves[1], pixel_size))
                references = [lowpass(r, pixel_size, limit, None) * mask for r in references]
            else:
                references = [lowpass(h, pixel_size, limit, weight) * mask for h in halves]
            search = Search(level=2, refinements=settings.rounds, keep=1, shift_range=settings.shift_range,
                            start_resolution=limit, final_resolution=limit, local_step=step, shift_step=max(limit / 8, pixel_size / 2),
                            local_shift_range=settings.local_shift_range, memory_gb=memory_gb)
            before = rotations.clone()
            rescued = 0
            for h, indices in enumerate(split):
                small_pixel, box, small, filters = working(limit, indices)
                reference = references[h] if box == n else resample_tensor(references[h][None], (box, box, box))[0]
                # the half's spectrum, the same on every rank, whichever share of it a rank searches
                statistics = search.stack_statistics(small, filters)
                matched = search.with_stack_statistics(statistics)
                mine = share(torch.arange(len(indices)))
                init = Poses(rotations[indices[mine]], shifts=shifts[indices[mine]])
                own_filters = None if filters is None else filters[mine]
                found = matched.estimate(small[mine], reference.to(torch.float32), small_pixel, own_filters, init=init)
                if iteration + 1 == settings.global_iteration:
                    # images an earlier step placed far off: a global search, kept where it scores better (same limit, same statistics)
                    wide = attrs.evolve(search, level=2, start_resolution=None, local_step=None, local_shift_range=None, shift_step=None)
                    wide = wide.with_stack_statistics(statistics)
                    other = wide.estimate(small[mine], reference.to(torch.float32), small_pixel, own_filters)
                    better = other.scores > found.scores
                    found = Poses(torch.where(better[:, None, None], other.rotations, found.rotations),
                                  shifts=torch.where(better[:, None], other.shifts, found.shifts),
                                  scores=torch.where(better, other.scores, found.scores))
                    rescued += int(gather_rows(better.to(torch.float64), len(indices)).sum())
                rotations[indices] = gather_rows(found.rotations.to(torch.float64), len(indices))
                shifts[indices] = gather_rows(found.shifts.to(torch.float64), len(indices))
                scores[indices] = gather_rows(found.scores.to(torch.float64), len(indices))
            result = reconstruct(images, rotations, pixel_size, shifts, ctf, split=split, mask=mask)
            halves = [h.to(torch.float64) for h in result.halves]
            curve = result.fsc.to(torch.float64)
            resolution, next_limit = _limit(curve, pixel_size, n, nyquist)
            moved = geodesic_distance(before, rotations)
            entry = {
                "iteration": iteration + 1, "limit_A": limit, "step_deg": step, "resolution_A": resolution,
                "pose_change_median_deg": float(moved.median()),
                "score_median": float(scores.median()),
            }
            if iteration + 1 == settings.global_iteration:
                entry["global_search_kept"] = rescued
            history.append(entry)
            echo(f"iteration {iteration + 1}: limit {limit:.1f} Å, step {step:.2f}°, half-map FSC-0.143 {resolution:.2f} Å, "
                 f"median pose change {entry['pose_change_median_deg']:.2f}°")
            floor = settings.step_floor(resolution, extent)
            at_floor = step <= floor * 1.05
            stale = 0 if resolution < best * 0.99 else stale + 1  # better by 1% counts
            best = min(best, resolution)
            limit, step = next_limit, max(step / 2, min(floor, step))  # halving, never below the floor nor growing
            update(1)
            if checkpoint is not None:
                checkpoint({"history": history, "rotations": rotations, "shifts": shifts, "scores": scores,
                            "halves": halves, "fsc": curve, "limit": limit, "step": step, "stale": stale})
            if at_floor and stale >= settings.patience:
                break
    if result is None:  # every iteration was done before: reconstruct the saved poses once more
        result = reconstruct(images, rotations, pixel_size, shifts, ctf, split=split, mask=mask)
    final = Poses(rotations.to(torch.float32), shifts=shifts.to(torch.float32), scores=scores.to(torch.float32))
    resolution = max(nyquist, resolution_at(result.fsc, pixel_size, THRESHOLD, n))
    return RefinementResult(result.volume, result.halves, result.fsc, final, split, history, resolution)


def prior_regularizer(prior: str = "cryofm", params: tuple[str, ...] = (), seed: int = 0, device: str = "auto") -> Regularizer:
    """Half maps -> references by the flow posterior of registered prior `prior` (fields `params`,
    FIELD=VALUE), the noise of each half estimated from the two half maps; each half restored alone."""
    from .engine import execute
    from .specs import TaskSpec, component_from_params
    from .volume import Volume
    from .operators.spectral_noise import SpectralNoise

    model = component_from_params("prior", prior, params)
    sampler = component_from_params("sampler", "flow-posterior-euler", ())

    def regularize(h1: torch.Tensor, h2: torch.Tensor, pixel_size: float) -> tuple[torch.Tensor, torch.Tensor]:
        full = SpectralNoise.estimate(Volume(h1.to(torch.float32), pixel_size), Volume(h2.to(torch.float32), pixel_size))
        one = full.for_half_map()
        out = []
        for half in (h1, h2):
            spec = TaskSpec(prior=model, sampler=sampler, operators=[one], seed=seed, device=device, check_halves=False)
            run = execute(spec, observation=Volume(half.to(torch.float32), pixel_size))
            out.append(run.volume.data.to(torch.float64).cpu())
        return out[0], out[1]

    return regularize
