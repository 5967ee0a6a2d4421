"""Tomogram-scale crowded maps: complexes and free chains packed at cytoplasmic density in one box.

At cryo-ET voxel sizes (8-12 A) a chain of MODELS is only 4-5 voxels across, and a box of a
tomogram (64^3 at 10 A = 640 A) holds what a cell holds: complexes 100-300 A across among free
proteins, filling a fifth to a third of the volume. Each map here is a cube of `--box` voxels of
`--voxel-size` A filled by `cryoinverse.assemblies.crowd`: first complexes, then single chains,
each randomly rotated at a uniform point of the box where it clashes with nothing placed, until
the protein volume is a fraction of the box drawn uniformly from [--fill-min, --fill-max], of
which complexes hold a share drawn from [--complex-share-min, --complex-share-max]. Complexes
are stacks of 1-4 rings of 5-9 copies (proteasome-, chaperonin-like), closed T, O or I shells of
12, 24 or 60 copies (ferritin-, capsid-like) or compact irregular clusters of 3 to
`--max-chains` chains (ribosome-like). Density: `cryoinverse.simulate.simulate_density`
(5-Gaussian form factors, 2x oversampling) with one B-factor per map drawn uniformly from
[--bmin, --bmax] A^2; chains reaching in from outside the box add their density, as in a crop.
Voxel i's centre lies at i x voxel size A from the origin written in the file.

B-factors: at 10 A voxels the map is band-limited at 20 A whatever B is; B = 200 leaves a
chain's map ringing (its most negative voxel -6 % of its peak) and 12 % of its power beyond
1/30 A^-1, B = 800 -3 % and 7 %, B = 1500 -1 % and 4.5 %: the default 200-1500 spans
subtomogram averages of about 20-35 A. Atoms this much narrower than a voxel alias on a twice
finer grid (7 % of a chain's peak at B = 200, 10 A voxels; 0.7 % at B = 500), so maps of
B < 8 pi^2 (voxel / 4)^2 are evaluated on a three times finer grid (0.7 % at B = 200).

Usage: python scripts/make_complex_maps.py MODEL... --out-dir D [--count 24] [--seed 0] [--keep-existing]
"""

import argparse
import math
from pathlib import Path

import numpy as np

from cryoinverse.assemblies import Box, Chains, crowd
from cryoinverse.atoms import read_atoms
from cryoinverse.mrc import write_volume
from cryoinverse.simulate import FORMS, simulate_density


def add_box_options(parser: argparse.ArgumentParser, count: int, fill: tuple[float, float]) -> None:
    """Options shared with make_filament_maps.py: output, box geometry, crowding and density."""
    parser.add_argument("models", nargs="+", type=Path, help="PDB/mmCIF models to draw chains from")
    parser.add_argument("--out-dir", type=Path, required=True, help="folder for the maps")
    parser.add_argument("--count", type=int, default=count, help="number of maps")
    parser.add_argument("--box", type=int, default=64, help="box edge in voxels")
    parser.add_argument("--voxel-size", type=float, default=10.0, help="voxel size in Angstrom")
    parser.add_argument("--fill-min", type=float, default=fill[0], help="smallest protein volume fraction of a crowded box")
    parser.add_argument("--fill-max", type=float, default=fill[1], help="largest protein volume fraction of a crowded box")
    parser.add_argument("--complex-share-min", type=float, default=0.3, help="smallest share of the protein in complexes")
    parser.add_argument("--complex-share-max", type=float, default=0.9, help="largest share of the protein in complexes")
    parser.add_argument("--max-chains", type=int, default=60, help="most chains in an irregular cluster")
    parser.add_argument("--bmin", type=float, default=200.0, help="smallest B-factor (A^2)")
    parser.add_argument("--bmax", type=float, default=1500.0, help="largest B-factor (A^2)")
    parser.add_argument("--form", choices=FORMS, default="5gaussian", help="atomic form factors (see cryoinverse simulate)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--keep-existing", action="store_true",
                        help="leave maps already in --out-dir as they are (the same seed draws the same boxes)")


def new_box(chains: Chains, args: argparse.Namespace) -> Box:
    """An empty box of args.box voxels: voxel i's centre at i x voxel size, so the box spans [-voxel/2, (box - 1/2) voxel]."""
    return Box(chains, args.box * args.voxel_size, low=-args.voxel_size / 2)


def crowd_box(box: Box, rng: np.random.Generator, args: argparse.Namespace) -> dict:
    """Complexes and free chains up to a fill drawn from [fill_min, fill_max]; counts of what was placed."""
    fill = float(rng.uniform(args.fill_min, args.fill_max))
    share = float(rng.uniform(args.complex_share_min, args.complex_share_max))
    return crowd(box, rng, fill, share, max_chains=args.max_chains)


def oversample_for(bfactor: float, voxel_size: float) -> int:
    """Oversampling that keeps aliasing below 1 % of a chain's peak: 2 when the B-factor's blur is
    at least a quarter voxel wide (sqrt(B / 8 pi^2) >= voxel / 4: B >= 500 A^2 at 10 A), else 3."""
    return 2 if bfactor >= 8 * math.pi**2 * (voxel_size / 4) ** 2 else 3


def write_box(box: Box, path: Path, rng: np.random.Generator, args: argparse.Namespace) -> str:
    """Simulate the box's density at a random B, write it to `path` (unless it is there and
    args.keep_existing: the B is drawn all the same); a summary of the map."""
    if not box.parts:
        raise SystemExit(f"{path}: nothing fits in a {args.box}-voxel box at {args.voxel_size} A; enlarge --box")
    b = float(rng.uniform(args.bmin, args.bmax))
    if args.keep_existing and path.exists():
        return f"kept (B {b:.0f} A^2)"
    atoms = box.assembly().atoms(box.chains, source=path.stem)
    volume = simulate_density(atoms, args.box, args.voxel_size, bfactor=b, form=args.form, centre=False,
                              allow_clip=True, oversample=oversample_for(b, args.voxel_size))
    write_volume(path, volume)
    data = volume.data
    above = float((data > 0.5 * data.max()).float().mean())
    return f"{len(atoms)} atoms, fill {box.fill:.3f}, B {b:.0f} A^2, {100 * above:.1f} % of voxels above half max"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_box_options(parser, count=24, fill=(0.1, 0.3))
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    chains = Chains([read_atoms(p) for p in args.models])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        box = new_box(chains, args)
        counts = crowd_box(box, rng, args)
        path = args.out_dir / f"complexes_{i:03d}.mrc"
        summary = write_box(box, path, rng, args)
        print(f"wrote {path}: {counts['chains']} chains ({counts['ring']} ring stacks, {counts['cage']} cages, "
              f"{counts['cluster']} clusters, {counts['free']} free chains); {summary}", flush=True)


if __name__ == "__main__":
    main()
