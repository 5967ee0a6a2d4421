"""Strict checking of TOML values against the annotated types of attrs fields.

Strict on purpose: a float where an int is expected, or a string where a bool is expected, is an
error to report, never something to coerce (cattrs' default converter turns 2.5 into 2).
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, Union


def type_name(tp: Any) -> str:
    """A short readable name of a type annotation."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        inner = type_name(args[0]) if args else "any"
        return f"list of {inner}"
    if tp is type(None):
        return "nothing"
    if tp is Path:
        return "path"
    return getattr(tp, "__name__", str(tp))


def convert(value: Any, tp: Any) -> Any:
    """`value` checked against `tp` (paths from strings, ints accepted as floats); TypeError otherwise."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return convert(value, arg)
            except TypeError:
                continue
        raise TypeError(f"expected {type_name(tp)}, got {_show(value)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError(f"expected {type_name(tp)}, got {_show(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected {type_name(tp)}, got {_show(value)}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = []
        for i, item in enumerate(value):
            try:
                out.append(convert(item, inner))
            except TypeError as exc:
                raise TypeError(f"item {i}: {exc}") from None
        return out if origin is list else tuple(out)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise TypeError(f"expected {type_name(tp)}, got {_show(value)}")


def _show(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "float", str: "string", list: "list", dict: "table"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) < 40 else text[:37] + '...'}"
