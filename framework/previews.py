"""Previews of maps as PNG images: central slices, a glance at density before and after restoration.

One row per map, three columns: the central z, y and x planes (z-y-x axis order, so the columns
show the (y, x), (z, x) and (z, y) planes). Each map is scaled to its own 1st-99.9th percentile
range, since a restored map and a std map live on different scales.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .mrc import atomic_path
from .volume import Volume

__all__ = ["PLANES", "central_slices", "write_slices_png", "write_planes_png"]

PLANES = ("z (y-x plane)", "y (z-x plane)", "x (z-y plane)")


def central_slices(data: torch.Tensor) -> list[np.ndarray]:
    """The three central planes of a (z, y, x) map, as float64 arrays."""
    a = data.detach().to("cpu", torch.float64).numpy()
    nz, ny, nx = a.shape
    return [a[nz // 2], a[:, ny // 2], a[:, :, nx // 2]]


def write_slices_png(path: Path, maps: dict[str, Volume | torch.Tensor], title: str | None = None) -> Path:
    """Write a PNG of the central slices of every named map (one row each), atomically."""
    rows = {name: central_slices(m.data if isinstance(m, Volume) else m) for name, m in maps.items() if m is not None}
    return write_planes_png(path, rows, title)


def write_planes_png(path: Path, planes: dict[str, list[np.ndarray]], title: str | None = None) -> Path:
    """Write a PNG of given central planes, one row of three (z, y, x planes as `central_slices`
    returns them) per named map, atomically; for maps too large to hold, whose planes were read alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(name, p) for name, p in planes.items() if p is not None]
    if not rows:
        raise ValueError("write_slices_png needs at least one map")
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for (name, row), line in zip(rows, axes):
        lo, hi = np.percentile(np.concatenate([p.ravel() for p in row]), [1.0, 99.9])
        for ax, plane, label in zip(line, row, PLANES):
            ax.imshow(plane, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1e-12, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}: {label}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)
