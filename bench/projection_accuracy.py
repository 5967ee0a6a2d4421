"""Accuracy and speed of `project_fourier` settings against `project_real`:
python bench/projection_accuracy.py [--rotations 100] [--time-box 64] [--time-count 1000] [--threads 0].

Accuracy: relative L2 error per image, ||fourier - real|| / ||real||, on cryoDRGN's sharp 30^3 toy
map (../shared/data/particles/toymodel_small_nocenter.mrc, 180 non-zero voxels, 1 Å) at
- the first `--rotations` rotations of toy_rot_trans.npz (cryoDRGN's R is ours): mean and worst;
- 20 rotations by 2 degrees about axes spread over the sphere (mean): near the grid, where the
  trilinear model's truncated aliases add up coherently;
- the identity and three quarter turns (mean), grid to grid.
Speed: seconds for `--time-count` projections of a random `--time-box`^3 float32 map on the CPU
(`--threads` torch threads; 0 leaves torch's default).
"""

import argparse
import time
from pathlib import Path

import mrcfile
import numpy as np
import torch

from cryoinverse.projection import project_fourier, project_real
from cryoinverse.rotations import axis_rotation, random_rotations

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "particles"

SETTINGS = [
    ("sinc, oversampling 2, corrected (default)", dict()),
    ("sinc, oversampling 2, no correction", dict(gridding_correction=False)),
    ("sinc, oversampling 3, corrected", dict(oversampling=3)),
    ("sinc, oversampling 3, no correction", dict(oversampling=3, gridding_correction=False)),
    ("sinc, oversampling 4, no correction", dict(oversampling=4, gridding_correction=False)),
    ("trilinear, oversampling 2, threshold 0.03", dict(interpolation="trilinear", oversampling=2)),
    ("trilinear, oversampling 3, threshold 0.05", dict(interpolation="trilinear", alias_threshold=0.05)),
    ("trilinear, oversampling 3, threshold 0.03 (*)", dict(interpolation="trilinear")),
    ("trilinear, oversampling 3, threshold 0.02", dict(interpolation="trilinear", alias_threshold=0.02)),
    ("trilinear, oversampling 3, threshold 0.01", dict(interpolation="trilinear", alias_threshold=0.01)),
    ("trilinear, oversampling 3, no correction", dict(interpolation="trilinear", gridding_correction=False)),
    ("trilinear, oversampling 4, threshold 0.03", dict(interpolation="trilinear", oversampling=4)),
]


def relative_errors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(-2).norm(dim=-1) / b.flatten(-2).norm(dim=-1)


def near_grid(degrees: float, count: int) -> torch.Tensor:
    """Rotations by `degrees` about `count` random axes."""
    axes = random_rotations(count, torch.Generator().manual_seed(0))
    return torch.stack([a @ axis_rotation("z", degrees) @ a.T for a in axes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rotations", type=int, default=100)
    parser.add_argument("--time-box", type=int, default=64)
    parser.add_argument("--time-count", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with mrcfile.open(DATA / "toymodel_small_nocenter.mrc") as mrc:
        volume = torch.from_numpy(mrc.data.astype(np.float64))
    quarter_turns = [axis_rotation("x", 90.0), axis_rotation("z", 90.0), axis_rotation("y", -90.0)]
    sets = {
        "toy": torch.from_numpy(np.load(DATA / "toy_rot_trans.npz")["rotations"][: args.rotations].astype(np.float64)),
        "near": near_grid(2.0, 20),
        "grid": torch.stack([torch.eye(3, dtype=torch.float64), *quarter_turns]),
    }
    reference = {name: project_real(volume, rotations) for name, rotations in sets.items()}
    timed = torch.randn(args.time_box, args.time_box, args.time_box, generator=torch.Generator().manual_seed(1))
    timed_rotations = random_rotations(args.time_count, torch.Generator().manual_seed(2)).float()
    print(f"{'setting':48s} {'mean':>7s} {'worst':>7s} {'2 deg':>7s} {'grid':>7s} {'seconds':>8s}")
    for name, kwargs in SETTINGS:
        errors = {k: relative_errors(project_fourier(volume, sets[k], **kwargs), reference[k]) for k in sets}
        t0 = time.perf_counter()
        project_fourier(timed, timed_rotations, **kwargs)
        seconds = time.perf_counter() - t0
        print(f"{name:48s} {errors['toy'].mean():7.4f} {errors['toy'].max():7.4f} {errors['near'].mean():7.4f} "
              f"{errors['grid'].mean():7.4f} {seconds:8.2f}", flush=True)


if __name__ == "__main__":
    main()
