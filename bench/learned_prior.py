"""The shipped learned prior against the gaussian prior, on maps it was not made from, under noise like real data.

Clean maps:
  - held-out atomic models (bench/default_prior_heldout.txt: never in the prior's training data),
    each through one of VARIANTS: both simulator forms (`--form 5gaussian` and `gaussian`), global
    B-factors of 20-150 A^2 and voxel sizes of 1.0-2.5 A (the runner resamples to the prior's 1.5 A);
  - with --nucleic DIR (a folder of scripts/fetch_nucleic_acid_models.py), its held-out RNA/DNA and
    protein-nucleic acid models (DIR/heldout.txt: never in the prior's training data), through the
    same VARIANTS, reported as a group of their own;
  - any clean maps given with --maps, at full size (real maps: non-cubic ones are zero-padded to a
    cube, centred; a header without a voxel size takes --voxel-size NAME=A).

Degradations (`--noise`): two half maps, each with twice the noise of their average, the noise
estimated from them as with real data (`half_maps = true`). The noise variance rises with
frequency so that the expected FSC(degraded, clean) falls off like a logistic and first crosses
0.5 at 4, 6 and 10 A (`logistic`, the default), or is white with FSC 0.5 there (`white`).
Levels beyond a map's Nyquist are skipped.

Methods:
  degraded   the noisy map as is
  gaussian   the gaussian prior (signal spectrum estimated from the map), exact posterior, mean of 4 samples, 100 steps
  learned    the shipped prior (`kind = "cryofm"`, weights by voxel size unless --weights), Wiener guidance
             (prior_error 4), mean of 4 samples, 10 steps

Prints the README's tables (mean +- std over maps) and, per level, on how many maps the learned
prior beats the degraded map and the gaussian prior (paired, same noise). Rows go to
OUT/runs.csv as they finish; a rerun skips finished rows, so a stopped bench resumes.

  python bench/learned_prior.py                                  # held-out models
  python bench/learned_prior.py --models DIR                     # every model in DIR instead
  python bench/learned_prior.py --no-models --nucleic nucleic_models   # held-out nucleic-acid models only
  python bench/learned_prior.py --no-models --maps ../shared/data/maps/*.m* --voxel-size clean70SRibosome_vol_65p=4.0
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import attrs
import numpy as np
import torch

from cryoinverse.atoms import Atoms, read_atoms
from cryoinverse.bench import BenchSpec, Degradation, Method, format_table, read_rows, run_bench, summarize, write_summary
from cryoinverse.mrc import read_volume, write_volume
from cryoinverse.simulate import simulate_density
from cryoinverse.volume import Volume

HERE = Path(__file__).resolve().parent
HELD_OUT = HERE / "default_prior_heldout.txt"
MIN_EXTENT_A, GRANULE = 96.0, 16
# (form, B in A^2, voxel in A): held-out model i is simulated with VARIANTS[i % len(VARIANTS)]
VARIANTS = [
    ("5gaussian", 60.0, 1.5),
    ("gaussian", 30.0, 1.5),
    ("5gaussian", 120.0, 1.2),
    ("gaussian", 90.0, 2.0),
    ("5gaussian", 20.0, 1.0),
    ("gaussian", 150.0, 1.5),
    ("5gaussian", 80.0, 2.5),
    ("gaussian", 50.0, 1.8),
    ("5gaussian", 40.0, 1.5),
]
SAMPLES = 4

METHODS = [
    Method("degraded"),
    Method("gaussian", {"kind": "gaussian"}, {"kind": "flow-posterior-euler", "guidance": "exact", "steps": 100}, SAMPLES),
    Method("learned", {"kind": "cryofm"}, {"kind": "flow-posterior-euler", "guidance": "wiener", "prior_error": 4.0, "steps": 10}, SAMPLES),
]


def held_out_ids(path: Path = HELD_OUT) -> list[str]:
    """Model ids the default prior was not trained on (bench/default_prior_heldout.txt, or a fetch folder's heldout.txt)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def model_files(folder: Path, only: list[str] | None) -> list[Path]:
    """PDB/mmCIF files in `folder`, restricted to the ids in `only` when given."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".pdb", ".cif", ".ent", ".mmcif"))
    if only is not None:
        files = [p for p in files if p.stem in only]
    if not files:
        raise SystemExit(f"{folder}: no models to simulate")
    return files


def box_for(atoms: Atoms, voxel: float) -> int:
    """Edge (voxels) of a box holding the model centred with 8 A to spare (at least 96 A), a multiple of 16."""
    xyz = atoms.positions
    extent = max(MIN_EXTENT_A, float(np.abs(xyz - xyz.mean(axis=0)).max()) * 2 + 16.0)
    return GRANULE * math.ceil(extent / voxel / GRANULE)


def simulate_maps(models: list[Path], folder: Path) -> list[Path]:
    """One clean map per model, each through its variant, in `folder` (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, model in enumerate(models):
        form, bfactor, voxel = VARIANTS[i % len(VARIANTS)]
        target = folder / f"{model.stem}_{form}_b{bfactor:g}_{voxel:g}A.mrc"
        if not target.exists():
            atoms = read_atoms(model)
            write_volume(target, simulate_density(atoms, box_for(atoms, voxel), voxel, bfactor=bfactor, form=form))
        out.append(target)
    return out


def cubic(paths: list[Path], folder: Path, voxel_sizes: dict[str, float]) -> list[Path]:
    """The clean maps as cubes: cubic ones as they are, others zero-padded (centred) into `folder`."""
    out = []
    for path in paths:
        name = path.name.split(".")[0]
        volume = read_volume(path, voxel_sizes.get(name))
        if volume.is_cubic and name not in voxel_sizes:
            out.append(path)
            continue
        target = folder / f"{name}_cube.mrc"
        if not target.exists():
            n = max(volume.shape)
            data = torch.zeros((n, n, n), dtype=torch.float32)
            starts = [(n - s) // 2 for s in volume.shape]
            data[tuple(slice(a, a + s) for a, s in zip(starts, volume.shape))] = volume.data
            origin = tuple(o - a * volume.voxel_size for o, a in zip(volume.origin, starts))
            write_volume(target, Volume(data, volume.voxel_size, origin))
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
    parser.add_argument("--no-models", action="store_true", help="no simulated maps: only --maps")
    parser.add_argument("--nucleic", type=Path, help="folder of scripts/fetch_nucleic_acid_models.py: add its held-out models")
    parser.add_argument("--maps", type=Path, nargs="*", default=[], help="clean MRC maps to add, at full size")
    parser.add_argument("--voxel-size", nargs="*", default=[], metavar="NAME=A", help="voxel size of a --maps file whose header lacks it")
    parser.add_argument("--resolutions", type=float, nargs="+", default=[4.0, 6.0, 10.0], help="FSC-0.5 of the degraded maps (A)")
    parser.add_argument("--noise", choices=["logistic", "white"], default="logistic", help="noise shape (see above)")
    parser.add_argument("--methods", nargs="+", default=[m.name for m in METHODS], help="methods to run")
    parser.add_argument("--weights", help="the learned method's cryofm weights: default, tomo or a .safetensors path (default: auto, by voxel size)")
    parser.add_argument("--out-dir", type=Path, default=HERE / "learned-prior-out", help="results folder (resumable)")
    parser.add_argument("--seed", type=int, default=0, help="noise and sampler seed")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    args = parser.parse_args()

    simulated: list[Path] = []
    if not args.no_models:
        if args.models is None:
            models = model_files(HERE.parent.parent / "shared" / "data" / "models", held_out_ids())
        else:
            models = model_files(args.models, None)
        simulated = simulate_maps(models, args.out_dir / "maps")
    nucleic: list[Path] = []
    if args.nucleic is not None:
        nucleic = simulate_maps(model_files(args.nucleic, held_out_ids(args.nucleic / "heldout.txt")), args.out_dir / "maps")
    voxel_sizes = {k: float(v) for k, v in (item.split("=", 1) for item in args.voxel_size)}
    (args.out_dir / "maps").mkdir(parents=True, exist_ok=True)
    extra = cubic(args.maps, args.out_dir / "maps", voxel_sizes)
    maps = simulated + nucleic + extra
    degradations = [
        Degradation(f"{args.noise}-{r:g}A", {"kind": "spectral-noise"}, target_resolution=r, noise_shape=args.noise, half_maps=True)
        for r in args.resolutions
    ]
    methods = [m for m in METHODS if m.name in args.methods]
    if args.weights:
        methods = [attrs.evolve(m, prior={**m.prior, "weights": args.weights}) if m.name == "learned" else m for m in methods]
    bench = BenchSpec(maps=maps, degradations=degradations, methods=methods, out_dir=args.out_dir, seed=args.seed, device=args.device)
    print(f"{len(maps)} maps x {len(degradations)} degradations x {len(methods)} methods -> {args.out_dir / 'runs.csv'}", flush=True)
    runs = run_bench(bench, echo=lambda line: print(line, flush=True))
    rows = read_rows(runs)
    names = {p.name for p in maps}
    rows = [r for r in rows if r["map"] in names and r["degradation"] in {d.name for d in degradations}]
    write_summary(args.out_dir, summarize(rows))
    groups = [(f"{len(simulated)} simulated held-out maps", {p.name for p in simulated})] if simulated else []
    groups += [(f"{len(nucleic)} held-out nucleic-acid maps", {p.name for p in nucleic})] if nucleic else []
    groups += [(p.name, {p.name}) for p in extra]
    for title, members in groups:
        chosen = [r for r in rows if r["map"] in members]
        if not chosen:
            continue
        print(f"\n{title}:")
        print(format_table(summarize(chosen)))
        for d in degradations:
            for other in ("degraded", "gaussian"):
                won, n = wins(chosen, d.name, "learned", other)
                if n:
                    print(f"{d.name}: learned beats {other} in AUC-FSC on {won} of {n} maps")


if __name__ == "__main__":
    main()
