"""A small reader of RELION STAR files: data blocks, key-value pairs and loop_ tables.

`read_star(path)` returns every block by name (`data_particles` -> "particles"; a bare `data_`
-> ""). A block holds key-value pairs (`values`) and/or one table (`table`: column name without
the leading underscore -> numpy array; numbers become int64/float64 arrays, anything else an
array of str). `read_particles(path)` returns the particle table with RELION 3.1 optics-group
columns merged into every row (a particle's own column wins); files before 3.1 have no optics
block and their first table is the particle table. Problems raise `DataError` naming the file
(and line where there is one).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import attrs
import numpy as np

from .errors import DataError

__all__ = ["StarBlock", "read_star", "read_particles", "write_star", "pixel_size_of", "split_image_name"]


@attrs.define
class StarBlock:
    """One `data_NAME` block: its key-value pairs and its loop_ table (columns in file order)."""

    name: str
    values: dict[str, object] = attrs.Factory(dict)
    table: dict[str, np.ndarray] = attrs.Factory(dict)

    def __len__(self) -> int:
        return len(next(iter(self.table.values()))) if self.table else 0


def _scalar(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _column(values: list[str]) -> np.ndarray:
    for dtype in (np.int64, np.float64):
        try:
            return np.array(values, dtype=dtype)
        except (ValueError, OverflowError):
            continue
    return np.array(values, dtype=str)


def _tokens(line: str, path: Path, number: int) -> list[str]:
    if "'" not in line and '"' not in line:
        return line.split()
    try:
        return shlex.split(line, posix=True)
    except ValueError as exc:
        raise DataError(f"{path}:{number}: cannot parse quoted values ({exc})") from None


def read_star(path: str | os.PathLike) -> dict[str, StarBlock]:
    """All data blocks of a STAR file, by name (without the `data_` prefix)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: STAR file not found")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    blocks: dict[str, StarBlock] = {}
    block: StarBlock | None = None
    columns: list[str] = []
    rows: list[list[str]] = []
    state = "outside"  # outside | header (reading loop column names) | rows

    def finish_loop() -> None:
        nonlocal columns, rows
        if block is not None and columns:
            block.table = {c: _column([r[i] for r in rows]) for i, c in enumerate(columns)}
        columns, rows = [], []

    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            if not line and state == "rows":
                finish_loop()
                state = "outside"
            continue
        if line.startswith("data_"):
            finish_loop()
            name = line[5:].split()[0] if len(line) > 5 else ""
            if name in blocks:
                raise DataError(f"{path}:{number}: data block 'data_{name}' appears twice")
            block = blocks[name] = StarBlock(name)
            state = "outside"
            continue
        if block is None:
            raise DataError(f"{path}:{number}: expected a 'data_' block before {line[:40]!r}; is this a STAR file?")
        if line == "loop_":
            finish_loop()
            if block.table:
                raise DataError(f"{path}:{number}: block 'data_{block.name}' has more than one loop_ table")
            state = "header"
            continue
        if line.startswith("_"):
            parts = line.split(None, 1)
            key = parts[0][1:]
            if state == "header":
                columns.append(key)  # a trailing '#3' column number is ignored
                continue
            if state == "rows":
                raise DataError(f"{path}:{number}: column name {parts[0]} after the rows of a loop_ table")
            tokens = _tokens(parts[1], path, number) if len(parts) > 1 else []
            if not tokens:
                raise DataError(f"{path}:{number}: {parts[0]} has no value")
            block.values[key] = _scalar(tokens[0])
            continue
        if state in ("header", "rows"):
            if not columns:
                raise DataError(f"{path}:{number}: loop_ table without column names")
            tokens = _tokens(line, path, number)
            if len(tokens) != len(columns):
                raise DataError(
                    f"{path}:{number}: row has {len(tokens)} values but the loop_ table has {len(columns)} columns"
                )
            rows.append(tokens)
            state = "rows"
            continue
        raise DataError(f"{path}:{number}: unexpected line {line[:60]!r} outside a loop_ table")
    finish_loop()
    if not blocks:
        raise DataError(f"{path}: no 'data_' block; is this a STAR file?")
    return blocks


def read_particles(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The particle table with optics-group columns merged in (RELION 3.1+), one array per column."""
    path = Path(path)
    blocks = read_star(path)
    if "particles" in blocks:
        particles = blocks["particles"]
    else:
        tables = [b for name, b in blocks.items() if b.table and name != "optics"]
        if not tables:
            raise DataError(f"{path}: no particle table (a loop_ in 'data_particles' or, before RELION 3.1, any block)")
        particles = tables[0]
    if not particles.table:
        raise DataError(f"{path}: block 'data_{particles.name}' has no loop_ table of particles")
    table = dict(particles.table)
    optics = blocks.get("optics")
    if optics is not None and optics.table:
        table = _merge_optics(path, table, optics.table)
    return table


def _merge_optics(path: Path, table: dict[str, np.ndarray], optics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    n_groups = len(next(iter(optics.values())))
    n = len(next(iter(table.values())))
    if "rlnOpticsGroup" in table:
        if "rlnOpticsGroup" not in optics:
            raise DataError(f"{path}: the optics table has no rlnOpticsGroup column")
        ids = list(np.asarray(optics["rlnOpticsGroup"]).tolist())
        lookup = {g: i for i, g in enumerate(ids)}
        wanted = np.asarray(table["rlnOpticsGroup"]).tolist()
        unknown = sorted({g for g in wanted if g not in lookup}, key=str)
        if unknown:
            raise DataError(
                f"{path}: particles refer to optics group(s) {', '.join(map(str, unknown))} "
                f"missing from data_optics (groups: {', '.join(map(str, ids))})"
            )
        index = np.array([lookup[g] for g in wanted], dtype=np.int64)
    elif n_groups == 1:
        index = np.zeros(n, dtype=np.int64)
    else:
        raise DataError(f"{path}: {n_groups} optics groups but the particles have no rlnOpticsGroup column")
    merged = dict(table)
    for column, values in optics.items():
        if column not in merged:
            merged[column] = np.asarray(values)[index]
    return merged


def pixel_size_of(table: dict[str, np.ndarray], path: str | os.PathLike = "STAR file") -> float | None:
    """Image pixel size in Å (one value for all rows), or None when the table does not give it.

    Taken from rlnImagePixelSize (RELION 3.1), rlnPixelSize, or rlnDetectorPixelSize (µm) x 1e4 /
    rlnMagnification (older files).
    """
    if "rlnImagePixelSize" in table:
        sizes = np.asarray(table["rlnImagePixelSize"], dtype=np.float64)
    elif "rlnPixelSize" in table:
        sizes = np.asarray(table["rlnPixelSize"], dtype=np.float64)
    elif "rlnDetectorPixelSize" in table and "rlnMagnification" in table:
        sizes = np.asarray(table["rlnDetectorPixelSize"], dtype=np.float64) * 1e4 / np.asarray(
            table["rlnMagnification"], dtype=np.float64
        )
    else:
        return None
    if sizes.size == 0:
        return None
    if np.ptp(sizes) > 1e-3 * sizes.max():
        raise DataError(
            f"{path}: images have different pixel sizes ({sizes.min():g} to {sizes.max():g} Å); "
            "one stack needs one pixel size: select one optics group"
        )
    if not sizes[0] > 0:
        raise DataError(f"{path}: pixel size {sizes[0]:g} Å is not positive")
    return float(sizes[0])


def split_image_name(name: str) -> tuple[int, str]:
    """'12@stack.mrcs' -> (11, 'stack.mrcs') (0-based index); 'image.mrc' -> (0, 'image.mrc')."""
    if "@" not in name:
        return 0, name
    index, _, file = name.partition("@")
    try:
        k = int(index)
    except ValueError:
        raise DataError(f"image name {name!r}: expected INDEX@FILE with an integer INDEX") from None
    if k < 1:
        raise DataError(f"image name {name!r}: image indices start at 1")
    return k - 1, file


def _format(value) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # shortest text that reads back to the same float
    text = str(value)
    return f'"{text}"' if (not text or any(c.isspace() for c in text)) else text


def write_star(path: str | os.PathLike, blocks: dict[str, dict[str, object]]) -> Path:
    """Write blocks {name: {column: values}} as loop_ tables (RELION 3.1 layout); returns the path.

    Written atomically; a round trip through `read_star` returns the same columns.
    """
    from .mrc import atomic_path

    lines = ["# written by cryoinverse", ""]
    for name, columns in blocks.items():
        arrays = {k: np.atleast_1d(np.asarray(v)) for k, v in columns.items()}
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) > 1:
            raise ValueError(f"block {name!r}: columns have different lengths {sorted(lengths)}")
        lines += [f"data_{name}", "", "loop_"]
        lines += [f"_{k} #{i}" for i, k in enumerate(arrays, start=1)]
        for row in zip(*arrays.values()):
            lines.append(" ".join(_format(v) for v in row))
        lines.append("")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)
