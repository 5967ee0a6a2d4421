"""The plugin author's guide documents every capability the code looks up on a component."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
SOURCES = [p for d in ("framework", "priors", "operators", "samplers", "posers") for p in (ROOT / d).rglob("*.py")]
# attributes looked up on things that are not components: tensors, volumes, configs, MRC headers
NOT_CAPABILITIES = {"__name__", "data", "to", "config", "ispg"}


def looked_up() -> set[str]:
    """Every attribute name the package reads with getattr/hasattr and a default (optional capabilities)."""
    names = set()
    for path in SOURCES:
        names |= set(re.findall(r"(?:getattr|hasattr)\([\w.()]+, \"(\w+)\"", path.read_text()))
    return names - NOT_CAPABILITIES


def test_every_looked_up_capability_is_documented():
    guide = GUIDE.read_text()
    missing = sorted(n for n in looked_up() if f"`{n}" not in guide)
    assert not missing, f"docs/plugins.md does not document: {', '.join(missing)}"


def test_the_scan_finds_the_known_capabilities():
    """The scan itself works: it finds the plain data the code reads where present (capabilities proper
    are types, checked by the test below)."""
    assert {"observes", "observation_fields", "steps", "poses", "noise_variance", "half_maps"} <= looked_up()


def test_every_hook_is_documented():
    from cryoinverse import hookspecs

    guide = GUIDE.read_text()
    hooks = [h for h in dir(hookspecs) if h.startswith("register_")]
    assert hooks and all(f"`{h}(" in guide for h in hooks)


def test_every_capability_type_is_documented_with_its_members():
    """Each optional capability of `cryoinverse.components` is named in the guide, with every member it checks."""
    from cryoinverse import components

    guide = GUIDE.read_text()
    kinds = {c for group in components.CAPABILITIES.values() for c in group}
    assert len(kinds) >= 20
    for capability in kinds:
        assert f"`{capability.__name__}`" in guide, capability.__name__
        members = {m for m in [*vars(capability), *getattr(capability, "__annotations__", {})] if not m.startswith("_")}
        assert members, capability.__name__
        for member in members:
            assert f"`{member}" in guide, f"{capability.__name__}.{member}"
