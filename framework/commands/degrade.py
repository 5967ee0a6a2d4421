"""`cryoinverse degrade`: apply an operator's simulate() to a clean map: how benchmark inputs are made."""

from __future__ import annotations

from pathlib import Path

import click

from ..levels import DEFAULT_WIDTH, NOISE_SHAPES


@click.command("degrade")
@click.argument("clean", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--operator", "-k", "kind", required=True, help="registered operator name, e.g. spectral-noise")
@click.option("--param", "-p", "params", multiple=True, metavar="FIELD=VALUE", help="operator field (repeatable), e.g. -p noise_variance=0.01")
@click.option("--target-resolution", type=float, help="noise kinds: set the noise so the degraded map's expected FSC-0.5 is here (A)")
@click.option("--noise-shape", type=click.Choice(NOISE_SHAPES), default="logistic", show_default=True, help="with --target-resolution: expected FSC shaped like a real one (logistic fall-off), or white noise")
@click.option("--fsc-width", type=float, default=DEFAULT_WIDTH, show_default=True, help="logistic width as a fraction of the crossing frequency")
@click.option("--fsc-curve", type=click.Path(dir_okay=False, path_type=Path), help="CSV FSC curve (fsc, resolution_A) to shape the noise instead of the logistic")
@click.option("--half-maps", is_flag=True, help="write two half maps (twice the noise each) beside OUTPUT, which is their average")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed of the noise")
@click.option("--voxel-size", type=float, help="voxel size in Angstrom, overriding the header")
@click.option("--overwrite", is_flag=True, help="replace an existing output")
def degrade(
    clean: Path, output: Path, kind: str, params: tuple[str, ...], target_resolution: float | None, noise_shape: str,
    fsc_width: float, fsc_curve: Path | None, half_maps: bool, seed: int, voxel_size: float | None, overwrite: bool,
) -> None:
    """Apply an operator's simulate() to a clean map: how benchmark inputs are made."""
    import torch

    from ..bench import Degradation
    from ..mrc import read_volume, write_volume
    from ..outputs import check_outputs
    from ..registry import get_registry
    from ..specs import parse_override

    if target_resolution is None and (half_maps or fsc_curve is not None):
        hint, why = ("--half-maps", " (the noise of each half map is twice the full map's)") if half_maps else ("--fsc-curve", "")
        raise click.BadParameter(f"needs --target-resolution{why}", param_hint=hint)
    halves = [output.with_name(f"{output.stem}_half{i}{output.suffix}") for i in (1, 2)] if half_maps else []
    check_outputs([output, *halves], overwrite)
    table = {"kind": kind}
    for text in params:
        keys, value = parse_override(text)
        table[".".join(keys)] = value
    degradation = Degradation(
        name=output.stem, table=table, target_resolution=target_resolution, noise_shape=noise_shape, fsc_width=fsc_width,
        fsc_curve=fsc_curve, half_maps=half_maps, section="operator",
    )
    volume = read_volume(clean, voxel_size)
    problem = degradation.infeasible(volume)
    if problem:
        raise click.BadParameter(problem, param_hint="--target-resolution")
    degraded, _, maps = degradation.simulate(volume, get_registry(), torch.Generator().manual_seed(seed))
    for path, half in zip(halves, maps or []):
        write_volume(path, half, overwrite=overwrite)
        click.echo(f"wrote {path}")
    write_volume(output, degraded, overwrite=overwrite)
    click.echo(f"wrote {output}")

command = degrade
