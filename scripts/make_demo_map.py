"""Make the bundled demo map `framework/data/demo_3nbk.mrc` from PDB 3NBK chain A.

Density = sum over non-hydrogen atoms of isotropic 3D Gaussians, weight = atomic number,
width from a B-factor of 60 A^2 (sigma = sqrt(B / (8 pi^2)) = 0.87 A), sampled on a 64^3 grid
at 1.5 A/voxel with the atoms' centre of mass at the box centre. Stored as float16 MRC (mode 12)
to keep the package small. Usage: python scripts/make_demo_map.py ../shared/data/models/3nbkA.pdb
"""

import math
import sys
from pathlib import Path

import mrcfile
import numpy as np

Z = {"C": 6, "N": 7, "O": 8, "S": 16, "P": 15, "SE": 34}
BOX, VOXEL, B_FACTOR = 64, 1.5, 60.0


def atoms(pdb: Path) -> tuple[np.ndarray, np.ndarray]:
    xyz, weight = [], []
    for line in pdb.read_text().splitlines():
        if line.startswith("ENDMDL"):
            break  # several models (NMR): the first only
        if not line.startswith(("ATOM", "HETATM")) or line[17:20] == "HOH":
            continue
        element = (line[76:78].strip() or line[12:14].strip()).upper()
        if element in ("H", "D") or element not in Z:
            continue
        xyz.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
        weight.append(Z[element])
    return np.array(xyz), np.array(weight, dtype=float)


def density(xyz: np.ndarray, weight: np.ndarray) -> np.ndarray:
    sigma = math.sqrt(B_FACTOR / (8 * math.pi**2))
    centred = xyz - (xyz * weight[:, None]).sum(0) / weight.sum()
    grid = np.zeros((BOX, BOX, BOX))
    pos = centred[:, ::-1] / VOXEL + BOX // 2  # (z, y, x) in voxels
    reach = int(math.ceil(4 * sigma / VOXEL))
    offsets = np.arange(-reach, reach + 1)
    for p, w in zip(pos, weight):
        base = np.round(p).astype(int)
        idx = [base[a] + offsets for a in range(3)]
        g = [np.exp(-((idx[a] - p[a]) * VOXEL) ** 2 / (2 * sigma**2)) for a in range(3)]
        block = w * g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
        grid[np.ix_(idx[0] % BOX, idx[1] % BOX, idx[2] % BOX)] += block
    return grid / (2 * math.pi * sigma**2) ** 1.5 * VOXEL**3


def main(pdb: str) -> None:
    xyz, weight = atoms(Path(pdb))
    grid = density(xyz, weight)
    grid /= grid.max()
    out = Path(__file__).resolve().parents[1] / "framework" / "data" / "demo_3nbk.mrc"
    with mrcfile.new(out, overwrite=True) as mrc:
        mrc.set_data(grid.astype(np.float16))
        mrc.voxel_size = VOXEL
        mrc.update_header_stats()
    print(f"{out}: {len(xyz)} atoms, {BOX}^3 at {VOXEL} A")


if __name__ == "__main__":
    main(sys.argv[1])
