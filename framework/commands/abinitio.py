"""`cryoinverse abinitio`: a map and poses from the particle images of a STAR file, from random poses."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..progress import bar, silent
from .shared import check_outputs_and_checkpoint, load_checkpoint, particle_stack, save_checkpoint

HAND_NOTE = (
    "projections cannot tell a map from its mirror image: this map has either hand (and any orientation); "
    "compare it with a known map by `cryoinverse align --allow-mirror`"
)


@click.command("abinitio")
@click.argument("particles", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="folder for map.mrc, poses.star, report.json, map_slices.png and sky.png (and class_K.mrc with --classes)")
@click.option("--resolution", type=click.FloatRange(min=0, min_open=True), default=15.0, show_default=True, help="frequency limit of the last iteration, Å")
@click.option("--start-resolution", type=click.FloatRange(min=0, min_open=True), default=35.0, show_default=True, help="frequency limit of the first iteration, Å")
@click.option("--iterations", type=click.IntRange(min=1), default=12, show_default=True, help="iterations from --start-resolution to --resolution")
@click.option("--starts", type=click.IntRange(min=1), default=6, show_default=True, help="independent random starts; the one whose images fit it best after the trial iterations goes on")
@click.option("--batch", type=click.IntRange(min=1), default=400, show_default=True, help="images per iteration before the last (a random subset each time)")
@click.option("--shift-range", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True, help="largest in-plane shift searched, Å")
@click.option("--classes", type=click.IntRange(min=1), default=1, show_default=True, help="maps made at once (each image goes to the class it fits best); also writes class_K.mrc and rlnClassNumber")
@click.option("--prior", default=None, help="after the start is chosen, restore each iteration's map with this registered prior's flow posterior (e.g. cryofm; default: none, the Wiener filter of the half sets' SSNR)")
@click.option("--prior-param", "prior_params", multiple=True, metavar="FIELD=VALUE", help="field of the --prior (repeatable)")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed of the starts and the image subsets")
@click.option("--memory-gb", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True, help="rough bound on the working memory of one batch of the pose search, GB")
@click.option("--ctf/--no-ctf", default=True, help="use each image's CTF when the STAR file has CTF columns  [default: --ctf]")
@click.option("--pixel-size", type=click.FloatRange(min=0, min_open=True), help="image pixel size in Å, overriding the STAR file and the stack headers")
@click.option("--datadir", type=click.Path(file_okay=False, path_type=Path), help="folder to look for the image stacks of rlnImageName in first (as RELION's --datadir)")
@click.option("--resume", is_flag=True, help="continue from the checkpoint of a stopped run (refused when inputs or settings changed)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object: the outputs and the iterations")
@click.option("--overwrite", is_flag=True, help="replace existing outputs, and start again over an old checkpoint")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def abinitio(
    particles: Path, out_dir: Path, resolution: float, start_resolution: float, iterations: int, starts: int, batch: int,
    shift_range: float, classes: int, prior: str | None, prior_params: tuple[str, ...], seed: int, memory_gb: float, ctf: bool, pixel_size: float | None, datadir: Path | None, resume: bool, as_json: bool,
    overwrite: bool, quiet: bool,
) -> None:
    """A map from particle images with no map to start from: projection matching from random poses, the frequency limit rising."""
    import attrs
    import torch

    from ..abinitio import AbInitio, run_abinitio
    from ..distributed import world
    from ..mrc import write_volume
    from ..outputs import write_json
    from ..particles import write_poses_star
    from ..poses_io import fingerprint, write_sky_map
    from ..previews import write_slices_png
    from ..volume import Volume

    rank, size = world()  # under torchrun: join the other ranks (each searches and inserts a share of the images)
    names = ["map.mrc", "poses.star", "report.json", "map_slices.png", "sky.png"] + [f"class_{k + 1}.mrc" for k in range(classes if classes > 1 else 0)]
    outputs = {name: out_dir / name for name in names}
    partial = out_dir / "abinitio.partial.pt"
    check_outputs_and_checkpoint(list(outputs.values()), partial, resume, overwrite)
    if prior_params and prior is None:
        raise click.BadParameter("given without --prior", param_hint="--prior-param")
    regularize = None
    if prior is not None:
        from ..refine import prior_regularizer

        regularize = prior_regularizer(prior, prior_params, seed=seed)  # an unknown prior or field fails here, before work
    if resolution > start_resolution:
        raise click.BadParameter(f"{resolution:g} Å is coarser than --start-resolution {start_resolution:g} Å", param_hint="--resolution")
    stack = particle_stack(particles, pixel_size, ctf, datadir)
    nyquist = 2 * stack.pixel_size
    if resolution < nyquist:
        raise click.BadParameter(f"{resolution:g} Å is finer than the images' Nyquist ({nyquist:g} Å)", param_hint="--resolution")
    settings = AbInitio(resolution=resolution, start_resolution=start_resolution, iterations=iterations, starts=starts,
                        trial_iterations=min(AbInitio().trial_iterations, iterations), batch=batch, shift_range=shift_range, seed=seed,
                        classes=classes, memory_gb=memory_gb)
    key = json.dumps(fingerprint({"images": stack.images, "pixel_size": stack.pixel_size, "ctf": stack.ctf, "settings": attrs.asdict(settings, filter=lambda a, v: a.name != "memory_gb"),
                                  "prior": prior, "prior_params": list(prior_params)}), sort_keys=True)
    state = None
    if resume and partial.exists():
        state = _load_state(partial, key)

    def checkpoint(current: dict) -> None:
        if rank == 0:
            save_checkpoint(partial, key, _plain_state(current))

    echo = (lambda line: None) if as_json or quiet or rank else (lambda line: click.echo(line, err=True))
    started = time.perf_counter()
    try:
        result = run_abinitio(stack.images, stack.pixel_size, stack.ctf, settings, progress=silent if quiet or as_json or rank else bar,
                              echo=echo, state=state, checkpoint=checkpoint, regularize=regularize)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; --resume continues from {partial}" if partial.exists() else "interrupted") from None
    seconds = time.perf_counter() - started
    if rank:
        return  # rank 0 writes and reports
    volume = Volume(result.volume, stack.pixel_size)
    written = [write_volume(outputs["map.mrc"], volume, overwrite=overwrite)]
    columns = {} if result.classes is None else {"rlnClassNumber": result.classes.numpy() + 1}
    written.append(write_poses_star(stack, outputs["poses.star"], result.poses.rotations, result.poses.shifts, result.poses.scores, columns=columns))
    if result.class_volumes is not None:
        written += [write_volume(outputs[f"class_{k + 1}.mrc"], Volume(v, stack.pixel_size), overwrite=overwrite)
                    for k, v in enumerate(result.class_volumes)]
    written.append(write_slices_png(outputs["map_slices.png"], {"ab initio map": volume}, title=f"central slices: {particles.name}"))
    written.append(write_sky_map(outputs["sky.png"], result.poses.rotations, title=f"viewing directions of {len(result.poses)} images"))
    report = {
        "particles": str(particles), "images": int(stack.images.shape[0]), "pixel_size": stack.pixel_size, "box": int(stack.images.shape[-1]),
        "ctf": stack.ctf is not None, "settings": attrs.asdict(settings), "prior": prior, "prior_params": list(prior_params),
        "class_sizes": None if result.classes is None else torch.bincount(result.classes, minlength=classes).tolist(),
        "start_kept": result.start, "iterations": result.history, "seconds": seconds, "ranks": size, "hand": HAND_NOTE,
        "outputs": [str(p) for p in written] + [str(outputs["report.json"])],
    }
    written.append(write_json(outputs["report.json"], report))
    partial.unlink(missing_ok=True)
    if as_json:
        click.echo(json.dumps({k: report[k] for k in ("images", "box", "pixel_size", "start_kept", "class_sizes", "seconds", "outputs", "hand")}))
        return
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"{report['images']} images in {seconds:.0f} s; note: {HAND_NOTE}")


def _plain_state(state: dict) -> dict:
    """The run's state as tensors, numbers and strings (what `torch.load(weights_only=True)` reads back)."""
    return {
        "history": json.dumps(state["history"]),
        "maps": {str(k): v for k, v in state["maps"].items()},
        "rotations": {str(k): p.rotations for k, p in state["poses"].items()},
        "shifts": {str(k): p.shifts for k, p in state["poses"].items()},
        "scores": {str(k): p.scores for k, p in state["poses"].items()},
        "labels": {str(k): v for k, v in state["labels"].items()},
        "start": -1 if state["start"] is None else int(state["start"]),
    }


def _load_state(path: Path, key: str) -> dict:
    """The state saved in checkpoint `path`; DataError when it is unreadable or from other inputs or settings."""
    from ..poses import Poses

    saved = load_checkpoint(path, key)
    poses = {int(k): Poses(saved["rotations"][k], saved["shifts"][k], saved["scores"][k]) for k in saved["rotations"]}
    return {
        "history": json.loads(saved["history"]), "maps": {int(k): v for k, v in saved["maps"].items()}, "poses": poses,
        "labels": {int(k): v for k, v in saved["labels"].items()},
        "start": None if saved["start"] < 0 else saved["start"],
    }


command = abinitio
