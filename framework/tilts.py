"""Tilt series as the cryo-ET pipelines write them: IMOD / Warp, AreTomo and RELION 5.

`read_tilt_series(path, tomogram=None)` reads, by the file's suffix:

- `.tlt` / `.rawtlt` (IMOD, Warp), and any other suffix: plain text, one tilt angle in degrees per line (IMOD writes
  them in acquisition or in angular order; either is fine here), blank lines ignored.
- `.aln` (AreTomo 1/2/3): `#` header lines, then the global alignment table under its column
  header `# SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT`, one row per tilt kept for the
  reconstruction, ending at the next `#` line (`# Local Alignment`) or the end of the file. The
  angles are its TILT column: the aligned angles AreTomo reconstructed with, not the nominal ones.
  Dark frames (`# DarkFrame = ...`) were left out of the reconstruction, so they are not tilts.
  ROT is the in-plane angle of the tilt axis on the raw images.
- `.mdoc` (SerialEM): one `[ZValue = N]` section per image of the stack, in stack order, each with
  its nominal `TiltAngle` (the stage angle, not an aligned one). The dose received before each tilt
  is its `PriorRecordDose` where every section gives one, else the sum of the `ExposureDose` of the
  images acquired before it (by `DateTime`, else stack order); no doses where neither is recorded
  (or all are 0, an uncalibrated camera). `TiltAxisAngle` (header or sections) is the axis angle,
  `Voltage` the acceleration voltage (kV).
- `.star` (RELION 5): either a tilt-series STAR file (a `data_<tomogram>` block with one row per
  tilt) or the `tomograms.star` of a Reconstruct job, whose row for the tomogram (rlnTomoName;
  `tomogram` picks it when the file holds several) names its tilt-series STAR
  (rlnTomoTiltSeriesStarFile), its voltage (rlnVoltage, kV) and, when the job wrote them for
  denoising, its half-set tomograms (rlnTomoReconstructedTomogramHalf1/2). In a tilt-series STAR the angles are
  rlnTomoYTilt (aligned), or rlnTomoNominalStageTiltAngle where no alignment is recorded; the
  dose received before each tilt is rlnMicrographPreExposure (e/A^2); the tilt axis
  rlnTomoZRot (aligned) or rlnTomoNominalTiltAxisAngle. RELION paths are relative to the project
  folder: they are looked up from the STAR file's folder upwards.

Angles are in the tilt-series convention: 0 is the untilted view, the beam along z; see
`cryoinverse.operators.missing_wedge` for how an angle maps to a measured Fourier plane.
Reconstructions (IMOD, AreTomo, RELION) put the tilt axis along y of the tomogram, whatever its
angle on the raw images. Every problem is a DataError naming the file and the line (text files)
or the block, row and column (STAR files).
"""

from __future__ import annotations

import datetime
import math
import os
from pathlib import Path

import attrs
import numpy as np

from .errors import DataError

__all__ = ["TiltSeries", "read_tilt_series", "read_tilt_angles", "TILT_SUFFIXES"]

TILT_SUFFIXES = (".tlt", ".rawtlt", ".aln", ".mdoc", ".star")


@attrs.frozen
class TiltSeries:
    """The tilts one tomogram was reconstructed from, as its pipeline recorded them."""

    path: Path  # the file read (for a tomograms.star: that file; the tilts came from `tilt_series_file`)
    angles: tuple[float, ...]  # tilt angles in degrees, file order
    doses: tuple[float, ...] | None = None  # electrons per A^2 received before each tilt, where the file gives it
    axis_angle: float | None = None  # in-plane angle of the tilt axis on the raw images (degrees), where given
    half_maps: tuple[Path, Path] | None = None  # odd/even (half-set) tomograms, where the file names them
    tilt_series_file: Path | None = None  # RELION: the tilt-series STAR a tomograms.star pointed to
    voltage: float | None = None  # acceleration voltage in kV, where the file records it

    @property
    def range(self) -> tuple[float, float]:
        """(lowest, highest) tilt angle."""
        return min(self.angles), max(self.angles)


def read_tilt_angles(path: str | os.PathLike, tomogram: str | None = None) -> list[float]:
    """The tilt angles (degrees, in file order) of any file `read_tilt_series` reads."""
    return list(read_tilt_series(path, tomogram).angles)


def read_tilt_series(path: str | os.PathLike, tomogram: str | None = None) -> TiltSeries:
    """The tilt series in `path` (.tlt, .rawtlt, .aln, .mdoc or a RELION 5 .star); `tomogram` names the
    tomogram in a STAR file that holds several. DataError for anything unreadable or implausible."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".star":
        return _relion(path, tomogram)
    text = _text(path)
    readers = {".aln": _aretomo, ".mdoc": _mdoc}
    return readers.get(suffix, _imod)(path, text)


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise DataError(f"tilt file {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"tilt file {path}: cannot read: {exc}") from None


def _checked(path: Path, angles: list[float], where: list[str]) -> tuple[float, ...]:
    for angle, place in zip(angles, where):
        if not math.isfinite(angle) or not -90.0 <= angle <= 90.0:
            raise DataError(f"tilt file {path}: {place}: angle {angle:g} is outside [-90, 90] degrees")
    if len(angles) < 2:
        raise DataError(f"tilt file {path}: {len(angles)} angle{'s' if len(angles) != 1 else ''}; a tilt series needs at least 2")
    return tuple(angles)


def _imod(path: Path, text: str) -> TiltSeries:
    angles, where = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        word = line.strip()
        if not word:
            continue
        try:
            angles.append(float(word))
        except ValueError:
            raise DataError(f"tilt file {path}: line {number}: {word!r} is not a number (one angle in degrees per line)") from None
        where.append(f"line {number}")
    return TiltSeries(path=path, angles=_checked(path, angles, where))


ALN_COLUMNS = ("SEC", "ROT", "GMAG", "TX", "TY", "SMEAN", "SFIT", "SCALE", "BASE", "TILT")


def _aretomo(path: Path, text: str) -> TiltSeries:
    columns: list[str] | None = None
    angles, axes, where = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        word = line.strip()
        if not word:
            continue
        if word.startswith("#"):
            names = word.lstrip("#").split()
            if columns is None and names[:1] == ["SEC"]:
                columns = names
                missing = [c for c in ("ROT", "TILT") if c not in columns]
                if missing:
                    raise DataError(f"tilt file {path}: line {number}: the alignment table's header has no {' or '.join(missing)} column")
            elif columns is not None and angles:
                break  # the global table ends where the next section (local alignment) starts
            continue
        if columns is None:
            raise DataError(f"tilt file {path}: line {number}: a table row before the '# {' '.join(ALN_COLUMNS)}' header (not an AreTomo .aln file?)")
        fields = word.split()
        if len(fields) != len(columns):
            raise DataError(f"tilt file {path}: line {number}: {len(fields)} fields; the header names {len(columns)} ({' '.join(columns)})")
        values = {}
        for name, field in zip(columns, fields):
            try:
                values[name] = float(field)
            except ValueError:
                raise DataError(f"tilt file {path}: line {number}: {name} {field!r} is not a number") from None
        angles.append(values["TILT"])
        axes.append(values["ROT"])
        where.append(f"line {number}, TILT")
    if columns is None:
        raise DataError(f"tilt file {path}: no '# {' '.join(ALN_COLUMNS)}' header: not an AreTomo .aln file")
    return TiltSeries(path=path, angles=_checked(path, angles, where), axis_angle=float(np.median(axes)) if axes else None)


# -- SerialEM ---------------------------------------------------------------------------------------

MDOC_TIMES = ("%d-%b-%y  %H:%M:%S", "%d-%b-%y %H:%M:%S", "%d-%b-%Y  %H:%M:%S", "%d-%b-%Y %H:%M:%S")


def _mdoc_number(path: Path, number: int, key: str, value: str) -> float:
    try:
        return float(value.split()[0])
    except (ValueError, IndexError):
        raise DataError(f"tilt file {path}: line {number}: {key} {value!r} is not a number") from None


def _mdoc_time(value: str) -> datetime.datetime | None:
    for layout in MDOC_TIMES:
        try:
            return datetime.datetime.strptime(value.strip(), layout)
        except ValueError:
            continue
    return None


def _mdoc(path: Path, text: str) -> TiltSeries:
    header: dict[str, str] = {}
    sections: list[dict] = []  # per [ZValue = N]: its number, line and key -> (value, line)
    for number, line in enumerate(text.splitlines(), start=1):
        word = line.strip()
        if not word:
            continue
        if word.startswith("["):
            name, _, value = word.strip("[]").partition("=")
            if name.strip() == "ZValue":
                z = _mdoc_number(path, number, "ZValue", value)
                sections.append({"z": int(z), "line": number, "keys": {}})
            elif sections:
                sections.append({"z": None, "line": number, "keys": {}})  # another kind of section: not an image
            continue
        key, sep, value = word.partition("=")
        if not sep:
            raise DataError(f"tilt file {path}: line {number}: {word!r} is neither 'Key = value' nor a [section] (not a SerialEM .mdoc?)")
        (sections[-1]["keys"] if sections else header)[key.strip()] = (value.strip(), number)
    images = [s for s in sections if s["z"] is not None]
    if not images:
        raise DataError(f"tilt file {path}: no [ZValue = N] sections: not a SerialEM .mdoc file")
    images.sort(key=lambda s: s["z"])
    angles, where = [], []
    for image in images:
        if "TiltAngle" not in image["keys"]:
            raise DataError(f"tilt file {path}: line {image['line']}: [ZValue = {image['z']}] has no TiltAngle")
        value, number = image["keys"]["TiltAngle"]
        angles.append(_mdoc_number(path, number, "TiltAngle", value))
        where.append(f"line {number}, TiltAngle")
    places = [header, *(image["keys"] for image in images)]
    axis, voltage = (_mdoc_first(path, places, key) for key in ("TiltAxisAngle", "Voltage"))
    return TiltSeries(path=path, angles=_checked(path, angles, where), doses=_mdoc_doses(path, images), axis_angle=axis, voltage=voltage)


def _mdoc_first(path: Path, places: list[dict], key: str) -> float | None:
    """The number under `key` in the header, else in the first image section that has it."""
    for keys in places:
        if key in keys:
            value, number = keys[key]
            return _mdoc_number(path, number, key, value)
    return None


def _mdoc_doses(path: Path, images: list[dict]) -> tuple[float, ...] | None:
    """Pre-exposure of each image (stack order): PriorRecordDose, else the ExposureDose acquired before it."""
    def numbers(key: str) -> list[float] | None:
        if not all(key in image["keys"] for image in images):
            return None
        found = [_mdoc_number(path, image["keys"][key][1], key, image["keys"][key][0]) for image in images]
        for value, image in zip(found, images):
            if not (math.isfinite(value) and value >= 0):
                raise DataError(f"tilt file {path}: line {image['keys'][key][1]}: {key} {value:g} is not a dose (e/A^2 >= 0)")
        return found

    prior = numbers("PriorRecordDose")
    if prior is not None:
        return tuple(prior)
    exposure = numbers("ExposureDose")
    if exposure is None or not any(exposure):
        return None
    times = [_mdoc_time(image["keys"].get("DateTime", ("", 0))[0]) for image in images]
    order = sorted(range(len(images)), key=lambda i: times[i]) if all(times) else list(range(len(images)))
    doses, total = [0.0] * len(images), 0.0
    for i in order:
        doses[i] = total
        total += exposure[i]
    return tuple(doses)


# -- RELION 5 ---------------------------------------------------------------------------------------

TOMOGRAM_COLUMNS = ("rlnTomoName", "rlnTomoTiltSeriesStarFile")
HALF_COLUMNS = ("rlnTomoReconstructedTomogramHalf1", "rlnTomoReconstructedTomogramHalf2")
ANGLE_COLUMNS = ("rlnTomoYTilt", "rlnTomoNominalStageTiltAngle")  # aligned first
AXIS_COLUMNS = ("rlnTomoZRot", "rlnTomoNominalTiltAxisAngle")
DOSE_COLUMN = "rlnMicrographPreExposure"
VOLTAGE_COLUMN = "rlnVoltage"  # kV, in tomograms.star


def _blocks(path: Path):
    from .star import read_star

    try:
        return read_star(path)
    except DataError as exc:
        raise DataError(f"tilt file {exc}") from None  # the reader's message starts with the path


def _relion(path: Path, tomogram: str | None) -> TiltSeries:
    blocks = _blocks(path)
    listing = [b for b in blocks.values() if all(c in b.table for c in TOMOGRAM_COLUMNS)]
    if listing:
        return _tomograms_star(path, listing[0], tomogram)
    return _tilt_series_star(path, blocks, tomogram)


def _pick(path: Path, names: list[str], tomogram: str | None, what: str) -> int:
    """Index of `tomogram` in `names` (the only one when not named); `what` names the rows ("tomograms")."""
    if tomogram is None:
        if len(names) == 1:
            return 0
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise DataError(f"tilt file {path}: {len(names)} {what} ({shown}); name one with tomogram = \"...\"")
    if tomogram not in names:
        raise DataError(f"tilt file {path}: no {what} named {tomogram!r} here (there are: {', '.join(names[:10])})")
    return names.index(tomogram)


def project_path(star: Path, name: str, where: str) -> Path:
    """A path written in a RELION STAR file: absolute, or relative to the project folder, which is the
    STAR file's folder or one above it (the first where the file exists). DataError naming `where` if none."""
    candidate = Path(name)
    if candidate.is_absolute():
        if candidate.exists():
            return candidate
        raise DataError(f"tilt file {star}: {where}: {name}: file not found")
    folders = [star.resolve().parent, *star.resolve().parent.parents]
    for folder in folders:
        if (folder / candidate).exists():
            return folder / candidate
    raise DataError(f"tilt file {star}: {where}: {name}: file not found in the STAR file's folder or any folder above it (the RELION project)")


def _tomograms_star(path: Path, block, tomogram: str | None) -> TiltSeries:
    names = [str(n) for n in block.table["rlnTomoName"]]
    row = _pick(path, names, tomogram, "tomograms")
    where = f"block data_{block.name}, row {row + 1} ({names[row]})"
    tilt_star = project_path(path, str(block.table["rlnTomoTiltSeriesStarFile"][row]), f"{where}, column rlnTomoTiltSeriesStarFile")
    series = _tilt_series_star(tilt_star, _blocks(tilt_star), names[row])
    halves = None
    if all(c in block.table for c in HALF_COLUMNS):
        halves = tuple(project_path(path, str(block.table[c][row]), f"{where}, column {c}") for c in HALF_COLUMNS)
    voltage = float(_numbers(path, block, VOLTAGE_COLUMN)[row]) if VOLTAGE_COLUMN in block.table else None
    return attrs.evolve(series, path=path, half_maps=halves, tilt_series_file=tilt_star, voltage=voltage)


def _numbers(path: Path, block, column: str) -> np.ndarray:
    values = block.table[column]
    if values.dtype.kind not in "if":
        for row, value in enumerate(values, start=1):
            try:
                float(value)
            except ValueError:
                raise DataError(f"tilt file {path}: block data_{block.name}, row {row}, column {column}: {str(value)!r} is not a number") from None
    return values.astype(np.float64)


def _tilt_series_star(path: Path, blocks: dict, tomogram: str | None) -> TiltSeries:
    tilt_blocks = [b for b in blocks.values() if any(c in b.table for c in ANGLE_COLUMNS)]
    if not tilt_blocks:
        raise DataError(
            f"tilt file {path}: no tilt table (a loop with {' or '.join(ANGLE_COLUMNS)}) and no tomogram list "
            f"({' and '.join(TOMOGRAM_COLUMNS)}): not a RELION 5 tilt-series or tomograms STAR file"
        )
    names = [b.name for b in tilt_blocks]
    if len(tilt_blocks) == 1 and tomogram not in names:  # one series: its block name need not match
        block = tilt_blocks[0]
    else:
        block = tilt_blocks[_pick(path, names, tomogram, "tilt-series blocks")]
    column = next(c for c in ANGLE_COLUMNS if c in block.table)
    angles = _numbers(path, block, column)
    where = [f"block data_{block.name}, row {i + 1}, column {column}" for i in range(len(angles))]
    doses = None
    if DOSE_COLUMN in block.table:
        doses = _numbers(path, block, DOSE_COLUMN)
        bad = np.flatnonzero(~np.isfinite(doses) | (doses < 0))
        if bad.size:
            raise DataError(f"tilt file {path}: block data_{block.name}, row {bad[0] + 1}, column {DOSE_COLUMN}: dose {doses[bad[0]]:g} is not a dose (e/A^2 >= 0)")
        doses = tuple(float(d) for d in doses)
    axis = next((float(np.median(_numbers(path, block, c))) for c in AXIS_COLUMNS if c in block.table), None)
    return TiltSeries(path=path, angles=_checked(path, [float(a) for a in angles], where), doses=doses, axis_angle=axis)
