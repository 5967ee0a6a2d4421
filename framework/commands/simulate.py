"""`cryoinverse simulate`: clean density maps from PDB/mmCIF models."""

from __future__ import annotations

import math
import time
from pathlib import Path

import click

from ..errors import DataError
from ..atoms import read_atoms
from ..simulate import FORMS, box_shape, model_stem, simulate_density


@click.command("simulate")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="folder for one MRC per model, named after the model")
@click.option("--voxel-size", type=click.FloatRange(min=0, min_open=True), default=1.5, show_default=True, help="voxel size in Angstrom")
@click.option("--box", type=click.IntRange(min=1), default=64, show_default=True, help="cubic box edge in voxels")
@click.option("--bfactor", type=click.FloatRange(min=0), help="global B-factor (A^2) replacing each atom's own (see --bfactor-mode)")
@click.option("--bfactor-mode", type=click.Choice(["replace", "add"]), default="replace", show_default=True, help="--bfactor replaces the file's B-factors or is added to them")
@click.option("--form", type=click.Choice(FORMS), default="5gaussian", show_default=True, help="5-Gaussian electron form factors, or one Gaussian per atom")
@click.option("--resolution", type=click.FloatRange(min=0, min_open=True), help="low-pass to this resolution in Angstrom (cosine edge)")
@click.option("--oversample", type=click.IntRange(min=1), default=2, show_default=True, help="evaluate on an N-times finer grid, then Fourier-crop to the voxel size (1: plain point samples, which alias)")
@click.option("--allow-clip", is_flag=True, help="drop atoms and density outside the box instead of failing")
@click.option("--keep-hydrogens", is_flag=True, help="include hydrogen atoms")
@click.option("--keep-waters", is_flag=True, help="include water molecules")
@click.option("--overwrite", is_flag=True, help="replace existing output maps")
def simulate_command(
    models: tuple[Path, ...],
    out_dir: Path,
    voxel_size: float,
    box: int,
    bfactor: float | None,
    bfactor_mode: str,
    form: str,
    resolution: float | None,
    oversample: int,
    allow_clip: bool,
    keep_hydrogens: bool,
    keep_waters: bool,
    overwrite: bool,
) -> None:
    """Clean density maps (1/A^2, electron form factors) from PDB/mmCIF models, centred in the box.

    Only the first model of each file is used, without waters and hydrogens; B-factors come from the file
    unless --bfactor is given (predicted models keep pLDDT in that column: pass --bfactor).
    """
    from ..mrc import write_volume
    from ..resources import check_fits
    from ..outputs import check_outputs

    if resolution is not None and resolution < 2 * voxel_size:
        raise click.BadParameter(f"{resolution:g} A is finer than Nyquist ({2 * voxel_size:g} A at this voxel size)", param_hint="--resolution")
    outputs = [out_dir / f"{model_stem(m)}.mrc" for m in models]
    clashes = sorted({str(o) for o in outputs if outputs.count(o) > 1})
    if clashes:
        raise DataError(f"several models would write {', '.join(clashes)}; give models with distinct names")
    check_outputs(outputs, overwrite)
    # the density is built in float64 on the oversampled grid, with about three such arrays alive at once
    fine = math.prod(box_shape(box)) * oversample**3
    check_fits(3 * 8 * fine, f"a {box}^3 map at {oversample}x oversampling", "Use a smaller --box or --oversample 1.")
    for model, output in zip(models, outputs):
        started = time.perf_counter()
        atoms = read_atoms(model, keep_hydrogens=keep_hydrogens, keep_waters=keep_waters)
        volume = simulate_density(
            atoms, box, voxel_size, bfactor, form, resolution,
            bfactor_mode=bfactor_mode, allow_clip=allow_clip, oversample=oversample,
        )
        write_volume(output, volume, overwrite=overwrite)
        mass = float(volume.data.double().sum()) * voxel_size**3
        unknown = atoms.unknown_elements()
        note = f"; unknown elements {', '.join(unknown)} simulated as carbon" if unknown else ""
        click.echo(
            f"wrote {output} ({len(atoms)} atoms, {box}^3 at {voxel_size:g} A, "
            f"integrated density {mass:.1f} A, {time.perf_counter() - started:.1f} s{note})"
        )


command = simulate_command
