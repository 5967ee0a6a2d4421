"""The plugin manager: built-in plugins first, then entry points of the group `cryoinverse`.

`CRYOINVERSE_LOAD_PLUGINS` (comma-separated entry-point names) restricts which third-party
plugins load; set it to an empty string to load none (built-ins always load). This is the way
out when a broken plugin breaks start-up.
"""

from __future__ import annotations

import importlib
import os

import pluggy

from . import hookspecs
from .errors import RegistryError

ENTRY_POINT_GROUP = "cryoinverse"

DEFAULT_PLUGINS = (
    "cryoinverse.priors.gaussian",
    "cryoinverse.operators.spectral_noise",
    "cryoinverse.operators.anisotropic_noise",
    "cryoinverse.operators.missing_wedge",
    "cryoinverse.samplers.prior",
    "cryoinverse.samplers.flow_posterior_euler",
    "cryoinverse.samplers.flow_posterior_pseudoinverse",
    "cryoinverse.samplers.flow_posterior_posesearch",
    "cryoinverse.operators.projection",
    "cryoinverse.posers.search",
    "cryoinverse.posers.fastar",
    "cryoinverse.commands",
    "cryoinverse.priors.cryofm",
)

_manager: pluggy.PluginManager | None = None


def new_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A fresh manager with the hook specs, the built-in plugins and (optionally) entry points."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entrypoints:
        _load_entrypoints(pm)
    try:
        pm.check_pending()  # a misspelt hook name fails here, not silently
    except pluggy.PluginValidationError as exc:
        raise RegistryError(_invalid(pm, exc)) from None
    return pm


def _invalid(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError) -> str:
    import difflib

    name = pm.get_name(exc.plugin) or getattr(exc.plugin, "__name__", repr(exc.plugin))
    message = str(exc).split(" in plugin ")[0]
    hooks = [h for h in dir(hookspecs) if h.startswith("register_")]
    words = [w.strip("'") for w in message.split() if w.startswith("'register")]
    close = difflib.get_close_matches(words[0], hooks, n=1) if words else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"plugin {name!r} is invalid: {message}{hint}"


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    """Load the group's entry points one by one; one that fails to import is recorded, not fatal."""
    from importlib.metadata import entry_points

    found = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
    installed = sorted({ep.name for ep in found})
    wanted = os.environ.get("CRYOINVERSE_LOAD_PLUGINS")
    names = installed
    if wanted is not None:
        names = [n for n in (n.strip() for n in wanted.split(",")) if n]
        for name in names:
            if name not in installed:
                raise RegistryError(
                    f"CRYOINVERSE_LOAD_PLUGINS names {name!r}, but no such plugin is installed "
                    f"(installed: {', '.join(installed) or 'none'})"
                )
    failed = []
    for name in names:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        except pluggy.PluginValidationError as exc:
            raise RegistryError(_invalid(pm, exc)) from None
        except Exception as exc:  # an import error, or anything else the plugin's module raises
            dists = sorted({f"{ep.dist.name} {ep.dist.version}" for ep in found if ep.name == name and ep.dist is not None})
            failed.append({"name": name, "distribution": ", ".join(dists) or None, "error": repr(exc)})
    pm.cryoinverse_failed = failed


def failed_plugins(pm: pluggy.PluginManager | None = None) -> list[dict]:
    """Entry points that failed to load: name, distribution and error of each."""
    return list(getattr(pm or get_plugin_manager(), "cryoinverse_failed", []))


def failure_message(info: dict) -> str:
    """One line saying which plugin failed, from which distribution, why, and the way out."""
    origin = f" (distribution {info['distribution']})" if info["distribution"] else ""
    return (
        f"plugin {info['name']!r}{origin} failed to load and is skipped: {info['error']}; "
        "fix or uninstall it, or set CRYOINVERSE_LOAD_PLUGINS to the plugins to load ('' for none)"
    )


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _manager
    if _manager is None:
        _manager = new_plugin_manager()
    return _manager


def plugin_infos(pm: pluggy.PluginManager | None = None) -> list[dict]:
    """Name, distribution (if any) and implemented hooks of every registered plugin."""
    pm = pm or get_plugin_manager()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        dist = dists.get(id(plugin))
        infos.append(
            {
                "name": name,
                "builtin": name in DEFAULT_PLUGINS,
                "distribution": f"{dist.project_name} {dist.version}" if dist else None,
                "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
            }
        )
    return infos
