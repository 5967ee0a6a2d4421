"""Ab initio from random poses: FSC against the true map and pose error, by SNR and number of images.

Held-out models (bench/default_prior_heldout.txt, never used to tune anything) are simulated at
`--pixel` Å on a `--box`^3 grid; each stack has uniform random rotations, shifts of up to ±4
pixels, a CTF (defocus 0.8-2.5 µm, 300 kV, applied on the box as `bench/poses.py` does) and
white noise at each `--snr` (signal variance over noise variance; 0: none). `cryoinverse.abinitio`
runs at its defaults (15 Å target) from random poses. Printed per (map, SNR, images): FSC-0.5 and
FSC-0.143 of the map against the truth after alignment over both hands (`align_maps(...,
allow_mirror=True)`), the median rotation error after the best global rotation over both hands,
the fraction of images within 10°, the hand found, wall time and peak memory of the process.
Rows also for a peer's test data in ../shared/data/particles (cryoDRGN): the 1000 clean toy
projections (30 px, 1 Å, shifted, no CTF) of its toy map, and the 100 projections of the chiral
"hand" (64 px, 1 Å, no shifts, no CTF).

  python bench/abinitio.py                                  # 3 models, 1000 images of 64 px at 2 Å, SNR 1 and 0.1
  python bench/abinitio.py --maps 1 --images 300 1000 --snr 1
  python bench/abinitio.py --maps 0 --refine plain cryofm --no-peer      # the complex, refined without and with the learned prior
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import time
from pathlib import Path

import numpy as np
import torch

from cryoinverse.abinitio import AbInitio, hand_aware_pose_errors, run_abinitio
from cryoinverse.align import align_maps
from cryoinverse.ctf import CTFParams
from cryoinverse.metrics import fsc, resolution_at
from cryoinverse.mrc import read_volume
from cryoinverse.reconstruct import reconstruct
from cryoinverse.refine import Refinement, prior_regularizer, run_refinement

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"


def _poses_bench():
    """bench/poses.py as a module: its held-out maps and its stacks, so both benches see the same data."""
    spec = importlib.util.spec_from_file_location("bench_poses", HERE / "poses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def score(name: str, method: str, volume: torch.Tensor, found: torch.Tensor, pixel: float, rotations: torch.Tensor | None,
          estimated: torch.Tensor | None, count: int, seconds: float) -> dict:
    """The row of one result: `found` map against `volume` over both hands, `estimated` poses against `rotations`."""
    alignment, moved = align_maps(volume.double(), found.double(), pixel, allow_mirror=True)
    curve = fsc(moved, volume.double())
    n = volume.shape[-1]
    row = {"map": name, "method": method, "images": count, "fsc05": resolution_at(curve, pixel, 0.5, n),
           "fsc0143": resolution_at(curve, pixel, 0.143, n), "pose_median": None, "within10": None, "mirror": alignment.mirror,
           "seconds": seconds, "peak_mib": peak_mib()}
    if estimated is not None:
        errors, _ = hand_aware_pose_errors(estimated, rotations)
        row.update(pose_median=float(errors.median()), within10=float((errors <= 10).double().mean()))
    return row


def evaluate(name: str, volume: torch.Tensor, images: torch.Tensor, pixel: float, ctf, rotations: torch.Tensor, settings: AbInitio,
             refine: list[str] = (), shifts: torch.Tensor | None = None) -> list[dict]:
    """Rows of ab initio, then of each refinement in `refine` (plain, cryofm) from its result, then of the reconstruction at the true poses."""
    start = time.perf_counter()
    result = run_abinitio(images.float(), pixel, ctf, settings)
    rows = [score(name, "abinitio", volume, result.volume, pixel, rotations, result.poses.rotations, images.shape[0], time.perf_counter() - start)]
    for prior in refine:
        start = time.perf_counter()
        regularize = None if prior == "plain" else prior_regularizer(prior)
        refined = run_refinement(images.float(), pixel, result.volume, result.poses, ctf, Refinement(), regularize=regularize)
        rows.append(score(name, f"+ refine ({prior})", volume, refined.volume, pixel, rotations, refined.poses.rotations, images.shape[0],
                          time.perf_counter() - start))
    if refine:
        start = time.perf_counter()
        true = reconstruct(images.float(), rotations, pixel, shifts, ctf).volume
        rows.append(score(name, "true poses", volume, true, pixel, None, None, images.shape[0], time.perf_counter() - start))
    return rows


def print_row(row: dict, snr: str) -> None:
    pose = "" if row["pose_median"] is None else f"{row['pose_median']:.1f}"
    within = "" if row["within10"] is None else f"{100 * row['within10']:.0f}%"
    print(
        f"| {row['map']} | {row['method']} | {snr} | {row['images']} | {row['fsc05']:.1f} | {row['fsc0143']:.1f} | {pose} | "
        f"{within} | {'mirror' if row['mirror'] else 'same'} | {row['seconds']:.0f} | {row['peak_mib']:.0f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=3, help="held-out models to use")
    parser.add_argument("--box", type=int, default=64, help="box edge in pixels")
    parser.add_argument("--pixel", type=float, default=2.0, help="pixel size, Å")
    parser.add_argument("--images", type=int, nargs="+", default=[1000], help="stack sizes")
    parser.add_argument("--snr", type=float, nargs="*", default=[1.0, 0.1], help="signal-to-noise ratios (0: no noise)")
    parser.add_argument("--no-peer", action="store_true", help="leave out cryoDRGN's toy and hand stacks")
    parser.add_argument("--no-complex", action="store_true", help="leave out the 4-chain complex")
    parser.add_argument("--seed", type=int, default=1, help="seed of the stacks")
    parser.add_argument("--refine", nargs="*", default=[], choices=["plain", "cryofm"],
                        help="also refine each ab initio result (plain; cryofm: references regularised by the learned prior), "
                        "with a row for the reconstruction at the true poses")
    args = parser.parse_args()
    settings = AbInitio()
    print(f"cryoinverse abinitio at its defaults ({settings.start_resolution:g} -> {settings.resolution:g} Å, {settings.iterations} iterations, "
          f"{settings.starts} starts, {settings.batch} images per early iteration); {torch.get_num_threads()} threads")
    print("| map | method | SNR | images | FSC-0.5 (Å) | FSC-0.143 (Å) | median pose error (°) | within 10° | hand | seconds | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    poses_bench = _poses_bench()
    ids = [ln.strip() for ln in (HERE / "default_prior_heldout.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    maps = [(model, lambda m=model: _simulate(m, args.box, args.pixel)) for model in ids[: args.maps]]
    if not args.no_complex:
        maps.append((f"complex of {', '.join(ids[:4])}", lambda: _complex(ids[:4], args.box, args.pixel, args.seed)))
    for model, make in maps:
        volume = make()
        chance = _chance(volume, args.pixel)
        print(f"| {model} | random poses (chance) | | | {chance[0]:.1f} | {chance[1]:.1f} | ~126 | 0% | | | |", flush=True)
        for snr in args.snr:
            for count in args.images:
                images, _, truth = poses_bench.stack(volume, count, args.pixel, snr, args.seed)
                ctf = _ctf_params(count, args.seed)
                for row in evaluate(model, volume, images, args.pixel, ctf, truth.rotations, settings, args.refine, truth.shifts):
                    print_row(row, "inf" if snr == 0 else f"{snr:g}")
    if not args.no_peer and SHARED.is_dir():
        toy = read_volume(SHARED / "particles" / "toymodel_small_nocenter.mrc").data.double()
        toy_images = torch.from_numpy(_stack(SHARED / "particles" / "toy_projections.mrcs")).double()
        toy_rot = torch.from_numpy(np.load(SHARED / "particles" / "toy_rot_trans.npz")["rotations"]).double()
        toy_settings = AbInitio(resolution=4.0, start_resolution=10.0, shift_range=5.0)  # its shifts reach 0.16 of the box
        print_row(evaluate("cryoDRGN toy (30 px, 1 Å)", toy, toy_images, 1.0, None, toy_rot, toy_settings)[0], "inf")
        hand = read_volume(SHARED / "particles" / "hand-vol.mrc").data.double()
        hand_images = torch.from_numpy(_stack(SHARED / "particles" / "hand.mrcs")).double()
        hand_rot = torch.from_numpy(np.load(SHARED / "particles" / "hand_rot.npz")["rotations"]).double()
        hand_settings = AbInitio(resolution=8.0, start_resolution=20.0, shift_range=2.0)
        print_row(evaluate("cryoDRGN hand (64 px, 1 Å)", hand, hand_images, 1.0, None, hand_rot, hand_settings)[0], "inf")


def _chance(volume: torch.Tensor, pixel: float) -> tuple[float, float]:
    """FSC-0.5 and 0.143 (Å) against the truth of the map of 1000 clean projections at random poses: what a
    failed ab initio scores (a blob of the particle's size), the floor the rows above must clear."""
    from cryoinverse.projection import project_fourier
    from cryoinverse.reconstruct import reconstruct
    from cryoinverse.rotations import random_rotations

    g = torch.Generator().manual_seed(12345)
    images = project_fourier(volume, random_rotations(1000, g), None, pixel, interpolation="sinc")
    blob = reconstruct(images.float(), random_rotations(1000, g), pixel).volume.double()
    _, moved = align_maps(volume, blob, pixel, allow_mirror=True)
    curve = fsc(moved, volume)
    n = volume.shape[-1]
    return resolution_at(curve, pixel, 0.5, n), resolution_at(curve, pixel, 0.143, n)


def _simulate(model: str, box: int, pixel: float) -> torch.Tensor:
    from cryoinverse.atoms import read_atoms
    from cryoinverse.simulate import simulate_density

    return simulate_density(read_atoms(SHARED / "models" / f"{model}.pdb"), box, pixel).data.double()


def _complex(models: list[str], box: int, pixel: float, seed: int) -> torch.Tensor:
    """An irregular cluster of one copy of each of `models` (`cryoinverse.assemblies.cluster_complex`), simulated at `pixel` Å."""
    from cryoinverse.assemblies import Chains, cluster_complex
    from cryoinverse.atoms import read_atoms
    from cryoinverse.simulate import simulate_density

    chains = Chains([read_atoms(SHARED / "models" / f"{m}.pdb") for m in models])
    assembly = cluster_complex(chains, list(range(len(models))), np.random.default_rng(seed))
    return simulate_density(assembly.atoms(chains), box, pixel).data.double()


def _ctf_params(count: int, seed: int) -> CTFParams:
    """The CTF parameters `bench/poses.py`'s stack draws for the same seed (its generator's order)."""
    g = torch.Generator().manual_seed(seed)
    from cryoinverse.rotations import random_rotations

    random_rotations(count, g)
    torch.randint(-4, 5, (count, 2), generator=g)
    defocus = 8000 + 17000 * torch.rand(count, generator=g, dtype=torch.float64)
    return CTFParams(defocus_u=defocus, defocus_v=defocus * 0.97, defocus_angle=torch.rand(count, generator=g) * 180)


def _stack(path: Path) -> np.ndarray:
    import mrcfile

    with mrcfile.open(path, permissive=True) as mrc:
        return np.asarray(mrc.data, dtype=np.float64)


if __name__ == "__main__":
    main()
