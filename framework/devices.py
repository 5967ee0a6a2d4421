"""Which torch device a run uses: `device = "auto" | "cpu" | "cuda[:N]"` resolved once, here."""

from __future__ import annotations

import torch

from .errors import SpecError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; otherwise the named device (which must exist)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError(f"device = {name!r}, but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)
