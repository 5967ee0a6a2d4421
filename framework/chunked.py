"""Chunked restoration: a large map restored cube by cube, memory bounded by the chunk, not the map.

A tomogram (200 x 400 x 400 voxels at 10 A: 128 MB as float32, and several times that in flight
while it is restored: the flow state, the operators' FFTs in complex128, the prior's boxes) is cut
into overlapping chunks of `chunk` voxels per edge (`chunk_plan`: along each axis as
`cryoinverse.tiling.axis_tiles` places a prior's boxes, neighbours sharing `chunk_overlap`
voxels). Each chunk is restored as a task of its own (`cryoinverse.engine.execute` on the chunk:
operators, prior and sampler prepared on the chunk) and added into the output with the tiles'
smooth weights, a partition of unity: 0 on the `margin` = overlap // 4 voxels at each inner chunk
face, a sin^2 taper across the rest of the overlap, 1 inside. The input is read through a memory
map and the output filled through one, in a temporary file renamed at the end
(`cryoinverse.mrc.MappedVolume`, `mapped_output`), so neither map is ever whole in memory and a
map larger than memory works.

The approximation, and what chunk edges cost. The operators here (missing wedge, spectral and
anisotropic noise) are translation-invariant: diagonal in the whole map's Fourier basis. On a chunk
the runner uses the same filter on the chunk's own periodic grid. For a voxel whose neighbourhood,
as far as the filter reaches, lies inside the chunk, that is the whole-map model; near a chunk's
face it is not: the chunk's FFT joins that face to the opposite one, so the filter mixes in
density from the wrong side. A smooth filter reaches a few voxels, and a chunked restoration
then equals the whole-map one wherever the margin covers that reach (tests/framework/
test_chunked.py); the missing wedge's kernel falls off only as 1/r^3 and is elongated along the
beam, so some wrap-around error remains. Measured with the Wiener filter of a +-60 degree wedge
and FSC-shaped noise on a 128 x 192 x 192 map at 10 A, chunks of 64-128 voxels differ from the
whole-map result by 0.7 % (relative mean square) more than 24 voxels from the map's border, with
no visible rise at inner chunk faces; a wider `chunk_overlap` changed nothing measurable. On the
map's own border a chunk wraps onto its own far face, not onto the map's opposite border as the
whole-map run does: different there, but no worse on real data, since neither map is periodic.
(A map degraded synthetically on its whole box *is* periodic, so there the whole-map run is
exact and chunks are not: compare on crops cut from a larger degraded map, as bench/tomogram.py
does, where chunks of 40 voxels on 64^3 crops cost no AUC-FSC.) Estimates taken from the
observation (the noise of `background_noise`, the `gaussian` prior's spectrum) see only the chunk.

Consistency across chunks:
- initial noise: one N(0, 1) field over the whole map, made of NOISE_BLOCK^3 blocks each drawn
  from its own seed (`block_noise`), so overlapping chunks start from the same noise;
- density scale: a prior normalised by a percentile of the map (cryofm without `scale`) gets one
  value for all chunks, from the whole map (`density_scale`), as the whole-map run would;
- per-shell spectra in the task (`power`, `noise_power`, the fields PER_SHELL_FIELDS names) are
  given on the whole map's shells; a chunk reads them at its own shells' physical frequencies
  (`cryoinverse.spectra.spectrum_on_box`): the same noise, the same prior;
- a map that fits in one chunk is restored exactly as without chunking (same noise, same code).

Half maps (odd/even tomograms). An operator with `half_maps` takes part when it can estimate its
noise from two half maps of any box (`half_map_noise(h1, h2)`, a per-shell spectrum) and takes a
per-shell spectrum as `noise_power`: each chunk's halves give a spectrum, read at the whole map's
shells and averaged over the chunks weighted by the voxels each owns (`half_map_noise_power`);
the operator then runs on every chunk with that one `noise_power`, as the whole-map estimate
would give (noise assumed stationary over the map). Without `[inputs] observation` the observed
map is the halves' average, read block by block from both. The half-map checks of the report
(`check_halves`) need the whole map and are not made.

Refused before any work (`check_chunkable`), because they need the whole map at once: other maps
given to components (a prior's mean map, half maps of an operator without `half_map_noise`), a
reference or mask (metrics need the whole map's FFT: run `cryoinverse fsc` on the written map),
operators that observe images, and more than one operator.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import platform
import resource
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from .components import HalfMapNoiseEstimator, HasNetwork, Likelihood, Observation, PercentileScaled, PrepareContext
from .devices import resolve_device
from .engine import RunResult, call_prepare, execute, for_voxel_size, report_header, signal_estimate
from .errors import DataError, SpecError
from .fourier import box_text, n_shells, reference_edge
from .mrc import MappedVolume, mapped_output
from .outputs import check_outputs, write_json
from .progress import ProgressFactory, silent
from .previews import write_planes_png
from .spectra import spectrum_on_box
from .specs import Inputs, TaskSpec, check_structure, map_fields, validate_files
from .tiling import AxisTiles, axis_tiles
from .volume import Volume

__all__ = [
    "Chunk", "chunk_plan", "chunks_of", "block_noise", "density_scale", "check_chunkable", "chunkable_halves",
    "MeanOfMapped", "half_map_noise_power", "run_chunked",
]

NOISE_BLOCK = 32  # voxels per edge of the blocks the initial noise field is drawn in
PER_SHELL_FIELDS = ("power", "noise_power")  # component fields holding a spectrum per shell of the map's box
TAPER_FRACTION = 0.25  # of a chunk's edge, at each end: the window half-map noise is estimated through


def chunk_overlap(spec: TaskSpec) -> int:
    """Voxels neighbouring chunks share: `spec.chunk_overlap`, by default a quarter of the chunk edge."""
    return spec.chunk_overlap if spec.chunk_overlap is not None else spec.chunk // 4


def chunk_plan(shape: tuple[int, int, int], chunk: int, overlap: int) -> tuple[AxisTiles, AxisTiles, AxisTiles]:
    """How a (z, y, x) map is cut: per axis, chunks of min(chunk, n) voxels sharing `overlap`
    voxels (less on an axis shorter than a chunk, which is one chunk), margin overlap // 4."""
    plans = []
    for n in shape:
        edge = min(int(chunk), int(n))
        shared = min(int(overlap), edge - 1)
        plans.append(axis_tiles(int(n), edge, shared, shared // 4))
    return tuple(plans)


@attrs.frozen
class Chunk:
    """One chunk: its first voxel `start` and `size` (z, y, x), its blending `weights` (float64, the
    product of the three axes' windows) and `owned`, the part of it (start, stop per axis, in the
    chunk's own indices) that no other chunk owns: every voxel of the map is owned by one chunk."""

    index: int
    start: tuple[int, int, int]
    size: tuple[int, int, int]
    axis_weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    owned: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

    @property
    def weights(self) -> torch.Tensor:
        """Blending weight of each voxel of the chunk (z, y, x), float64."""
        wz, wy, wx = self.axis_weights
        return wz[:, None, None] * wy[None, :, None] * wx[None, None, :]

    @property
    def region(self) -> tuple[slice, slice, slice]:
        """The chunk's voxels in the map."""
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.size))

    def describe(self) -> str:
        """'z 0:96, y 80:176, x 0:96' (voxels of the map)."""
        return ", ".join(f"{a} {s}:{s + n}" for a, s, n in zip("zyx", self.start, self.size))


def _owned(tiles: AxisTiles) -> list[tuple[int, int]]:
    """Per chunk of an axis, the voxels it owns (its own indices): up to the middle of each overlap."""
    starts, edge = tiles.starts, tiles.box
    cuts = [0] + [(starts[i + 1] + starts[i] + edge) // 2 for i in range(len(starts) - 1)] + [tiles.n]
    return [(cuts[i] - s, cuts[i + 1] - s) for i, s in enumerate(starts)]


def chunks_of(plan: tuple[AxisTiles, AxisTiles, AxisTiles]) -> list[Chunk]:
    """Every chunk of a plan, z slowest, x fastest."""
    per_axis = [list(zip(t.starts, t.weights, _owned(t))) for t in plan]
    edges = tuple(t.box for t in plan)
    chunks = []
    for index, parts in enumerate(itertools.product(*per_axis)):
        starts, weights, owned = zip(*parts)
        chunks.append(Chunk(index, tuple(starts), edges, tuple(weights), tuple(owned)))
    return chunks


def _block_seed(seed: int, block: tuple[int, int, int]) -> int:
    state = np.random.SeedSequence([int(seed) % 2**64, *block]).generate_state(1, np.uint64)
    return int(state[0])


def block_noise(seed: int, samples: int, start: tuple[int, int, int], size: tuple[int, int, int]) -> torch.Tensor:
    """Voxels start .. start + size of one N(0, 1) noise field over the whole map: (samples, *size), float32.

    The field is made of NOISE_BLOCK^3 blocks, block (i, j, k) drawn from its own generator seeded
    from (seed, i, j, k), so any crop is made without the rest of the field, and two chunks agree
    on the voxels they share.
    """
    b = NOISE_BLOCK
    out = torch.empty((samples, *size), dtype=torch.float32)
    ranges = [range(s // b, (s + n - 1) // b + 1) for s, n in zip(start, size)]
    for block in itertools.product(*ranges):
        noise = torch.randn((samples, b, b, b), generator=torch.Generator().manual_seed(_block_seed(seed, block)))
        low = [max(s, i * b) for s, i in zip(start, block)]
        high = [min(s + n, (i + 1) * b) for s, n, i in zip(start, size, block)]
        target = tuple(slice(lo - s, hi - s) for lo, hi, s in zip(low, high, start))
        source = tuple(slice(lo - i * b, hi - i * b) for lo, hi, i in zip(low, high, block))
        out[(slice(None), *target)] = noise[(slice(None), *source)]
    return out


def _for_chunk(component: Any, size: tuple[int, int, int], shape: tuple[int, int, int], shallow: bool = False) -> Any:
    """A fresh copy of a spec component for one chunk, its per-shell spectra read at the chunk's shells.

    `shallow` shares what the component holds (a prior's loaded network) instead of copying it.
    """
    changes = {}
    if tuple(size) != tuple(shape) and attrs.has(type(component)):
        for f in attrs.fields(type(component)):
            value = getattr(component, f.name)
            if f.name in PER_SHELL_FIELDS and isinstance(value, (list, tuple)):
                spectrum = torch.as_tensor(value, dtype=torch.float64)
                changes[f.name] = spectrum_on_box(spectrum, reference_edge(shape), size).tolist()
    if changes:
        return attrs.evolve(component, **changes)
    return copy.copy(component) if shallow else copy.deepcopy(component)


def _chunk_spec(spec: TaskSpec, prior: Any, chunk: Chunk, shape: tuple[int, int, int], seed: int) -> TaskSpec:
    """The task restoring one chunk (its observation is passed to `execute` in memory)."""
    return TaskSpec(
        prior=_for_chunk(prior, chunk.size, shape, shallow=True),
        sampler=copy.deepcopy(spec.sampler),
        operators=[_for_chunk(op, chunk.size, shape) for op in spec.operators],
        inputs=Inputs(voxel_size=spec.inputs.voxel_size),
        seed=seed,
        device=spec.device,
        samples=spec.samples,
        batch=spec.batch,
        check_halves=False,
        source=spec.source,
    )


def _percentile_normalised(prior: Any) -> float | None:
    """The percentile a prior normalises by when it takes it from the map (cryofm without `scale`), else None."""
    if not isinstance(prior, PercentileScaled) or prior.scale is not None:
        return None
    return getattr(getattr(prior.meta, "normalization", None), "percentile", None)


def density_scale(
    spec: TaskSpec, source: MappedVolume, chunks: list[Chunk], percentile: float, from_estimate: bool, device: torch.device,
) -> float:
    """The nearest-rank `percentile` of max(x, 0) over the whole map, x the chunks' Wiener estimates
    of the clean map (`from_estimate`, where the operators give one; else the observation).

    Each voxel is counted once, in the chunk that owns it; only the largest values the rank needs are
    kept (n (1 - percentile / 100) + 1 of them: 641 for 99.999 on 64 M voxels). On one chunk it is
    `cryoinverse.priors.cryofm.percentile_scale` of that chunk's estimate.
    """
    shape = source.shape
    count = math.prod(shape)
    rank = min(count, max(1, math.ceil(percentile / 100 * count)))
    keep = count - rank + 1  # the rank-th smallest is the keep-th largest
    largest = torch.empty(0, dtype=torch.float64)
    for chunk in chunks:
        observation = source.block(chunk.start, chunk.size)
        values = observation
        if from_estimate:
            operators = [_for_chunk(op, chunk.size, shape) for op in spec.operators]
            ctx = PrepareContext(shape=chunk.size, voxel_size=source.voxel_size, device=device, observation=observation, operators=operators)
            for op in operators:
                call_prepare(op, ctx)
            likelihood = Likelihood([Observation(op, observation.data.to(device)) for op in operators])
            estimate = signal_estimate(likelihood, observation)
            values = estimate if estimate is not None else observation
        core = values.data[tuple(slice(a, b) for a, b in chunk.owned)].reshape(-1).to(torch.float64).clamp(min=0.0)
        merged = torch.cat([largest, core])
        largest = merged.topk(min(keep, merged.numel())).values
        source.release()
    s = float(largest[keep - 1])
    if not s > 0:
        raise DataError(f"the observed map has no positive densities (its {percentile}th percentile is {s:g}); the prior's normalisation needs some")
    return s


def chunkable_halves(op: Any) -> bool:
    """Whether an operator's `half_maps` can be used chunk by chunk: it has them, estimates noise from
    two half maps of any box (`half_map_noise`) and takes a per-shell `noise_power`."""
    return isinstance(op, HalfMapNoiseEstimator) and getattr(op, "half_maps", None) is not None


class MeanOfMapped:
    """The voxel-wise average of two same-shaped maps on disk, read block by block like `MappedVolume`
    (`shape`, `voxel_size`, `origin` of the first; `block`, `release`, and `data[index]`)."""

    def __init__(self, first: MappedVolume, second: MappedVolume):
        if first.shape != second.shape:
            raise DataError(f"half maps: shapes differ ({box_text(first.shape)} {first.path} vs {box_text(second.shape)} {second.path})")
        self.halves = (first, second)
        self.shape, self.voxel_size, self.origin = first.shape, first.voxel_size, first.origin
        self.data = self  # `data[index]` reads the average of those voxels

    def __getitem__(self, index) -> np.ndarray:
        a, b = (np.asarray(h.data[index], dtype=np.float32) for h in self.halves)
        return 0.5 * (a + b)

    def block(self, start: tuple[int, int, int], size: tuple[int, int, int]) -> Volume:
        """Voxels start .. start + size of the average, as a float32 Volume."""
        a, b = (h.block(start, size) for h in self.halves)
        return a.with_data(0.5 * (a.data + b.data))

    def release(self) -> None:
        """Drop the pages read so far from both maps."""
        for h in self.halves:
            h.release()


def taper(size: tuple[int, int, int], fraction: float = TAPER_FRACTION) -> torch.Tensor:
    """Separable Tukey window of a (z, y, x) block (float64): a sin^2 rise over `fraction` of each
    edge at both ends, 1 between."""
    axes = []
    for n in size:
        ramp = max(1, int(round(fraction * n)))
        w = torch.ones(n, dtype=torch.float64)
        rise = torch.sin(0.5 * math.pi * (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp) ** 2
        w[:ramp] = rise
        w[n - ramp :] = torch.minimum(w[n - ramp :], rise.flip(0))
        axes.append(w)
    return axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]


def half_map_noise_power(op: Any, halves: tuple[MappedVolume, MappedVolume], chunks: list[Chunk], shape: tuple[int, int, int]) -> torch.Tensor:
    """Per-shell noise power of the halves' average on the whole map's shells (float64): each
    chunk's `op.half_map_noise` of its two half-map blocks, read at the map's shells
    (`spectrum_on_box`), averaged over the chunks weighted by the voxels each owns.

    A chunk is a crop of the noise, not a period of it: its edges would leak the high-frequency
    noise power into every low shell (a rising spectrum measured on 32^3 crops reads ~30 % high
    at 1/20 cycles per voxel). So both blocks are tapered (`taper`) before the estimate, which is
    then divided by the window's mean square; the halves' common signal cancels all the same. A
    map that is one chunk is estimated as the unchunked run does, untapered.
    """
    total = torch.zeros(n_shells(shape), dtype=torch.float64)
    weight = 0
    window = None if len(chunks) == 1 else taper(chunks[0].size)
    for chunk in chunks:
        h1, h2 = (h.block(chunk.start, chunk.size) for h in halves)
        if window is not None:
            h1, h2 = (h.with_data((h.data.to(torch.float64) * window).to(torch.float32)) for h in (h1, h2))
        spectrum = torch.as_tensor(op.half_map_noise(h1, h2), dtype=torch.float64).cpu()
        if window is not None:
            spectrum = spectrum / float(window.square().mean())
        own = math.prod(b - a for a, b in chunk.owned)
        total += own * spectrum_on_box(spectrum, reference_edge(chunk.size), shape)
        weight += own
        for h in halves:
            h.release()
    return total / weight


def check_chunkable(spec: TaskSpec) -> None:
    """SpecError listing what a chunked run cannot do with this task (see the module doc)."""
    where = f"{spec.source}: " if spec.source else ""
    why = "a chunked run never holds the whole map"
    problems = []
    halves = len(spec.operators) == 1 and chunkable_halves(spec.operators[0])
    if spec.inputs.observation is None and not halves:
        problems.append(f"{where}[inputs] observation: missing; chunk = {spec.chunk} cuts the observed map into chunks")
    if len(spec.operators) != 1:
        problems.append(f"{where}chunk: a chunked run restores one observed map through one operator; the task has {len(spec.operators)}")
    for i, op in enumerate(spec.operators):
        if getattr(op, "observes", "volume") != "volume":
            section = "operator" if len(spec.operators) == 1 else f"operators.{i}"
            problems.append(f"{where}[{section}] {op.name}: observes images, which cannot be cut into chunks; remove chunk")
    for section, field, _ in map_fields(spec):
        if (section, field) == ("inputs", "observation") or (halves and field == "half_maps" and section.startswith("operator")):
            continue
        if section == "inputs" and field in ("reference", "mask"):
            problems.append(
                f"{where}[inputs] {field}: metrics need the whole map's Fourier transform and {why}; "
                f"remove it and compare afterwards (cryoinverse fsc RESTORED.mrc REFERENCE.mrc)"
            )
        else:
            problems.append(f"{where}[{section}] {field}: a map of the whole box cannot be used chunk by chunk ({why}); remove it or chunk")
    if problems:
        raise SpecError(problems)


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB): VmHWM of /proc/self/status where there is
    one (Linux), else ru_maxrss. Linux carries ru_maxrss across exec, so a process started by a
    larger one would report that one's peak; VmHWM belongs to this process's own memory."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _central_planes(data: np.ndarray, release) -> list[np.ndarray]:
    """The central z, y and x planes of a (z, y, x) memory-mapped map, read slab by slab (float64)."""
    nz, ny, nx = data.shape
    planes = [np.asarray(data[nz // 2], dtype=np.float64), np.empty((nz, nx)), np.empty((nz, ny))]
    step = max(1, (8 * 2**20) // (4 * ny * nx))
    for z in range(0, nz, step):
        slab = data[z : z + step]
        planes[1][z : z + step] = slab[:, ny // 2]
        planes[2][z : z + step] = slab[:, :, nx // 2]
        release()
    return planes


def _blend(target: np.ndarray, chunk: Chunk, values: torch.Tensor) -> None:
    """target[chunk] += weights * values (the weights sum to 1 over the chunks at every voxel)."""
    weighted = (chunk.weights * values.to(torch.float64)).to(torch.float32).numpy()
    target[chunk.region] += weighted


def run_chunked(spec: TaskSpec, overwrite: bool = False, progress: ProgressFactory = silent):
    """Restore `spec`'s observed map chunk by chunk (`spec.chunk` voxels per edge) and write what
    `[outputs]` names (map, std, slices) and the JSON report; returns a `RunResult` without maps in
    memory (`volume` None: the map is on disk). See the module doc."""
    if spec.chunk is None:
        raise SpecError("chunk: not set; run_chunked needs the chunk edge in voxels")
    check_structure(spec)
    check_chunkable(spec)
    outputs = spec.outputs
    targets = [outputs.map, outputs.report_path, outputs.slices_path] + ([outputs.std] if outputs.std is not None else [])
    check_outputs(targets, overwrite)
    validate_files(spec)
    t0 = time.perf_counter()
    device = resolve_device(spec.device)
    overlap = chunk_overlap(spec)
    timings = {"load_s": 0.0, "sample_s": 0.0}
    warnings_: list[str] = []
    with contextlib.ExitStack() as files:
        op = spec.operators[0]
        halves = None
        if chunkable_halves(op):
            halves = tuple(files.enter_context(MappedVolume(path, spec.inputs.voxel_size)) for path in op.half_maps)
        if spec.inputs.observation is not None:
            source = files.enter_context(MappedVolume(spec.inputs.observation, spec.inputs.voxel_size))
        else:
            source = MeanOfMapped(*halves)
        shape, voxel_size = source.shape, source.voxel_size
        run_spec = for_voxel_size(spec, voxel_size)
        plan = chunk_plan(shape, spec.chunk, overlap)
        chunks = chunks_of(plan)
        single = len(chunks) == 1  # then exactly the run without chunking
        prior = run_spec.prior
        chunks_report: dict[str, Any] = {
            "edge": spec.chunk, "overlap": overlap, "margin": overlap // 4, "count": len(chunks),
            "grid": [len(t.starts) for t in plan], "size": list(chunks[0].size),
        }
        if halves is not None:
            t_noise = time.perf_counter()
            if any(h.shape != shape for h in halves):
                raise DataError(f"half maps {box_text(halves[0].shape)} and {box_text(halves[1].shape)} differ from the observation ({box_text(shape)})")
            noise = half_map_noise_power(op, halves, chunks, shape)
            estimated = attrs.evolve(run_spec.operators[0], half_maps=None, noise_power=noise.tolist())
            run_spec = attrs.evolve(run_spec, operators=[estimated])
            timings["half_map_noise_s"] = time.perf_counter() - t_noise
            chunks_report["noise_from_half_maps"] = {
                "half_maps": [str(h.path) for h in halves], "observation": "given" if spec.inputs.observation is not None else "the halves' average",
            }
        percentile = None if single else _percentile_normalised(prior)
        if percentile is not None:
            t_scale = time.perf_counter()
            from_estimate = prior.scale_from == "estimate"
            scale = density_scale(run_spec, source, chunks, percentile, from_estimate, device)
            prior = attrs.evolve(prior, scale=scale)
            run_spec = attrs.evolve(run_spec, prior=prior)
            timings["density_scale_s"] = time.perf_counter() - t_scale
            chunks_report["density_scale"] = {"value": scale, "percentile": percentile, "of": "Wiener estimates" if from_estimate else "observation"}
        if isinstance(prior, HasNetwork) and not single:
            prior.network(device)  # once: every chunk's copy of the prior shares the loaded network
        t_chunks = time.perf_counter()
        std_path = outputs.std
        output = mapped_output(outputs.map, shape, voxel_size, source.origin, overwrite)
        std_output = mapped_output(std_path, shape, voxel_size, source.origin, overwrite) if std_path is not None else None
        with contextlib.ExitStack() as stack:  # on any error every temporary file is removed
            restored = stack.enter_context(output)
            std = stack.enter_context(std_output) if std_output is not None else None
            with progress(len(chunks), f"{len(chunks)} chunks") as update:
                for chunk in chunks:
                    observation = source.block(chunk.start, chunk.size)
                    task = _chunk_spec(run_spec, prior, chunk, shape, seed=spec.seed if single else spec.seed + 1 + chunk.index)
                    init = None if single else block_noise(spec.seed, spec.samples, chunk.start, chunk.size)
                    result = execute(task, silent, observation=observation, init=init, validated=True)
                    _blend(restored, chunk, result.volume.data)
                    if std is not None:
                        _blend(std, chunk, result.std.data)
                        std_output.release()
                    for key in ("load_s", "sample_s"):
                        timings[key] += result.report["timings"].get(key, 0.0)
                    warnings_ += [f"chunk {chunk.index} ({chunk.describe()}): {w}" for w in result.report["warnings"]]
                    ran = result.report["task"]["sampler"]  # "auto" settings as the chunks resolved them
                    source.release()
                    output.release()
                    update(1)
        timings["chunks_s"] = time.perf_counter() - t_chunks
        planes = {"input": _central_planes(source.data, source.release)}
    with MappedVolume(outputs.map) as written_map:
        planes["restored"] = _central_planes(written_map.data, written_map.release)
    written = [Path(outputs.map)] + ([Path(std_path)] if std_path is not None else [])
    if std_path is not None:
        with MappedVolume(std_path) as written_std:
            planes["std"] = _central_planes(written_std.data, written_std.release)
    written.append(write_planes_png(outputs.slices_path, planes, title=f"central slices: {Path(outputs.map).name}"))
    timings["total_s"] = time.perf_counter() - t0
    chunks_report["seconds"] = timings["chunks_s"]
    chunks_report["seconds_per_chunk"] = timings["chunks_s"] / len(chunks)
    chunks_report["peak_rss_MiB"] = _peak_rss_mib()
    header = report_header(run_spec, device)
    header["task"]["sampler"] = ran
    report = {
        **header,
        "map": {"shape": list(shape), "voxel_size": voxel_size, "origin": list(source.origin), "box": box_text(shape)},
        "chunks": chunks_report,
        "timings": timings,
        "warnings": warnings_,
        "outputs": [str(p) for p in written] + [str(outputs.report_path)],
    }
    written.append(write_json(outputs.report_path, report))
    return RunResult(volume=None, std=None, report=report, written=written)
