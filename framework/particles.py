"""Particle stacks read from RELION STAR files, and poses written back into the same files.

`read_particle_stack(star)` gives a `ParticleStack`: the images (N, n, n) at one pixel size, each
image's CTF, the poses the file holds, and the STAR blocks it came from (with their text), so that
`write_poses_star(stack, out, rotations, shifts, scores)` writes the same file with new poses.

Conventions
- images[i] is row i of the particle table `blocks[particle_block]`, in file order; RELION 3.1
  optics-group columns are merged into the rows (`cryoinverse.star.particle_table`). Images come
  from rlnImageName, INDEX@STACK (INDEX from 1), STACK looked for in `datadir` (when given), then
  beside the STAR file, then in the working folder (RELION's project folder); absolute paths work.
- Pixel size of each image: the `pixel_size` argument, else the STAR's (rlnImagePixelSize,
  rlnPixelSize, or rlnDetectorPixelSize (µm) x 1e4 / rlnMagnification), else the stack header. The
  STAR wins over the header, as in RELION: headers are often wrong (sta_testing_bin8's says 1 Å,
  its STAR 1.96 Å).
- Poses are those of `cryoinverse.rotations`: R = euler_zyz_to_matrix(rlnAngleRot, rlnAngleTilt,
  rlnAnglePsi) (RELION's A), and shifts (x, y) in Å that move the image content by +shift:
  shift = -(rlnOriginXAngst, rlnOriginYAngst), or -(rlnOriginX, rlnOriginY) x pixel size before
  RELION 3.1 (RELION's origin is where the particle centre is taken from).
- Mixed optics groups. Images of different pixel sizes or boxes cannot share one stack: by
  default (`resample=False`) reading refuses and names the groups; `resample=True` Fourier-
  resamples every image to the finest pixel size present (no information is lost, coarser groups
  are interpolated), `resample=<Å>` to that pixel size (the reference map's voxel size, say). The
  box is then the largest resampled box, or `box`. `resample_images` keeps the image centre
  (pixel n // 2) at the same place in Å, so rotations, shifts in Å and CTFs are unchanged.
- CTF: `CTFParams.from_star` (negative per-tilt rlnCtfBfactor values are read as attenuation; see
  `cryoinverse.ctf`). Beam tilt, Zernike aberrations and magnification matrices are not applied.

`write_poses_star` keeps every block, column and row of the source in order, each untouched value
as written, and replaces or appends rlnAngleRot/Tilt/Psi, rlnOriginXAngst/YAngst (= -shift, Å), the
pixel origins rlnOriginX/Y where the file has them or predates RELION 3.1 (no data_optics), and a
score column, `cryoinverseScore` by default: RELION's own rlnMaxValueProbDistribution means a
probability in [0, 1], which a search score is not; RELION 3.1+ keeps unknown labels (as
EMDL_UNKNOWN_LABEL) when it reads and writes a file. Other columns of an earlier refinement
(rlnLogLikeliContribution, rlnMaxValueProbDistribution, ...) are left as they were.

Why our own STAR reader rather than the `starfile` package: starfile 0.5.13 reads all four shared
STAR files and round-trips their values, but it brings pandas (not a dependency here), rewrites
every number with '%.6f' (0.070 -> 0.070000, 1.322898e+05 -> 132289.800000, and 1e-7 -> 0.000000),
so the untouched columns of a rewritten file are not kept as written, and it leaves optics-group
merging, pixel sizes and image paths to its caller. `cryoinverse.star` is small, keeps each value's
text, and does those; starfile is not a dependency.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import attrs
import numpy as np
import torch

from .ctf import CTFParams
from .errors import DataError
from .mrc import MRCHeaderWarning, open_mrc
from .rotations import euler_zyz_to_matrix, matrix_to_euler_zyz
from .star import StarBlock, particle_block, particle_table, pixel_sizes_of, read_star, split_image_name, write_star

__all__ = [
    "ParticleStack",
    "read_particle_stack",
    "write_poses_star",
    "poses_from_table",
    "image_sources",
    "read_stack",
    "stack_header",
    "resample_images",
    "ANGLE_COLUMNS",
    "SCORE_COLUMN",
]

ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
SCORE_COLUMN = "cryoinverseScore"


@attrs.define(eq=False)
class ParticleStack:
    """Particle images of one STAR file at one pixel size, with their CTFs and poses.

    images (N, n, n) float32; pixel_size in Å; ctf per image or None; rotations (N, 3, 3) float64
    (volume -> image frame) and shifts (N, 2) float64 in Å (x, y; content moves by +shift), or None
    where the file has none. images[i] is row i of `blocks[particle_block]`; `source_pixel_sizes`
    (N,) are the pixel sizes the images had in the file, before any resampling.
    """

    images: torch.Tensor
    pixel_size: float
    ctf: CTFParams | None = None
    rotations: torch.Tensor | None = None
    shifts: torch.Tensor | None = None
    blocks: dict[str, StarBlock] = attrs.Factory(dict)
    particle_block: str = "particles"
    source: Path | None = None
    source_pixel_sizes: np.ndarray | None = None
    ctf_premultiplied: bool = False

    def __attrs_post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.shape[-1] != self.images.shape[-2]:
            raise ValueError(f"images must be a stack (N, n, n); got shape {tuple(self.images.shape)}")
        n = self.images.shape[0]
        checks = {
            "rotations": (self.rotations, (n, 3, 3)),
            "shifts": (self.shifts, (n, 2)),
            "source_pixel_sizes": (self.source_pixel_sizes, (n,)),
        }
        for name, (value, shape) in checks.items():
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"{name} must have shape {shape} for {n} images; got {tuple(value.shape)}")
        if self.ctf is not None and len(self.ctf) not in (1, n):
            raise ValueError(f"CTF parameters are given for {len(self.ctf)} images, not {n}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def box(self) -> int:
        """Image edge n in pixels."""
        return self.images.shape[-1]

    @property
    def table(self) -> dict[str, np.ndarray]:
        """The particle table with optics-group columns merged in (one entry per image)."""
        return particle_table(self.blocks, self.source or "STAR file")


# -- stacks ------------------------------------------------------------------------------------


def stack_header(path: str | os.PathLike) -> tuple[int, int, float | None]:
    """(number of images, edge n, header pixel size in Å or None if unset) of an MRC stack."""
    path = Path(path)
    with open_mrc(path, header_only=True) as mrc:
        h = mrc.header
        nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
        vs = float(mrc.voxel_size.x)
    if nx != ny:
        raise DataError(f"{path}: images are {nx}x{ny} pixels; square images are needed")
    return nz, nx, (vs if np.isfinite(vs) and vs > 0 else None)


def read_stack(path: str | os.PathLike, indices: np.ndarray | None = None) -> tuple[torch.Tensor, float | None]:
    """Images (N, n, n) float32 of an MRC stack (or one 2D image), and its header pixel size (Å, None if unset).

    `indices` (0-based) selects images. A 3D file is read as a stack whatever its space group.
    """
    path = Path(path)
    with open_mrc(path, header_only=False) as mrc:
        data = np.asarray(mrc.data)
        vs = float(mrc.voxel_size.x)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise DataError(f"{path}: holds {data.ndim}D data; an image stack (N, n, n) is needed")
    if np.iscomplexobj(data):
        raise DataError(f"{path}: holds complex data; real-space images are needed")
    if data.shape[1] != data.shape[2]:
        raise DataError(f"{path}: images are {data.shape[2]}x{data.shape[1]} pixels; square images are needed")
    if indices is not None:
        indices = np.asarray(indices, dtype=np.int64)
        bad = indices[(indices < 0) | (indices >= data.shape[0])]
        if bad.size:
            raise DataError(f"{path}: has {data.shape[0]} images; image {int(bad[0]) + 1} was asked for")
        data = data[indices]
    data = data.astype(np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        raise DataError(f"{path}: contains {int(bad.sum())} NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(data)), (vs if np.isfinite(vs) and vs > 0 else None)


def image_sources(
    star: str | os.PathLike, names, datadir: str | os.PathLike | None = None
) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """Where each rlnImageName's image is: [(stack file, 0-based indices in it, STAR rows)], one
    entry per file in order of first use. Files are looked for in `datadir`, beside the STAR file,
    then in the working folder."""
    star = Path(star)
    folders = ([Path(datadir)] if datadir is not None else []) + [star.parent, Path.cwd()]
    found: dict[str, Path] = {}
    entries: dict[Path, tuple[list[int], list[int]]] = {}
    for row, name in enumerate(np.asarray(names).tolist()):
        try:
            index, file = split_image_name(str(name))
        except DataError as exc:
            raise DataError(f"{star}: row {row + 1}: {exc}") from None
        path = found.get(file)
        if path is None:
            path = next((f / file for f in folders if (f / file).is_file()), None)
            if path is None:
                looked = ", ".join(dict.fromkeys(str(f) for f in folders))
                raise DataError(
                    f"{star}: row {row + 1}: image stack {file} not found (looked in {looked}); give the folder that holds the "
                    "stacks as datadir (--datadir DIR on the command line, datadir = \"DIR\" in a task's [operator])"
                )
            found[file] = path
        indices, rows = entries.setdefault(path, ([], []))
        indices.append(index)
        rows.append(row)
    return [(f, np.asarray(i, dtype=np.int64), np.asarray(r, dtype=np.int64)) for f, (i, r) in entries.items()]


# -- resampling --------------------------------------------------------------------------------


def _interpolation_matrix(n: int, pixel_size: float, m: int, new_pixel_size: float) -> torch.Tensor:
    """(m, n) float64 matrix taking n samples at `pixel_size` to m samples at `new_pixel_size`.

    Trigonometric (periodic sinc) interpolation of the band-limited function the n samples define,
    low-passed at the new Nyquist frequency when the new pixels are coarser; sample m // 2 of the
    result sits where sample n // 2 of the input does, and samples beyond the input's extent are 0.
    """
    position = n // 2 + (torch.arange(m, dtype=torch.float64) - m // 2) * (new_pixel_size / pixel_size)
    k_max = min(n / 2, n * pixel_size / (2 * new_pixel_size))  # cycles per input box
    k = torch.arange(0, math.floor(k_max + 1e-9) + 1, dtype=torch.float64)
    weight = torch.where(k == 0, 1.0, 2.0)  # +k and -k together
    # A frequency exactly at the limit (the Nyquist of an even n) counts half, as a real signal's does.
    weight = torch.where((k - k_max).abs() < 1e-9, weight / 2, weight)
    source = torch.arange(n, dtype=torch.float64)
    a = 2 * math.pi * position[:, None] * k / n
    b = 2 * math.pi * source[:, None] * k / n
    matrix = ((a.cos() * weight) @ b.cos().T + (a.sin() * weight) @ b.sin().T) / n
    outside = (position < -0.5) | (position > n - 0.5)
    matrix[outside] = 0.0
    return matrix


def resample_images(images: torch.Tensor, pixel_size: float, new_pixel_size: float, box: int | None = None) -> torch.Tensor:
    """Images (..., n, n) at `pixel_size` Å -> (..., m, m) at `new_pixel_size` Å, by Fourier interpolation.

    m = `box`, or the edge covering the same extent, round(n pixel_size / new_pixel_size). The image
    centre (pixel n // 2, the projection centre of `cryoinverse.rotations`) stays at the same place
    in Å; sample values are kept (no rescaling), content above the new Nyquist frequency is removed,
    and pixels beyond the input's extent are 0 (cropping or zero-padding in real space). The same
    pixel size and box return the images unchanged.
    """
    if not (pixel_size > 0 and new_pixel_size > 0):
        raise ValueError(f"pixel sizes must be positive (Å); got {pixel_size} and {new_pixel_size}")
    n = images.shape[-1]
    m = int(box) if box is not None else max(1, round(n * pixel_size / new_pixel_size))
    if m == n and new_pixel_size == pixel_size:
        return images
    dtype = images.dtype if images.is_floating_point() else torch.float32
    matrix = _interpolation_matrix(n, pixel_size, m, new_pixel_size).to(device=images.device, dtype=dtype)
    return matrix @ images.to(dtype) @ matrix.T


# -- poses -------------------------------------------------------------------------------------


def _float_column(table: dict, column: str, where) -> np.ndarray:
    try:
        return np.asarray(table[column], dtype=np.float64)
    except ValueError:
        raise DataError(f"{where}: column {column} is not numeric (first value {np.asarray(table[column]).flat[0]!r})") from None


def poses_from_table(
    table: dict[str, np.ndarray], pixel_sizes=None, where: str | os.PathLike = "STAR file"
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(rotations (N, 3, 3), shifts (N, 2) in Å) from STAR columns, each None where the file has none.

    Shifts are -(rlnOriginXAngst, rlnOriginYAngst), else -(rlnOriginX, rlnOriginY) x `pixel_sizes`
    (Å, one per row or one for all), which pixel origins need.
    """
    present = [c for c in ANGLE_COLUMNS if c in table]
    rotations = None
    if present:
        if len(present) < 3:
            missing = [c for c in ANGLE_COLUMNS if c not in table]
            raise DataError(f"{where}: has {', '.join(present)} but not {', '.join(missing)}; give all three angles or none")
        rotations = euler_zyz_to_matrix(*(torch.from_numpy(_float_column(table, c, where)) for c in ANGLE_COLUMNS))
    if "rlnOriginXAngst" in table and "rlnOriginYAngst" in table:
        origin = np.stack([_float_column(table, c, where) for c in ("rlnOriginXAngst", "rlnOriginYAngst")], axis=-1)
    elif "rlnOriginX" in table and "rlnOriginY" in table:
        if pixel_sizes is None:
            raise DataError(f"{where}: shifts are in pixels (rlnOriginX/Y) but no pixel size is known; give the pixel size")
        origin = np.stack([_float_column(table, c, where) for c in ("rlnOriginX", "rlnOriginY")], axis=-1)
        origin = origin * np.asarray(pixel_sizes, dtype=np.float64).reshape(-1, 1)
    else:
        return rotations, None
    return rotations, -torch.from_numpy(origin)  # RELION: predicted image = projection shifted by -origin


# -- reading -----------------------------------------------------------------------------------


def _groups_text(table: dict, rows: np.ndarray, files: list[str]) -> str:
    if "rlnOpticsGroup" in table:
        ids = sorted(set(np.asarray(table["rlnOpticsGroup"])[rows].tolist()), key=str)
        return ("optics group " if len(ids) == 1 else "optics groups ") + ", ".join(map(str, ids))
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    return f"images in {shown}"


def _premultiplied(table: dict, where) -> bool:
    if "rlnCtfDataAreCtfPremultiplied" not in table:
        return False
    flags = set(np.asarray(_float_column(table, "rlnCtfDataAreCtfPremultiplied", where)).astype(bool).tolist())
    if len(flags) > 1:
        raise DataError(f"{where}: some images are CTF-premultiplied (rlnCtfDataAreCtfPremultiplied = 1) and some not; read them separately")
    return flags.pop()


def _common_grid(star, table, sources, sizes, edges, target, resample, box):
    """Group the images by (pixel size, box) and choose the stack's pixel size and edge:
    (per-row keys, exact pixel size of each key, pixel size, edge); DataError for mixed groups
    without resampling."""
    # Pixel sizes equal to 6 digits are one group; each group keeps its first exact value.
    keys = [(float(f"{a:.6g}"), int(n)) for a, n in zip(sizes, edges)]
    exact = {}
    for key, a in zip(keys, sizes):
        exact.setdefault(key[0], float(a))
    groups = sorted(set(keys))
    if target is None and resample:
        target = exact[min(a for a, _ in groups)]
    if target is None:
        if len(groups) > 1:
            names = [str(f.name) for f, _, _ in sources]
            parts = []
            for a, n in groups:
                rows = np.flatnonzero([k == (a, n) for k in keys])
                parts.append(f"{_groups_text(table, rows, names)}: {a:g} Å pixels, {n}x{n}")
            finest = min(a for a, _ in groups)
            raise DataError(
                f"{star}: images differ in pixel size or box ({'; '.join(parts)}); one stack needs one of each: "
                f"resample them (resample=True: to {finest:g} Å, the finest) or select one optics group"
            )
        target = exact[groups[0][0]]
    edge = int(box) if box is not None else max(round(n * exact[a] / target) for a, n in groups)
    if edge < 1:
        raise DataError(f"box = {box}: give an edge of at least 1 pixel")
    return keys, exact, target, edge


def read_particle_stack(
    star: str | os.PathLike,
    pixel_size: float | None = None,
    ctf: bool = True,
    resample: bool | float = False,
    box: int | None = None,
    datadir: str | os.PathLike | None = None,
) -> ParticleStack:
    """The particle images of a RELION STAR file (3.0 or 3.1+), with their CTFs and poses.

    pixel_size: the images' pixel size in Å, overriding the STAR file and the stack headers.
    ctf: read each image's CTF (DataError when the file lacks the CTF columns); False: ctf is None.
    resample: False refuses images of different pixel sizes or boxes, naming the groups; True
        resamples them all to the finest pixel size present; a number, to that pixel size (Å).
    box: the final edge in pixels (centred crop or zero-pad after any resampling).
    datadir: a folder to look for the image stacks in first.
    """
    star = Path(star)
    blocks = read_star(star, keep_text=True)
    block_name = particle_block(blocks, star)
    table = particle_table(blocks, star)
    count = len(blocks[block_name])
    if count == 0:
        raise DataError(f"{star}: has no particle rows")
    if "rlnImageName" not in table:
        raise DataError(f"{star}: has no rlnImageName column, so it does not say where the images are")
    if isinstance(resample, bool):
        target = None
    else:
        target = float(resample)
        if not target > 0:
            raise DataError(f"resample = {resample!r}: give True, False or a pixel size in Å > 0")

    sources = image_sources(star, table["rlnImageName"], datadir)
    edges = np.zeros(count, dtype=np.int64)
    header_sizes = np.full(count, np.nan)
    for file, indices, rows in sources:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MRCHeaderWarning)  # read_stack says it once, below
            n_images, n, vs = stack_header(file)
        beyond = indices >= n_images
        if beyond.any():
            i = int(np.argmax(beyond))
            raise DataError(f"{star}: row {rows[i] + 1} asks for image {indices[i] + 1} of {file}, which holds {n_images}")
        edges[rows] = n
        header_sizes[rows] = np.nan if vs is None else vs

    if pixel_size is not None:
        if not pixel_size > 0:
            raise DataError(f"pixel_size = {pixel_size}: give the pixel size in Å (> 0)")
        sizes = np.full(count, float(pixel_size))
    else:
        sizes = pixel_sizes_of(table, star)
        if sizes is None:
            sizes = header_sizes
            if np.isnan(sizes).any():
                file = next(f for f, _, rows in sources if np.isnan(header_sizes[rows]).any())
                raise DataError(f"{star}: neither the STAR file nor the header of {file} gives the pixel size; pass pixel_size")
    if "rlnImageSize" in table:
        declared = _float_column(table, "rlnImageSize", star)
        wrong = declared != edges
        if wrong.any():
            row = int(np.argmax(wrong))
            raise DataError(
                f"{star}: row {row + 1} says rlnImageSize {declared[row]:g} but its stack holds {edges[row]}x{edges[row]} images"
            )

    keys, exact, target, edge = _common_grid(star, table, sources, sizes, edges, target, bool(resample), box)
    images = torch.empty(count, edge, edge, dtype=torch.float32)
    for file, indices, rows in sources:
        stack, _ = read_stack(file, indices)
        row_keys = np.array([keys[r][0] for r in rows])
        for a in np.unique(row_keys):
            take = np.flatnonzero(row_keys == a)
            # Chunks bound the matmul's intermediate; the same pixel size and box copy the images as they are.
            for chunk in np.array_split(take, math.ceil(len(take) / 1024)):
                images[torch.from_numpy(rows[chunk])] = resample_images(stack[torch.from_numpy(chunk)], exact[a], target, edge)

    rotations, shifts = poses_from_table(table, sizes, star)
    params = CTFParams.from_star(table, where=str(star)) if ctf else None
    return ParticleStack(
        images=images,
        pixel_size=float(target),
        ctf=params,
        rotations=rotations,
        shifts=shifts,
        blocks=blocks,
        particle_block=block_name,
        source=star,
        source_pixel_sizes=np.asarray(sizes, dtype=np.float64),
        ctf_premultiplied=_premultiplied(table, star),
    )


# -- writing -----------------------------------------------------------------------------------


def write_poses_star(
    source: ParticleStack | dict[str, StarBlock] | str | os.PathLike,
    out: str | os.PathLike,
    rotations: torch.Tensor,
    shifts: torch.Tensor | None = None,
    scores=None,
    score_column: str = SCORE_COLUMN,
    pixel_size: float | None = None,
    columns: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write the STAR file `source` came from (a ParticleStack, its blocks, or a path) with new poses
    (and `columns`, name -> N values, set on the particle rows: e.g. rlnRandomSubset).

    rotations (N, 3, 3) and shifts (N, 2) in Å (content moves by +shift; None: zero) for the N
    particle rows in order; scores (N,) go to `score_column`. Every other block, column and row is
    kept, each value as written. rlnOriginX/Y in pixels are written where the file has them or has
    no data_optics block (RELION 3.0), with the file's pixel sizes (else `pixel_size`); without any
    pixel size, old ones are dropped rather than left to contradict the new shifts. Atomic.
    """
    if isinstance(source, ParticleStack):
        blocks, name, sizes, where = source.blocks, source.particle_block, source.source_pixel_sizes, source.source
    elif isinstance(source, dict):
        blocks, name, sizes, where = source, particle_block(source), None, "STAR blocks"
    else:
        where = Path(source)
        blocks = read_star(where, keep_text=True)
        name, sizes = particle_block(blocks, where), None
    blocks = {k: b.copy() for k, b in blocks.items()}
    particles = blocks[name]
    count = len(particles)

    rotations = torch.as_tensor(rotations, dtype=torch.float64).detach().cpu()
    if tuple(rotations.shape) != (count, 3, 3):
        raise ValueError(f"rotations must be ({count}, 3, 3) for the {count} particles of {where}; got {tuple(rotations.shape)}")
    shifts = torch.zeros(count, 2, dtype=torch.float64) if shifts is None else torch.as_tensor(shifts, dtype=torch.float64).detach().cpu()
    if tuple(shifts.shape) != (count, 2):
        raise ValueError(f"shifts must be ({count}, 2) in Å for the {count} particles of {where}; got {tuple(shifts.shape)}")

    rot, tilt, psi = matrix_to_euler_zyz(rotations)
    for column, values in zip(ANGLE_COLUMNS, (rot, tilt, psi)):
        particles.set_column(column, values.numpy())
    origin = (-shifts).numpy()
    particles.set_column("rlnOriginXAngst", origin[:, 0])
    particles.set_column("rlnOriginYAngst", origin[:, 1])

    had_pixels = "rlnOriginX" in particles.table or "rlnOriginY" in particles.table
    if had_pixels or "optics" not in blocks:
        if sizes is None:
            sizes = pixel_sizes_of(particle_table(blocks, where), where)
        if sizes is None and pixel_size is not None:
            sizes = np.full(count, float(pixel_size))
        if sizes is not None:
            particles.set_column("rlnOriginX", origin[:, 0] / sizes)
            particles.set_column("rlnOriginY", origin[:, 1] / sizes)
        elif had_pixels:
            particles.drop_column("rlnOriginX")
            particles.drop_column("rlnOriginY")
            warnings.warn(
                f"{where}: rlnOriginX/Y (pixels) dropped: no pixel size is known to convert the new shifts; "
                "rlnOriginXAngst/YAngst hold them",
                UserWarning,
                stacklevel=2,
            )

    if scores is not None:
        scores = np.asarray(torch.as_tensor(scores, dtype=torch.float64).detach().cpu()).reshape(-1)
        if scores.shape != (count,):
            raise ValueError(f"scores must be ({count},) for the {count} particles of {where}; got {scores.shape}")
        particles.set_column(score_column, scores)
    for column, values in (columns or {}).items():
        values = np.asarray(values).reshape(-1)
        if values.shape != (count,):
            raise ValueError(f"column {column} must hold {count} values for the particles of {where}; got {values.shape}")
        particles.set_column(column, values)
    return write_star(out, blocks)
