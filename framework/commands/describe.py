"""`cryoinverse describe`: show a component's description and its spec fields (type, default, help)."""

from __future__ import annotations

import difflib

import attrs
import click

from ..params import help_of
from ..registry import get_registry
from ..typecheck import type_name
from .shared import show_default


@click.command("describe")
@click.argument("name")
def describe(name: str) -> None:
    """Show a component's description and its spec fields (type, default, help)."""
    registry = get_registry()
    entries = registry.find(name)
    if not entries:
        known = ", ".join(e.name for e in registry.entries())
        close = difflib.get_close_matches(name, [e.name for e in registry.entries()], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise click.ClickException(f"unknown component {name!r}.{hint} Known: {known}")
    for e in entries:
        click.echo(f"{e.kind} {e.name!r} ({e.cls.__module__}.{e.cls.__qualname__}, plugin {e.plugin})")
        click.echo(f"  {(e.cls.__doc__ or '').strip()}")
        click.echo("  fields:")
        for f in attrs.fields(e.cls):
            if not f.init or f.name.startswith("_"):
                continue
            default = "required" if f.default is attrs.NOTHING else f"default {show_default(f.default)}"
            click.echo(f"    {f.name} ({type_name(f.type)}, {default}): {help_of(f)}")
        notes = getattr(e.cls, "describe_notes", None)
        for line in notes() if notes is not None else []:
            click.echo(f"  {line}")


command = describe
