"""Make a projection task's inputs: noisy CTF-modulated projections of a clean map with known poses.

Usage: python examples/make_projection_inputs.py [DIR] [COUNT]   (DIR holds reference.mrc; default demo-out)
Writes DIR/particles.mrcs and DIR/particles.star (uniformly random rotations, shifts of a few Å,
defocus 1-2.5 um at 300 kV, white noise at an SNR of about 0.1 per pixel).
"""

import sys
from pathlib import Path

import torch

from cryoinverse.ctf import CTFParams
from cryoinverse.mrc import read_volume
from cryoinverse.operators.projection import Projection, write_particles
from cryoinverse.rotations import random_rotations


def main(folder: str = "demo-out", count: int = 100, seed: int = 0) -> None:
    folder = Path(folder)
    clean = read_volume(folder / "reference.mrc")
    g = torch.Generator().manual_seed(seed)
    rotations = random_rotations(count, g)
    shifts = 2.0 * torch.randn(count, 2, generator=g, dtype=torch.float64)
    defocus = 10000 + 15000 * torch.rand(count, generator=g, dtype=torch.float64)
    ctf = CTFParams(defocus_u=defocus, defocus_v=defocus + 200, defocus_angle=torch.full((count,), 30.0))
    clean_images = Projection.from_poses(rotations, shifts, ctf, noise_variance=1.0, pixel_size=clean.voxel_size).forward(clean.data[None])[0]
    noise_variance = 10 * float(clean_images.var())  # per-pixel SNR 0.1
    op = Projection.from_poses(rotations, shifts, ctf, noise_variance=noise_variance, pixel_size=clean.voxel_size)
    images = op.simulate(clean.data, g)
    write_particles(folder / "particles.mrcs", folder / "particles.star", images, rotations, shifts, clean.voxel_size, ctf)
    print(f"wrote {folder / 'particles.mrcs'} and {folder / 'particles.star'}: {count} images, noise variance {noise_variance:.4g}")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["demo-out"]), *(int(a) for a in sys.argv[2:3]))
