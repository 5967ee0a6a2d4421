"""Time and peak memory of a restoration with the shipped prior, by map size, steps and samples.

Each configuration runs in its own process (so its peak resident memory is its own) on a map of
n^3 voxels at 1.5 A made from the bundled demo map (tiled periodically to fill the box: density
everywhere, as in a crop of a large complex), degraded with FSC-shaped noise at 6 A (noise
estimated from two half maps). Sampler: flow-posterior-euler, Wiener guidance (the default for
spectral noise). The prior works on 32^3 boxes, so every map above 32^3 is tiled (boxes overlap
by half, `tile_batch` boxes per network call). Prints a table: n, steps, samples, seconds, peak MB.

  python bench/restore_speed.py                         # 64, 96, 128, 160 at 10 steps, 1 and 4 samples
  python bench/restore_speed.py --sizes 160 --samples 4 --steps 20 --tile-batch 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(n: int, steps: int, samples: int, tile_batch: int, device: str) -> dict:
    """Restore one n^3 map; returns seconds and this process's peak memory."""
    import torch

    from cryoinverse.bench import Degradation
    from cryoinverse.demo import demo_map
    from cryoinverse.priors.cryofm import CryoFMPrior
    from cryoinverse.registry import get_registry
    from cryoinverse.runner import execute
    from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
    from cryoinverse.specs import Inputs, TaskSpec

    demo = demo_map()
    reps = -(-n // demo.shape[0])
    clean = demo.with_data(demo.data.repeat(reps, reps, reps)[:n, :n, :n].contiguous())
    level = Degradation("fsc-6A", {"kind": "spectral-noise"}, target_resolution=6.0, half_maps=True)
    degraded, op, _ = level.degrade(clean, get_registry(), torch.Generator().manual_seed(0))
    spec = TaskSpec(
        prior=CryoFMPrior(tile_batch=tile_batch), operators=[op], sampler=FlowPosteriorEuler(steps=steps, guidance="wiener"),
        inputs=Inputs(box=n), samples=samples, seed=0, device=device, check_halves=False,
    )
    t0 = time.perf_counter()
    execute(spec, observation=degraded)
    seconds = time.perf_counter() - t0
    if torch.cuda.is_available() and device != "cpu":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB
    return {"n": n, "steps": steps, "samples": samples, "seconds": seconds, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 160], help="map edges (voxels at 1.5 A)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10], help="sampler steps")
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 4], help="posterior samples")
    parser.add_argument("--tile-batch", type=int, default=8, help="boxes per network call")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--one", nargs=3, type=int, help=argparse.SUPPRESS)  # n steps samples, in a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one, args.tile_batch, args.device)))
        return
    print(f"{'n':>5s} {'steps':>5s} {'samples':>7s} {'seconds':>8s} {'peak MB':>8s}  (device {args.device}, tile_batch {args.tile_batch})", flush=True)
    for n in args.sizes:
        for steps in args.steps:
            for samples in args.samples:
                cmd = [sys.executable, __file__, "--one", str(n), str(steps), str(samples), "--tile-batch", str(args.tile_batch), "--device", args.device]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(f"{n:5d} {steps:5d} {samples:7d}  failed: {out.stderr.strip().splitlines()[-1]}", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{r['n']:5d} {r['steps']:5d} {r['samples']:7d} {r['seconds']:8.1f} {r['peak_mb']:8.0f}", flush=True)


if __name__ == "__main__":
    main()
