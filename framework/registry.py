"""Name -> component class lookup, built from the plugins' `register_*` hooks.

A component is an attrs class with a `ClassVar[str]` `name` (kebab-case, as written in task
specs); its attrs fields are its declarative parameters. The registry records which plugin
registered each name, so that a clash names both plugins.
"""

from __future__ import annotations

import difflib

import attrs
import pluggy

from .errors import RegistryError
from .plugins import get_plugin_manager

KINDS = ("prior", "operator", "sampler", "poser")
_HOOKS = {kind: f"register_{kind}s" for kind in KINDS}


@attrs.frozen
class Entry:
    """One registered component: its kind, name, class and the plugin that registered it."""

    kind: str
    name: str
    cls: type
    plugin: str

    @property
    def summary(self) -> str:
        """First line of the class docstring."""
        return (self.cls.__doc__ or "").strip().splitlines()[0] if self.cls.__doc__ else ""


class Registry:
    """All registered components, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager | None = None):
        self.pm = pm or get_plugin_manager()
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            caller = getattr(self.pm.hook, _HOOKS[kind])
            for impl in caller.get_hookimpls():
                if impl.hookwrapper or impl.wrapper:
                    raise RegistryError(f"plugin {impl.plugin_name!r}: {_HOOKS[kind]} cannot be a hook wrapper")
                register = self._register_fn(kind, impl.plugin_name)
                try:
                    impl.function(**{arg: register for arg in impl.argnames})
                except RegistryError:
                    raise
                except Exception as exc:
                    raise RegistryError(f"plugin {impl.plugin_name!r} failed in {_HOOKS[kind]}: {exc!r}") from exc

    def _register_fn(self, kind: str, plugin_name: str):
        def register(cls: type) -> type:
            self._add(kind, cls, plugin_name)
            return cls

        return register

    def _add(self, kind: str, cls: type, plugin: str) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistryError(f"plugin {plugin!r} registered {cls!r} as {'an' if kind[0] in 'aeiou' else 'a'} {kind} without a `name` ClassVar")
        if not attrs.has(cls):
            raise RegistryError(f"plugin {plugin!r} registered {kind} {name!r}: {cls.__name__} is not an attrs class")
        attrs.resolve_types(cls)
        existing = self._entries[kind].get(name)
        if existing is not None and existing.cls is not cls:
            raise RegistryError(
                f"{kind} name {name!r} is registered twice: by plugin {existing.plugin!r} "
                f"({existing.cls.__module__}.{existing.cls.__qualname__}) and by plugin {plugin!r} "
                f"({cls.__module__}.{cls.__qualname__}); uninstall one or set CRYOINVERSE_LOAD_PLUGINS"
            )
        self._entries[kind][name] = Entry(kind, name, cls, plugin)

    def names(self, kind: str) -> list[str]:
        """Sorted registered names of one kind."""
        return sorted(self._entries[_check_kind(kind)])

    def entries(self, kind: str | None = None) -> list[Entry]:
        """All entries, or those of one kind, sorted by kind then name."""
        kinds = KINDS if kind is None else (_check_kind(kind),)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]

    def entry(self, kind: str, name: str) -> Entry:
        """The entry of `name`; unknown names fail with the known ones and the closest match."""
        table = self._entries[_check_kind(kind)]
        if name in table:
            return table[name]
        known = sorted(table)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryError(f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(known) or '(none)'}")

    def get(self, kind: str, name: str) -> type:
        """The class registered as `name` of this kind."""
        return self.entry(kind, name).cls

    def find(self, name: str) -> list[Entry]:
        """Entries of any kind with this name."""
        return [self._entries[k][name] for k in KINDS if name in self._entries[k]]


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise RegistryError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
    return kind


def get_registry() -> Registry:
    """A registry over the process-wide plugin manager (rebuilt on each call, so it sees (un)registrations)."""
    return Registry(get_plugin_manager())
