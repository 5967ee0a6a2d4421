"""Writing a run's outputs: files checked before any work, JSON and FSC curves written atomically.

`check_outputs` refuses, before the work, outputs that exist (without overwrite) or that cannot
be created; `write_json`, `write_fsc_csv` and `write_fsc_plot` write through
`cryoinverse.mrc.atomic_path` (a temporary file beside the target, renamed at the end).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .mrc import atomic_path

__all__ = ["check_outputs", "write_json", "finite", "write_fsc_csv", "write_fsc_plot"]


def check_outputs(paths: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, outputs that exist (unless `overwrite`) or cannot be written.

    An output can be written when it is not a folder and its nearest existing ancestor folder is a
    writable folder (missing folders below it are created when writing).
    """
    problems = []
    for p in (Path(p) for p in paths):
        if p.is_dir():
            problems.append(f"{p}: is a folder; an output file is needed")
            continue
        ancestor = p.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            problems.append(f"{p}: cannot be created: {ancestor} is a file, not a folder")
            continue
        problem = _probe_folder(ancestor)
        if problem is not None:
            problems.append(f"{p}: cannot be created: {problem}")
    if problems:
        raise DataError(problems[0] if len(problems) == 1 else "outputs cannot be written:\n  " + "\n  ".join(problems))
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise DataError(f"output exists: {', '.join(existing)}; use --overwrite to replace")


def _probe_folder(folder: Path) -> str | None:
    """Why no file can be created in `folder` (None when one can): a file is made there and removed.

    Permission bits alone do not tell: root passes `os.access` on a read-only file system or in
    /sys, and then fails on the first write, after the work."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".cryoinverse-probe-", dir=folder)
    except OSError as exc:
        return f"{folder} is not writable ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


def write_json(path: Path, data: dict) -> Path:
    """Write JSON atomically; non-finite numbers become null (JSON has no infinity)."""
    text = json.dumps(finite(data), indent=2, default=_json_default, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")
    return Path(path)


def finite(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_fsc_csv(path: Path, curves: dict[str, dict]) -> Path:
    """CSV with columns shell, resolution_A, then one FSC column per named curve."""
    names = list(curves)
    rows = zip(*[curves[n]["curve"] for n in names])
    lines = ["shell,resolution_A," + ",".join(f"fsc_{n}" for n in names)]
    for shell, points in enumerate(rows, start=1):
        lines.append(f"{shell},{points[0][0]:.4f}," + ",".join(f"{p[1]:.6f}" for p in points))
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def write_fsc_plot(path: Path, curves: dict[str, dict]) -> Path:
    """PNG plot of FSC against spatial frequency, with the 0.5 and 0.143 thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, metrics in curves.items():
        res = np.array([p[0] for p in metrics["curve"]])
        ax.plot(1.0 / res, [p[1] for p in metrics["curve"]], label=f"{name} (AUC {metrics['auc']:.3f})")
    for level in (0.5, 0.143):
        ax.axhline(level, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
