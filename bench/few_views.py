"""A map from 2-8 clean projections of unknown pose (CryoFM's ab initio setting): what the learned prior adds.

Held-out models (bench/default_prior_heldout.txt) are simulated at `--pixel` Å in a `--box`^3 grid;
K clean projections (no CTF, no shifts, white noise at SNR 100 so the likelihood is defined) at
uniform random rotations are the data. Each is reconstructed by `flow-posterior-posesearch` (poses
searched as the map forms, from random rotations; `search` level 1) with the gaussian prior (its
spectrum from the images) and with the shipped learned prior (`cryofm`, weights "auto"), and, to
separate the prior from the poses, by `flow-posterior-euler` with the true poses given. Printed per
(map, K, prior, poses): FSC-0.5 and AUC-FSC of the map against the truth after alignment over both
hands (`align_maps(..., allow_mirror=True)`), the median pose error over both hands, and the time.

  python bench/few_views.py                      # 2 models, K = 2, 4, 8
  python bench/few_views.py --maps 1 --views 8 --steps 30
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from cryoinverse.abinitio import hand_aware_pose_errors
from cryoinverse.align import align_maps
from cryoinverse.engine import execute
from cryoinverse.metrics import auc_fsc, fsc, resolution_at
from cryoinverse.projection import project_fourier
from cryoinverse.rotations import random_rotations
from cryoinverse.specs import Inputs, TaskSpec, component_from_params

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"


def reconstruct_views(images: torch.Tensor, pixel: float, prior: str, rotations: torch.Tensor | None, steps: int, seed: int):
    """The map (and the poses found) from `images` (K, n, n) by the flow posterior with `prior`; poses searched unless `rotations`."""
    from cryoinverse.operators.projection import Projection

    noise = float(images.var()) / 100.0
    op = Projection.from_poses(rotations if rotations is not None else torch.eye(3).expand(len(images), 3, 3), pixel_size=pixel,
                               noise_variance=noise, images=images)
    if rotations is None:
        op.set_poses(None)
        sampler = component_from_params("sampler", "flow-posterior-posesearch", (f"steps={steps}", "search_every=3"))
        poser = component_from_params("poser", "search", ("level=1", "shift_range=0"))
    else:
        sampler = component_from_params("sampler", "flow-posterior-euler", (f"steps={steps}",))
        poser = None
    spec = TaskSpec(prior=component_from_params("prior", prior, ()), sampler=sampler, operators=[op], poser=poser, seed=seed,
                    device="cpu", check_halves=False, inputs=Inputs(box=images.shape[-1], voxel_size=pixel))
    run = execute(spec)
    found = run.poses.get(0)
    return run.volume.data.double(), None if found is None else found.rotations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=2, help="held-out models to use")
    parser.add_argument("--box", type=int, default=48, help="box edge in pixels")
    parser.add_argument("--pixel", type=float, default=2.0, help="pixel size, Å")
    parser.add_argument("--views", type=int, nargs="+", default=[2, 4, 8], help="numbers of projections")
    parser.add_argument("--priors", nargs="+", default=["gaussian", "cryofm"], help="registered priors to compare")
    parser.add_argument("--steps", type=int, default=30, help="Euler steps of each flow posterior")
    parser.add_argument("--seed", type=int, default=1, help="seed of the poses and the noise")
    args = parser.parse_args()
    from cryoinverse.atoms import read_atoms
    from cryoinverse.simulate import simulate_density

    ids = [ln.strip() for ln in (HERE / "default_prior_heldout.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    print(f"{args.box}^3 at {args.pixel:g} Å, clean projections (SNR 100), {args.steps} Euler steps; {torch.get_num_threads()} threads")
    print("| map | views | prior | poses | FSC-0.5 (Å) | AUC-FSC | median pose error (°) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for model in ids[: args.maps]:
        volume = simulate_density(read_atoms(SHARED / "models" / f"{model}.pdb"), args.box, args.pixel).data.double()
        for k in args.views:
            g = torch.Generator().manual_seed(args.seed * 1000 + k)
            rotations = random_rotations(k, g)
            images = project_fourier(volume, rotations, None, args.pixel, interpolation="sinc")
            images = images + torch.randn(images.shape, generator=g, dtype=images.dtype) * math.sqrt(float(images.var()) / 100.0)
            for prior in args.priors:
                for known in (False, True):
                    start = time.perf_counter()
                    found, poses = reconstruct_views(images.float(), args.pixel, prior, rotations if known else None, args.steps, args.seed)
                    seconds = time.perf_counter() - start
                    _, moved = align_maps(volume, found, args.pixel, allow_mirror=True)
                    curve = fsc(moved, volume)
                    error = "" if poses is None else f"{float(hand_aware_pose_errors(poses, rotations)[0].median()):.1f}"
                    print(f"| {model} | {k} | {prior} | {'true' if known else 'searched'} | {resolution_at(curve, args.pixel, 0.5, args.box):.1f} | "
                          f"{auc_fsc(curve):.3f} | {error} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
