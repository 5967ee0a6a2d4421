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


# --- AreTomo .aln -----------------------------------------------------------------------------

ALN = """# AreTomo Alignment / Priims bprmMn
# RawSize = 4096 4096 7
# NumPatches = 4
# DarkFrame =     0    0   -60.00
# DarkFrame =     6    6    60.00
# AlphaOffset =     1.50
# BetaOffset =     0.00
# SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE     BASE     TILT
    0    84.4445    1.00000     13.382     21.802     1.00     1.00     1.00     0.00    -38.51
    1    84.6000    1.00000      1.680     -5.046     1.00     1.00     1.00     0.00    -18.52
    2    84.5000    1.00000      0.000      0.000     1.00     1.00     1.00     0.00      1.49
    3    84.5000    1.00000     11.101     10.454     1.00     1.00     1.00     0.00     21.48
    4    84.5000    1.00000      3.166    -10.878     1.00     1.00     1.00     0.00     41.47
# Local Alignment
   0   0 -1537.16  -1363.14     -6.93    -36.22   1.0
   0   1  -579.03  -1414.46     -2.53    -21.76   1.0
"""


def test_aretomo_aln_gives_the_aligned_tilts_of_the_global_table(tmp_path):
    from cryoinverse.tilts import read_tilt_series

    path = tmp_path / "TS_01.aln"
    path.write_text(ALN)
    series = read_tilt_series(path)
    # the TILT column (aligned, offset applied), not the dark frames' nominal -60/60, not the local table
    assert series.angles == (-38.51, -18.52, 1.49, 21.48, 41.47)
    assert series.range == (-38.51, 41.47)
    assert series.axis_angle == pytest.approx(84.5)
    assert series.doses is None and series.half_maps is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("# SEC     ROT ", "# SECTION ROT "), "line 9: a table row before the '# SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT' header"),
        (lambda t: t.split("# SEC")[0], "no '# SEC ROT GMAG TX TY SMEAN SFIT SCALE BASE TILT' header: not an AreTomo .aln file"),
        (lambda t: t.replace("BASE     TILT", "BASE"), "line 8: the alignment table's header has no TILT column"),
        (lambda t: t.replace("0.00    -18.52", "0.00"), "line 10: 9 fields; the header names 10"),
        (lambda t: t.replace("21.48", "21,48"), "line 12: TILT '21,48' is not a number"),
        (lambda t: t.replace("41.47", "141.47"), "line 13, TILT: angle 141.47 is outside [-90, 90] degrees"),
    ],
)
def test_bad_aln_files_name_the_line_and_field(tmp_path, edit, message):
    from cryoinverse.tilts import read_tilt_series

    path = tmp_path / "bad.aln"
    path.write_text(edit(ALN))
    with pytest.raises(DataError) as info:
        read_tilt_series(path)
    assert f"tilt file {path}: {message}" in str(info.value)


# --- RELION 5 ---------------------------------------------------------------------------------


def relion_tilt_series(name: str, nominal: list[float], aligned: list[float] | None, doses: list[float] | None) -> str:
    """A RELION 5 tilt-series STAR file (ImportTomo / AlignTiltSeries layout, trimmed to the columns read)."""
    columns = ["rlnMicrographMovieName", "rlnTomoNominalStageTiltAngle", "rlnTomoNominalTiltAxisAngle"]
    columns += ["rlnMicrographPreExposure"] if doses is not None else []
    columns += ["rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot"] if aligned is not None else []
    lines = ["", "# version 50001", "", f"data_{name}", "", "loop_"] + [f"_{c} #{i + 1}" for i, c in enumerate(columns)]
    for i, angle in enumerate(nominal):
        row = [f"frames/{name}_{i:03d}_{angle:.1f}.eer", f"{angle:.6f}", "85.000000"]
        row += [f"{doses[i]:.6f}"] if doses is not None else []
        row += ["0.000000", f"{aligned[i]:.6f}", "84.300000"] if aligned is not None else []
        lines.append("  ".join(row))
    return "\n".join(lines) + "\n\n"


def relion_project(root, halves: bool = True):
    """A RELION project: Tomograms/job007/tomograms.star naming two tomograms, their tilt-series STAR files
    and (with `halves`) their half-set tomograms, all as paths relative to the project folder `root`."""
    job = root / "Tomograms" / "job007"
    (job / "tilt_series").mkdir(parents=True)
    (job / "tomograms").mkdir()
    series = {
        "TS_01": ([-51.0, -3.0, 0.0, 3.0, 54.0], [-50.2, -2.2, 0.8, 3.8, 54.9], [30.0, 6.0, 0.0, 3.0, 33.0]),
        "TS_02": ([-60.0, 0.0, 60.0], [-58.0, 1.0, 61.0], [6.0, 0.0, 3.0]),
    }
    for name, (nominal, aligned, doses) in series.items():
        (job / "tilt_series" / f"{name}.star").write_text(relion_tilt_series(name, nominal, aligned, doses))
        if halves:
            for half in (1, 2):
                (job / "tomograms" / f"rec_{name}_half{half}.mrc").write_bytes(b"")
    columns = ["rlnTomoName", "rlnTomoTiltSeriesStarFile", "rlnVoltage", "rlnTomoTiltSeriesPixelSize", "rlnTomoTomogramBinning", "rlnTomoReconstructedTomogram"]
    columns += ["rlnTomoReconstructedTomogramHalf1", "rlnTomoReconstructedTomogramHalf2"] if halves else []
    lines = ["", "# version 50001", "", "data_global", "", "loop_"] + [f"_{c} #{i + 1}" for i, c in enumerate(columns)]
    for name in series:
        row = [name, f"Tomograms/job007/tilt_series/{name}.star", "300.000000", "1.350000", "8.000000", f"Tomograms/job007/tomograms/rec_{name}.mrc"]
        row += [f"Tomograms/job007/tomograms/rec_{name}_half{h}.mrc" for h in (1, 2)] if halves else []
        lines.append("  ".join(row))
    star = job / "tomograms.star"
    star.write_text("\n".join(lines) + "\n\n")
    return star


def test_relion_tilt_series_star_gives_aligned_angles_doses_and_axis(tmp_path):
    from cryoinverse.tilts import read_tilt_series

    path = tmp_path / "TS_03.star"
    path.write_text(relion_tilt_series("TS_03", [-60.0, 0.0, 60.0], [-58.5, 0.5, 59.5], [6.0, 0.0, 3.0]))
    series = read_tilt_series(path)
    assert series.angles == (-58.5, 0.5, 59.5)  # rlnTomoYTilt, not the nominal stage angles
    assert series.doses == (6.0, 0.0, 3.0) and series.axis_angle == pytest.approx(84.3)
    # before alignment only the nominal angles exist
    path.write_text(relion_tilt_series("TS_03", [-60.0, 0.0, 60.0], None, None))
    series = read_tilt_series(path)
    assert series.angles == (-60.0, 0.0, 60.0) and series.doses is None and series.axis_angle == 85.0


def test_relion_tomograms_star_names_the_tilt_series_and_half_tomograms(tmp_path):
    from cryoinverse.tilts import read_tilt_series

    star = relion_project(tmp_path)
    with pytest.raises(DataError, match=r'2 tomograms \(TS_01, TS_02\); name one with tomogram = "..."'):
        read_tilt_series(star)
    with pytest.raises(DataError, match="no tomograms named 'TS_9' here"):
        read_tilt_series(star, "TS_9")
    series = read_tilt_series(star, "TS_02")
    assert series.angles == (-58.0, 1.0, 61.0) and series.doses == (6.0, 0.0, 3.0) and series.voltage == 300.0
    job = (tmp_path / "Tomograms" / "job007").resolve()
    assert series.tilt_series_file == job / "tilt_series" / "TS_02.star"
    assert series.half_maps == (job / "tomograms" / "rec_TS_02_half1.mrc", job / "tomograms" / "rec_TS_02_half2.mrc")
    assert read_tilt_series(relion_project(tmp_path / "other", halves=False), "TS_01").half_maps is None


def test_bad_relion_files_name_the_block_row_and_column(tmp_path):
    from cryoinverse.tilts import read_tilt_series

    star = relion_project(tmp_path)
    (tmp_path / "Tomograms" / "job007" / "tomograms" / "rec_TS_01_half2.mrc").unlink()
    with pytest.raises(DataError) as info:
        read_tilt_series(star, "TS_01")
    assert (
        f"tilt file {star}: block data_global, row 1 (TS_01), column rlnTomoReconstructedTomogramHalf2: "
        "Tomograms/job007/tomograms/rec_TS_01_half2.mrc: file not found" in str(info.value)
    )
    series_file = tmp_path / "Tomograms" / "job007" / "tilt_series" / "TS_02.star"
    series_file.write_text(series_file.read_text().replace("6.000000", "six", 1))
    with pytest.raises(DataError, match=r"TS_02.star: block data_TS_02, row 1, column rlnMicrographPreExposure: 'six' is not a number"):
        read_tilt_series(star, "TS_02")
    other = tmp_path / "particles.star"
    other.write_text("data_particles\nloop_\n_rlnImageName #1\n1@a.mrcs\n")
    with pytest.raises(DataError, match="no tilt table .* not a RELION 5 tilt-series or tomograms STAR file"):
        read_tilt_series(other)


def mdoc(sections: list[dict], header: str = "PixelSpacing = 2.7\nImageFile = TS_01.mrc\nTiltAxisAngle = 84.7\n") -> str:
    """A SerialEM .mdoc: header lines, then one [ZValue = N] section per image (as SerialEM writes)."""
    out = [header, "[T = SerialEM: Digitized on EMBL Krios   07-Dec-26  10:00:00]", ""]
    for z, keys in enumerate(sections):
        out.append(f"[ZValue = {z}]")
        out += [f"{k} = {v}" for k, v in keys.items()]
        out.append("")
    return "\n".join(out)


def test_serialem_mdoc_gives_angles_axis_and_pre_exposure(tmp_path):
    from cryoinverse.tilts import read_tilt_series

    # a dose-symmetric series stored in angular order (0, -3, +3 acquired first): the pre-exposure
    # follows the acquisition times, not the stack order
    acquired = {0.0: 0, 3.0: 1, -3.0: 2, -6.0: 3, 6.0: 4}
    angles = [-6.0, -3.0, 0.0, 3.0, 6.0]
    sections = [
        {"TiltAngle": f"{a:.2f}", "StagePosition": "10.1 -3.2", "ExposureDose": "3.5",
         "DateTime": f"07-Dec-26  10:0{acquired[a]}:30"} for a in angles
    ]
    path = tmp_path / "TS_01.mdoc"
    path.write_text(mdoc(sections, header="PixelSpacing = 2.7\nVoltage = 200\nTiltAxisAngle = 84.7\n"))
    series = read_tilt_series(path)
    assert series.angles == tuple(angles) and series.axis_angle == pytest.approx(84.7) and series.voltage == 200.0
    assert series.doses == pytest.approx([3.5 * acquired[a] for a in angles])  # 10.5, 3.5, 0, 7, 14
    # PriorRecordDose, where every image has it, is taken as it is
    for s, d in zip(sections, [9.0, 2.0, 0.0, 4.0, 11.0]):
        s["PriorRecordDose"] = f"{d}"
    path.write_text(mdoc(sections))
    assert read_tilt_series(path).doses == (9.0, 2.0, 0.0, 4.0, 11.0)
    # no dose calibration (ExposureDose 0) and no times: angles only
    path.write_text(mdoc([{"TiltAngle": f"{a}", "ExposureDose": "0"} for a in angles], header="PixelSpacing = 2.7\n"))
    series = read_tilt_series(path)
    assert series.doses is None and series.axis_angle is None
    assert read_tilt_angles(path) == angles


@pytest.mark.parametrize(
    "text, message",
    [
        ("PixelSpacing = 2.7\n", "no [ZValue = N] sections"),
        ("[ZValue = 0]\nTiltAngle = 0\n[ZValue = 1]\nExposureDose = 3\n", "line 3: [ZValue = 1] has no TiltAngle"),
        ("[ZValue = 0]\nTiltAngle = zero\n", "line 2: TiltAngle 'zero' is not a number"),
        ("[ZValue = 0]\nTiltAngle = 0\n[ZValue = 1]\nTiltAngle 3\n", "line 4: 'TiltAngle 3' is neither"),
        ("[ZValue = 0]\nTiltAngle = 0\nPriorRecordDose = -1\n[ZValue = 1]\nTiltAngle = 3\nPriorRecordDose = 2\n", "line 3: PriorRecordDose -1 is not a dose"),
    ],
)
def test_bad_mdoc_files_name_the_line_and_key(tmp_path, text, message):
    from cryoinverse.tilts import read_tilt_series

    path = tmp_path / "bad.mdoc"
    path.write_text(text)
    with pytest.raises(DataError, match=f"tilt file {path}: " + __import__("re").escape(message)):
        read_tilt_series(path)
