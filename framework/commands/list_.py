"""`cryoinverse list`: list registered components (all kinds, or one KIND)."""

from __future__ import annotations


import click

from ..registry import KINDS, get_registry


@click.command("list")
@click.argument("kind", required=False, type=click.Choice(KINDS))
def list_(kind: str | None) -> None:
    """List registered components (all kinds, or one KIND)."""
    registry = get_registry()
    for k in [kind] if kind else KINDS:
        click.echo(f"{k}s:")
        entries = registry.entries(k)
        for e in entries:
            click.echo(f"  {e.name:28s} {e.summary}  [{e.plugin}]")
        if not entries:
            click.echo("  (none)")


command = list_
