"""Density maps from atomic models: checked against closed forms, gemmi's tables, and the CLI."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cryoinverse.atoms import FALLBACK_ELEMENT, FORM_FACTORS, Atoms, form_factor, gaussian_form_factor, read_atoms
from cryoinverse.cli import build_cli
from cryoinverse.errors import DataError
from cryoinverse.fourier import shell_average
from cryoinverse.mrc import read_volume, write_volume
from cryoinverse.simulate import simulate_density

ELEMENTS = ["C", "N", "O", "S", "P", "H"]


def f0(element: str) -> float:
    """f(0) = sum a_i from gemmi's own copy of International Tables C 4.3.2.2 (independent of ours)."""
    return float(sum(gemmi.Element(element).c4322.a))


def closed_form(r: np.ndarray, a, b, bfactor: float) -> np.ndarray:
    """Real-space density of f(s) = sum a_i exp(-b_i s^2/4) times exp(-B s^2/4), float64."""
    r = np.asarray(r, dtype=np.float64)[..., None]
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64) + bfactor
    return (a * (4 * np.pi / b) ** 1.5 * np.exp(-4 * np.pi**2 * r**2 / b)).sum(-1)


def random_atoms(n: int = 600, spread: float = 12.0, seed: int = 0, b_range=(20.0, 60.0)) -> Atoms:
    """A compact, lopsided cloud of atoms of mixed elements, B-factors and occupancies."""
    rng = np.random.default_rng(seed)
    positions = rng.uniform(-1, 1, size=(n, 3)) * spread * np.array([1.0, 0.7, 0.5]) + np.array([30.0, -12.0, 7.0])
    positions[: n // 5] += np.array([8.0, 4.0, -3.0])  # lopsided: the centroid is not the box's guess
    elements = rng.choice(ELEMENTS, size=n, p=[0.55, 0.17, 0.18, 0.03, 0.02, 0.05])
    occupancies = np.where(rng.random(n) < 0.1, 0.5, 1.0)
    return Atoms(positions, elements, rng.uniform(*b_range, n), occupancies, source="random")


def pdb_line(serial: int, name: str, resname: str, resseq: int, xyz, element: str, b: float = 30.0, occ: float = 1.0, record: str = "ATOM") -> str:
    padded = f" {name:<3s}" if len(name) < 4 else name
    x, y, z = xyz
    return (
        f"{record:<6s}{serial:5d} {padded:4s} {resname:>3s} A{resseq:4d}    "
        f"{x:8.3f}{y:8.3f}{z:8.3f}{occ:6.2f}{b:6.2f}          {element:>2s}"
    )


def write_pdb(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines + ["END", ""]))
    return path


def small_pdb(path: Path, shift=(0.0, 0.0, 0.0)) -> Path:
    """One cysteine-like residue with a hydrogen, plus a water."""
    sx, sy, sz = shift
    atoms = [
        ("N", "N", (0.0, 0.0, 0.0)),
        ("CA", "C", (1.46, 0.0, 0.0)),
        ("C", "C", (2.0, 1.42, 0.0)),
        ("O", "O", (1.25, 2.4, 0.1)),
        ("SG", "S", (2.2, -0.9, 1.3)),
        ("H", "H", (-0.5, -0.8, 0.2)),
    ]
    lines = [pdb_line(i + 1, n, "CYS", 1, (x + sx, y + sy, z + sz), e) for i, (n, e, (x, y, z)) in enumerate(atoms)]
    lines.append(pdb_line(7, "O", "HOH", 101, (5.0 + sx, 5.0 + sy, 5.0 + sz), "O", record="HETATM"))
    return write_pdb(path, lines)


def centroid_voxel(data: torch.Tensor) -> np.ndarray:
    """Density-weighted centre (z, y, x) in voxel indices, float64."""
    d = data.double()
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in d.shape], indexing="ij")
    return np.array([float((g * d).sum() / d.sum()) for g in grids])


# ---------------------------------------------------------------------------- form factor tables


def test_table_matches_gemmi_international_tables():
    for element in ("H", "C", "N", "O", "S", "P"):
        assert element in FORM_FACTORS
    for element, (a, b) in FORM_FACTORS.items():
        reference = gemmi.Element(element).c4322
        np.testing.assert_allclose(a, reference.a, atol=1e-4, err_msg=element)
        np.testing.assert_allclose(b, reference.b, atol=1e-4, err_msg=element)


def test_other_elements_come_from_gemmi_and_unknown_fall_back_to_carbon():
    a, b = form_factor("cu")
    np.testing.assert_allclose(a, gemmi.Element("Cu").c4322.a)
    unknown = form_factor("X")
    np.testing.assert_array_equal(unknown[0], form_factor(FALLBACK_ELEMENT)[0])
    atoms = Atoms.create([[0, 0, 0], [1, 1, 1]], ["X", "C"])
    assert atoms.unknown_elements() == ["X"]


def test_gaussian_form_keeps_f0_and_second_moment():
    a5, b5 = form_factor("O")
    a1, b1 = gaussian_form_factor("O")
    assert a1.sum() == pytest.approx(a5.sum())
    # f(s) to order s^2: sum a_i b_i equal
    assert (a1 * b1).sum() == pytest.approx((a5 * b5).sum())


# --------------------------------------------------------------------------------- the density


@pytest.mark.parametrize("form", ["5gaussian", "gaussian"])
def test_total_mass_is_sum_of_f0(form):
    atoms = random_atoms()
    voxel = 1.5
    volume = simulate_density(atoms, 48, voxel, form=form)
    mass = float(volume.data.double().sum()) * voxel**3
    expected = sum(occ * f0(e) for e, occ in zip(atoms.elements, atoms.occupancies))
    assert mass == pytest.approx(expected, rel=0.01)
    assert volume.data.dtype == torch.float32 and volume.shape == (48, 48, 48)


def structure_factor_map(atoms: Atoms, n: int, voxel: float, origin_zyx) -> np.ndarray:
    """The band-limited density on an odd n^3 box by direct Fourier summation (float64 numpy).

    F(k) = sum_j occ_j f_j(|k|) exp(-B_j |k|^2 / 4) exp(-2 pi i k . r_j) for k on the box's
    frequency grid (|k_axis| < Nyquist), then the inverse DFT: an independent reference for a
    map without aliasing (atoms must sit far from the faces: the sum is periodic).
    """
    assert n % 2 == 1
    k = np.fft.fftfreq(n, d=voxel)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    spectrum = np.zeros((n, n, n), dtype=np.complex128)
    relative = atoms.positions[:, ::-1] - np.asarray(origin_zyx)  # (z, y, x) from voxel 0
    for r, element, bfactor, occ in zip(relative, atoms.elements, atoms.b_factors, atoms.occupancies):
        a, b = form_factor(element)
        amplitude = (a * np.exp(-(b + bfactor) * k2[..., None] / 4)).sum(-1) * occ
        ez, ey, ex = (np.exp(-2j * np.pi * k * r[axis]) for axis in range(3))
        spectrum += amplitude * ez[:, None, None] * ey[None, :, None] * ex[None, None, :]
    return np.fft.ifftn(spectrum).real / voxel**3


def test_default_map_is_band_limited_like_direct_fourier_summation():
    atoms = random_atoms(n=120, spread=6.0, b_range=(10.0, 20.0))
    n, voxel = 31, 2.0
    default = simulate_density(atoms, n, voxel, dtype=torch.float64)
    point = simulate_density(atoms, n, voxel, oversample=1, dtype=torch.float64)
    fine = simulate_density(atoms, n, voxel, oversample=4, dtype=torch.float64)
    assert default.origin == point.origin == fine.origin
    reference = structure_factor_map(atoms, n, voxel, default.origin)
    scale = np.abs(reference).max()

    def error(volume) -> float:
        return float(np.abs(volume.data.numpy() - reference).max() / scale)

    # the reference is periodic in the box; the simulation band-limits in a padded box (no
    # wrap-around), so they differ by the ringing of what lies near Nyquist (< 1 %), while
    # point samples at 2 A alias everything the form factors hold beyond Nyquist
    assert error(default) < 0.03 and error(fine) < 0.01
    assert error(point) > 0.3
    assert float((default.data - fine.data).abs().max()) / scale < 0.03  # oversample 2 has converged
    expected = sum(occ * f0(e) for e, occ in zip(atoms.elements, atoms.occupancies))
    assert float(fine.data.sum()) * voxel**3 == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("shape", [(40, 40, 40), (41, 36, 30)])
def test_centre_of_density_is_voxel_n_over_2(shape):
    atoms = random_atoms(b_range=(30.0, 50.0))
    volume = simulate_density(atoms, shape, 1.5)
    np.testing.assert_allclose(centroid_voxel(volume.data), [n // 2 for n in shape], atol=0.1)
    # the origin places the map on the model: the atoms' weighted centre is at voxel n // 2
    w = np.array([occ * f0(e) for e, occ in zip(atoms.elements, atoms.occupancies)])
    centre_xyz = (atoms.positions * w[:, None]).sum(0) / w.sum()
    origin_zyx = np.array(volume.origin)
    np.testing.assert_allclose(origin_zyx + 1.5 * np.array([n // 2 for n in shape]), centre_xyz[::-1], atol=1e-9)


def test_voxel_size_and_origin_in_written_mrc(tmp_path):
    volume = simulate_density(random_atoms(n=50, spread=4.0), 24, 1.3)
    path = write_volume(tmp_path / "sim.mrc", volume)
    with mrcfile.open(path) as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(1.3)
        assert float(mrc.voxel_size.y) == pytest.approx(1.3)
        assert float(mrc.voxel_size.z) == pytest.approx(1.3)
        assert mrc.data.shape == (24, 24, 24)
    back = read_volume(path)
    assert back.voxel_size == pytest.approx(1.3)
    assert back.origin == pytest.approx(volume.origin, abs=1e-3)


@pytest.mark.parametrize("form", ["5gaussian", "gaussian"])
def test_single_atom_peak_and_radial_profile(form):
    # x, y, z = 5.3, 9.6, 13.2 A at 1 A voxels, not centred: the peak is voxel (z, y, x) = (13, 10, 5)
    xyz = np.array([5.3, 9.6, 13.2])
    bfactor = 25.0
    atoms = Atoms.create([xyz], "N", b_factors=bfactor)
    volume = simulate_density(atoms, (32, 28, 24), 1.0, form=form, centre=False, oversample=1, dtype=torch.float64)
    assert volume.origin == (0.0, 0.0, 0.0)
    data = volume.data.numpy()
    peak = np.unravel_index(np.argmax(data), data.shape)
    assert tuple(int(i) for i in peak) == (13, 10, 5)
    a, b = form_factor("N") if form == "5gaussian" else gaussian_form_factor("N")
    for voxel in [(13, 10, 5), (13, 10, 6), (12, 9, 5), (14, 11, 4), (13, 12, 5), (11, 10, 7), (15, 12, 3)]:
        r = np.linalg.norm(np.array(voxel, dtype=np.float64) - xyz[::-1])
        assert data[voxel] == pytest.approx(float(closed_form(r, a, b, bfactor)), rel=1e-10), (voxel, r)
    # and gemmi's own evaluation of the same closed form (float32 inside gemmi)
    if form == "5gaussian":
        r2 = float(np.sum((np.array([12, 9, 5]) - xyz[::-1]) ** 2))
        assert data[12, 9, 5] == pytest.approx(gemmi.Element("N").c4322.calculate_density_iso(r2, bfactor), rel=1e-5)


def test_global_bfactor_replaces_or_adds():
    atoms = Atoms.create([[0.0, 0.0, 0.0]], "C", b_factors=40.0)
    a, b = form_factor("C")
    for bfactor, mode, effective in [(None, "replace", 40.0), (10.0, "replace", 10.0), (10.0, "add", 50.0)]:
        v = simulate_density(atoms, 16, 1.0, bfactor=bfactor, bfactor_mode=mode, oversample=1, dtype=torch.float64)
        assert float(v.data[8, 8, 8]) == pytest.approx(float(closed_form(0.0, a, b, effective)), rel=1e-10)


def test_lowpass_removes_power_beyond_resolution():
    atoms = random_atoms(b_range=(5.0, 20.0))
    n, voxel, resolution = 48, 1.5, 6.0
    sharp = simulate_density(atoms, n, voxel, dtype=torch.float64)
    soft = simulate_density(atoms, n, voxel, resolution=resolution, dtype=torch.float64)
    power_sharp = torch.fft.fftn(sharp.data, norm="ortho").abs() ** 2
    power_soft = torch.fft.fftn(soft.data, norm="ortho").abs() ** 2
    k = torch.fft.fftfreq(n, d=voxel, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    radius = torch.sqrt(kz**2 + ky**2 + kx**2)
    beyond = radius >= 1 / resolution
    assert power_sharp[beyond].sum() > 1e-2 * power_sharp.sum()  # there was something to remove
    assert power_soft[beyond].sum() < 1e-20 * power_soft.sum()
    # shells well below the edge are untouched; the mass (k = 0) is kept
    shells_sharp, shells_soft = shell_average(power_sharp), shell_average(power_soft)
    keep = int(n * voxel / resolution) - 4
    torch.testing.assert_close(shells_soft[:keep], shells_sharp[:keep], rtol=1e-9, atol=0)
    assert float(soft.data.sum()) == pytest.approx(float(sharp.data.sum()), rel=1e-12)
    first_empty = math.ceil(n * voxel / resolution) + 1
    assert float(shells_soft[first_empty:].max()) < 1e-20 * float(shells_soft[0])


def test_atoms_outside_the_box_are_an_error_unless_clipping_is_allowed():
    atoms = random_atoms(n=200, spread=12.0)
    with pytest.raises(DataError, match=r"atoms lie outside the 16x16x16 box at 1\.5 A.*--allow-clip"):
        simulate_density(atoms, 16, 1.5)
    clipped = simulate_density(atoms, 16, 1.5, allow_clip=True)
    full = simulate_density(atoms, 64, 1.5)
    assert 0 < float(clipped.data.sum()) < float(full.data.sum())
    # no wrap-around: an atom on one face puts nothing on the opposite face (point samples), or
    # no more than the band-limit's ringing at that distance (default, Fourier-cropped)
    sulphur = Atoms.create([[0.0, 8.0, 8.0]], "S", 20.0)
    point = simulate_density(sulphur, 16, 1.0, centre=False, oversample=1)
    assert float(point.data[:, :, 0].sum()) > 0 and float(point.data[:, :, -1].abs().sum()) == 0.0
    cropped = simulate_density(sulphur, 16, 1.0, centre=False)
    assert float(cropped.data[:, :, -1].abs().max()) < 5e-3 * float(cropped.data.max())


def test_bad_parameters_are_refused():
    atoms = Atoms.create([[0.0, 0.0, 0.0]], "C", 20.0)
    with pytest.raises(ValueError, match="finer than Nyquist"):
        simulate_density(atoms, 16, 2.0, resolution=3.0)
    with pytest.raises(ValueError, match="form must be one of"):
        simulate_density(atoms, 16, 2.0, form="lorentzian")
    with pytest.raises(DataError, match="zero occupancy"):
        simulate_density(Atoms.create([[0.0, 0.0, 0.0]], "C", 20.0, occupancies=0.0), 16, 2.0)


# ------------------------------------------------------------------------------- reading models


def test_read_atoms_skips_waters_and_hydrogens(tmp_path):
    path = small_pdb(tmp_path / "cys.pdb")
    atoms = read_atoms(path)
    assert list(atoms.elements) == ["N", "C", "C", "O", "S"]
    np.testing.assert_allclose(atoms.positions[1], [1.46, 0.0, 0.0])  # (x, y, z) as in the file
    assert atoms.b_factors == pytest.approx([30.0] * 5)
    assert len(read_atoms(path, keep_hydrogens=True)) == 6
    assert len(read_atoms(path, keep_waters=True)) == 6


def test_read_atoms_reads_mmcif_and_first_model_only(tmp_path):
    pdb = small_pdb(tmp_path / "cys.pdb")
    structure = gemmi.read_structure(str(pdb))
    structure.setup_entities()
    cif = tmp_path / "cys.cif"
    structure.make_mmcif_document().write_file(str(cif))
    np.testing.assert_allclose(read_atoms(cif).positions, read_atoms(pdb).positions)
    model = [pdb_line(1, "CA", "GLY", 1, (1.0, 2.0, 3.0), "C")]
    other = [pdb_line(1, "CA", "GLY", 1, (9.0, 9.0, 9.0), "C")]
    nmr = write_pdb(tmp_path / "nmr.pdb", ["MODEL        1", *model, "ENDMDL", "MODEL        2", *other, "ENDMDL"])
    atoms = read_atoms(nmr)
    assert len(atoms) == 1 and atoms.positions[0] == pytest.approx([1.0, 2.0, 3.0])


def test_read_atoms_reads_charmm_frames(tmp_path):
    # CHARMM writes no element column and 4-letter residue names in columns 18-21 (TIP3 + chain W);
    # its ions are one atom named as the residue: POT is potassium, not phosphorus.
    lines = [
        "ATOM      1  N   ALA A   1       0.000   0.000   0.000  1.00  0.00      PROA",
        "ATOM      2  CA  ALA A   1       1.458   0.000   0.000  1.00  0.00      PROA",
        "ATOM      3  HA  ALA A   1       1.800   1.000   0.000  1.00  0.00      PROA",
        "ATOM      4  OH2 TIP3W   2      10.000  10.000  10.000  1.00  0.00      SOLV",
        "ATOM      5  H1  TIP3W   2      10.900  10.000  10.000  1.00  0.00      SOLV",
        "ATOM      6  POT POT I   3       5.000   5.000   5.000  1.00  0.00      ION",
        "ATOM      7  CLA CLA I   4       6.000   5.000   5.000  1.00  0.00      ION",
        "ATOM      8  SOD SOD I   5       7.000   5.000   5.000  1.00  0.00      ION",
        "END",
    ]
    path = tmp_path / "frame.pdb"
    path.write_text("\n".join(lines) + "\n")
    assert list(read_atoms(path).elements) == ["N", "C", "K", "CL", "NA"]
    assert list(read_atoms(path, keep_waters=True).elements) == ["N", "C", "O", "K", "CL", "NA"]


def test_read_atoms_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing\.pdb: file not found"):
        read_atoms(tmp_path / "missing.pdb")
    with pytest.raises(DataError, match="is a folder"):
        read_atoms(tmp_path)
    (tmp_path / "junk.pdb").write_text("hello\nthis is not a model\n")
    with pytest.raises(DataError, match=r"junk\.pdb: no atoms found"):
        read_atoms(tmp_path / "junk.pdb")
    (tmp_path / "junk.cif").write_text("data_x\nloop_\n_atom_site.id\n1 2 3\n")
    with pytest.raises(DataError, match=r"junk\.cif: (not a readable|no atoms)"):
        read_atoms(tmp_path / "junk.cif")
    water = write_pdb(tmp_path / "water.pdb", [pdb_line(1, "O", "HOH", 1, (0, 0, 0), "O", record="HETATM")])
    with pytest.raises(DataError, match="no atoms left in the first model after skipping waters and hydrogens"):
        read_atoms(water)


# --------------------------------------------------------------------------------- real models


@pytest.mark.parametrize("name", ["3nbkA", "1osm", "4E43"])
def test_real_models_simulate_with_plausible_mass(shared_data, name):
    atoms = read_atoms(shared_data / "models" / f"{name}.pdb")
    assert 500 < len(atoms) < 5000 and set(atoms.elements) <= {"C", "N", "O", "S", "SE"}
    voxel = 2.0
    volume = simulate_density(atoms, 48, voxel, resolution=5.0)
    mass = float(volume.data.double().sum()) * voxel**3
    expected = sum(occ * f0(e) for e, occ in zip(atoms.elements, atoms.occupancies))
    assert mass == pytest.approx(expected, rel=0.01)
    # a protein's heavy atoms scatter ~2.2-2.5 A each (C 2.51, N 2.21, O 1.98, S 5.17)
    assert 2.0 < mass / atoms.occupancies.sum() < 2.7
    np.testing.assert_allclose(centroid_voxel(volume.data), [24, 24, 24], atol=0.1)
    assert float(volume.data.max()) > 0 and torch.isfinite(volume.data).all()


# ------------------------------------------------------------------------------------------ CLI


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


@pytest.fixture(scope="module")
def cli():
    return build_cli()


def test_cli_writes_one_map_per_model_and_refuses_overwrite(cli, tmp_path):
    one = small_pdb(tmp_path / "one.pdb")
    plain = small_pdb(tmp_path / "plain.pdb", shift=(1.0, 2.0, 3.0))
    two = tmp_path / "two.pdb.gz"  # gzipped models are read, and named without .pdb.gz
    two.write_bytes(gzip.compress(plain.read_bytes()))
    out = tmp_path / "maps"
    args = ["simulate", str(one), str(two), "--out-dir", str(out), "--voxel-size", "1.5", "--box", "16", "--bfactor", "40"]
    result = runner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["one.mrc", "two.mrc"]
    assert result.stdout.count("wrote ") == 2
    with mrcfile.open(out / "one.mrc") as mrc:
        assert mrc.data.shape == (16, 16, 16)
        assert float(mrc.voxel_size.x) == pytest.approx(1.5)
    stamp = (out / "one.mrc").stat().st_mtime_ns

    again = runner().invoke(cli, args)
    assert again.exit_code == 1
    assert "exists" in again.stderr and "--overwrite" in again.stderr
    assert "Traceback" not in again.output and len(again.stderr.strip().splitlines()) == 1
    assert (out / "one.mrc").stat().st_mtime_ns == stamp

    forced = runner().invoke(cli, [*args, "--overwrite", "--resolution", "4", "--form", "gaussian"])
    assert forced.exit_code == 0, forced.output


def test_cli_bad_paths_and_boxes_give_one_line_errors(cli, tmp_path):
    out = tmp_path / "maps"
    missing = runner().invoke(cli, ["simulate", str(tmp_path / "missing.pdb"), "--out-dir", str(out)])
    assert missing.exit_code == 1
    assert missing.stderr.strip() == f"Error: {tmp_path / 'missing.pdb'}: file not found"
    assert missing.exception is None or isinstance(missing.exception, SystemExit)

    far = small_pdb(tmp_path / "far.pdb")
    tiny = runner().invoke(cli, ["simulate", str(far), "--out-dir", str(out), "--box", "2", "--voxel-size", "1"])
    assert tiny.exit_code == 1 and "--allow-clip" in tiny.stderr and "Traceback" not in tiny.output
    assert len(tiny.stderr.strip().splitlines()) == 1 and not (out / "far.mrc").exists()
    clipped = runner().invoke(cli, ["simulate", str(far), "--out-dir", str(out), "--box", "2", "--voxel-size", "1", "--allow-clip"])
    assert clipped.exit_code == 0, clipped.output

    nyquist = runner().invoke(cli, ["simulate", str(far), "--out-dir", str(out), "--resolution", "2", "--overwrite"])
    assert nyquist.exit_code == 2 and "Nyquist" in nyquist.stderr
