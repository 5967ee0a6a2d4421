"""Tilt files (.tlt / .rawtlt): angles read in order, every bad input named with its line."""

from __future__ import annotations

import pytest

from cryoinverse.errors import DataError
from cryoinverse.tilts import read_tilt_angles


def test_reads_angles_in_file_order_skipping_blank_lines(tmp_path):
    # IMOD writes "%7.2f" lines; Warp writes plain numbers; either may end with a blank line or CRLF.
    path = tmp_path / "TS_01.rawtlt"
    path.write_bytes(b"   0.00\r\n   3.00\r\n  -3.00\n\n   6.5\n-57.02\n 63e0\n\n")
    assert read_tilt_angles(path) == [0.0, 3.0, -3.0, 6.5, -57.02, 63.0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("-60\n-57\n\nabc\n-51\n", "line 4: 'abc' is not a number"),
        ("-60\n-57 -54\n", "line 2: '-57 -54' is not a number"),
        ("-60\n0\n92.5\n", "line 3: angle 92.5 is outside [-90, 90] degrees"),
        ("nan\n0\n", "line 1: angle nan is outside [-90, 90] degrees"),
        ("\n12.0\n\n", "1 angle; a tilt series needs at least 2"),
        ("", "0 angles; a tilt series needs at least 2"),
    ],
)
def test_bad_files_name_the_file_and_the_line(tmp_path, text, message):
    path = tmp_path / "bad.tlt"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_tilt_angles(path)
    assert f"tilt file {path}: {message}" in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="missing.tlt: file not found"):
        read_tilt_angles(tmp_path / "missing.tlt")
    with pytest.raises(DataError, match="cannot read"):
        read_tilt_angles(tmp_path)  # a folder
    binary = tmp_path / "binary.tlt"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(DataError, match="cannot read"):
        read_tilt_angles(binary)
