"""Tomogram-scale filament maps: copies of a chain on helical lattices crossing the box, alone or among complexes.

Filaments are what cryo-ET sees most clearly in cells, and their density is unlike that of
scattered complexes: long, straight, periodic. Each map here is a cube of `--box` voxels of
`--voxel-size` A holding 1 to `--max-filaments` filaments, each a helical lattice
(`cryoinverse.assemblies.helical_lattice`) of randomly chosen, randomly oriented chains, its
axis in a uniformly random direction (or, in a fraction `--parallel` of the maps, one direction
shared by all, as in bundles) through a uniform point of the box's central half, long enough to
cross the box; a filament that would clash with one already there is redrawn, up to 20 times.
A fraction `--tube-fraction` of the filaments are microtubule-like, the others actin-like:

- tube: 11-16 protofilaments (13 most often), 3-start (4-start from 15), monomer rise 39-42 A
  with two chains alternating along each protofilament (alpha/beta: an 80-84 A dimer repeat and
  a seam), protofilaments 48-56 A apart (radius 84-143 A, 103 A for 13 at 50 A), a supertwist
  of up to +-0.4 degrees per monomer (none for 13); its lumen is kept free of other chains;
- thin: one chain on a one-start helix of radius 25-45 A, rise 26.5-28.5 A and twist -168 to
  -163 degrees (actin: 27.5 A, -166.7; cofilin-decorated actin twists less).

A fraction `--crowd-fraction` of the maps is then crowded with complexes and free chains as
make_complex_maps.py does, to a fill drawn from [--fill-min, --fill-max]. Density, B-factors and
voxel positions are as in make_complex_maps.py.

Usage: python scripts/make_filament_maps.py MODEL... --out-dir D [--count 24] [--seed 0] [--keep-existing]
"""

import argparse
import math

import numpy as np

from cryoinverse.assemblies import Assembly, Box, Chains, helical_lattice, random_rotations, rotation_about
from cryoinverse.atoms import read_atoms

# a sibling script: run as `python scripts/make_filament_maps.py`, its folder is on sys.path
from make_complex_maps import add_box_options, crowd_box, new_box, write_box

PROTOFILAMENTS = (11, 12, 13, 14, 15, 16)
PROTOFILAMENT_WEIGHTS = (0.05, 0.15, 0.4, 0.2, 0.1, 0.1)  # 13 dominates in cells; 12-16 grow in vitro


def random_filament(kind: str, chains: Chains, length: float, rng: np.random.Generator) -> tuple[Assembly, dict]:
    """A random filament of `kind` ("tube" or "thin") along z, centred at z = 0, `length` A long.

    Returns the assembly and its lattice parameters (the arguments of `helical_lattice`, with
    chain indices in `chain_cycle`); the module docstring gives the ranges.
    """
    if kind == "tube":
        strands = int(rng.choice(PROTOFILAMENTS, p=PROTOFILAMENT_WEIGHTS))
        starts = 3 if strands <= 14 else 4
        rise = float(rng.uniform(39.0, 42.0))
        spacing = float(rng.uniform(48.0, 56.0))
        params = {
            "radius": strands * spacing / (2 * math.pi), "rise": rise,
            "twist": 0.0 if strands == 13 else float(rng.uniform(-0.4, 0.4)),
            "strands": strands, "stagger": starts * rise / strands,
            "chain_cycle": [int(k) for k in rng.integers(0, len(chains), size=2)],
        }
    elif kind == "thin":
        params = {
            "radius": float(rng.uniform(25.0, 45.0)), "rise": float(rng.uniform(26.5, 28.5)),
            "twist": float(rng.uniform(-168.0, -163.0)), "strands": 1, "stagger": 0.0,
            "chain_cycle": [int(rng.integers(len(chains)))],
        }
    else:
        raise ValueError(f"unknown filament kind {kind!r}: use 'tube' or 'thin'")
    params["phase"] = float(rng.uniform(0.0, 360.0))
    params["length"] = float(length)
    params["base_rotations"] = random_rotations(len(params["chain_cycle"]), rng)
    lattice = helical_lattice(**params)
    if kind == "tube":  # blockers along the axis keep other chains out of the lumen
        lumen = max(params["radius"] - chains.radii[params["chain_cycle"]].max(), 0.0)
        if lumen > 0:
            z = np.arange(-length / 2, length / 2 + lumen / 2, lumen / 2)
            lattice = Assembly(lattice.chains, lattice.rotations, lattice.centres,
                               np.stack([np.zeros_like(z), np.zeros_like(z), z], axis=1), np.full(len(z), lumen))
    return lattice, dict(params, kind=kind)


def add_filaments(box: Box, rng: np.random.Generator, count: int, tube_fraction: float, parallel: bool, attempts: int = 20) -> list[dict]:
    """Add up to `count` random filaments crossing `box`; the parameters of those placed."""
    length = math.sqrt(3) * box.edge + 2 * box.margin
    shared = random_rotations(1, rng)[0]
    placed = []
    for _ in range(count):
        kind = "tube" if rng.uniform() < tube_fraction else "thin"
        lattice, params = random_filament(kind, box.chains, length, rng)
        for _ in range(attempts):
            # the filament frame's z axis becomes the axis: shared by a bundle, spun at random about it
            turn = shared @ rotation_about((0, 0, 1), rng.uniform(0, 360)) if parallel else random_rotations(1, rng)[0]
            through = box.low + box.edge * rng.uniform(0.25, 0.75, size=3)
            if box.add(lattice.moved(turn, through)) is not None:
                placed.append(dict(params, axis=turn[:, 2].tolist(), through=through.tolist()))
                break
    return placed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_box_options(parser, count=24, fill=(0.05, 0.25))
    parser.add_argument("--max-filaments", type=int, default=4, help="most filaments in a map")
    parser.add_argument("--tube-fraction", type=float, default=0.5, help="fraction of filaments that are microtubule-like")
    parser.add_argument("--parallel", type=float, default=0.3, help="fraction of maps whose filaments share one direction")
    parser.add_argument("--crowd-fraction", type=float, default=0.6, help="fraction of maps crowded with complexes around the filaments")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    chains = Chains([read_atoms(p) for p in args.models])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        box = new_box(chains, args)
        count = int(rng.integers(1, args.max_filaments + 1))
        filaments = add_filaments(box, rng, count, args.tube_fraction, parallel=bool(rng.uniform() < args.parallel))
        placed = sum(len(p) for p in box.parts)
        crowded = ""
        if rng.uniform() < args.crowd_fraction:
            counts = crowd_box(box, rng, args)
            crowded = (f", among {counts['chains']} chains ({counts['ring']} ring stacks, {counts['cage']} cages, "
                       f"{counts['cluster']} clusters, {counts['free']} free chains)")
        kinds = ", ".join(f"{f['kind']} {f['strands']}x r {f['radius']:.0f} A rise {f['rise']:.1f} A twist {f['twist']:.1f}"
                          for f in filaments)
        path = args.out_dir / f"filaments_{i:03d}.mrc"
        summary = write_box(box, path, rng, args)
        print(f"wrote {path}: {len(filaments)} filaments [{kinds}] of {placed} chains{crowded}; {summary}", flush=True)


if __name__ == "__main__":
    main()
