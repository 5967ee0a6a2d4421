"""The engine of a task, in memory: build, prepare, estimate poses, sample, check, report.

`execute(spec)` returns the restored map (the mean over samples), its std map, the poses it
estimated and the report, and writes no file; the front door `cryoinverse.runner.run_task`
writes them, and `cryoinverse.chunked` runs it once per chunk of a large map. What every
component goes through, in order: a prior chosen for the map's voxel size (`for_voxel_size`),
`prepare(ctx)` of the operators, their observations, the poses of images whose poses are unknown
(the task's `[poser]`, against `[inputs] initial_map`), the sampler's "auto" settings fixed
(`resolve_sampler`), `prepare(ctx)` of the prior (tiled or resampled to its own geometry) and the
sampler, the samples, and with half maps the checks that need no reference (`check_half_maps`).
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import attrs
import numpy as np
import torch

from . import __version__
from .components import (
    ChoosesByVoxelSize, DefaultObservation, FixedBox, HalfMaps, Likelihood, LoadsObservation, Observation, PrepareContext,
    Resolvable, TakesPoses, VolumeGeometry, call_prepare,
)
from .devices import resolve_device
from .errors import DataError, InputWarning, SpecError
from .fourier import box_text, grid_shape, reference_edge
from .metrics import compare, directional_report
from .mrc import read_volume
from .poses import Poses
from .poses_io import estimate_in_chunks, median_score
from .progress import ProgressFactory, silent
from .spectra import wiener_estimate
from .specs import TaskSpec, check_structure, searches_poses, spec_to_dict, unknown_poses, validate_files
from .tiling import adapt_prior
from .volume import Volume

__all__ = ["RunResult", "execute", "call_prepare", "report_header", "for_voxel_size", "resolve_sampler", "check_half_maps", "signal_estimate"]


@attrs.define
class RunResult:
    """What a task produced: the map (mean over samples), its std map, the report, written files, and
    the poses estimated for operators whose poses were unknown (operator index -> `Poses`).
    A chunked run (`cryoinverse.chunked`) leaves its maps on disk only: `volume` and `std` are None."""

    volume: Volume | None
    std: Volume | None
    report: dict
    written: list[Path]
    observation: Volume | None = None
    poses: dict[int, Poses] = attrs.Factory(dict)


def _load(path: Path | None, voxel_size: float | None) -> Volume | None:
    return None if path is None else read_volume(path, voxel_size)


def observation_of(op: Any, path: Path | None, voxel_size: float | None) -> Any:
    """Operator `op`'s observation: read from `path` (by the operator's `load_observation` when it
    has one, else as a map), or the operator's own `default_observation()` (e.g. from half maps)."""
    if path is not None:
        return op.load_observation(path, voxel_size) if isinstance(op, LoadsObservation) else read_volume(path, voxel_size)
    return op.default_observation() if isinstance(op, DefaultObservation) else None


def report_header(spec: TaskSpec, device: torch.device) -> dict[str, Any]:
    """The first entries of every run's JSON report: version, the resolved task, its source, seed,
    device and library versions."""
    return {
        "cryoinverse": __version__,
        "task": spec_to_dict(spec),
        "source": str(spec.source) if spec.source else None,
        "seed": spec.seed,
        "device": str(device),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }


def execute(
    spec: TaskSpec, progress: ProgressFactory = silent, observation: Volume | None = None, init: torch.Tensor | None = None,
    validated: bool = False,
) -> RunResult:
    """Run `spec` in memory (no files written); `observation` overrides inputs.observation.

    `init` (samples, *shape) replaces the initial noise drawn from `spec.seed` (the chunked runner,
    `cryoinverse.chunked`, gives each chunk its crop of one noise field). A prior with
    `for_voxel_size` is first replaced by what it returns for the map's voxel size (the report's
    `task` then records the prior as run, e.g. cryofm's `weights = "auto"` resolved to "tomo").
    `spec.chunk` is not used here: chunked restoration writes to files (`run_task`).
    `validated`: the caller has checked the spec's structure and files already (the front door,
    `cryoinverse.runner.run_task`, and the chunked runner do, once for all chunks).
    """
    if not validated:
        check_structure(spec, observation_given=observation is not None)
        validate_files(spec, geometry_given=observation is not None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    device = resolve_device(spec.device)
    vs = spec.inputs.voxel_size
    if observation is None:
        observation = _load(spec.inputs.observation, vs)
    reference = _load(spec.inputs.reference, vs)
    mask = _load(spec.inputs.mask, vs)
    geometry = observation or reference
    box = spec.inputs.box or (spec.prior.box if isinstance(spec.prior, FixedBox) else None)
    shape = geometry.shape if geometry else (grid_shape(box) if box is not None else (None,) * 3)  # (None,)*3 until an operator knows it
    voxel_size = geometry.voxel_size if geometry else vs
    ctx = PrepareContext(shape=shape, voxel_size=voxel_size, device=device, observation=observation, operators=spec.operators)
    for op in spec.operators:
        call_prepare(op, ctx)
    paths = spec.observation_paths()
    observed = []
    for i, op in enumerate(spec.operators):
        y = observation if (i == 0 and observation is not None and paths[0] is None) else observation_of(op, paths[i], vs)
        if y is None:
            raise SpecError(f"[operators.{i}] observation: missing; operator {op.name!r} needs an observation")
        observed.append(y)
    volumes = [y for y in observed if isinstance(y, Volume)]
    if observation is None and volumes:
        observation = volumes[0]
    if geometry is None:
        if observation is not None:
            shape, voxel_size = observation.shape, observation.voxel_size
        else:
            for op in spec.operators:
                found = op.volume_geometry() if isinstance(op, VolumeGeometry) else None
                if found is not None:
                    shape, voxel_size = found
                    break
        if None in shape:
            raise SpecError("[inputs] box: no map gives the box size; set inputs.box")
    timings["load_s"] = time.perf_counter() - t0
    spec = for_voxel_size(spec, voxel_size)
    unknown = unknown_poses(spec)
    by_sampler = bool(unknown) and searches_poses(spec.sampler)
    found: dict[int, Poses] = {}
    if unknown and not by_sampler:
        t_poses = time.perf_counter()
        found = _estimate_poses(spec, unknown, observed, voxel_size, device, progress)
        timings["poses_s"] = time.perf_counter() - t_poses
    likelihood = None
    if spec.operators:
        likelihood = Likelihood([Observation(op, _to_device(y, device)) for op, y in zip(spec.operators, observed)])

    spec = resolve_sampler(spec, likelihood)
    t1 = time.perf_counter()
    with _input_warnings() as warnings_:
        maps = _sample(spec, likelihood, observation, shape, voxel_size, device, spec.samples, spec.seed, progress, spec.sampler.name, init)
    timings["sample_s"] = time.perf_counter() - t1
    if by_sampler:
        found, pose_warnings = _poses_from_sampler(spec, unknown)
        warnings_ += pose_warnings
        if spec.inputs.initial_map is not None:
            warnings_.append(f"[inputs] initial_map was not used: sampler {spec.sampler.name!r} searches the poses itself")
    like = geometry or observation
    origin = like.origin if like is not None else (0.0, 0.0, 0.0)
    voxel_size = voxel_size or 1.0
    mean = Volume(maps.mean(dim=0), voxel_size, origin)
    std = Volume(maps.std(dim=0), voxel_size, origin) if spec.samples > 1 else None

    report: dict[str, Any] = {**report_header(spec, device), "timings": timings}
    if spec.samples > 1:
        report["samples"] = {"count": spec.samples, "mean_fsc_auc_between_samples": _mean_pairwise_auc(maps)}
    if found:
        by = spec.sampler.name if by_sampler else spec.poser.name
        report["poses"] = [
            {"section": _section(spec, i), "operator": spec.operators[i].name, "estimated_by": by, "images": len(p), "score_median": median_score(p)}
            for i, p in found.items()
        ]
    halves = _halves_of(spec) if spec.check_halves else None
    if halves is not None and observation is not None:
        t2 = time.perf_counter()
        with _input_warnings():  # dropped: the halves are noisier copies of the map the components already checked
            report["half_maps"], half_warnings = check_half_maps(spec, halves, observation, mean, shape, voxel_size, device, progress)
        warnings_ += half_warnings
        timings["half_maps_s"] = time.perf_counter() - t2
    warnings_ += _absurd(mean, observation)
    report["warnings"] = warnings_
    if reference is not None:
        report["metrics"] = {"restored": {**compare(mean, reference, mask).as_dict(), "directional": directional_report(mean, reference, reference.voxel_size, mask=mask)}}
        if observation is not None and observation.shape == reference.shape:
            report["metrics"]["observation"] = {**compare(observation, reference, mask).as_dict(), "directional": directional_report(observation, reference, reference.voxel_size, mask=mask)}
    return RunResult(volume=mean, std=std, report=report, written=[], observation=observation, poses=found)


def for_voxel_size(spec: TaskSpec, voxel_size: float | None) -> TaskSpec:
    """`spec` with its prior replaced by `prior.for_voxel_size(voxel_size)` where the prior has that
    capability and it returns another prior (e.g. cryofm's "auto" weights resolved to "tomo" at
    10 A/voxel); `spec` itself otherwise. Called before the prior is tiled or resampled."""
    if not isinstance(spec.prior, ChoosesByVoxelSize) or not voxel_size:
        return spec
    prior = spec.prior.for_voxel_size(voxel_size)
    return spec if prior is spec.prior else attrs.evolve(spec, prior=prior)


def resolve_sampler(spec: TaskSpec, likelihood: Likelihood | None) -> TaskSpec:
    """`spec` with its sampler's "auto" settings fixed for `likelihood` (`components.Resolvable`),
    so what runs and what the report's `task` records are the same."""
    if not isinstance(spec.sampler, Resolvable):
        return spec
    sampler = spec.sampler.resolved(likelihood)
    return spec if sampler is spec.sampler else attrs.evolve(spec, sampler=sampler)


def _section(spec: TaskSpec, i: int) -> str:
    return "operator" if len(spec.operators) == 1 else f"operators.{i}"


def _estimate_poses(
    spec: TaskSpec, unknown: list[int], observed: list, voxel_size: float | None, device: torch.device, progress: ProgressFactory,
) -> dict[int, Poses]:
    """Estimate the unknown poses of operators `unknown` with spec.poser against [inputs] initial_map, and set them."""
    where = f"{spec.source}: " if spec.source else ""
    if spec.inputs.initial_map is None:
        raise SpecError(f"{where}[inputs] initial_map: missing; the [poser] needs a map to match the images with unknown poses against")
    initial = read_volume(spec.inputs.initial_map, spec.inputs.voxel_size)
    found = {}
    for i in unknown:
        op, images = spec.operators[i], observed[i]
        if not isinstance(op, TakesPoses) or not isinstance(images, torch.Tensor) or images.ndim != 3:
            raise SpecError(
                f"{where}[{_section(spec, i)}] {op.name}: its poses are unknown, but a poser needs an image stack (N, n, n) "
                "as its observation and set_poses(rotations, shifts) to take the poses"
            )
        n, pixel = images.shape[-1], float(op.image_pixel_size or voxel_size or 1.0)
        if initial.shape != (n, n, n) or abs(initial.voxel_size - pixel) > 1e-3 * pixel:
            shown = "x".join(map(str, initial.shape))
            raise SpecError(
                f"{where}[inputs] initial_map: {spec.inputs.initial_map.name} is {shown} voxels of {initial.voxel_size:g} Å but the images of "
                f"[{_section(spec, i)}] are {n}x{n} pixels of {pixel:g} Å; the poser needs a map on the images' grid ({n}^3 voxels of {pixel:g} Å)"
            )
        ctf = op.filters(n, "cpu", torch.float32)
        poses, _ = estimate_in_chunks(spec.poser, images, initial.data, pixel, ctf, progress=progress, device=device)
        op.set_poses(poses.rotations, poses.shifts)
        found[i] = poses
    return found


def _poses_from_sampler(spec: TaskSpec, unknown: list[int]) -> tuple[dict[int, Poses], list[str]]:
    """The poses a pose-searching sampler left: its `poses` (first sample, with scores), else the operator's."""
    sampled = getattr(spec.sampler, "poses", None) or []
    found, warnings_ = {}, []
    for i in unknown:
        op = spec.operators[i]
        if len(unknown) == 1 and sampled:  # the sampler's own record (it may leave the operator as it was given)
            found[i] = sampled[0]
        elif op.needs_poser():
            warnings_.append(f"[{_section(spec, i)}] {op.name}: sampler {spec.sampler.name!r} left no poses; none are written")
        else:
            found[i] = Poses(op.rotations, op.shifts)
    return found, warnings_


def _sample(
    spec: TaskSpec, likelihood: Likelihood | None, observation: Volume | None, shape: tuple[int, int, int],
    voxel_size: float | None, device: torch.device, samples: int, seed: int, progress: ProgressFactory, label: str,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Prepare the prior and sampler for this observation and draw `samples` maps (samples, *shape), CPU float32.

    The initial noise is `init` when given, else drawn from `seed`."""
    ctx = PrepareContext(shape=shape, voxel_size=voxel_size, device=device, observation=observation, operators=spec.operators, poser=spec.poser)
    if likelihood is not None:
        ctx.operators = [obs.operator for obs in likelihood.observations]
        ctx.signal_estimate = signal_estimate(likelihood, observation)
    # A prior with a fixed box (and voxel size) sees the map resampled and tiled; the spec is unchanged.
    prior = adapt_prior(spec.prior, shape, voxel_size) if voxel_size else spec.prior
    call_prepare(prior, ctx)
    call_prepare(spec.sampler, ctx)
    generator = torch.Generator(device=device).manual_seed(seed)
    if init is None:
        # All initial noise is drawn at once, so the samples do not depend on the batch size.
        init = torch.randn((samples, *shape), generator=generator, device=device, dtype=torch.float32)
    elif tuple(init.shape) != (samples, *shape):
        raise ValueError(f"init has shape {tuple(init.shape)}; {samples} samples of {box_text(shape)} need {(samples, *shape)}")
    else:
        init = init.to(device, torch.float32)
    steps = getattr(spec.sampler, "steps", 1)
    batch = min(spec.batch or samples, samples)
    chunks = []
    with progress(steps * math.ceil(samples / batch), label) as update:
        for start in range(0, samples, batch):
            out = spec.sampler.run(prior, likelihood, init[start : start + batch], generator=generator, progress=update)
            chunks.append(out.detach().to("cpu", torch.float32))
    maps = torch.cat(chunks)
    if not torch.isfinite(maps).all():
        raise DataError("sampling diverged (NaN or infinite values); lower sampler.lam_base or raise sampler.steps")
    return maps


def _halves_of(spec: TaskSpec) -> tuple[Any, tuple[Volume, Volume]] | None:
    """(operator, its two half maps) of a one-operator task whose noise came from half maps."""
    if len(spec.operators) != 1:
        return None
    op = spec.operators[0]
    halves = op.halves() if isinstance(op, HalfMaps) else None
    if halves is None:
        return None
    return op, halves


STRONG_FSC = 0.5  # half-map FSC above which a shell's data are strong enough to hold the prior to them
OVERRIDE_MARGIN = 0.1  # how far FSC(restored, input) may fall below FSC(input, truth) in one such shell before we warn
# ... and on average over them. A restoration that keeps the data shares the input's noise and agrees
# with it more than the truth does (measured: mean shortfall -0.013 to -0.019 on 10 runs where the
# prior helped); the 70S test volume, which the prior makes worse, falls short by 0.058 on average.
OVERRIDE_MEAN_MARGIN = 0.02


def check_half_maps(
    spec: TaskSpec, halves: tuple[Any, tuple[Volume, Volume]], observation: Volume, restored: Volume,
    shape: tuple[int, int, int], voxel_size: float | None, device: torch.device, progress: ProgressFactory,
) -> tuple[dict, list[str]]:
    """What half maps tell without a reference: each half restored alone, their FSC, and data overridden.

    - `input`: the gold-standard FSC of the half maps (AUC, FSC-0.143 resolution).
    - `restored`: the FSC between the two halves restored separately (one sample each). Both
      restorations share the prior, so this FSC is an upper bound on the restoration's quality:
      a prior that invents the same density in both halves raises it.
    - `directional`: both FSCs in cones about x, y and z (`cryoinverse.metrics.directional_report`): a
      missing wedge or preferred orientations make resolution direction dependent, which one curve hides.
    - `agreement`: per shell, FSC(A restored, input) (A the operator's forward: only what was
      measured, e.g. outside a missing wedge) against the FSC the input itself has with the
      truth, sqrt(2 F / (1 + F)) (F the half-map FSC). A restoration equal to the truth reaches
      that value, one that keeps the data exceeds it (it shares the input's noise); one below it
      where the data are strong (F >= 0.5), by OVERRIDE_MARGIN in a shell or OVERRIDE_MEAN_MARGIN on
      average (`shortfall_mean`), replaced measured density by the prior's: a warning says where.
    """
    from .metrics import fsc, resolution_at

    op, (h1, h2) = halves
    half_op = op.for_half_map()
    restored_halves = []
    for i, half in enumerate((h1, h2)):
        likelihood = Likelihood([Observation(half_op, half.data.to(device))])
        maps = _sample(spec, likelihood, half, shape, voxel_size, device, 1, spec.seed + 1 + i, progress, f"half map {i + 1}")
        restored_halves.append(maps[0])
    n = reference_edge(shape)  # shell r is at n_ref * voxel / r Angstrom (cryoinverse.fourier)
    vs = voxel_size or 1.0
    f_in = fsc(h1.data, h2.data)
    f_out = fsc(restored_halves[0], restored_halves[1])
    agreement = fsc(op.forward(restored.data[None])[0], observation.data)  # where data exist: a wedge the prior filled is not overridden data
    expected = torch.sqrt((2 * f_in.clamp(min=0) / (1 + f_in.clamp(min=0))))
    resolutions = [n * vs / r for r in range(1, f_in.numel())]
    strong = [r for r in range(1, f_in.numel()) if f_in[r] >= STRONG_FSC]
    overridden = [r for r in strong if agreement[r] < expected[r] - OVERRIDE_MARGIN]
    shortfall = float((expected[strong] - agreement[strong]).mean()) if strong else None
    report = {
        "input": {"auc": float(f_in[1:].mean()), "resolution_0.143": resolution_at(f_in, vs, 0.143, n)},
        "restored": {"auc": float(f_out[1:].mean()), "resolution_0.143": resolution_at(f_out, vs, 0.143, n)},
        "curve": [
            {"resolution_A": res, "fsc_input_halves": float(f_in[r]), "fsc_restored_halves": float(f_out[r]),
             "fsc_restored_vs_input": float(agreement[r]), "fsc_input_vs_truth_expected": float(expected[r])}
            for r, res in zip(range(1, f_in.numel()), resolutions)
        ],
        "overridden_resolutions_A": [n * vs / r for r in overridden],
        "shortfall_mean": shortfall,
        "directional": {"input": directional_report(h1, h2, vs), "restored": directional_report(restored_halves[0], restored_halves[1], vs)},
    }
    warnings_ = []
    if overridden or (shortfall is not None and shortfall > OVERRIDE_MEAN_MARGIN):
        worst = max(strong, key=lambda r: float(expected[r] - agreement[r]))
        shells = f", by more than {OVERRIDE_MARGIN:g} in {len(overridden)} of them" if overridden else ""
        warnings_.append(
            f"the prior overrode the data where they are strong (half-map FSC >= {STRONG_FSC}): over {len(strong)} such shells "
            f"the restoration agrees with the input {shortfall:.3f} less in FSC, on average, than the input agrees with the truth{shells} "
            f"(worst at {n * vs / worst:.1f} A: {float(agreement[worst]):.2f} against {float(expected[worst]):.2f}), where a "
            "restoration that keeps the data agrees more; check the noise model, the density scale ([prior] scale) "
            "or lower the guidance's trust in the prior"
        )
    return report, warnings_


@contextlib.contextmanager
def _input_warnings() -> Iterator[list[str]]:
    """Collect the texts of the InputWarnings raised inside, once each, into the list it yields (for
    the report, which the CLI prints); every other warning is shown as it would have been."""
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        yield found
    for w in caught:
        if not issubclass(w.category, InputWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif str(w.message) not in found:
            found.append(str(w.message))


def _absurd(restored: Volume, observation: Volume | None) -> list[str]:
    """A warning when the restored map's RMS is orders of magnitude off the observation's."""
    if observation is None or observation.shape != restored.shape:
        return []
    rms_in = float(observation.data.to(torch.float64).square().mean().sqrt())
    rms_out = float(restored.data.to(torch.float64).square().mean().sqrt())
    if rms_in > 0 and not 1e-2 < rms_out / rms_in < 1e2:
        return [f"the restored map's RMS ({rms_out:.3g}) is {rms_out / rms_in:.3g} times the input's ({rms_in:.3g}): the result is likely meaningless"]
    return []


def signal_estimate(likelihood: Likelihood, observation: Volume | None) -> Volume | None:
    """The Wiener estimate of the clean map where the operators allow it (see PrepareContext)."""
    if observation is None:
        return None
    information = likelihood.fourier_information()
    if information is None:
        return None
    estimate = wiener_estimate(*information)
    return None if estimate is None else observation.with_data(estimate.to("cpu", torch.float32))


def _to_device(y: Any, device: torch.device) -> Any:
    if isinstance(y, Volume):
        return y.data.to(device)
    to = getattr(y, "to", None)
    return to(device) if to is not None else y


def _mean_pairwise_auc(maps: torch.Tensor) -> float:
    from .metrics import auc_fsc, fsc

    values = [auc_fsc(fsc(maps[i], maps[j])) for i in range(len(maps)) for j in range(i + 1, len(maps))]
    return float(np.mean(values))
