"""Reading and writing MRC/CCP4 maps with `mrcfile`.

Reads return a `Volume` whose data is (z, y, x) whatever the file's axis order (MAPC/MAPR/MAPS);
the origin comes from the header's ORIGIN field, or from NXSTART/NYSTART/NZSTART times the voxel
size when ORIGIN is zero. Writes are atomic: a temporary file in the target folder, then rename,
so a final name never holds a half-written map.

Maps larger than memory: `MappedVolume` reads blocks of a map through a memory map
(`mrcfile.mmap`), and `mapped_output` fills a new map through one (`mrcfile.new_mmap`), atomically
like `write_volume`. Both drop the pages they touched on `release()`, so the process's resident
memory stays at the blocks it works on rather than growing to the map's size.
"""

from __future__ import annotations

import math
import mmap
import os
import socket
import tempfile
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import torch

from .errors import DataError
from .volume import Volume

__all__ = ["read_volume", "write_volume", "read_header", "MapHeader", "atomic_path", "remove_stale_parts", "MappedVolume", "mapped_output"]


class MapHeader:
    """Shape (z, y, x) and voxel size (Angstrom) of a map, read without its data."""

    def __init__(self, path: Path, shape: tuple[int, int, int], voxel_size: float):
        self.path = path
        self.shape = shape
        self.voxel_size = voxel_size


def _mrc_handle(path: Path, header_only: bool, mapped: bool, permissive: bool = False):
    if mapped:
        return mrcfile.mmap(path, mode="r", permissive=permissive)
    return mrcfile.open(path, mode="r", permissive=permissive, header_only=header_only)


def open_mrc(path: Path, header_only: bool, mapped: bool = False):
    """An open mrcfile handle (a context manager), permissive where mrcfile's strict reading fails;
    DataError for a missing path, a folder, or a file that is no MRC at all. `mapped`: the data is
    a read-only memory map (`mrcfile.mmap`), read from disk only where it is indexed."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an MRC file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            handle = _mrc_handle(path, header_only, mapped)
        _warn_once(path, caught)
        return handle
    except Exception as strict_error:  # mrcfile raises ValueError and others on bad headers
        if not _has_map_id(path) and not _header_describes_file(path):
            raise DataError(f"{path}: not an MRC file (no 'MAP ' identifier, and the header does not describe the file's size)") from None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                handle = _mrc_handle(path, header_only, mapped, permissive=True)
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
        origin = _origin(mrc, vs)
    bad = ~np.isfinite(data)
    if bad.any():
        raise DataError(f"{path}: contains {int(bad.sum())} NaN or infinite values")
    return Volume(torch.from_numpy(np.ascontiguousarray(data)), vs, origin)


def _origin(mrc, voxel_size: float) -> tuple[float, float, float]:
    """(z, y, x) origin in Angstrom: the header's ORIGIN, or the start indices times the voxel size when ORIGIN is zero."""
    h = mrc.header
    origin_xyz = np.array([float(h.origin.x), float(h.origin.y), float(h.origin.z)])
    if not np.any(origin_xyz):
        origin_xyz = _start_origin(mrc) * voxel_size
    return tuple(float(v) for v in origin_xyz[::-1])


def release_pages(array: np.ndarray) -> None:
    """Write back and drop from this process the resident pages of a memory-mapped array (best effort).

    The data stay in the file (and in the page cache); the next access reads them again. Without
    this, every page a long pass over a mapped map touched counts in the resident size until
    memory runs short.
    """
    base = array
    while isinstance(base, np.ndarray) and not (isinstance(base, np.memmap) and isinstance(base._mmap, mmap.mmap)):
        base = base.base  # numpy keeps the mmap object on np.memmap views and at their root
    if not isinstance(base, np.memmap):
        return
    try:
        base._mmap.flush()
        base._mmap.madvise(mmap.MADV_DONTNEED)
    except (AttributeError, OSError, TypeError, ValueError):
        pass  # a platform without madvise: the kernel still reclaims clean pages under pressure


class MappedVolume:
    """A map on disk read block by block through a memory map; nothing is read until a block is asked for.

    `shape` (z, y, x), `voxel_size` (Angstrom; `voxel_size` given overrides the header) and `origin`
    are those `read_volume` gives. `block(start, size)` reads one block as a float32 `Volume`
    (origin moved to the block's first voxel); `release()` drops the pages read so far from the
    process's resident memory. Use as a context manager, or call `close()`.
    """

    def __init__(self, path: str | os.PathLike, voxel_size: float | None = None):
        self.path = Path(path)
        self._mrc = open_mrc(self.path, header_only=False, mapped=True)
        try:
            data = self._mrc.data
            if data is None:
                raise DataError(f"{self.path}: the data block cannot be memory-mapped (mode {int(self._mrc.header.mode)})")
            if data.ndim != 3:
                raise DataError(f"{self.path}: holds {data.ndim}D data of shape {data.shape}; a 3D volume is needed")
            if _is_stack(self.path, self._mrc):
                raise DataError(f"{self.path}: is an image stack, not a 3D volume")
            if np.iscomplexobj(data):
                raise DataError(f"{self.path}: holds complex (Fourier) data; a real-space map is needed")
            self.data = np.transpose(data, _axis_permutation(self._mrc))  # a view: (z, y, x), still on disk
            self.voxel_size = float(voxel_size) if voxel_size else _voxel_size(self.path, self._mrc)
            self.origin = _origin(self._mrc, self.voxel_size)
        except BaseException:
            self._mrc.close()
            raise

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) in voxels."""
        return tuple(int(n) for n in self.data.shape)

    def block(self, start: tuple[int, int, int], size: tuple[int, int, int]) -> Volume:
        """Voxels start .. start + size (per axis) as a float32 Volume; DataError for NaN or infinite values."""
        index = tuple(slice(s, s + n) for s, n in zip(start, size))
        data = np.array(self.data[index], dtype=np.float32, order="C", copy=True)  # a copy: never a view of the file
        bad = ~np.isfinite(data)
        if bad.any():
            where = ", ".join(f"{s}:{s + n}" for s, n in zip(start, size))
            raise DataError(f"{self.path}: contains {int(bad.sum())} NaN or infinite values (in voxels z, y, x = {where})")
        origin = tuple(o + s * self.voxel_size for o, s in zip(self.origin, start))
        return Volume(torch.from_numpy(data), self.voxel_size, origin)

    def release(self) -> None:
        """Drop the pages read so far from this process's resident memory."""
        release_pages(self._mrc.data)

    def close(self) -> None:
        """Close the file."""
        self._mrc.close()

    def __enter__(self) -> "MappedVolume":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


STATS_SLAB_BYTES = 32 * 2**20  # header statistics of a mapped map are summed over z-slabs of about this size


class mapped_output:
    """A new float32 MRC map filled through a memory map, written atomically: a context manager.

    Entering creates a temporary file beside `path` of `shape` (z, y, x) voxels and yields its
    data, a writable (z, y, x) float32 memory map, zeroed (`mrcfile.new_mmap` leaves it
    unspecified). On a clean exit the voxel size, origin (z, y, x, Angstrom) and header statistics
    (summed slab by slab, never the whole map in memory) are written and the file is renamed onto
    `path`; on an exception (or NaN / infinite values) the temporary file is removed, so `path` never
    holds a partial map. `release()` drops written pages from this process's resident memory.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int, int], voxel_size: float, origin=(0.0, 0.0, 0.0), overwrite: bool = True):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.voxel_size = float(voxel_size)
        self.origin = tuple(float(v) for v in origin)
        self._atomic = atomic_path(self.path, overwrite)
        self._mrc = None

    def __enter__(self) -> np.ndarray:
        tmp = self._atomic.__enter__()
        try:
            self._mrc = mrcfile.new_mmap(tmp, self.shape, mrc_mode=2, overwrite=True)
            for z0, z1 in self._slabs():
                self._mrc.data[z0:z1] = 0.0
                self.release()
        except BaseException as exc:
            self._close_quietly()
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self._mrc.data

    def _slabs(self):
        nz, ny, nx = self.shape
        step = max(1, STATS_SLAB_BYTES // (4 * ny * nx))
        return [(z, min(z + step, nz)) for z in range(0, nz, step)]

    def release(self) -> None:
        """Write back the pages written so far and drop them from this process's resident memory."""
        release_pages(self._mrc.data)

    def _finish(self) -> None:
        data, count = self._mrc.data, math.prod(self.shape)
        low, high, total, squares = math.inf, -math.inf, 0.0, 0.0
        for z0, z1 in self._slabs():
            slab = np.asarray(data[z0:z1], dtype=np.float64)
            if not np.isfinite(slab).all():
                raise DataError(f"{self.path}: refusing to write a map with NaN or infinite values (in z = {z0}:{z1})")
            low, high = min(low, float(slab.min())), max(high, float(slab.max()))
            total, squares = total + float(slab.sum()), squares + float(np.square(slab).sum())
            self.release()
        mean = total / count
        h = self._mrc.header
        h.dmin, h.dmax, h.dmean = low, high, mean
        h.rms = math.sqrt(max(squares / count - mean * mean, 0.0))
        self._mrc.voxel_size = self.voxel_size
        oz, oy, ox = self.origin
        h.origin.x, h.origin.y, h.origin.z = ox, oy, oz
        h.nxstart = h.nystart = h.nzstart = 0

    def _close_quietly(self) -> None:
        if self._mrc is not None:
            try:
                self._mrc.close()
            except Exception:
                pass

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self._finish()
                self._mrc.close()
            except BaseException as error:
                self._close_quietly()
                self._atomic.__exit__(type(error), error, error.__traceback__)
                raise
        else:
            self._close_quietly()
        self._atomic.__exit__(exc_type, exc, tb)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by another user
        return True
    return True


def remove_stale_parts(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of earlier writes of `target` whose process is gone; returns them.

    `atomic_path` names its temporary file `.<name>.<pid>@<host>.<random>.part`: a write killed
    outright (SIGKILL, power loss) cannot remove its own, so the next write of the same name does,
    when the writer ran on this host and its process no longer exists. Another live process's
    temporary file, or one from another host on a shared file system, is left alone."""
    target = Path(target)
    prefix, host = f".{target.name}.", socket.gethostname()
    removed = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:
        return removed
    for path in siblings:
        name = path.name
        if not (name.startswith(prefix) and name.endswith(PART_SUFFIX)):
            continue
        owner, _, _ = name[len(prefix) : -len(PART_SUFFIX)].rpartition(".")
        pid, at, where = owner.partition("@")
        if not at or where != host or not pid.isdigit() or _process_alive(int(pid)):
            continue
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


PART_SUFFIX = ".part"


class atomic_path:
    """Context manager yielding a temporary path beside `target`; renamed onto it on success only.

    Entering also removes what earlier writes of `target` killed before they could clean up left
    behind (`remove_stale_parts`)."""

    def __init__(self, target: str | os.PathLike, overwrite: bool = True):
        self.target = Path(target)
        self.overwrite = overwrite

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            raise DataError(f"{self.target}: exists; use --overwrite to replace it")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(self.target)
        owner = f"{os.getpid()}@{socket.gethostname()}"
        fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.{owner}.", suffix=PART_SUFFIX, dir=self.target.parent)
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
