"""Progress display for long work: a bar on stderr, or nothing."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, ContextManager, Iterator

import click

ProgressFactory = Callable[[int, str], ContextManager[Callable[[int], None]]]
"""Given (total steps, label), a context manager yielding the per-step callback."""


@contextlib.contextmanager
def silent(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """Shows nothing."""
    yield lambda n: None


@contextlib.contextmanager
def bar(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A click progress bar on stderr (hidden when stderr is not a terminal, except for the final line).

    The bar appears at the first step, so work that fails while it checks its inputs prints only
    its error, not a bar (or, off a terminal, a stray label line) before it."""
    shown: list = []

    def update(n: int) -> None:
        if not shown:
            pb = click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True, show_pos=True)
            pb.__enter__()
            shown.append(pb)
        shown[0].update(n)

    try:
        yield update
    finally:
        if shown:
            shown[0].__exit__(None, None, None)
