"""Pose search on particle stacks simulated from held-out models: accuracy and time of poser `search`.

Each held-out model (bench/default_prior_heldout.txt) is simulated at `--pixel` Å on an `--box`^3
grid; `--images` projections with uniform random rotations, shifts of up to +-4 pixels and a CTF
(defocus 0.8-2.5 µm, 300 kV) get white noise at each `--snr` (signal variance over noise
variance; 0 = no noise). `search` estimates the poses against the clean map; printed per SNR:
median rotation error (degrees), fraction within 5 degrees, mean shift error (Å) and wall time,
over the maps.

  python bench/poses.py                          # 3 held-out models, 200 images of 64 px, SNR inf, 1, 0.1
  python bench/poses.py --images 1000 --maps 1
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", type=int, default=3, help="held-out models to use")
    parser.add_argument("--images", type=int, default=200, help="images per stack")
    parser.add_argument("--box", type=int, default=64, help="image and map edge (pixels)")
    parser.add_argument("--pixel", type=float, default=2.0, help="pixel size (Å)")
    parser.add_argument("--snr", type=float, nargs="+", default=[0.0, 1.0, 0.1], help="signal-to-noise ratios (0: no noise)")
    args = parser.parse_args()
    ids = [ln.strip() for ln in (HERE / "default_prior_heldout.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    models = HERE.parent.parent / "shared" / "data" / "models"
    print(f"{'SNR':>6s} {'maps':>4s} {'median err (deg)':>16s} {'within 5 deg':>12s} {'shift err (A)':>13s} {'time (s)':>9s}  ({args.images} images of {args.box} px at {args.pixel} A)")
    for snr in args.snr:
        rows = []
        for i, ident in enumerate(ids[: args.maps]):
            volume = simulate_density(read_atoms(models / f"{ident}.pdb"), args.box, args.pixel, bfactor=60.0).data.double()
            images, ctf, truth = stack(volume, args.images, args.pixel, snr, seed=i)
            t0 = time.perf_counter()
            est = Search(shift_range=4 * args.pixel).estimate(images, volume, args.pixel, ctf=ctf)
            wall = time.perf_counter() - t0
            m = pose_metrics(est, truth, align=False)
            rows.append((m["rotation_error_median_deg"], m["within_5_deg"], m["shift_error_mean_A"], wall))
        a = np.array(rows).mean(axis=0)
        label = "inf" if snr == 0 else f"{snr:g}"
        print(f"{label:>6s} {len(rows):4d} {a[0]:16.2f} {a[1]:12.2f} {a[2]:13.2f} {a[3]:9.1f}", flush=True)


if __name__ == "__main__":
    main()
