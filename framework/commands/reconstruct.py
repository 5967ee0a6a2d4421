"""`cryoinverse reconstruct`: a map from the particle images of a STAR file with known poses."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import DataError
from ..progress import bar, silent
from .shared import echo_metrics, particle_stack


@click.command("reconstruct")
@click.argument("particles", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="the map to write (MRC), at the images' pixel size and box")
@click.option("--half-maps", is_flag=True, help="also write OUT_half1.mrc and OUT_half2.mrc (a random split of the images) and their FSC as OUT_fsc.csv and OUT_fsc.png")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed of the split into two half sets")
@click.option("--ctf/--no-ctf", default=True, help="correct each image's CTF when the STAR file has CTF columns  [default: --ctf]")
@click.option("--pixel-size", type=click.FloatRange(min=0, min_open=True), help="image pixel size in Å, overriding the STAR file and the stack headers")
@click.option("--datadir", type=click.Path(file_okay=False, path_type=Path), help="folder to look for the image stacks of rlnImageName in first (as RELION's --datadir)")
@click.option("--batch", type=click.IntRange(min=1), default=256, show_default=True, help="images inserted at once (memory grows with it)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object: the outputs and the half maps' FSC")
@click.option("--overwrite", is_flag=True, help="replace existing outputs")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def reconstruct(
    particles: Path, out: Path, half_maps: bool, seed: int, ctf: bool, pixel_size: float | None, datadir: Path | None, batch: int,
    as_json: bool, overwrite: bool, quiet: bool,
) -> None:
    """Reconstruct a map from particle images with known poses (Fourier inversion, regularised by the half sets' SSNR)."""
    from ..metrics import compare
    from ..mrc import write_volume
    from ..outputs import check_outputs, finite, write_fsc_csv, write_fsc_plot
    from ..reconstruct import reconstruct as invert
    from ..volume import Volume

    extra = [out.with_name(f"{out.stem}_{name}") for name in ("half1.mrc", "half2.mrc", "fsc.csv", "fsc.png")] if half_maps else []
    check_outputs([out, *extra], overwrite)
    stack = particle_stack(particles, pixel_size, ctf, datadir)
    if stack.rotations is None:
        raise DataError(
            f"{particles}: has no angles (rlnAngleRot, rlnAngleTilt, rlnAnglePsi); find the poses first "
            "(cryoinverse poses against a map)"
        )
    result = invert(
        stack.images, stack.rotations, stack.pixel_size, stack.shifts, stack.ctf, seed=seed, batch=batch,
        progress=silent if quiet or as_json else bar, ctf_premultiplied=stack.ctf_premultiplied,
    )
    written = [write_volume(out, Volume(result.volume, stack.pixel_size), overwrite=overwrite)]
    h1, h2 = (Volume(h, stack.pixel_size) for h in result.halves)
    metrics = compare(h1, h2).as_dict()
    if half_maps:
        written += [write_volume(extra[0], h1, overwrite=overwrite), write_volume(extra[1], h2, overwrite=overwrite)]
        written.append(write_fsc_csv(extra[2], {"half_maps": metrics}))
        written.append(write_fsc_plot(extra[3], {"half maps": metrics}))
    summary = {
        "images": int(stack.images.shape[0]), "halves": [len(s) for s in result.split], "pixel_size": stack.pixel_size,
        "box": int(stack.images.shape[-1]), "ctf": stack.ctf is not None, "outputs": [str(p) for p in written],
        "half_maps_fsc": {k: metrics[k] for k in ("auc", "resolution_0.5", "resolution_0.143")},
    }
    if as_json:
        click.echo(json.dumps(finite(summary)))
        return
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"{summary['images']} images in two half sets of {summary['halves'][0]} and {summary['halves'][1]}")
    echo_metrics({"half map 1 vs half map 2": metrics})


command = reconstruct
