"""Memory the machine has, and refusing work that cannot fit before it starts."""

from __future__ import annotations

import os

from .errors import DataError


def physical_memory() -> int | None:
    """Bytes of physical memory (None where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(needed: int, what: str, fix: str) -> None:
    """DataError naming `what` and the sizes when `needed` bytes exceed the machine's memory."""
    total = physical_memory()
    if total is not None and needed > total:
        raise DataError(f"{what} needs about {needed / 2**30:.1f} GiB of memory; this machine has {total / 2**30:.1f} GiB. {fix}")
