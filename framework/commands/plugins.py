"""`cryoinverse plugins`: list loaded plugins, their distributions and the hooks they implement."""

from __future__ import annotations

import json

import click

from ..plugins import failed_plugins, get_plugin_manager, plugin_infos


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def plugins(as_json: bool) -> None:
    """List loaded plugins, their distributions and the hooks they implement."""
    infos = plugin_infos(get_plugin_manager())
    if as_json:
        failed = [dict(f, failed=True, builtin=False, hooks=[]) for f in failed_plugins()]
        click.echo(json.dumps(infos + failed, indent=2))
        return
    for info in infos:
        origin = "built-in" if info["builtin"] else (info["distribution"] or "registered at run time")
        click.echo(f"{info['name']} ({origin}): {', '.join(info['hooks'])}")
    for info in failed_plugins():
        click.echo(f"{info['name']} ({info['distribution'] or 'unknown distribution'}): FAILED to load: {info['error']}")


command = plugins
