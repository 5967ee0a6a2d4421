"""Tomograms: speed and peak memory of a chunked restoration of a 200 x 400 x 400 map, and quality on crops.

Clean maps: crowded boxes of the held-out chains (bench/default_prior_heldout.txt, never in the
priors' training data) at 10 A/voxel, as scripts/make_complex_maps.py makes them
(`cryoinverse.assemblies.crowd`: complexes and free chains filling 10-30 % of the box, one
B-factor per box from 200-1500 A^2), `--crop`^3 voxels each, kept in `--cache`. Degradation: a
+-60 degree missing wedge about y with noise whose power rises with frequency (FSC-shaped: the
expected FSC of the first box plus noise falls like a logistic through 0.5 at `--resolution` A;
one noise spectrum for every crop and the tomogram); the operator is told that spectrum.

a. Speed and memory. A `--tomogram` (z, y, x) map (200 x 400 x 400, 128 MB as float32) made
   cheaply: a mosaic of tiles of `--crop` voxels, each a clean box turned by a random multiple of
   90 degrees about y and maybe mirrored, put through the wedge with fresh noise (the seams between
   tiles cost nothing to speed). `cryoinverse run` restores it in a child process with chunk =
   `--chunk` (`--chunk-overlap`), the cryofm prior (`--tile-overlap`) and the `missing-wedge`
   operator, flow-posterior-euler (Wiener guidance) with `--steps` steps, torch on `--threads`
   threads. Printed: wall time of the child (Python start included) and its time in chunks, the
   child's peak resident memory (its ru_maxrss, from its report), chunks, steps and settings.
   Target: under 15 minutes and 4 GB on 2 CPU cores. Measured on 2 cores shared with other jobs,
   one thread, the tomogram prior: 282 s, 1.04 GiB (the same settings on two threads of that busy
   machine ran the network ~20 times slower per box: give `--threads 1` when cores are shared).
   On 2 free cores, 2 threads: the mean of 2 samples (`--samples 2`) 285 s, 1.17 GiB; of 4
   samples 583 s, 1.38 GiB.
b. Quality. `--crops` crops of `--crop`^3 voxels, each cut at a random offset from a mosaic of
   2 x 2 x 2 boxes (turned and mirrored at random) degraded as a whole, so that a crop's faces are
   those of a piece of a tomogram, not of a periodic box (a box degraded on its own is exactly
   what a whole-box Fourier model assumes, and would flatter it against chunks). AUC-FSC against
   the clean crop of the input, of the gaussian prior with flow-posterior-pseudoinverse
   (`--gaussian-steps`), and of the cryofm prior with flow-posterior-euler at each of
   `--steps-list`; at the middle step count, the mean of K posterior samples (`samples = K`) for
   each K of `--mean-of`, with the sampler's prior_error `--mean-prior-error` (a mean gains from
   samples that lean on the prior: 2 measured best there, while a single sample is best at the
   default 4); with `--edge-chunk C`, also cryofm at the middle step count restored in chunks of
   C voxels (overlap C // 4): what chunk edges cost. One row per method: mean and min over the
   crops, and seconds per crop. Part a with `--samples K` restores the mean of K samples (K
   times the time).

The prior: `--weights`, else priors/data/tomo.safetensors (10 A, 32^3) where it exists, else a
stand-in: the default network (trained at 1.5 A) declared at 10 A, so it runs on the map's own
grid with the same architecture and box as the tomogram prior, hence the same cost; its quality
numbers mean nothing for tomograms, and the output says which prior ran.

  python bench/tomogram.py --quick        # < 3 minutes on 2 cores: 96 x 192 x 192, two 48^3 crops, 5 steps
  python bench/tomogram.py                # < 20 minutes: the 200 x 400 x 400 tomogram, four 64^3 crops
  python bench/tomogram.py --skip-speed --weights tomo.safetensors --steps-list 5 10 20 40
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import attrs
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent.parent / "shared" / "data" / "models"
VOXEL = 10.0  # A


def held_out() -> list[str]:
    return [ln.strip() for ln in (HERE / "default_prior_heldout.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def crowded_box(box: int, seed: int, cache: Path):
    """A clean crowded box of the held-out chains (box^3 at 10 A), simulated once and kept in `cache`."""
    from cryoinverse.assemblies import Box, Chains, crowd
    from cryoinverse.atoms import read_atoms
    from cryoinverse.mrc import read_volume, write_volume
    from cryoinverse.simulate import simulate_density

    path = cache / f"crowded_{box}_{seed}.mrc"
    if path.exists():
        return read_volume(path)
    rng = np.random.default_rng(seed)
    chains = Chains([read_atoms(MODELS / f"{ident}.pdb") for ident in held_out()])
    scene = Box(chains, box * VOXEL, low=-VOXEL / 2)  # voxel i's centre at i x 10 A, as make_complex_maps.py
    crowd(scene, rng, float(rng.uniform(0.1, 0.3)), float(rng.uniform(0.3, 0.9)))
    b = float(rng.uniform(200.0, 1500.0))
    oversample = 2 if b >= 8 * math.pi**2 * (VOXEL / 4) ** 2 else 3  # make_complex_maps.oversample_for
    volume = simulate_density(scene.assembly().atoms(chains, source=path.stem), box, VOXEL, bfactor=b, centre=False, allow_clip=True, oversample=oversample)
    cache.mkdir(parents=True, exist_ok=True)
    return read_volume(write_volume(path, volume))


def noise_spectrum(clean, resolution: float) -> torch.Tensor:
    """Per-shell noise power (the clean box's shells) putting FSC(clean + noise, clean) through 0.5 at `resolution` A, logistic."""
    from cryoinverse.levels import noise_power_for_resolution

    return noise_power_for_resolution(clean, resolution, "logistic")


def wedge(noise_power: torch.Tensor):
    from cryoinverse.operators.missing_wedge import MissingWedge

    return MissingWedge(tilt_min=-60.0, tilt_max=60.0, noise_power=[float(v) for v in noise_power])


def choose_weights(given: Path | None, folder: Path) -> tuple[Path, str]:
    """(weights path, what it is): the given file, the tomogram prior, or the default network declared at 10 A."""
    from cryoinverse.priors.cryofm import DEFAULT_WEIGHTS, TOMO_WEIGHTS, meta_path

    if given is not None:
        return given, f"{given} (given)"
    if TOMO_WEIGHTS.exists():
        return TOMO_WEIGHTS, "tomo (priors/data/tomo.safetensors, 10 A)"
    standin = folder / "standin_10A.safetensors"
    if not standin.exists():
        standin.symlink_to(DEFAULT_WEIGHTS)
    meta = json.loads(meta_path(DEFAULT_WEIGHTS).read_text())
    meta["voxel_size"] = VOXEL
    meta_path(standin).write_text(json.dumps(meta))
    return standin, "STAND-IN: priors/data/tomo.safetensors is absent; the default network (trained at 1.5 A) declared at 10 A: same cost, meaningless quality"


def tomogram_crop(boxes: list, noise_power: torch.Tensor, seed: int):
    """(clean, degraded) Volumes: a box-sized cut, at a random offset, of a 2 x 2 x 2 mosaic of the
    boxes (each turned about y and maybe mirrored) degraded as a whole by the wedge and noise."""
    from cryoinverse.spectra import spectrum_on_box

    rng, edge = np.random.default_rng(seed), boxes[0].shape[0]
    clean = torch.zeros((2 * edge,) * 3, dtype=torch.float64)
    for corner in np.ndindex(2, 2, 2):
        tile = torch.rot90(boxes[int(rng.integers(len(boxes)))].data.double(), int(rng.integers(4)), dims=(0, 2))
        clean[tuple(slice(c * edge, (c + 1) * edge) for c in corner)] = tile.flip(1) if rng.integers(2) else tile
    on_mosaic = spectrum_on_box(noise_power, edge, clean.shape)  # the same noise on the mosaic's shells
    degraded = wedge(on_mosaic).simulate(clean[None], torch.Generator().manual_seed(seed))[0]
    cut = tuple(slice(o, o + edge) for o in rng.integers(edge // 4, 3 * edge // 4 + 1, size=3))
    return boxes[0].with_data(clean[cut].float()), boxes[0].with_data(degraded[cut].float())


def make_tomogram(path: Path, shape: tuple[int, int, int], boxes: list, noise_power: torch.Tensor, seed: int) -> None:
    """A mosaic of degraded tiles (see the module doc), written through a memory map."""
    from cryoinverse.mrc import mapped_output

    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    edge = boxes[0].shape[0]
    op = wedge(noise_power)
    with mapped_output(path, shape, VOXEL) as out:
        for z in range(0, shape[0], edge):
            for y in range(0, shape[1], edge):
                for x in range(0, shape[2], edge):
                    tile = torch.rot90(boxes[int(rng.integers(len(boxes)))].data, int(rng.integers(4)), dims=(0, 2))
                    if rng.integers(2):
                        tile = tile.flip(1)
                    degraded = op.simulate(tile[None].contiguous(), g)[0].numpy()
                    part = out[z : z + edge, y : y + edge, x : x + edge]
                    part[...] = degraded[: part.shape[0], : part.shape[1], : part.shape[2]]


TASK = """\
device = "cpu"
seed = 0
samples = {samples}
chunk = {chunk}
chunk_overlap = {chunk_overlap}

[prior]
kind = "cryofm"
weights = "{weights}"
tile_overlap = {tile_overlap}

[operator]
kind = "missing-wedge"
tilt_min = -60.0
tilt_max = 60.0
noise_power = {noise_power}

[sampler]
kind = "flow-posterior-euler"
steps = {steps}
prior_error = {prior_error}

[inputs]
observation = "tomogram.mrc"

[outputs]
map = "restored.mrc"
"""


def speed(args, boxes, noise_power, weights: Path, folder: Path) -> None:
    """Part a: restore the mosaic tomogram with `cryoinverse run` in a child process; print one row."""
    from cryoinverse.fourier import reference_edge
    from cryoinverse.spectra import spectrum_on_box

    shape = tuple(args.tomogram)
    t0 = time.perf_counter()
    make_tomogram(folder / "tomogram.mrc", shape, boxes, noise_power, seed=args.seed)
    made = time.perf_counter() - t0
    on_tomogram = spectrum_on_box(noise_power, reference_edge(boxes[0].shape), shape)  # the same noise, the tomogram's shells
    (folder / "task.toml").write_text(TASK.format(
        chunk=args.chunk, chunk_overlap=args.chunk_overlap, weights=weights, tile_overlap=args.tile_overlap,
        noise_power="[" + ", ".join(f"{v:.6g}" for v in on_tomogram.tolist()) + "]", steps=args.steps,
        samples=args.samples, prior_error=4.0 if args.samples == 1 else args.mean_prior_error,
    ))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    t1 = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "cryoinverse", "run", str(folder / "task.toml"), "--overwrite", "-q"],
                           env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t1
    if child.returncode != 0:
        raise SystemExit(f"cryoinverse run failed ({child.returncode}):\n{child.stderr[-4000:]}")
    report = json.loads((folder / "restored.json").read_text())
    chunks = report["chunks"]
    gb = math.prod(shape) * 4 / 1e9
    print(f"a. speed and memory: {'x'.join(map(str, shape))} voxels at {VOXEL:g} A ({gb:.2f} GB float32; mosaic made in {made:.0f} s)")
    print(f"{'wall (s)':>9s} {'in chunks (s)':>13s} {'peak RSS (GiB)':>14s} {'chunks':>6s} {'chunk':>11s} {'steps':>5s} {'samples':>7s} {'tile overlap':>12s} {'threads':>7s}")
    print(f"{wall:9.0f} {chunks['seconds']:13.0f} {chunks['peak_rss_MiB'] / 1024:14.2f} {chunks['count']:6d} "
          f"{'x'.join(map(str, chunks['size'])) + '/' + str(chunks['overlap']):>11s} {args.steps:5d} {args.samples:7d} {args.tile_overlap:12d} {args.threads:7d}")
    verdict = "meets" if wall < 15 * 60 and chunks["peak_rss_MiB"] < 4 * 1024 else "MISSES"
    scale = chunks.get("density_scale", {}).get("value", float("nan"))
    print(f"   {verdict} the target (15 min, 4 GB); {chunks['seconds_per_chunk']:.1f} s per chunk; density scale {scale:.3g}; "
          f"sampling {report['timings']['sample_s']:.0f} s of it; warnings: {len(report['warnings'])}", flush=True)


def quality(args, boxes, noise_power, weights: Path, folder: Path) -> None:
    """Part b: AUC-FSC per method, mean and min over the crops."""
    from cryoinverse.metrics import auc_fsc, fsc
    from cryoinverse.mrc import read_volume, write_volume
    from cryoinverse.priors.cryofm import CryoFMPrior
    from cryoinverse.priors.gaussian import GaussianPrior
    from cryoinverse.runner import execute, run_task
    from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
    from cryoinverse.samplers.flow_posterior_pseudoinverse import FlowPosteriorPseudoinverse
    from cryoinverse.specs import Inputs, Outputs, TaskSpec

    def spec(prior, sampler, seed, **settings):
        return TaskSpec(prior=prior, operators=[wedge(noise_power)], sampler=sampler, inputs=Inputs(box=args.crop), device="cpu", seed=seed, **settings)

    cryofm = lambda: CryoFMPrior(weights=weights, tile_overlap=args.tile_overlap)
    middle = sorted(args.steps_list)[len(args.steps_list) // 2]
    methods = {"input": None, f"gaussian, pseudoinverse {args.gaussian_steps}": lambda s: spec(GaussianPrior(), FlowPosteriorPseudoinverse(steps=args.gaussian_steps), s)}
    for steps in args.steps_list:
        methods[f"cryofm, euler {steps}"] = (lambda n: lambda s: spec(cryofm(), FlowPosteriorEuler(steps=n), s))(steps)
    for k in args.mean_of:
        euler = FlowPosteriorEuler(steps=middle, prior_error=args.mean_prior_error)
        methods[f"cryofm, euler {middle}, mean of {k}"] = (lambda k, euler: lambda s: spec(cryofm(), euler, s, samples=k))(k, euler)
    if args.edge_chunk:
        methods[f"cryofm, euler {middle}, chunks of {args.edge_chunk}"] = "chunked"
    scores = {name: [] for name in methods}
    seconds = {name: 0.0 for name in methods}
    for i in range(args.crops):
        clean, degraded = tomogram_crop(boxes, noise_power, seed=100 + i)
        for name, make in methods.items():
            t0 = time.perf_counter()
            if make is None:
                restored = degraded
            elif make == "chunked":
                write_volume(folder / "crop.mrc", degraded)
                task = attrs.evolve(spec(cryofm(), FlowPosteriorEuler(steps=middle), i, chunk=args.edge_chunk),
                                    inputs=Inputs(observation=folder / "crop.mrc"), outputs=Outputs(map=folder / "crop_restored.mrc"))
                run_task(task, overwrite=True)
                restored = read_volume(folder / "crop_restored.mrc")
            else:
                restored = execute(make(i), observation=degraded).volume
            seconds[name] += time.perf_counter() - t0
            scores[name].append(auc_fsc(fsc(restored.data, clean.data)))
    count = args.crops
    print(f"\nb. quality: {count} {args.crop}^3 crops of degraded mosaics of crowded boxes of held-out chains at {VOXEL:g} A, "
          f"+-60 deg wedge, FSC-shaped noise (FSC-0.5 at {args.resolution:g} A)")
    print(f"{'method':>34s} {'AUC-FSC mean':>12s} {'min':>6s} {'s per crop':>10s}")
    for name in methods:
        print(f"{name:>34s} {np.mean(scores[name]):12.3f} {np.min(scores[name]):6.3f} {seconds[name] / count:10.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a check in < 3 minutes: 96 x 192 x 192 tomogram, two 48^3 crops, 5 steps")
    parser.add_argument("--tomogram", type=int, nargs=3, default=[200, 400, 400], metavar=("Z", "Y", "X"), help="tomogram shape for part a (voxels)")
    parser.add_argument("--chunk", type=int, default=112, help="chunk edge of part a (voxels)")
    parser.add_argument("--chunk-overlap", type=int, default=16, help="voxels neighbouring chunks share (part a)")
    parser.add_argument("--tile-overlap", type=int, default=4, help="voxels the prior's 32^3 boxes share (parts a and b)")
    parser.add_argument("--steps", type=int, default=10, help="sampler steps of part a")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (part a's child and part b)")
    parser.add_argument("--crop", type=int, default=64, help="edge of the crowded boxes: the crops of part b and the tiles of part a (voxels)")
    parser.add_argument("--boxes", type=int, default=4, help="distinct crowded boxes the mosaics are made of")
    parser.add_argument("--crops", type=int, default=4, help="crops in part b")
    parser.add_argument("--steps-list", type=int, nargs="+", default=[5, 10, 20], help="cryofm sampler steps compared in part b")
    parser.add_argument("--mean-of", type=int, nargs="*", default=[2, 8], help="part b: also the mean of this many cryofm samples (samples = K) at the middle step count")
    parser.add_argument("--mean-prior-error", type=float, default=2.0, help="part b: the sampler's prior_error in the mean-of rows (2 measured best for means, 4 for single samples)")
    parser.add_argument("--samples", type=int, default=1, help="posterior samples averaged in part a (samples = K: K times the time)")
    parser.add_argument("--gaussian-steps", type=int, default=20, help="steps of the gaussian prior with flow-posterior-pseudoinverse (part b)")
    parser.add_argument("--edge-chunk", type=int, default=40, help="part b: also restore in chunks of this edge (0: not)")
    parser.add_argument("--resolution", type=float, default=30.0, help="FSC-0.5 resolution of the noise (A)")
    parser.add_argument("--weights", type=Path, default=None, help="cryofm weights (default: the tomogram prior, else a stand-in; see above)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "cryoinverse_bench_tomogram", help="folder keeping the simulated boxes")
    parser.add_argument("--skip-speed", action="store_true", help="part b only")
    parser.add_argument("--skip-quality", action="store_true", help="part a only")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the boxes, the mosaic and the noise")
    args = parser.parse_args()
    if args.quick:
        args.tomogram, args.crop, args.boxes, args.crops, args.steps, args.steps_list, args.gaussian_steps, args.edge_chunk = [96, 192, 192], 48, 2, 2, 5, [5], 10, 0
        args.mean_of = [2]
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    boxes = [crowded_box(args.crop, args.seed + i, args.cache) for i in range(args.boxes)]
    noise_power = noise_spectrum(boxes[0], args.resolution)
    with tempfile.TemporaryDirectory(prefix="bench_tomogram_") as tmp:
        folder = Path(tmp)
        weights, which = choose_weights(args.weights, folder)
        print(f"prior: {which}\n{len(boxes)} crowded {args.crop}^3 boxes ready in {time.perf_counter() - t0:.0f} s (cache {args.cache}); "
              f"torch threads {args.threads}\n", flush=True)
        if not args.skip_speed:
            speed(args, boxes, noise_power, weights, folder)
        if not args.skip_quality:
            quality(args, boxes, noise_power, weights, folder)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
