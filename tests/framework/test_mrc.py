"""MRC reading and writing: geometry round trips, axis order, origins, bad files, atomic writes.

Files are also written and inspected with `mrcfile` directly, so the header conventions are
checked against the format itself (MRC2014: NX/NXSTART/MAPC refer to columns, NY/NYSTART/MAPR to
rows, NZ/NZSTART/MAPS to sections; ORIGIN and the voxel size are physical x, y, z), not only
against our own reader.
"""

from __future__ import annotations

import os
import socket
import warnings

import mrcfile
import numpy as np
import pytest
import torch

from tests.conftest import SHARED_DATA
from cryoinverse.errors import DataError
from cryoinverse.mrc import read_header, read_volume, write_volume
from cryoinverse.volume import Volume

# Physical axis number (1 = x, 2 = y, 3 = z) -> axis of a (z, y, x) array.
ARRAY_AXIS = {1: 2, 2: 1, 3: 0}


def random_volume(shape=(6, 7, 8), voxel_size=1.37, origin=(0.0, 0.0, 0.0), seed=0) -> Volume:
    """A non-cubic random map, so that any swap of axes changes the shape."""
    data = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return Volume(torch.from_numpy(data), voxel_size, origin)


def write_raw(path, data: np.ndarray, voxel_size=1.0, **header) -> None:
    """Write `data` as stored (sections, rows, columns) with mrcfile, then set header fields."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.ascontiguousarray(data))
        mrc.voxel_size = voxel_size
        for name, value in header.items():
            setattr(mrc.header, name, value)


# --- round trips -----------------------------------------------------------------------------


def test_round_trip_keeps_data_voxel_size_and_origin(tmp_path):
    volume = random_volume(origin=(12.5, -3.0, 40.25))  # (z, y, x) Angstrom
    path = write_volume(tmp_path / "map.mrc", volume)

    back = read_volume(path)
    assert back.data.dtype == torch.float32
    assert back.shape == (6, 7, 8)
    np.testing.assert_array_equal(back.data.numpy(), volume.data.numpy())
    assert back.voxel_size == pytest.approx(1.37, rel=1e-6)
    assert back.origin == pytest.approx((12.5, -3.0, 40.25))


def test_written_header_follows_the_mrc_conventions(tmp_path):
    volume = random_volume(origin=(12.5, -3.0, 40.25))
    path = write_volume(tmp_path / "map.mrc", volume)

    with mrcfile.open(path) as mrc:
        h = mrc.header
        assert (int(h.nx), int(h.ny), int(h.nz)) == (8, 7, 6)  # columns are x
        assert (int(h.mapc), int(h.mapr), int(h.maps)) == (1, 2, 3)
        assert (float(h.origin.x), float(h.origin.y), float(h.origin.z)) == (40.25, -3.0, 12.5)
        assert (int(h.nxstart), int(h.nystart), int(h.nzstart)) == (0, 0, 0)
        vs = mrc.voxel_size
        assert (float(vs.x), float(vs.y), float(vs.z)) == pytest.approx((1.37, 1.37, 1.37), rel=1e-6)
        assert int(h.mode) == 2  # float32
        np.testing.assert_array_equal(mrc.data, volume.data.numpy())
        assert float(h.dmean) == pytest.approx(float(volume.data.double().mean()), abs=1e-5)


def test_read_header_matches_read_volume(tmp_path):
    path = write_volume(tmp_path / "map.mrc", random_volume(voxel_size=2.5))
    header = read_header(path)
    assert header.shape == (6, 7, 8)
    assert header.voxel_size == pytest.approx(2.5)


# --- axis order and origin ------------------------------------------------------------------

PERMUTED_ORDERS = [(3, 2, 1), (2, 3, 1), (1, 3, 2), (2, 1, 3), (3, 1, 2)]


@pytest.mark.parametrize("mapc, mapr, maps", PERMUTED_ORDERS)
def test_non_standard_axis_order_reads_as_zyx(tmp_path, mapc, mapr, maps):
    zyx = random_volume().data.numpy()
    # The file stores sections, rows, columns, which hold the physical axes maps, mapr, mapc.
    stored = np.transpose(zyx, (ARRAY_AXIS[maps], ARRAY_AXIS[mapr], ARRAY_AXIS[mapc]))
    path = tmp_path / "permuted.mrc"
    write_raw(path, stored, voxel_size=1.5, mapc=mapc, mapr=mapr, maps=maps)

    back = read_volume(path)
    assert back.shape == (6, 7, 8)
    np.testing.assert_array_equal(back.data.numpy(), zyx)
    assert read_header(path).shape == (6, 7, 8)


def test_origin_from_nxstart_when_header_origin_is_zero(tmp_path):
    path = tmp_path / "starts.mrc"
    write_raw(path, random_volume().data.numpy(), voxel_size=2.0, nxstart=3, nystart=-2, nzstart=5)
    # origin (z, y, x) = (nzstart, nystart, nxstart) * voxel size
    assert read_volume(path).origin == pytest.approx((10.0, -4.0, 6.0))


def test_header_origin_wins_over_nxstart(tmp_path):
    path = tmp_path / "both.mrc"
    write_raw(path, random_volume().data.numpy(), voxel_size=2.0, nxstart=3, nystart=-2, nzstart=5)
    with mrcfile.open(path, mode="r+") as mrc:
        mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = 1.0, 2.0, 3.0
    assert read_volume(path).origin == pytest.approx((3.0, 2.0, 1.0))


def test_nxstart_origin_follows_the_axis_order(tmp_path):
    zyx = random_volume().data.numpy()
    mapc, mapr, maps = 3, 1, 2  # columns hold z, rows x, sections y
    stored = np.transpose(zyx, (ARRAY_AXIS[maps], ARRAY_AXIS[mapr], ARRAY_AXIS[mapc]))
    path = tmp_path / "permuted_starts.mrc"
    write_raw(path, stored, voxel_size=1.0, mapc=mapc, mapr=mapr, maps=maps, nxstart=10, nystart=20, nzstart=30)
    # column start 10 is z, row start 20 is x, section start 30 is y
    assert read_volume(path).origin == pytest.approx((10.0, 30.0, 20.0))


def test_float16_file_reads_as_float32(tmp_path):
    values = np.random.default_rng(1).standard_normal((8, 8, 8)).astype(np.float16)
    path = tmp_path / "half.mrc"
    write_raw(path, values, voxel_size=1.0)
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == 12

    back = read_volume(path)
    assert back.data.dtype == torch.float32
    np.testing.assert_array_equal(back.data.numpy(), values.astype(np.float32))


# --- voxel size -----------------------------------------------------------------------------


def test_zero_header_voxel_size_asks_for_an_explicit_one(tmp_path):
    path = tmp_path / "no_voxel.mrc"
    write_raw(path, random_volume().data.numpy(), voxel_size=0.0)

    with pytest.raises(DataError) as info:
        read_volume(path)
    message = str(info.value)
    assert "no_voxel.mrc" in message
    assert "voxel size" in message
    assert "inputs.voxel_size" in message and "--voxel-size" in message

    with pytest.raises(DataError, match="inputs.voxel_size"):
        read_header(path)


def test_voxel_size_argument_overrides_the_header(tmp_path):
    zero = tmp_path / "no_voxel.mrc"
    write_raw(zero, random_volume().data.numpy(), voxel_size=0.0)
    assert read_volume(zero, voxel_size=2.5).voxel_size == 2.5
    assert read_header(zero, voxel_size=2.5).voxel_size == 2.5

    wrong = write_volume(tmp_path / "wrong_voxel.mrc", random_volume(voxel_size=1.0))
    assert read_volume(wrong, voxel_size=3.0).voxel_size == 3.0


# --- unusable files -------------------------------------------------------------------------


def _missing(tmp_path):
    return tmp_path / "missing.mrc"


def _folder(tmp_path):
    path = tmp_path / "folder.mrc"
    path.mkdir()
    return path


def _random_bytes(tmp_path):
    path = tmp_path / "noise.mrc"
    path.write_bytes(np.random.default_rng(2).bytes(4096))
    return path


def _random_bytes_of_map_size(tmp_path):
    """Random bytes as long as a 64^3 float32 map with its header: lenient reading must not accept them."""
    path = tmp_path / "noise64.mrc"
    path.write_bytes(np.random.default_rng(3).bytes(1024 + 64**3 * 4))
    return path


def _truncated(tmp_path):
    good = write_volume(tmp_path / "good.mrc", random_volume(shape=(8, 8, 8)))
    path = tmp_path / "truncated.mrc"
    path.write_bytes(good.read_bytes()[: 1024 + 700])  # header plus part of the data block
    return path


def _non_finite(tmp_path):
    data = random_volume(shape=(8, 8, 8)).data.numpy().copy()
    data[1, 2, 3] = np.nan
    data[4, 5, 6] = np.inf
    path = tmp_path / "nonfinite.mrc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mrcfile warns about NaN in its header stats
        write_raw(path, data)
    return path


def _two_d(tmp_path):
    path = tmp_path / "image.mrc"
    write_raw(path, np.zeros((8, 8), dtype=np.float32))
    return path


def _image_stack(tmp_path):
    path = tmp_path / "stack.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((4, 8, 8), dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = 1.0
    return path


BAD_FILES = [
    (_missing, "file not found"),
    (_folder, "is a folder"),
    (_random_bytes, "not an MRC file"),
    (_random_bytes_of_map_size, "not an MRC file"),
    (_truncated, "not a readable MRC file"),
    (_non_finite, "2 NaN or infinite values"),
    (_two_d, "2D data"),
    (_image_stack, "image stack"),
]


@pytest.mark.parametrize("make, expected", BAD_FILES, ids=[m.__name__.strip("_") for m, _ in BAD_FILES])
def test_unusable_file_is_a_data_error_naming_file_and_problem(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        read_volume(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message


# --- writing --------------------------------------------------------------------------------


def test_failed_write_leaves_existing_file_and_no_partial_file(tmp_path):
    target = write_volume(tmp_path / "map.mrc", random_volume(seed=0))
    before = target.read_bytes()

    bad = random_volume(seed=1)
    bad.data[0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN or infinite"):
        write_volume(target, bad)

    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc"]


def test_write_interrupted_midway_leaves_existing_file_and_no_partial_file(tmp_path, monkeypatch):
    target = write_volume(tmp_path / "map.mrc", random_volume(seed=0))
    before = target.read_bytes()

    def crash(self):
        raise OSError("disk full")

    # The data is already in the temporary file when the header statistics are computed.
    monkeypatch.setattr(mrcfile.mrcfile.MrcFile, "update_header_stats", crash)
    with pytest.raises(OSError, match="disk full"):
        write_volume(target, random_volume(seed=1))

    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc"]


def test_overwrite_false_refuses_an_existing_file(tmp_path):
    target = write_volume(tmp_path / "map.mrc", random_volume(seed=0), overwrite=False)
    before = target.read_bytes()

    with pytest.raises(DataError) as info:
        write_volume(target, random_volume(seed=1), overwrite=False)
    assert str(target) in str(info.value)
    assert "exists" in str(info.value) and "--overwrite" in str(info.value)
    assert target.read_bytes() == before

    write_volume(target, random_volume(seed=1))  # overwrite=True is the default
    np.testing.assert_array_equal(read_volume(target).data.numpy(), random_volume(seed=1).data.numpy())


def test_atomic_write_gives_the_file_the_umask_mode_not_a_private_one(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = write_volume(tmp_path / "m.mrc", Volume(torch.zeros(4, 4, 4), 1.0))
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        path = write_volume(tmp_path / "p.mrc", Volume(torch.zeros(4, 4, 4), 1.0))
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_space_group_0_with_volume_sampling_is_a_volume(tmp_path):
    """Many programs write 3D maps with ISPG = 0; MZ = NZ (and a .mrc name) says it is a volume."""
    path = tmp_path / "map.mrc"
    data = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.header.ispg = 0
        mrc.header.mz = 4
        mrc.voxel_size = 1.5
    volume = read_volume(path)
    assert volume.shape == (4, 6, 8) and volume.voxel_size == pytest.approx(1.5)
    np.testing.assert_array_equal(volume.data.numpy(), data)
    stack = tmp_path / "map.mrcs"
    stack.write_bytes(path.read_bytes())
    with pytest.raises(DataError, match="image stack"):
        read_volume(stack)


@pytest.mark.parametrize("name, shape", [("2566_3J6B_9.mrc", (47, 52, 35)), ("emd_1461.mrc", (96, 80, 75))])
def test_real_maps_written_with_space_group_0_read_as_volumes(name, shape):
    path = SHARED_DATA / "maps" / name
    if not path.exists():
        pytest.skip("../shared/data is not present")
    assert read_volume(path).shape == shape


def test_random_bytes_give_one_error_and_no_library_warnings(tmp_path, recwarn):
    path = _random_bytes_of_map_size(tmp_path)
    with pytest.raises(DataError, match="not an MRC file"):
        read_volume(path)
    assert len(recwarn) == 0


def test_an_old_file_without_the_map_identifier_reads_with_one_warning(tmp_path):
    """Older programs wrote no 'MAP ' identifier; a header that describes the file still reads."""
    good = write_volume(tmp_path / "good.mrc", random_volume(shape=(8, 8, 8)))
    raw = bytearray(good.read_bytes())
    raw[208:212] = b"\x00\x00\x00\x00"
    old = tmp_path / "old.mrc"
    old.write_bytes(bytes(raw))
    with pytest.warns(UserWarning) as caught:
        volume = read_volume(old)
    assert len(caught) == 1 and "non-standard header" in str(caught[0].message)
    torch.testing.assert_close(volume.data, read_volume(good).data)


# --- memory-mapped reading and writing --------------------------------------------------------


@pytest.mark.parametrize("mapc, mapr, maps", [(1, 2, 3), *PERMUTED_ORDERS])
def test_mapped_blocks_are_the_blocks_of_read_volume(tmp_path, mapc, mapr, maps):
    from cryoinverse.mrc import MappedVolume

    zyx = random_volume().data.numpy()
    stored = np.transpose(zyx, (ARRAY_AXIS[maps], ARRAY_AXIS[mapr], ARRAY_AXIS[mapc]))
    path = tmp_path / "permuted.mrc"
    write_raw(path, stored, voxel_size=1.5, mapc=mapc, mapr=mapr, maps=maps, nxstart=2, nystart=4, nzstart=6)
    whole = read_volume(path)
    with MappedVolume(path) as mapped:
        assert mapped.shape == whole.shape and mapped.voxel_size == whole.voxel_size and mapped.origin == pytest.approx(whole.origin)
        block = mapped.block((1, 2, 3), (4, 5, 2))
        block.data[...] = 0  # a copy: the file is untouched
    np.testing.assert_array_equal(block.data.numpy(), np.zeros((4, 5, 2)))
    with MappedVolume(path) as mapped:
        block = mapped.block((1, 2, 3), (4, 5, 2))
    np.testing.assert_array_equal(block.data.numpy(), zyx[1:5, 2:7, 3:5])
    assert block.origin == pytest.approx(tuple(o + s * 1.5 for o, s in zip(whole.origin, (1, 2, 3))))


@pytest.mark.parametrize("make, expected", [b for b in BAD_FILES if b[0] is not _non_finite], ids=lambda v: getattr(v, "__name__", "").strip("_"))
def test_mapped_reading_refuses_what_read_volume_refuses(tmp_path, make, expected):
    from cryoinverse.mrc import MappedVolume

    path = make(tmp_path)
    with pytest.raises(DataError) as info:
        MappedVolume(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_a_mapped_block_with_nan_names_the_file_and_the_block(tmp_path):
    from cryoinverse.mrc import MappedVolume

    with MappedVolume(_non_finite(tmp_path)) as mapped:
        with pytest.raises(DataError, match=r"NaN or infinite values \(in voxels z, y, x = 0:"):
            mapped.block((0, 0, 0), mapped.shape)


def test_mapped_output_writes_the_header_mrcfile_would(tmp_path):
    from cryoinverse.mrc import mapped_output

    volume = random_volume(shape=(9, 7, 8), voxel_size=2.25, origin=(1.0, -2.0, 3.5))
    with mapped_output(tmp_path / "out.mrc", volume.shape, volume.voxel_size, volume.origin) as data:
        assert not data.any()  # zeroed, whatever the file system leaves in a new mapping
        data[...] += volume.data.numpy()
    back = read_volume(tmp_path / "out.mrc")
    np.testing.assert_array_equal(back.data.numpy(), volume.data.numpy())
    assert back.voxel_size == 2.25 and back.origin == pytest.approx(volume.origin)
    with mrcfile.open(tmp_path / "out.mrc") as mrc:
        h, d = mrc.header, volume.data.numpy().astype(np.float64)
        assert (float(h.dmin), float(h.dmax)) == (d.min(), d.max())
        assert float(h.dmean) == pytest.approx(d.mean(), abs=1e-6) and float(h.rms) == pytest.approx(d.std(), rel=1e-6)
        assert int(h.ispg) == 1 and (int(h.mapc), int(h.mapr), int(h.maps)) == (1, 2, 3)


def test_mapped_output_leaves_no_file_after_an_error_or_nan(tmp_path):
    from cryoinverse.mrc import mapped_output

    target = write_volume(tmp_path / "map.mrc", random_volume(seed=0))
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="midway"):
        with mapped_output(target, (6, 7, 8), 1.0) as data:
            data[0] = 1.0
            raise RuntimeError("midway")
    with pytest.raises(DataError, match="NaN or infinite values"):
        with mapped_output(target, (6, 7, 8), 1.0) as data:
            data[2, 3, 4] = np.nan
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc"]


def test_a_killed_write_leaves_a_part_that_the_next_write_of_that_name_removes(tmp_path):
    """SIGKILL gives a writer no chance to clean up; its temporary file names its (now dead) process."""
    import signal
    import subprocess
    import sys

    target = tmp_path / "map.mrc"
    child = (
        "import os, signal, sys\n"
        "from cryoinverse.mrc import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half a map')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", child, str(target)], capture_output=True)
    assert done.returncode == -signal.SIGKILL
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert len(stale) == 1 and stale[0].name.startswith(".map.mrc.") and not target.exists()

    live = tmp_path / f".map.mrc.{os.getpid()}@{socket.gethostname()}.abc123.part"  # a writer still running
    live.write_bytes(b"")
    other = tmp_path / ".other.mrc.1@nohost.abc123.part"  # another output's
    other.write_bytes(b"")
    write_volume(target, random_volume(seed=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["map.mrc", live.name, other.name])
