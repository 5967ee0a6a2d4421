"""Reading and writing MRC/CCP4 maps with `mrcfile`.

Reads return a `Volume` whose data is (z, y, x) whatever the file's axis order (MAPC/MAPR/MAPS);
the origin comes from the header's ORIGIN field, or from NXSTART/NYSTART/NZSTART times the voxel
size when ORIGIN is zero. Writes are atomic: a temporary file in the target folder, then rename,
so a final name never holds a half-written map.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import torch

from .errors import DataError
from .volume import Volume

__all__ = ["read_volume", "write_volume", "read_header", "MapHeader", "atomic_path"]


class MapHeader:
    """Shape (z, y, x) and voxel size (Angstrom) of a map, read without its data."""

    def __init__(self, path: Path, shape: tuple[int, int, int], voxel_size: float):
        self.path = path
        self.shape = shape
        self.voxel_size = voxel_size


def open_mrc(path: Path, header_only: bool):
    """An open mrcfile handle (a context manager), permissive where mrcfile's strict reading fails;
    DataError for a missing path, a folder, or a file that is no MRC at all."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an MRC file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            handle = mrcfile.open(path, mode="r", header_only=header_only)
        _warn_once(path, caught)
        return handle
    except Exception as strict_error:  # mrcfile raises ValueError and others on bad headers
        if not _has_map_id(path) and not _header_describes_file(path):
            raise DataError(f"{path}: not an MRC file (no 'MAP ' identifier, and the header does not describe the file's size)") from None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                handle = mrcfile.open(path, mode="r", permissive=True, header_only=header_only)
            if handle.header is None or (not header_only and handle.data is None):
                handle.close()
                raise DataError(f"{path}: not a readable MRC file ({strict_error})")
            _warn_once(path, caught)
            return handle
        except DataError:
            raise
        except Exception:
            raise DataError(f"{path}: not a readable MRC file ({strict_error})") from None


def _has_map_id(path: Path) -> bool:
    """Whether bytes 208-211 hold the MRC map identifier 'MAP '."""
    with open(path, "rb") as f:
        f.seek(208)
        return f.read(4) == b"MAP "


MODE_BYTES = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 12: 2, 101: 0.5}


def _header_describes_file(path: Path) -> bool:
    """Whether the first 1024 bytes read as an MRC header whose dimensions, mode and extended header
    add up to the file's size exactly (older files lack the 'MAP ' identifier; random bytes never add up)."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(1024)
    if len(head) < 1024:
        return False
    for endian in "<>":
        nx, ny, nz, mode = struct.unpack(endian + "4i", head[:16])
        (nsymbt,) = struct.unpack(endian + "i", head[92:96])
        if mode in MODE_BYTES and 0 < nx <= 100_000 and 0 < ny <= 100_000 and 0 < nz <= 1_000_000 and 0 <= nsymbt < size:
            if 1024 + nsymbt + math.ceil(nx * ny * nz * MODE_BYTES[mode]) == size:
                return True
    return False


def _warn_once(path: Path, caught: list) -> None:
    """mrcfile's warnings about a file it could read, as one line (none if there were none)."""
    messages = list(dict.fromkeys(str(w.message) for w in caught))
    if messages:
        more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
        warnings.warn(f"{path}: read despite a non-standard header: {messages[0]}{more}", MRCHeaderWarning, stacklevel=4)


class MRCHeaderWarning(UserWarning):
    """A map was read although its header breaks the MRC2014 standard."""


def _voxel_size(path: Path, mrc) -> float:
    vs = mrc.voxel_size
    sizes = (float(vs.x), float(vs.y), float(vs.z))
    if not all(np.isfinite(sizes)) or min(sizes) <= 0:
        raise DataError(
            f"{path}: header voxel size is unset or invalid ({sizes[0]:g}, {sizes[1]:g}, {sizes[2]:g} A);"
            " give it explicitly (inputs.voxel_size in a task spec, --voxel-size on the command line)"
        )
    if max(sizes) - min(sizes) > 1e-3 * max(sizes):
        raise DataError(f"{path}: anisotropic voxel size {sizes} A is not supported")
    return sizes[0]


def _axis_permutation(mrc) -> tuple[int, int, int]:
    """Permutation taking the stored array (sections, rows, columns) to (z, y, x)."""
    h = mrc.header
    mapc, mapr, maps = int(h.mapc), int(h.mapr), int(h.maps)
    if sorted((mapc, mapr, maps)) != [1, 2, 3]:
        return (0, 1, 2)
    stored = (maps, mapr, mapc)  # axis (1=x, 2=y, 3=z) of each stored array dimension
    return tuple(stored.index(axis) for axis in (3, 2, 1))


def _start_origin(mrc) -> np.ndarray:
    """NCSTART/NRSTART/NSSTART (stored as nxstart/nystart/nzstart) as an (x, y, z) start in voxels."""
    h = mrc.header
    starts = (int(h.nxstart), int(h.nystart), int(h.nzstart))  # column, row, section starts (MRC2014)
    axes = (int(h.mapc), int(h.mapr), int(h.maps))
    if sorted(axes) != [1, 2, 3]:
        axes = (1, 2, 3)
    xyz = np.zeros(3)
    for start, axis in zip(starts, axes):
        xyz[axis - 1] = start
    return xyz


def _is_stack(path: Path, mrc) -> bool:
    """An image stack: space group 0 with one section per image (MZ = 1) or a .mrcs name.

    Space group 0 alone does not decide: many programs write 3D maps with ISPG = 0, and then
    MZ (sampling along z) equals NZ, as in a volume.
    """
    h = mrc.header
    if int(h.nz) <= 1 or int(getattr(h, "ispg", 1)) != 0:
        return False
    return int(h.mz) <= 1 or path.suffix.lower() == ".mrcs"


def read_header(path: str | os.PathLike, voxel_size: float | None = None) -> MapHeader:
    """Shape (z, y, x) and voxel size of a map without reading its data."""
    path = Path(path)
    with open_mrc(path, header_only=True) as mrc:
        h = mrc.header
        dims = (int(h.nz), int(h.ny), int(h.nx))
        if min(dims) < 1:
            raise DataError(f"{path}: header has invalid dimensions {dims}")
        perm = _axis_permutation(mrc)
        shape = tuple(dims[p] for p in perm)
        vs = float(voxel_size) if voxel_size else _voxel_size(path, mrc)
        if _is_stack(path, mrc):
            raise DataError(f"{path}: is an image stack (space group 0), not a 3D volume")
    return MapHeader(path, shape, vs)


def read_volume(path: str | os.PathLike, voxel_size: float | None = None) -> Volume:
    """Read an MRC map as a float32 `Volume`; `voxel_size` overrides a missing or wrong header value."""
    path = Path(path)
    with open_mrc(path, header_only=False) as mrc:
        data = np.asarray(mrc.data)
        if data.ndim != 3:
            raise DataError(f"{path}: holds {data.ndim}D data of shape {data.shape}; a 3D volume is needed")
        if _is_stack(path, mrc):
            raise DataError(f"{path}: is an image stack, not a 3D volume")
        if np.iscomplexobj(data):
            raise DataError(f"{path}: holds complex (Fourier) data; a real-space map is needed")
        data = np.transpose(data, _axis_permutation(mrc)).astype(np.float32)
        vs = float(voxel_size) if voxel_size else _voxel_size(path, mrc)
        h = mrc.header
        origin_xyz = np.array([float(h.origin.x), float(h.origin.y), float(h.origin.z)])
        if not np.any(origin_xyz):
            origin_xyz = _start_origin(mrc) * vs
    bad = ~np.isfinite(data)
    if bad.any():
        raise DataError(f"{path}: contains {int(bad.sum())} NaN or infinite values")
    return Volume(torch.from_numpy(np.ascontiguousarray(data)), vs, tuple(origin_xyz[::-1]))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class atomic_path:
    """Context manager yielding a temporary path beside `target`; renamed onto it on success only."""

    def __init__(self, target: str | os.PathLike, overwrite: bool = True):
        self.target = Path(target)
        self.overwrite = overwrite

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            raise DataError(f"{self.target}: exists; use --overwrite to replace it")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".part", dir=self.target.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            # mkstemp makes the file private (0600); give it the mode a plain open() would
            os.chmod(self.tmp, 0o666 & ~_umask())
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)


def write_volume(path: str | os.PathLike, volume: Volume, overwrite: bool = True) -> Path:
    """Write `volume` as float32 MRC with its voxel size and origin, atomically; returns the path."""
    data = volume.data.detach().to("cpu", torch.float32).numpy()
    if not np.isfinite(data).all():
        raise DataError(f"{path}: refusing to write a map with NaN or infinite values")
    with atomic_path(path, overwrite) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data))
            mrc.voxel_size = volume.voxel_size
            oz, oy, ox = volume.origin
            mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = ox, oy, oz
            mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = 0
            mrc.update_header_stats()
    return Path(path)
