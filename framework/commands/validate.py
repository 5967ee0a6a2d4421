"""`cryoinverse validate`: check a task spec (fields, files, boxes, voxel sizes) without running it."""

from __future__ import annotations

from pathlib import Path

import click

from .shared import SET_HELP


@click.command("validate")
@click.argument("task", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE", help=SET_HELP)
def validate(task: Path, overrides: tuple[str, ...]) -> None:
    """Check a task spec (fields, files, boxes, voxel sizes) without running it."""
    from ..specs import load_spec

    spec = load_spec(task, overrides)
    ops = ", ".join(op.name for op in spec.operators) or "none"
    click.echo(f"{task}: valid (prior {spec.prior.name}, operators {ops}, sampler {spec.sampler.name})")


command = validate
