"""`cryoinverse align`: rigidly align MOVING onto REFERENCE (rotation, shift, optional mirror); print them and the FSC after."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import DataError
from .shared import echo_metrics, matching_maps


@click.command("align")
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("moving", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="the moving map rotated and shifted onto the reference (MRC)")
@click.option("--allow-mirror", is_flag=True, help="also try the mirror image (an ab initio map may have either hand)")
@click.option("--voxel-size", type=float, help="voxel size in Angstrom, overriding the headers")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--overwrite", is_flag=True, help="replace an existing output")
def align(reference: Path, moving: Path, out: Path, allow_mirror: bool, voxel_size: float | None, as_json: bool, overwrite: bool) -> None:
    """Rigidly align MOVING onto REFERENCE (rotation, shift, optional mirror); print them and the FSC after."""
    from ..align import align_maps, rotation_angle
    from ..metrics import compare
    from ..mrc import write_volume
    from ..rotations import matrix_to_euler_zyz
    from ..outputs import check_outputs

    from ..align import constant_map_problem

    check_outputs([out], overwrite)
    a, b = matching_maps(reference, moving, voxel_size, "alignment")
    for path, volume in ((reference, a), (moving, b)):
        problem = constant_map_problem(volume.data)
        if problem:
            raise DataError(f"{path}: {problem}")
    alignment, moved = align_maps(a.data, b.data, a.voxel_size, allow_mirror=allow_mirror)
    result = a.with_data(moved)
    write_volume(out, result, overwrite=overwrite)
    metrics = compare(result, a).as_dict()
    rot, tilt, psi = (float(v) for v in matrix_to_euler_zyz(alignment.rotation))
    summary = {
        "rotation": alignment.rotation.tolist(), "euler_rot_tilt_psi_deg": [rot, tilt, psi], "angle_deg": rotation_angle(alignment.rotation),
        "shift_zyx_A": list(alignment.shift_A), "mirror": alignment.mirror, "correlation": alignment.correlation,
        "auc": metrics["auc"], "resolution_0.5": metrics["resolution_0.5"], "resolution_0.143": metrics["resolution_0.143"],
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"wrote {out}")
    click.echo(
        f"rotation {summary['angle_deg']:.1f} deg (RELION rot/tilt/psi {rot:.1f}/{tilt:.1f}/{psi:.1f}), shift (z, y, x) "
        f"{', '.join(f'{v:.2f}' for v in alignment.shift_A)} A, mirror {'yes' if alignment.mirror else 'no'}"
    )
    echo_metrics({f"{moving.name} on {reference.name}": metrics})


command = align
