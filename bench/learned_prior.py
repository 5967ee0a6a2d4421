"""The shipped default prior against the gaussian prior on held-out maps, spectral-noise task.

Clean maps are simulated from atomic models that the default prior never saw in training
(`cryoinverse simulate` code: 5-Gaussian form factors, 1.5 A voxels, global B = 60 A^2, a box
that holds the model, at least 64^3); any clean MRC maps given with --maps are added as they
are. Each map is degraded with white noise whose power puts the degraded map's FSC-0.5 at 6 A
(and 10 A), then restored by

  degraded   the noisy map as is
  gaussian   the gaussian prior (signal spectrum estimated from the map), exact guidance, 100 steps
  learned    the shipped default prior (`kind = "cryofm"` without weights), CryoFM guidance, 50 steps

Prints the table of the README (mean +- std over maps) and how many maps the learned prior
restores better than the gaussian one (paired, same noise). Rows go to OUT/runs.csv as they
finish; a rerun skips finished rows, so a stopped bench resumes.

  python bench/learned_prior.py                      # held-out models of ../shared/data/models
  python bench/learned_prior.py --models DIR         # every model in DIR instead
  python bench/learned_prior.py --maps MAP.mrc ...   # add clean maps (e.g. real ones)
  python bench/learned_prior.py --maps ... --crop 48  # their centred 48^3 crops (CPU time)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from cryoinverse.atoms import Atoms, read_atoms
from cryoinverse.bench import BenchSpec, Degradation, Method, format_table, read_rows, run_bench, summarize, write_summary
from cryoinverse.mrc import read_volume, write_volume
from cryoinverse.simulate import simulate_density
from cryoinverse.volume import Volume

HERE = Path(__file__).resolve().parent
HELD_OUT = HERE / "default_prior_heldout.txt"
VOXEL, BFACTOR, MIN_BOX, GRANULE = 1.5, 60.0, 64, 16

METHODS = [
    Method("degraded"),
    Method("gaussian", {"kind": "gaussian"}, {"kind": "flow-posterior-euler", "guidance": "exact", "steps": 100}),
    Method("learned", {"kind": "cryofm"}, {"kind": "flow-posterior-euler", "guidance": "cryofm", "steps": 50}),
]


def held_out_ids() -> list[str]:
    """Model ids the default prior was not trained on (bench/default_prior_heldout.txt)."""
    return [line.strip() for line in HELD_OUT.read_text().splitlines() if line.strip() and not line.startswith("#")]


def model_files(folder: Path, only: list[str] | None) -> list[Path]:
    """PDB/mmCIF files in `folder`, restricted to the ids in `only` when given."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".pdb", ".cif", ".ent", ".mmcif"))
    if only is not None:
        files = [p for p in files if p.stem in only]
    if not files:
        raise SystemExit(f"{folder}: no models to simulate")
    return files


def box_for(atoms: Atoms) -> int:
    """Edge (voxels) of a box holding the model centred, with 8 A to spare, a multiple of 16."""
    xyz = atoms.positions
    extent = float(np.abs(xyz - xyz.mean(axis=0)).max()) * 2 + 16.0
    return max(MIN_BOX, GRANULE * math.ceil(extent / VOXEL / GRANULE))


def simulate_maps(models: list[Path], folder: Path) -> list[Path]:
    """One clean map per model in `folder` (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for model in models:
        target = folder / f"{model.stem}.mrc"
        if not target.exists():
            atoms = read_atoms(model)
            write_volume(target, simulate_density(atoms, box_for(atoms), VOXEL, bfactor=BFACTOR))
        out.append(target)
    return out


def cropped(paths: list[Path], edge: int | None, folder: Path) -> list[Path]:
    """The clean maps to add: as they are, or their centred `edge`^3 crops written to `folder`."""
    if edge is None:
        return list(paths)
    out = []
    for path in paths:
        target = folder / f"{path.stem}_crop{edge}.mrc"
        if not target.exists():
            volume = read_volume(path)
            starts = [max(0, (n - edge) // 2) for n in volume.shape]
            data = volume.data[tuple(slice(s, s + edge) for s in starts)]
            origin = tuple(o + s * volume.voxel_size for o, s in zip(volume.origin, starts))
            write_volume(target, Volume(data.contiguous(), volume.voxel_size, origin))
        out.append(target)
    return out


def wins(rows: list[dict], degradation: str, a: str, b: str) -> tuple[int, int]:
    """(maps where method a has the higher AUC-FSC than b, maps with both) for one degradation."""
    auc = {(r["map"], r["method"]): float(r["auc"]) for r in rows if r["degradation"] == degradation}
    maps = sorted({m for m, _ in auc if (m, a) in auc and (m, b) in auc})
    return sum(auc[(m, a)] > auc[(m, b)] for m in maps), len(maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="folder of atomic models (default: the held-out models of ../shared/data/models)")
    parser.add_argument("--maps", type=Path, nargs="*", default=[], help="clean MRC maps to add as they are")
    parser.add_argument("--crop", type=int, help="use centred crops of this edge (voxels) of the --maps")
    parser.add_argument("--resolutions", type=float, nargs="+", default=[6.0, 10.0], help="FSC-0.5 of the degraded maps (A)")
    parser.add_argument("--out-dir", type=Path, default=HERE / "learned-prior-out", help="results folder (resumable)")
    parser.add_argument("--seed", type=int, default=0, help="noise and sampler seed")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    args = parser.parse_args()

    if args.models is None:
        models = model_files(HERE.parent.parent / "shared" / "data" / "models", held_out_ids())
    else:
        models = model_files(args.models, None)
    simulated = simulate_maps(models, args.out_dir / "maps")
    extra = cropped(args.maps, args.crop, args.out_dir / "maps")
    maps = simulated + extra
    degradations = [
        Degradation(f"spectral-{r:g}A", {"kind": "spectral-noise"}, target_resolution=r) for r in args.resolutions
    ]
    bench = BenchSpec(maps=maps, degradations=degradations, methods=METHODS, out_dir=args.out_dir, seed=args.seed, device=args.device)
    print(f"{len(maps)} maps x {len(degradations)} degradations x {len(METHODS)} methods -> {args.out_dir / 'runs.csv'}", flush=True)
    runs = run_bench(bench, echo=lambda line: print(line, flush=True))
    rows = read_rows(runs)
    names = {p.name for p in maps}
    rows = [r for r in rows if r["map"] in names]  # this invocation's maps only
    write_summary(args.out_dir, summarize(rows))
    groups = [(f"{len(simulated)} simulated held-out maps", {p.name for p in simulated})]
    groups += [(p.name, {p.name}) for p in extra]
    for title, members in groups:
        chosen = [r for r in rows if r["map"] in members]
        print(f"\n{title}:")
        print(format_table(summarize(chosen)))
        for d in degradations:
            won, n = wins(chosen, d.name, "learned", "gaussian")
            print(f"{d.name}: learned beats gaussian in AUC-FSC on {won} of {n} maps")


if __name__ == "__main__":
    main()
