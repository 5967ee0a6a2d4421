"""Time `simulate_density` for random atom sets: python bench/simulate_speed.py (prints a table)."""

import time

import numpy as np

from cryoinverse.atoms import Atoms
from cryoinverse.simulate import simulate_density

print(f"{'atoms':>6s} {'box':>4s} {'oversample':>10s} {'seconds':>8s}")
rng = np.random.default_rng(3)
for n_atoms, box in ((2000, 64), (5000, 128)):
    atoms = Atoms.create(rng.uniform(-25, 25, size=(n_atoms, 3)), rng.choice(["C", "N", "O"], n_atoms), rng.uniform(10, 80, n_atoms))
    for oversample in (1, 2):
        t0 = time.perf_counter()
        simulate_density(atoms, box, 1.0, oversample=oversample)
        print(f"{n_atoms:6d} {box:4d} {oversample:10d} {time.perf_counter() - t0:8.2f}")
