"""Tilt angles of a tilt series: IMOD and Warp `.tlt` / `.rawtlt` files.

The format is plain text, one tilt angle in degrees per line (IMOD writes them in acquisition
or in angular order; either is fine here), blank lines ignored. Angles are in the tilt-series
convention: 0 is the untilted view, the beam along z; see `cryoinverse.operators.missing_wedge`
for how an angle maps to a measured Fourier plane.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import DataError

__all__ = ["read_tilt_angles"]


def read_tilt_angles(path: str | os.PathLike) -> list[float]:
    """The tilt angles (degrees, in file order) of a `.tlt` / `.rawtlt` file.

    DataError, naming the file and the line, for an unreadable file, a line that is not one
    number, an angle outside [-90, 90], or fewer than two angles (no range to measure).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"tilt file {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"tilt file {path}: cannot read: {exc}") from None
    angles = []
    for number, line in enumerate(text.splitlines(), start=1):
        word = line.strip()
        if not word:
            continue
        try:
            angle = float(word)
        except ValueError:
            raise DataError(f"tilt file {path}: line {number}: {word!r} is not a number (one angle in degrees per line)") from None
        if not math.isfinite(angle) or not -90.0 <= angle <= 90.0:
            raise DataError(f"tilt file {path}: line {number}: angle {word} is outside [-90, 90] degrees")
        angles.append(angle)
    if len(angles) < 2:
        raise DataError(f"tilt file {path}: {len(angles)} angle{'s' if len(angles) != 1 else ''}; a tilt series needs at least 2")
    return angles
