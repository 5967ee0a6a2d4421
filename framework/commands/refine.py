"""`cryoinverse refine`: gold-standard refinement of the poses and map of a particle stack from a starting map."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..errors import DataError
from ..progress import bar, silent
from .shared import check_outputs_and_checkpoint, load_checkpoint, particle_stack, save_checkpoint

NAMES = ("map.mrc", "half1.mrc", "half2.mrc", "poses.star", "fsc.csv", "fsc.png", "report.json")


@click.command("refine")
@click.argument("particles", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--map", "map_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="starting map (MRC), e.g. abinitio's map.mrc; resampled to the images' pixel size when its own differs")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="folder for map.mrc, half1.mrc, half2.mrc, poses.star, fsc.csv, fsc.png and report.json")
@click.option("--prior", default=None, help="regularise each iteration's references with this registered prior's flow posterior (e.g. cryofm; default: none, FSC weighting only)")
@click.option("--prior-param", "prior_params", multiple=True, metavar="FIELD=VALUE", help="field of the --prior (repeatable), e.g. --prior-param weights=default")
@click.option("--initial-resolution", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True, help="low-pass of the starting map, Å: the half maps share nothing beyond it")
@click.option("--iterations", type=click.IntRange(min=1), default=12, show_default=True, help="most iterations (it stops when the resolution stops improving)")
@click.option("--step", type=click.FloatRange(min=0, min_open=True), default=3.75, show_default=True, help="first angular step of the local search, degrees (halving each iteration)")
@click.option("--shift-range", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True, help="largest in-plane shift, Å")
@click.option("--local-shift-range", type=click.FloatRange(min=0), default=3.0, show_default=True, help="shifts searched within this many Å of each image's current shift")
@click.option("--global-iteration", type=click.IntRange(min=0), default=2, show_default=True, help="iteration whose local search is joined by a global one, each image keeping the better pose (0: none)")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed of the split into two half sets")
@click.option("--memory-gb", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="rough bound on the working memory of one batch of the pose search, GB")
@click.option("--ctf/--no-ctf", default=True, help="use each image's CTF when the STAR file has CTF columns  [default: --ctf]")
@click.option("--pixel-size", type=click.FloatRange(min=0, min_open=True), help="image pixel size in Å, overriding the STAR file and the stack headers")
@click.option("--datadir", type=click.Path(file_okay=False, path_type=Path), help="folder to look for the image stacks of rlnImageName in first (as RELION's --datadir)")
@click.option("--resume", is_flag=True, help="continue from the checkpoint of a stopped run (refused when inputs or settings changed)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object: the outputs, the resolution and the iterations")
@click.option("--overwrite", is_flag=True, help="replace existing outputs, and start again over an old checkpoint")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def refine(
    particles: Path, map_path: Path, out_dir: Path, prior: str | None, prior_params: tuple[str, ...], initial_resolution: float,
    iterations: int, step: float, shift_range: float, local_shift_range: float, global_iteration: int, seed: int, memory_gb: float, ctf: bool,
    pixel_size: float | None, datadir: Path | None, resume: bool, as_json: bool, overwrite: bool, quiet: bool,
) -> None:
    """Gold-standard refinement: two independent half sets, local pose search, the half maps' FSC setting each next frequency limit."""
    import attrs
    import numpy as np
    import torch

    from ..distributed import is_writer, world
    from ..metrics import compare
    from ..mrc import write_volume
    from ..outputs import finite, write_fsc_csv, write_fsc_plot, write_json
    from ..particles import write_poses_star
    from ..poses import Poses
    from ..poses_io import estimate_in_chunks, fingerprint
    from ..refine import Refinement, prior_regularizer, run_refinement
    from ..specs import component_from_params
    from ..volume import Volume

    _, size = world()
    outputs = {name: out_dir / name for name in NAMES}
    partial = out_dir / "refine.partial.pt"
    if is_writer():
        check_outputs_and_checkpoint(list(outputs.values()), partial, resume, overwrite)
    if prior_params and prior is None:
        raise click.BadParameter("given without --prior", param_hint="--prior-param")
    if prior is not None:
        component_from_params("prior", prior, prior_params)  # an unknown prior or field fails here, before the images are read
    settings = Refinement(initial_resolution=initial_resolution, iterations=iterations, step=step, shift_range=shift_range,
                          local_shift_range=local_shift_range, global_iteration=global_iteration, seed=seed)
    stack = particle_stack(particles, pixel_size, ctf, datadir)
    initial, note = _initial_map(map_path, stack.pixel_size, stack.box)
    echo = (lambda line: None) if as_json or quiet or not is_writer() else (lambda line: click.echo(line, err=True))
    if note:
        echo(note)
    if stack.rotations is None:
        from ..posers.search import Search

        echo(f"{particles.name} has no angles: a global search against the map low-passed at {initial_resolution:g} Å gives the starting poses")
        limit = max(initial_resolution, 2.5 * stack.pixel_size)  # no finer: the halves must not start from poses fitted to one map's noise
        search = Search(shift_range=shift_range, start_resolution=limit, final_resolution=limit, memory_gb=memory_gb)
        start, _ = estimate_in_chunks(search, stack.images, initial, stack.pixel_size, stack.ctf, chunk=len(stack),
                                      ctf_premultiplied=stack.ctf_premultiplied)
    else:
        start = Poses(stack.rotations, shifts=stack.shifts if stack.shifts is not None else torch.zeros(len(stack), 2, dtype=torch.float64))
    regularize = None if prior is None else prior_regularizer(prior, prior_params, seed=seed)
    key = json.dumps(fingerprint({"images": stack.images, "pixel_size": stack.pixel_size, "ctf": stack.ctf, "map": initial,
                                  "rotations": start.rotations, "shifts": start.shifts, "settings": attrs.asdict(settings),
                                  "prior": prior, "prior_params": list(prior_params)}), sort_keys=True)
    state = None
    if resume and partial.exists():
        state = load_checkpoint(partial, key)
        state["history"] = json.loads(state["history"])

    def checkpoint(current: dict) -> None:
        if is_writer():
            save_checkpoint(partial, key, {k: (json.dumps(v) if k == "history" else v) for k, v in current.items()})

    started = time.perf_counter()
    try:
        result = run_refinement(stack.images, stack.pixel_size, initial, start, stack.ctf, settings, regularize=regularize,
                                progress=silent if quiet or as_json or not is_writer() else bar, echo=echo, state=state,
                                checkpoint=checkpoint, memory_gb=memory_gb)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; --resume continues from {partial}" if partial.exists() else "interrupted") from None
    seconds = time.perf_counter() - started
    if not is_writer():
        return
    px = stack.pixel_size
    h1, h2 = (Volume(h, px) for h in result.halves)
    halves_metrics = compare(h1, h2).as_dict()
    subset = np.zeros(len(stack), dtype=np.int64)
    subset[result.split[0].numpy()], subset[result.split[1].numpy()] = 1, 2
    written = [
        write_volume(outputs["map.mrc"], Volume(result.volume, px), overwrite=overwrite),
        write_volume(outputs["half1.mrc"], h1, overwrite=overwrite),
        write_volume(outputs["half2.mrc"], h2, overwrite=overwrite),
        write_poses_star(stack, outputs["poses.star"], result.poses.rotations, result.poses.shifts, result.poses.scores,
                         columns={"rlnRandomSubset": subset}),
        write_fsc_csv(outputs["fsc.csv"], {"half_maps": halves_metrics}),
        write_fsc_plot(outputs["fsc.png"], {"half maps (masked, gold standard)": halves_metrics}),
    ]
    report = {
        "particles": str(particles), "map": str(map_path), "images": len(stack), "halves": [len(s) for s in result.split],
        "pixel_size": px, "box": stack.box, "ctf": stack.ctf is not None, "prior": prior, "prior_params": list(prior_params),
        "settings": attrs.asdict(settings), "starting_poses": "STAR file" if stack.rotations is not None else "global search",
        "resolution_A": result.resolution, "iterations": result.history, "seconds": seconds, "ranks": size,
        "half_maps_fsc": {k: halves_metrics[k] for k in ("auc", "resolution_0.5", "resolution_0.143")},
        "outputs": [str(p) for p in written] + [str(outputs["report.json"])],
    }
    written.append(write_json(outputs["report.json"], finite(report)))
    partial.unlink(missing_ok=True)
    if as_json:
        click.echo(json.dumps(finite({k: report[k] for k in ("images", "halves", "resolution_A", "seconds", "outputs", "prior")})))
        return
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"{len(stack)} images in two half sets of {report['halves'][0]} and {report['halves'][1]}; "
               f"{len(result.history)} iterations in {seconds:.0f} s; gold-standard FSC-0.143 {result.resolution:.2f} Å")


def _initial_map(path: Path, pixel_size: float, box: int):
    """The starting map on the images' grid (float32 tensor) and a note when it was resampled, cropped or padded."""
    import torch

    from ..mrc import read_volume
    from ..resample import fit_box, fourier_resample

    volume = read_volume(path)
    if not volume.is_cubic:
        raise DataError(f"{path}: shape {volume.shape} is not cubic; refinement needs a cubic map")
    if float(volume.data.std()) == 0.0:
        raise DataError(f"{path}: the map is constant; it cannot give poses")
    notes = []
    if abs(volume.voxel_size - pixel_size) > 1e-3 * pixel_size:
        notes.append(f"resampled from {volume.voxel_size:g} to {pixel_size:g} Å")
        volume = fourier_resample(volume, pixel_size)
    data = volume.data.to(torch.float32)
    n = data.shape[-1]
    if n != box:
        notes.append(f"{'cropped' if n > box else 'padded'} from {n} to {box} voxels")
        data = fit_box(data, box)
    note = f"{path.name}: {', '.join(notes)} to match the images" if notes else ""
    return data.contiguous(), note


command = refine
