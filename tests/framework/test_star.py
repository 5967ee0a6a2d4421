"""STAR reader: real RELION files (3.1 optics groups, pre-3.1, cryoDRGN's toy file), round trips,
and the messages a user sees for broken files."""

from __future__ import annotations

import numpy as np
import pytest

from cryoinverse.errors import DataError
from cryoinverse.star import pixel_size_of, read_particles, read_star, split_image_name, write_star


def test_relion31_optics_groups_are_merged_into_particles(shared_data):
    path = shared_data / "particles" / "relion31.6opticsgroups.star"
    blocks = read_star(path)
    assert set(blocks) == {"optics", "particles"}
    assert len(blocks["optics"]) == 6 and len(blocks["particles"]) == 139
    optics = blocks["optics"].table
    assert optics["rlnOpticsGroupName"][0] == "opticsGroup5"
    assert optics["rlnOddZernike"][0].startswith("[1.705")  # bracketed lists stay text
    table = read_particles(path)
    groups = table["rlnOpticsGroup"]
    assert groups.dtype == np.int64 and len(groups) == 139
    # Optics group 4 is the one with Cs = 2.6 mm; groups 2 and 5 have 1.24 A pixels.
    np.testing.assert_array_equal(table["rlnSphericalAberration"], np.where(groups == 4, 2.6, 2.7))
    np.testing.assert_array_equal(table["rlnImagePixelSize"], np.where(np.isin(groups, [2, 5]), 1.24, 1.25))
    assert (table["rlnVoltage"] == 200.0).all()
    first = 0
    assert table["rlnImageName"][first] == "3@Polish/job520/Micrographs/0003_shiny.mrcs"
    assert table["rlnAngleRot"][first] == pytest.approx(-128.10516)
    assert table["rlnOriginXAngst"][first] == pytest.approx(13.284554)
    assert table["rlnDefocusU"].dtype == np.float64
    with pytest.raises(DataError, match="different pixel sizes.*1.24 to 1.25"):
        pixel_size_of(table, path)
    one_group = {k: v[groups == 6] for k, v in table.items()}
    assert pixel_size_of(one_group) == 1.25


def test_pre31_file_with_column_numbers(shared_data):
    path = shared_data / "particles" / "empiar_10076_7.star"
    blocks = read_star(path)
    assert list(blocks) == [""]  # a bare data_ block
    table = read_particles(path)
    assert list(table)[:3] == ["rlnImageName", "rlnMicrographName", "rlnDefocusU"]  # '#1' suffixes dropped
    assert len(table["rlnImageName"]) == 7
    np.testing.assert_allclose(table["rlnDefocusV"][:2], [14916.4, 14918.4])
    # 5 um detector pixels at 38168x magnification
    assert pixel_size_of(table) == pytest.approx(5 * 1e4 / 38168)
    assert split_image_name(table["rlnImageName"][6]) == (6, "empiar_10076_7.mrc")


def test_cryodrgn_toy_star(shared_data):
    table = read_particles(shared_data / "particles" / "toy_projections.star")
    assert len(table["rlnImageName"]) == 1000
    assert table["dummyVariable"][:3].tolist() == [1, 2, 3]
    indices = [split_image_name(name)[0] for name in table["rlnImageName"]]
    assert indices == list(range(1000))
    assert pixel_size_of(table) is None  # the file gives none
    assert "rlnAngleRot" not in table  # its poses live in toy_rot_trans.npz


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    optics = {"rlnOpticsGroup": [1, 2], "rlnImagePixelSize": [1.5, 1.5], "rlnVoltage": [300.0, 200.0]}
    particles = {
        "rlnImageName": [f"{i + 1}@stack with space.mrcs" for i in range(5)],
        "rlnAngleRot": rng.uniform(-180, 180, 5),
        "rlnOpticsGroup": [1, 2, 2, 1, 2],
    }
    path = write_star(tmp_path / "p.star", {"optics": optics, "particles": particles})
    table = read_particles(path)
    np.testing.assert_array_equal(table["rlnAngleRot"], particles["rlnAngleRot"])  # exact float round trip
    assert table["rlnImageName"][4] == "5@stack with space.mrcs"
    np.testing.assert_array_equal(table["rlnVoltage"], [300.0, 200.0, 200.0, 300.0, 200.0])


def _write(tmp_path, text: str):
    path = tmp_path / "bad.star"
    path.write_text(text)
    return path


def test_row_with_wrong_number_of_values(tmp_path):
    path = _write(tmp_path, "data_particles\nloop_\n_rlnA\n_rlnB\n1 2\n3\n")
    with pytest.raises(DataError, match=r"bad.star:6: row has 1 values but the loop_ table has 2 columns"):
        read_star(path)


def test_not_a_star_file(tmp_path):
    with pytest.raises(DataError, match="expected a 'data_' block"):
        read_star(_write(tmp_path, "hello world\n"))
    with pytest.raises(DataError, match="STAR file not found"):
        read_star(tmp_path / "missing.star")
    with pytest.raises(DataError, match="no particle table"):
        read_particles(_write(tmp_path, "data_general\n_rlnFinalResolution 3.2\n"))


def test_unknown_optics_group(tmp_path):
    text = "data_optics\nloop_\n_rlnOpticsGroup\n_rlnVoltage\n1 300\n\ndata_particles\nloop_\n_rlnOpticsGroup\n_rlnAngleRot\n1 0\n7 0\n"
    with pytest.raises(DataError, match=r"optics group\(s\) 7 missing from data_optics \(groups: 1\)"):
        read_particles(_write(tmp_path, text))


def test_several_optics_groups_need_a_group_column(tmp_path):
    text = "data_optics\nloop_\n_rlnOpticsGroup\n1\n2\n\ndata_particles\nloop_\n_rlnAngleRot\n0\n"
    with pytest.raises(DataError, match="2 optics groups but the particles have no rlnOpticsGroup column"):
        read_particles(_write(tmp_path, text))


def test_key_value_pairs_and_quotes(tmp_path):
    text = "data_general\n_rlnFinalResolution 3.2\n_rlnName 'a b'\n\ndata_particles\nloop_\n_rlnImageName\n\"1@x y.mrcs\"\n"
    blocks = read_star(_write(tmp_path, text))
    assert blocks["general"].values == {"rlnFinalResolution": 3.2, "rlnName": "a b"}
    assert blocks["particles"].table["rlnImageName"].tolist() == ["1@x y.mrcs"]


def test_image_names():
    assert split_image_name("000012@stack.mrcs") == (11, "stack.mrcs")
    assert split_image_name("single.mrc") == (0, "single.mrc")
    with pytest.raises(DataError, match="integer INDEX"):
        split_image_name("a@stack.mrcs")
    with pytest.raises(DataError, match="start at 1"):
        split_image_name("0@stack.mrcs")
