"""Atomic models: the `Atoms` value object, reading PDB/mmCIF with gemmi, electron form factors.

Conventions: positions are Cartesian (x, y, z) in Angstrom as written in PDB/mmCIF files (not
the (z, y, x) order of volumes); B-factors are isotropic, in Angstrom^2, as in the files'
B_iso column (B = 8 pi^2 <u^2>); occupancies are fractions in [0, 1].

Electron form factors are 5-Gaussian fits f(s) = sum_i a_i exp(-b_i s^2 / 4), s = 1/d = 2
sin(theta)/lambda in 1/Angstrom (the tables write the same sum as exp(-b_i (sin(theta)/lambda)^2)),
with a_i in Angstrom and b_i in Angstrom^2: International Tables for Crystallography Vol. C,
Table 4.3.2.2 (Peng, Ren, Dudarev & Whelan 1996, Acta Cryst. A52, 257), "elastic atomic
scattering factors of electrons for neutral atoms and s up to 2.0 A^-1". f(0) = sum_i a_i is an
atom's integrated scattering (Angstrom). The elements of biological models are tabulated here;
any other element comes from gemmi's copy of the same table; an element neither knows (gemmi's
"X") falls back to carbon.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import numpy as np

from .errors import DataError

__all__ = [
    "Atoms",
    "read_atoms",
    "FORM_FACTORS",
    "FALLBACK_ELEMENT",
    "form_factor",
    "gaussian_form_factor",
    "known_element",
]

# International Tables Vol. C, Table 4.3.2.2: element -> ((a1..a5) Angstrom, (b1..b5) Angstrom^2).
FORM_FACTORS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "H": ((0.0349, 0.1201, 0.1970, 0.0573, 0.1195), (0.5347, 3.5867, 12.3471, 18.9525, 38.6269)),
    "C": ((0.0893, 0.2563, 0.7570, 1.0487, 0.3575), (0.2465, 1.7100, 6.4094, 18.6113, 50.2523)),
    "N": ((0.1022, 0.3219, 0.7982, 0.8197, 0.1715), (0.2451, 1.7481, 6.1925, 17.3894, 48.1431)),
    "O": ((0.0974, 0.2921, 0.6910, 0.6990, 0.2039), (0.2067, 1.3815, 4.6943, 12.7105, 32.4726)),
    "P": ((0.2548, 0.6106, 1.4541, 2.3204, 0.8477), (0.2908, 1.8740, 8.5176, 24.3434, 63.2996)),
    "S": ((0.2497, 0.5628, 1.3899, 2.1865, 0.7715), (0.2681, 1.6711, 7.0267, 19.5377, 50.3888)),
    "SE": ((0.4477, 1.1678, 1.5843, 2.8087, 1.1956), (0.2405, 1.5442, 6.3231, 19.4610, 52.0233)),
    "NA": ((0.2142, 0.6853, 0.7692, 1.6589, 1.4482), (0.3334, 2.3446, 10.0830, 48.3037, 138.2700)),
    "MG": ((0.2314, 0.6866, 0.9677, 2.1882, 1.1339), (0.3278, 2.2720, 10.9241, 39.2898, 101.9748)),
    "CL": ((0.2443, 0.5397, 1.3919, 2.0197, 0.6621), (0.2468, 1.5242, 6.1537, 16.6687, 42.3086)),
    "K": ((0.4115, 1.4031, 2.2784, 2.6742, 2.2162), (0.3703, 3.3874, 13.1029, 68.9592, 194.4329)),
    "CA": ((0.4054, 1.3880, 2.1602, 3.7532, 2.2063), (0.3499, 3.0991, 11.9608, 53.9353, 142.3892)),
    "MN": ((0.3796, 1.2094, 1.7815, 2.5420, 1.5937), (0.2699, 2.0455, 7.4726, 31.0604, 91.5622)),
    "FE": ((0.3946, 1.2725, 1.7031, 2.3140, 1.4795), (0.2717, 2.0443, 7.6007, 29.9714, 86.2265)),
    "ZN": ((0.4288, 1.2646, 1.4472, 1.8294, 1.0934), (0.2593, 1.7998, 6.7500, 25.5860, 73.5284)),
}

FALLBACK_ELEMENT = "C"
"""Element whose form factor stands in for an element no table knows."""


def _gemmi():
    try:
        import gemmi
    except ImportError:  # a declared dependency; say how to get it rather than fail obscurely
        raise DataError("reading atomic models needs gemmi: pip install gemmi") from None
    return gemmi


def _normalise_element(element: str) -> str:
    return str(element).strip().upper()


def _gemmi_coefficients(element: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        gemmi = _gemmi()
    except DataError:
        return None
    found = gemmi.Element(element)
    if found.atomic_number == 0 or found.c4322 is None:  # "X": unknown to gemmi
        return None
    return np.array(found.c4322.a, dtype=np.float64), np.array(found.c4322.b, dtype=np.float64)


def known_element(element: str) -> bool:
    """True when `element` has a form factor of its own (False: the carbon fallback is used)."""
    element = _normalise_element(element)
    return element in FORM_FACTORS or _gemmi_coefficients(element) is not None


def form_factor(element: str) -> tuple[np.ndarray, np.ndarray]:
    """The 5-Gaussian electron form factor (a in Angstrom, b in Angstrom^2) of `element` (case-insensitive)."""
    element = _normalise_element(element)
    if element in FORM_FACTORS:
        a, b = FORM_FACTORS[element]
        return np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    found = _gemmi_coefficients(element)
    return found if found is not None else form_factor(FALLBACK_ELEMENT)


def gaussian_form_factor(element: str) -> tuple[np.ndarray, np.ndarray]:
    """A one-Gaussian form factor with the 5-Gaussian's f(0) and its low-angle (Guinier) fall-off.

    a = sum a_i keeps the integrated scattering; b = sum a_i b_i / sum a_i keeps the second
    moment of the real-space density (its radius of gyration), i.e. f(s) to order s^2.
    """
    a, b = form_factor(element)
    return np.array([a.sum()]), np.array([(a * b).sum() / a.sum()])


def _float_array(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _check_atoms(instance: "Atoms", attribute, value) -> None:
    n = instance.positions.shape[0] if instance.positions.ndim == 2 else -1
    if instance.positions.ndim != 2 or instance.positions.shape[1] != 3:
        raise DataError(f"atom positions must be shaped (N, 3) as (x, y, z); got {instance.positions.shape}")
    for name in ("elements", "b_factors", "occupancies"):
        if getattr(instance, name).shape != (n,):
            raise DataError(f"atoms: {name} has shape {getattr(instance, name).shape}; expected ({n},)")
    for name in ("positions", "b_factors", "occupancies"):
        if not np.isfinite(getattr(instance, name)).all():
            raise DataError(f"atoms: {name} contains NaN or infinite values")


@attrs.frozen(eq=False)
class Atoms:
    """N atoms: `positions` (N, 3) (x, y, z) in Angstrom, `elements` (N,) upper-case symbols,
    `b_factors` (N,) isotropic B in Angstrom^2, `occupancies` (N,); `source` names their file."""

    positions: np.ndarray = attrs.field(converter=_float_array)
    elements: np.ndarray = attrs.field(converter=lambda e: np.array([_normalise_element(x) for x in e], dtype=object))
    b_factors: np.ndarray = attrs.field(converter=_float_array)
    occupancies: np.ndarray = attrs.field(converter=_float_array, validator=_check_atoms)
    source: str = attrs.field(default="atoms", converter=str)

    @classmethod
    def create(cls, positions, elements, b_factors=0.0, occupancies=1.0, source: str = "atoms") -> "Atoms":
        """Atoms with scalar B-factors and occupancies broadcast to every atom."""
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        n = positions.shape[0]
        if isinstance(elements, str):
            elements = [elements] * n
        return cls(
            positions,
            elements,
            np.broadcast_to(np.asarray(b_factors, dtype=np.float64), (n,)).copy(),
            np.broadcast_to(np.asarray(occupancies, dtype=np.float64), (n,)).copy(),
            source,
        )

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def unknown_elements(self) -> list[str]:
        """Element symbols without a form factor of their own (simulated as carbon)."""
        return sorted(e for e in set(self.elements) if not known_element(e))


# Molecular-dynamics names gemmi does not know. Water models (CHARMM writes TIP3 in a 4-column
# residue name, read as TIP); ions of the CHARMM force field, one atom named as its residue, in
# files without an element column (the name alone reads as POT -> P, SOD -> S, CLA -> C).
MD_WATERS = frozenset({"TIP", "TIP3", "TIP4", "TIP5", "TP3", "T3P", "T4P", "T5P", "SPC", "SOL"})
MD_IONS = {"POT": "K", "SOD": "Na", "CLA": "Cl", "CAL": "Ca", "CES": "Cs", "LIT": "Li", "RUB": "Rb", "BAR": "Ba", "ZN2": "Zn", "CD2": "Cd"}


def _element(residue, atom) -> str:
    """The atom's element; a CHARMM ion (one atom named as its residue, e.g. POT) by its residue."""
    if len(residue) == 1 and atom.name == residue.name and residue.name in MD_IONS:
        return MD_IONS[residue.name]
    return atom.element.name


def read_atoms(path: str | os.PathLike, keep_hydrogens: bool = False, keep_waters: bool = False) -> Atoms:
    """The atoms of the first model of a PDB/mmCIF (optionally gzipped) file.

    Waters (also molecular-dynamics water models: TIP3, SPC, SOL, ...) and hydrogens (H, D) are
    skipped unless asked for; CHARMM ions (POT, SOD, CLA, ...) get their element from the residue
    name; every alternate conformation is kept with its occupancy, so the conformers of one atom
    add up to one atom's scattering. A PDB file's first model ends at its first ENDMDL or END.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not an atomic model file")
    gemmi = _gemmi()
    try:
        structure = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError / ValueError with multi-line messages
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: not a readable PDB/mmCIF model ({reason})") from None
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise DataError(f"{path}: no atoms found (not a PDB/mmCIF model, or no ATOM/HETATM records)")
    positions, elements, b_factors, occupancies = [], [], [], []
    for chain in structure[0]:
        for residue in chain:
            if (residue.is_water() or residue.name in MD_WATERS) and not keep_waters:
                continue
            for atom in residue:
                if atom.is_hydrogen() and not keep_hydrogens:
                    continue
                p = atom.pos
                positions.append((p.x, p.y, p.z))
                elements.append(_element(residue, atom))
                b_factors.append(atom.b_iso)
                occupancies.append(atom.occ)
    if not positions:
        skipped = " and ".join(w for w, keep in (("waters", keep_waters), ("hydrogens", keep_hydrogens)) if not keep)
        raise DataError(f"{path}: no atoms left in the first model after skipping {skipped}")
    atoms = Atoms(np.array(positions), elements, b_factors, occupancies, source=str(path))
    if (atoms.b_factors < 0).any():
        raise DataError(f"{path}: {int((atoms.b_factors < 0).sum())} atoms have negative B-factors")
    if (atoms.occupancies < 0).any():
        raise DataError(f"{path}: {int((atoms.occupancies < 0).sum())} atoms have negative occupancies")
    return atoms

