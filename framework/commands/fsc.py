"""`cryoinverse fsc`: FSC between two maps: AUC-FSC, resolution at 0.5 and 0.143 (Angstrom), fail flag; with
`--directional`, the same in cones about x, y and z (`cryoinverse.metrics.directional_fsc`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import DataError
from ..metrics import CONE_ANGLE
from .shared import echo_directional, echo_metrics, matching_maps


@click.command("fsc")
@click.argument("map_a", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("map_b", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--mask", type=click.Path(dir_okay=False, path_type=Path), help="mask map (0..1) applied to both")
@click.option("--voxel-size", type=float, help="voxel size in Angstrom, overriding the headers")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="write the curve as CSV")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="write a PNG plot")
@click.option("--directional", is_flag=True, help="also FSC in double cones about the x, y and z axes, and the resolution along each")
@click.option("--cone-angle", type=click.FloatRange(0.0, 90.0, min_open=True), default=CONE_ANGLE, show_default=True,
              help="half-angle in degrees of the cones of --directional")
def fsc(map_a: Path, map_b: Path, mask: Path | None, voxel_size: float | None, as_json: bool, csv_path: Path | None, plot_path: Path | None,
        directional: bool, cone_angle: float) -> None:
    """FSC between two maps: AUC-FSC, resolution at 0.5 and 0.143 (Angstrom), fail flag; --directional adds them per axis."""
    from ..metrics import compare, directional_report
    from ..mrc import read_volume
    from ..outputs import check_outputs, write_fsc_csv, write_fsc_plot

    check_outputs([p for p in (csv_path, plot_path) if p], overwrite=True)
    a, b = matching_maps(map_a, map_b, voxel_size, "FSC", cubic=False)
    m = read_volume(mask, voxel_size) if mask else None
    if m is not None and m.shape != a.shape:
        raise DataError(f"{mask}: shape {m.shape} differs from {map_a} {a.shape}")
    result = compare(a, b, m).as_dict()
    cones = {}
    if directional:
        result["directional"] = directional_report(a, b, a.voxel_size, cone_angle, m)
        cones = {k: v for k, v in result["directional"].items() if k != "cone_angle"}
    if csv_path:
        write_fsc_csv(csv_path, {"ab": result, **cones})
    if plot_path:
        write_fsc_plot(plot_path, {f"{map_a.name} vs {map_b.name}": result, **{f"cone about {k} ({cone_angle:g} deg)": v for k, v in cones.items()}})
    if as_json:
        from ..outputs import finite

        click.echo(json.dumps(finite(result)))
        return
    echo_metrics({f"{map_a.name} vs {map_b.name}": result})
    if cones:
        echo_directional(cones, cone_angle)


command = fsc
