"""The `cryoinverse` command line: the group, its plugin commands, and the console entry point.

The commands themselves are in `cryoinverse.commands`, one module each. Every user error
(`CryoinverseError`) is printed as `Error: ...` without a traceback, exit 1. Plugins add commands
through the `register_commands(cli)` hook.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from .commands import CORE
from .errors import CryoinverseError
from .plugins import DEFAULT_PLUGINS, failed_plugins, failure_message, get_plugin_manager


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CryoinverseError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; no partial output was left under a final name") from None


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cryoinverse")
def cli() -> None:
    """Cryo-EM / cryo-ET inverse problems with learned priors."""


for _command in CORE:
    cli.add_command(_command)

_PLUGIN_COMMANDS: dict[str, str] = {}  # command name -> the plugin that added it in the last build


def build_cli() -> click.Group:
    """The CLI group with the commands of every plugin added.

    Each plugin's `register_commands` runs in turn; a command whose name is already taken (by a
    built-in command or another plugin's) is an error naming both, never a silent replacement.
    """
    for name in _PLUGIN_COMMANDS:
        cli.commands.pop(name, None)
    _PLUGIN_COMMANDS.clear()
    for impl in get_plugin_manager().hook.register_commands.get_hookimpls():
        before = dict(cli.commands)
        try:
            impl.function(cli=cli)
        except CryoinverseError:
            raise
        except Exception as exc:
            raise CryoinverseError(f"plugin {impl.plugin_name!r} failed in register_commands: {exc!r}") from exc
        for name, command in list(cli.commands.items()):
            if name in before and before[name] is not command:
                cli.commands[name] = before[name]
                by = _PLUGIN_COMMANDS.get(name)
                owner = f"plugin {by!r}" if by is not None and by not in DEFAULT_PLUGINS else "the built-in command"
                raise CryoinverseError(f"plugin {impl.plugin_name!r} adds a command {name!r}, which {owner} already has; rename one of them")
            if name not in before:
                _PLUGIN_COMMANDS[name] = impl.plugin_name
    return cli


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"Warning: {message}", err=True)


def main() -> None:
    """Console-script entry point."""
    import warnings

    warnings.showwarning = _one_line_warning
    try:
        group = build_cli()
    except CryoinverseError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    for info in failed_plugins():
        click.echo(f"Warning: {failure_message(info)}", err=True)
    group()
