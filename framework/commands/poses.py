"""`cryoinverse poses`: estimate the poses of the particle images of a STAR file against a map; write them as STAR."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import DataError
from ..progress import bar, silent
from .shared import check_datadir, check_outputs_and_checkpoint


@click.command("poses")
@click.argument("particles", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--map", "map_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="reference map the images are matched against (MRC); its voxel size and box are the images' grid")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="STAR file to write: PARTICLES with new angles, origins and a cryoinverseScore column")
@click.option("--poser", "poser_name", default="search", show_default=True, help="registered pose model (cryoinverse list poser)")
@click.option("--param", "-p", "params", multiple=True, metavar="FIELD=VALUE", help="poser field (repeatable), e.g. -p level=1")
@click.option("--truth", type=click.Path(dir_okay=False, path_type=Path), help="STAR file with the known poses of the same rows: print rotation and shift errors")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="write the viewing directions as a PNG sky map (Mollweide, equal-area)")
@click.option("--checkpoint-every", "--chunk", "chunk", type=click.IntRange(min=1), default=1000, show_default=True, help="images per poser call; a checkpoint OUT.partial.npz is saved after each (--chunk: the same)")
@click.option("--resume", is_flag=True, help="continue from the checkpoint of a stopped run (refused when inputs or settings changed)")
@click.option(
    "--resample/--no-resample", default=None,
    help="--resample: resample every image to the map's voxel size and box (also optics groups of different pixel sizes); "
    "--no-resample: refuse images whose grid differs from the map's  [default: resample images of one pixel size, refuse mixed ones]",
)
@click.option("--ctf/--no-ctf", default=True, help="apply each image's CTF when the STAR file has CTF columns  [default: --ctf]")
@click.option("--pixel-size", type=click.FloatRange(min=0, min_open=True), help="image pixel size in Å, overriding the STAR file and the stack headers")
@click.option("--datadir", type=click.Path(file_okay=False, path_type=Path), help="folder to look for the image stacks of rlnImageName in first (as RELION's --datadir); then beside the STAR file, then the working folder")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object: the summary and, with --truth, the errors")
@click.option("--overwrite", is_flag=True, help="replace existing outputs, and start again over an old checkpoint")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def poses(
    particles: Path, map_path: Path, out: Path, poser_name: str, params: tuple[str, ...], truth: Path | None, plot_path: Path | None,
    chunk: int, resume: bool, resample: bool | None, ctf: bool, pixel_size: float | None, datadir: Path | None, device: str, as_json: bool,
    overwrite: bool, quiet: bool,
) -> None:
    """Estimate the poses of the particle images of a STAR file against a map; write them as STAR."""
    from ..mrc import read_volume
    from ..poses import pose_metrics
    from ..poses_io import checkpoint_path, estimate_star_poses, median_score, read_poses_star, write_sky_map
    from ..devices import resolve_device
    from ..distributed import world
    from ..specs import component_from_params
    from ..star import particle_block, read_star

    rank, size = world()  # under torchrun: join the other ranks (each estimates a share of the images)
    partial = checkpoint_path(out)
    check_outputs_and_checkpoint([p for p in (out, plot_path) if p], partial, resume, overwrite)
    check_datadir(datadir)
    poser = component_from_params("poser", poser_name, params)
    torch_device = resolve_device(device)
    if size > 1 and torch_device.type == "cuda":  # one GPU per rank
        import torch

        torch_device = torch.device("cuda", torch.cuda.current_device())
    volume = read_volume(map_path)
    known = None
    if truth is not None:  # checked before the long work: the same rows
        known = read_poses_star(truth, pixel_size)
        blocks = read_star(particles)
        rows = len(blocks[particle_block(blocks, particles)])
        if len(known) != rows:
            raise DataError(f"{truth}: has {len(known)} particle rows but {particles} has {rows}; the truth needs the same rows in order")
    try:
        done = estimate_star_poses(
            particles, volume, out, poser, chunk, resume, resample, ctf, pixel_size, torch_device, progress=silent if quiet or as_json or rank else bar,
            datadir=datadir,
        )
    except DataError as exc:
        if resample is None and "resample=True" in str(exc):
            raise DataError(f"{exc}. Here: pass --resample to resample every image to the map's grid ({volume.shape[-1]} px of {volume.voxel_size:g} Å)") from None
        raise
    except KeyboardInterrupt:
        where = f"; --resume continues from {partial}" if partial.exists() else ""
        raise click.ClickException(f"interrupted{where}") from None
    if rank:
        return  # rank 0 writes and reports
    found, stack = done.poses, done.stack
    written = [done.path]
    if plot_path is not None:
        written.append(write_sky_map(plot_path, found.rotations, title=f"viewing directions of {len(found)} images ({particles.name})"))
    summary = {
        "images": len(found), "resumed": done.resumed, "time_s": done.seconds, "score_median": median_score(found),
        "poser": poser.name, "pixel_size": stack.pixel_size, "box": stack.box, "ctf": stack.ctf is not None, "outputs": [str(p) for p in written],
    }
    if known is not None:
        summary["metrics"] = pose_metrics(found, known)
    if as_json:
        from ..outputs import finite

        click.echo(json.dumps(finite(summary)))
        return
    if done.note:
        click.echo(done.note)
    for path in written:
        click.echo(f"wrote {path}")
    again = f" ({done.resumed} from the checkpoint)" if done.resumed else ""
    click.echo(
        f"poses of {len(found)} images{again} in {done.seconds:.1f} s ({poser.name}, {stack.box} px of {stack.pixel_size:g} Å, "
        f"{'CTF' if stack.ctf is not None else 'no CTF'}); median score {summary['score_median']:.4g}"
    )
    if known is not None:
        m = summary["metrics"]
        click.echo(
            f"against {truth.name}: rotation error median {m['rotation_error_median_deg']:.2f} deg, mean {m['rotation_error_mean_deg']:.2f} deg; "
            f"within 5 deg {100 * m['within_5_deg']:.1f}%, within 10 deg {100 * m['within_10_deg']:.1f}%; shift error {m['shift_error_mean_A']:.2f} A"
        )


command = poses
