"""A small reader of RELION STAR files: data blocks, key-value pairs and loop_ tables.

`read_star(path)` returns every block by name (`data_particles` -> "particles"; a bare `data_`
-> ""). A block holds key-value pairs (`values`) and/or one table (`table`: column name without
the leading underscore -> numpy array; numbers become int64/float64 arrays, anything else an
array of str). `read_particles(path)` returns the particle table with RELION 3.1 optics-group
columns merged into every row (a particle's own column wins); files before 3.1 have no optics
block and their first table is the particle table. Problems raise `DataError` naming the file
(and line where there is one).

`read_star(path, keep_text=True)` also keeps every value's text as written (`StarBlock.text`),
and `write_star` writes that text back for every entry that was not replaced with
`StarBlock.set_column`: a file read and written again keeps its blocks, columns, rows and numbers
(`0.070` stays `0.070`; only whitespace, comments and quoting are normalised).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import attrs
import numpy as np

from .errors import DataError

__all__ = [
    "StarBlock",
    "read_star",
    "read_particles",
    "particle_block",
    "particle_table",
    "write_star",
    "pixel_size_of",
    "pixel_sizes_of",
    "split_image_name",
]


@attrs.define
class StarBlock:
    """One `data_NAME` block: its key-value pairs and its loop_ table (columns in file order).

    `text` holds the values as written in the file (key -> str, column -> array of str) when the
    block was read with `keep_text=True`; `write_star` prefers it to `values` and `table`, so change
    entries with `set_column` / `drop_column`, which keep the two consistent.
    """

    name: str
    values: dict[str, object] = attrs.Factory(dict)
    table: dict[str, np.ndarray] = attrs.Factory(dict)
    text: dict[str, object] = attrs.Factory(dict)

    def __len__(self) -> int:
        return len(next(iter(self.table.values()))) if self.table else 0

    def set_column(self, column: str, values) -> None:
        """Replace (or append, at the end) a loop_ column; its old text is dropped."""
        array = np.atleast_1d(np.asarray(values))
        if self.table and len(array) != len(self):
            raise ValueError(f"block 'data_{self.name}': column {column} has {len(array)} values for {len(self)} rows")
        self.table[column] = array
        self.text.pop(column, None)

    def drop_column(self, column: str) -> None:
        """Remove a loop_ column (nothing happens when it is absent)."""
        self.table.pop(column, None)
        self.text.pop(column, None)

    def copy(self) -> "StarBlock":
        """A copy whose dictionaries can be changed without touching this block (arrays are shared)."""
        return StarBlock(self.name, dict(self.values), dict(self.table), dict(self.text))


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


def read_star(path: str | os.PathLike, keep_text: bool = False) -> dict[str, StarBlock]:
    """All data blocks of a STAR file, by name (without the `data_` prefix).

    With `keep_text`, each block's `text` holds every value as written, for `write_star`.
    """
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
            for i, c in enumerate(columns):
                tokens = [r[i] for r in rows]
                block.table[c] = _column(tokens)
                if keep_text:
                    parsed = block.table[c]
                    block.text[c] = parsed if parsed.dtype.kind == "U" else np.array(tokens, dtype=str)
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
            if keep_text:
                block.text[key] = tokens[0]
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
    return particle_table(read_star(path), path)


def particle_block(blocks: dict[str, StarBlock], path: str | os.PathLike = "STAR file") -> str:
    """The name of the block holding the particles: `particles`, else (before RELION 3.1) the first
    block with a loop_ table other than `optics`."""
    if "particles" in blocks:
        name = "particles"
    else:
        names = [name for name, b in blocks.items() if b.table and name != "optics"]
        if not names:
            raise DataError(f"{path}: no particle table (a loop_ in 'data_particles' or, before RELION 3.1, any block)")
        name = names[0]
    if not blocks[name].table:
        raise DataError(f"{path}: block 'data_{name}' has no loop_ table of particles")
    return name


def particle_table(blocks: dict[str, StarBlock], path: str | os.PathLike = "STAR file") -> dict[str, np.ndarray]:
    """The particle table of `blocks` with the optics-group columns merged into every row."""
    table = dict(blocks[particle_block(blocks, path)].table)
    optics = blocks.get("optics")
    if optics is not None and optics.table:
        table = _merge_optics(Path(path), table, optics.table)
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


def pixel_sizes_of(table: dict[str, np.ndarray], path: str | os.PathLike = "STAR file") -> np.ndarray | None:
    """Each row's image pixel size in Å (float64 array), or None when the table does not give it.

    Taken from rlnImagePixelSize (RELION 3.1), rlnPixelSize, or rlnDetectorPixelSize (µm) x 1e4 /
    rlnMagnification (older files).
    """
    try:
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
    except ValueError:
        raise DataError(f"{path}: the pixel size columns are not numeric") from None
    bad = ~(np.isfinite(sizes) & (sizes > 0))
    if bad.any():
        raise DataError(f"{path}: pixel size {sizes[bad][0]:g} Å (row {int(np.argmax(bad)) + 1}) is not positive")
    return sizes


def pixel_size_of(table: dict[str, np.ndarray], path: str | os.PathLike = "STAR file") -> float | None:
    """Image pixel size in Å (one value for all rows), or None when the table does not give it.

    The columns are those of `pixel_sizes_of`; rows with different pixel sizes raise DataError.
    """
    sizes = pixel_sizes_of(table, path)
    if sizes is None or sizes.size == 0:
        return None
    if np.ptp(sizes) > 1e-3 * sizes.max():
        raise DataError(
            f"{path}: images have different pixel sizes ({sizes.min():g} to {sizes.max():g} Å); "
            "one stack needs one pixel size: select one optics group"
        )
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


_RESERVED = ("data_", "loop_", "save_", "global_", "stop_")


def _format(value) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # shortest text that reads back to the same float
    text = str(value)
    if not text or any(c.isspace() for c in text) or text[0] in "_#'\"" or text.startswith(_RESERVED):
        return f'"{text}"'  # read back as one value, never as a name, comment or keyword
    return text


def _block_lines(block: StarBlock) -> list[str]:
    lines = [f"data_{block.name}", ""]
    if block.values:
        width = max(len(k) for k in block.values) + 1
        for key, value in block.values.items():
            lines.append(f"_{key:<{width}} {_format(block.text.get(key, value))}")
        lines.append("")
    if block.table:
        lines.append("loop_")
        lines += [f"_{k} #{i}" for i, k in enumerate(block.table, start=1)]
        columns = []
        for key, values in block.table.items():
            source = block.text.get(key, values)
            if len(source) != len(block):
                raise ValueError(f"block 'data_{block.name}': column {key} has {len(source)} values for {len(block)} rows")
            columns.append([_format(v) for v in source])
        lines += [" ".join(row) for row in zip(*columns)]
        lines.append("")
    return lines


def write_star(path: str | os.PathLike, blocks: dict[str, "StarBlock | dict[str, object]"]) -> Path:
    """Write blocks as a STAR file (RELION 3.1 layout); returns the path.

    Each block is a `StarBlock` (key-value pairs, then its loop_ table, each entry written from its
    `text` where that is kept) or a dict {column: values} written as a loop_ table. Written
    atomically; a round trip through `read_star` returns the same values.
    """
    from .mrc import atomic_path

    lines = ["# written by cryoinverse", ""]
    for name, block in blocks.items():
        if not isinstance(block, StarBlock):
            arrays = {k: np.atleast_1d(np.asarray(v)) for k, v in block.items()}
            lengths = {len(a) for a in arrays.values()}
            if len(lengths) > 1:
                raise ValueError(f"block {name!r}: columns have different lengths {sorted(lengths)}")
            block = StarBlock(name, table=arrays)
        elif block.name != name:
            block = StarBlock(name, block.values, block.table, block.text)
        lines += _block_lines(block)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)
