"""Posers on particle stacks simulated from held-out models: accuracy and time of `search` and `fastar`.

Each held-out model (bench/default_prior_heldout.txt) is simulated at `--pixel` Å on an `--box`^3
grid; `--images` projections with uniform random rotations, shifts of up to +-4 pixels and a CTF
(defocus 0.8-2.5 µm, 300 kV) get white noise at each `--snr` (signal variance over noise
variance; 0 = no noise). Each poser of `--posers` estimates the poses against the clean map:
`search` (global), `fastar` (the network's poses placed on the map by its anchor searches, no
refinement, no fallback), `fastar+refine` (then local `search`, no fallback) and `fastar-default`
(the poser as a task gets it: refinement and the fallback to global search). Printed per SNR and
poser: median rotation error (degrees), fraction within 5 degrees, mean shift error (Å) and wall
time, averaged over the maps, and for fastar rows the network's own median error (its relative
poses after the best global rotation, no map involved).

With `--ab-initio COUNT`, `flow-posterior-posesearch` (gaussian prior, spectrum from the images)
also makes a map from COUNT clean projections (no CTF, no shifts) of each model at `--ab-box`,
from random poses and from the true poses nudged by ~12 degrees; printed: AUC-FSC and FSC-0.5
of the map aligned to the truth (mirror allowed), the median pose error and the time.

  python bench/poses.py                          # 3 held-out models, 200 images of 64 px, SNR inf, 1, 0.1
  python bench/poses.py --images 1000 --maps 1
  python bench/poses.py --posers search fastar fastar+refine --fastar-weights poser.safetensors
  python bench/poses.py --snr --ab-initio 60 --ab-box 32 --ab-pixel 4   # ab initio only
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from cryoinverse.atoms import read_atoms
from cryoinverse.ctf import CTFParams, ctf_grid
from cryoinverse.posers.fastar import FastARPoser
from cryoinverse.posers.search import Search
from cryoinverse.poses import Poses, pose_metrics
from cryoinverse.projection import project_fourier, shift_and_filter
from cryoinverse.rotations import random_rotations
from cryoinverse.simulate import simulate_density

HERE = Path(__file__).resolve().parent


def stack(volume: torch.Tensor, count: int, pixel: float, snr: float, seed: int):
    """(images, ctf, true poses) of `count` noisy CTF-modulated projections."""
    g = torch.Generator().manual_seed(seed)
    n = volume.shape[-1]
    rotations = random_rotations(count, g)
    shifts = torch.randint(-4, 5, (count, 2), generator=g).double() * pixel
    defocus = 8000 + 17000 * torch.rand(count, generator=g, dtype=torch.float64)
    ctf = ctf_grid(CTFParams(defocus_u=defocus, defocus_v=defocus * 0.97, defocus_angle=torch.rand(count, generator=g) * 180), n, pixel)
    clean = shift_and_filter(project_fourier(volume, rotations, shifts, voxel_size=pixel), None, ctf)
    if snr > 0:
        clean = clean + torch.randn(clean.shape, generator=g, dtype=clean.dtype) * math.sqrt(float(clean.var()) / snr)
    return clean, ctf, Poses(rotations, shifts=shifts)


POSERS = {
    "search": lambda shift, weights: Search(shift_range=shift),
    "fastar": lambda shift, weights: FastARPoser(weights=weights, shift_range=shift, refine=False, fallback=False),
    "fastar+refine": lambda shift, weights: FastARPoser(weights=weights, shift_range=shift, fallback=False),
    "fastar-default": lambda shift, weights: FastARPoser(weights=weights, shift_range=shift),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", type=int, default=3, help="held-out models to use")
    parser.add_argument("--images", type=int, default=200, help="images per stack")
    parser.add_argument("--box", type=int, default=64, help="image and map edge (pixels)")
    parser.add_argument("--pixel", type=float, default=2.0, help="pixel size (Å)")
    parser.add_argument("--snr", type=float, nargs="*", default=[0.0, 1.0, 0.1], help="signal-to-noise ratios (0: no noise)")
    parser.add_argument("--posers", nargs="*", default=["search", "fastar", "fastar+refine"], choices=list(POSERS), help="posers to compare")
    parser.add_argument("--fastar-weights", type=Path, default=None, help="fastar network (default: the shipped one)")
    parser.add_argument("--ab-initio", type=int, default=0, help="clean projections per ab initio run (0: none)")
    parser.add_argument("--ab-box", type=int, default=32, help="ab initio map edge (voxels)")
    parser.add_argument("--ab-pixel", type=float, default=4.0, help="ab initio voxel size (Å)")
    parser.add_argument("--ab-steps", type=int, default=30, help="ab initio sampler steps")
    args = parser.parse_args()
    ids = [ln.strip() for ln in (HERE / "default_prior_heldout.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    models = HERE.parent.parent / "shared" / "data" / "models"
    print(f"{'SNR':>6s} {'poser':>14s} {'maps':>4s} {'median err (deg)':>16s} {'within 5 deg':>12s} {'shift err (A)':>13s} {'time (s)':>9s} {'network err':>11s}  ({args.images} images of {args.box} px at {args.pixel} A, {torch.get_num_threads()} threads)")
    for snr in args.snr:
        volumes = [simulate_density(read_atoms(models / f"{ident}.pdb"), args.box, args.pixel, bfactor=60.0).data.double() for ident in ids[: args.maps]]
        stacks = [stack(volume, args.images, args.pixel, snr, seed=i) for i, volume in enumerate(volumes)]
        for name in args.posers:
            poser = POSERS[name](4 * args.pixel, args.fastar_weights)
            rows = []
            for volume, (images, ctf, truth) in zip(volumes, stacks):
                t0 = time.perf_counter()
                est = poser.estimate(images, volume, args.pixel, ctf=ctf)
                wall = time.perf_counter() - t0
                m = pose_metrics(est, truth, align=False)
                network = float("nan")
                if hasattr(poser, "relative_poses"):
                    network = pose_metrics(poser.relative_poses(images, args.pixel), truth)["rotation_error_median_deg"]
                rows.append((m["rotation_error_median_deg"], m["within_5_deg"], m["shift_error_mean_A"], wall, network))
            a = np.array(rows).mean(axis=0)
            label = "inf" if snr == 0 else f"{snr:g}"
            print(f"{label:>6s} {name:>14s} {len(rows):4d} {a[0]:16.2f} {a[1]:12.2f} {a[2]:13.2f} {a[3]:9.1f} {a[4]:11.1f}", flush=True)
    if args.ab_initio:
        print(f"\nab initio: {args.ab_initio} clean projections, {args.ab_box}^3 at {args.ab_pixel} A, gaussian prior, {args.ab_steps} steps")
        print(f"{'model':>8s} {'start':>10s} {'AUC-FSC':>8s} {'FSC-0.5 (A)':>11s} {'median err':>10s} {'time (s)':>9s}")
        for i, ident in enumerate(ids[: args.maps]):
            volume = simulate_density(read_atoms(models / f"{ident}.pdb"), args.ab_box, args.ab_pixel, bfactor=60.0).data.double()
            for start in ("random", "12 deg off"):
                auc, res, err, wall = ab_initio(volume, args.ab_initio, args.ab_pixel, args.ab_steps, nudge=start != "random", seed=i)
                print(f"{ident:>8s} {start:>10s} {auc:8.3f} {res:11.1f} {err:10.1f} {wall:9.1f}", flush=True)


def ab_initio(volume: torch.Tensor, count: int, pixel: float, steps: int, nudge: bool, seed: int):
    """(AUC-FSC, FSC-0.5 in Å, median pose error in degrees, seconds) of one ab initio run."""
    from cryoinverse.align import align_maps
    from cryoinverse.components import Likelihood, Observation, PrepareContext
    from cryoinverse.metrics import auc_fsc, fsc, resolution_at
    from cryoinverse.operators.projection import Projection
    from cryoinverse.priors.gaussian import GaussianPrior
    from cryoinverse.samplers.flow_posterior_posesearch import FlowPosteriorPosesearch
    from cryoinverse.so3_grid import axis_angle_to_matrix

    n = volume.shape[-1]
    g = torch.Generator().manual_seed(100 + seed)
    rotations = random_rotations(count, g)
    images = project_fourier(volume, rotations).float()
    op = Projection.from_poses(rotations, pixel_size=pixel, noise_variance=1e-6, images=images)
    op.set_poses(rotations @ axis_angle_to_matrix(torch.randn(count, 3, generator=g, dtype=torch.float64) * 0.12) if nudge else None)
    ctx = PrepareContext(shape=(n,) * 3, voxel_size=pixel, device=torch.device("cpu"), operators=[op], poser=Search(shift_range=0.0))
    prior = GaussianPrior()
    prior.prepare(ctx)
    sampler = FlowPosteriorPosesearch(steps=steps, search_every=3, start_resolution=max(20.0, 5 * pixel) if not nudge else 3 * pixel)
    sampler.prepare(ctx)
    t0 = time.perf_counter()
    out = sampler.run(prior, Likelihood([Observation(op, images)]), torch.randn(1, n, n, n, generator=g, dtype=torch.float64), generator=g)
    wall = time.perf_counter() - t0
    _, moved = align_maps(volume, out[0], pixel, allow_mirror=True)
    curve = fsc(volume, moved)
    err = pose_metrics(sampler.poses[0], Poses(rotations))["rotation_error_median_deg"]
    return auc_fsc(curve), resolution_at(curve, pixel, 0.5, n), err, wall


if __name__ == "__main__":
    main()
