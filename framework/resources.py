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


def size_text(nbytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (GiB, TiB, PiB, ...)."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    k = 0
    while nbytes >= 1024 and k < len(units) - 1:
        nbytes /= 1024
        k += 1
    return f"{nbytes:.1f} {units[k]}"


def check_fits(needed: int, what: str, fix: str) -> None:
    """DataError naming `what` and the sizes when `needed` bytes exceed the machine's memory."""
    total = physical_memory()
    if total is not None and needed > total:
        raise DataError(f"{what} needs about {size_text(needed)} of memory; this machine has {size_text(total)}. {fix}")
