"""`param`: an attrs field with the one-line help text that `describe` and spec errors print."""

from __future__ import annotations

from typing import Any

import attrs


def param(default: Any = attrs.NOTHING, *, help: str, factory=None, validator=None, converter=None, is_map: bool = False):
    """A component parameter. `is_map=True` marks a path to a 3D map that validation checks."""
    metadata = {"help": help, "map": is_map}
    if factory is not None:
        return attrs.field(factory=factory, validator=validator, converter=converter, metadata=metadata)
    return attrs.field(default=default, validator=validator, converter=converter, metadata=metadata)


def help_of(field: attrs.Attribute) -> str:
    """The field's help text ('' when it has none)."""
    return field.metadata.get("help", "")


def positive(instance, attribute, value) -> None:
    """Validator: a number > 0 (None passes)."""
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name}: must be > 0; got {value}")


def non_negative(instance, attribute, value) -> None:
    """Validator: a number >= 0 (None passes)."""
    if value is not None and not value >= 0:
        raise ValueError(f"{attribute.name}: must be >= 0; got {value}")


def one_of(*choices: str):
    """Validator: one of the given strings."""

    def check(instance, attribute, value) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name}: must be one of {', '.join(map(repr, choices))}; got {value!r}")

    return check
