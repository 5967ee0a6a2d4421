"""The `cryoinverse` command line, one module per command; each is thin: it parses options and
calls the library function a methods researcher would call from Python.

`CORE` are the commands of the bare `cryoinverse.cli.cli` group (running and checking tasks,
comparing and aligning maps, poses of particle images, reconstruction, ab initio, refinement). The others (simulate, bench, loglik,
train) join the group through the `register_commands` hook, the one plugins use: this package is
one of the built-in plugins (`cryoinverse.plugins.DEFAULT_PLUGINS`).
"""

from __future__ import annotations

from ..hookspecs import hookimpl
from . import abinitio, align, bench, degrade, demo, describe, fsc, list_, loglik, plugins, poses, reconstruct, refine, run, simulate, train, validate

__all__ = ["CORE", "register_commands"]

CORE = tuple(m.command for m in (run, validate, list_, describe, plugins, fsc, degrade, demo, align, poses, reconstruct, abinitio, refine))
"""The commands every `cryoinverse` group has, plugins or not."""


@hookimpl
def register_commands(cli):
    """Add `simulate`, `bench`, `loglik` and `train`."""
    for module in (simulate, bench, loglik, train):
        cli.add_command(module.command)
