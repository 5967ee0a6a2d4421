"""Crowded training maps: several protein chains, randomly rotated and placed, in one box.

Real maps are often crops from inside a complex, full of density, unlike one chain centred in
solvent. Each map here holds `--chains` models drawn at random from MODELS, each rotated
uniformly on SO(3) and centred at a uniform point of a cube of `--spread` A, simulated by
`cryoinverse.simulate.simulate_density` (5-Gaussian, 2x oversampling) with one B-factor drawn
uniformly from [--bmin, --bmax] per map; density outside the box is dropped.

A model listed k times is drawn k times as often.

Usage: python scripts/make_crowded_maps.py MODEL... --out-dir D [--count 24] [--seed 0] [--prefix crowded]
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from cryoinverse.atoms import Atoms, read_atoms
from cryoinverse.mrc import write_volume
from cryoinverse.rotations import random_rotations
from cryoinverse.simulate import simulate_density


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="PDB/mmCIF models to draw chains from")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for PREFIX_NNN.mrc")
    parser.add_argument("--prefix", default="crowded", help="file name prefix of the maps")
    parser.add_argument("--count", type=int, default=24, help="number of maps")
    parser.add_argument("--chains", type=int, default=8, help="chains per map")
    parser.add_argument("--box", type=int, default=80, help="box edge in voxels")
    parser.add_argument("--voxel-size", type=float, default=1.5, help="voxel size in Angstrom")
    parser.add_argument("--spread", type=float, default=70.0, help="edge (A) of the cube the chain centres fall in")
    parser.add_argument("--bmin", type=float, default=30.0, help="smallest B-factor (A^2)")
    parser.add_argument("--bmax", type=float, default=150.0, help="largest B-factor (A^2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    chains = [read_atoms(p) for p in args.models]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        picks = rng.choice(len(chains), size=args.chains, replace=True)
        rotations = random_rotations(args.chains, generator).numpy()
        parts = []
        for k, r in zip(picks, rotations):
            atoms = chains[k]
            xyz = atoms.positions - atoms.positions.mean(axis=0)
            parts.append((xyz @ r.T + rng.uniform(-args.spread / 2, args.spread / 2, size=3), atoms))
        crowd = Atoms(
            np.concatenate([p for p, _ in parts]),
            np.concatenate([a.elements for _, a in parts]),
            np.concatenate([a.b_factors for _, a in parts]),
            np.concatenate([a.occupancies for _, a in parts]),
            source=f"{args.prefix}_{i:03d}",
        )
        b = float(rng.uniform(args.bmin, args.bmax))
        volume = simulate_density(crowd, args.box, args.voxel_size, bfactor=b, allow_clip=True)
        path = write_volume(args.out_dir / f"{args.prefix}_{i:03d}.mrc", volume)
        print(f"wrote {path} ({len(crowd)} atoms, B {b:.0f} A^2)")


if __name__ == "__main__":
    main()
