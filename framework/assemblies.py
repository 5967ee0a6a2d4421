"""Assemblies of protein chains for tomogram-scale maps: helical filaments, complexes, crowded boxes.

At cryo-ET voxel sizes (8-12 A) one chain of 100-200 residues is 4-5 voxels across; what a
tomogram shows is assemblies of many chains: complexes 100-300 A across (ribosomes, proteasomes,
chaperonins, cages) packed at cytoplasmic density among free proteins, and filaments
(microtubules, actin). This module places copies of chains into such scenes; `Assembly.atoms`
gives the atoms that `cryoinverse.simulate.simulate_density` turns into density.

Conventions. Positions are (x, y, z) in A, as in `cryoinverse.atoms`; rotations act on column
vectors, x' = R x. A *copy* of chain k is that chain's atoms centred on their mean position,
rotated by R and moved to t:

    x' = R (x - mean_k) + t,

so t is the copy's centre (the mean position of its atoms). An `Assembly` lists copies
(chain index, R, t) and, optionally, *blockers*: spheres without atoms that keep other copies out
(a microtubule's lumen).

Packing. Copies are kept apart as spheres: chain k's radius is sqrt(5/3) times its radius of
gyration (the radius of a uniform ball with that radius of gyration), and two copies clash when
their centres are closer than `contact` times the sum of their radii. Chains are not balls, so
contacts below 1 let neighbours interlock as real subunits do; complexes are built with
`INNER_CONTACT` and separate objects kept apart with `OUTER_CONTACT`. A chain's protein volume
is `PROTEIN_VOLUME_PER_ATOM` per (non-hydrogen) atom; a box's *fill* is the protein volume of the
copies centred inside it over the box volume (cytoplasm: 0.2-0.3, Zimmerman & Trach 1991,
J. Mol. Biol. 222, 599: 300-400 mg/ml of macromolecules at 0.73 cm^3/g).

Helical lattices (`helical_lattice`): subunit j of strand p (p = 0 .. strands - 1) sits at
azimuth phi = phase + 360 p / strands + j twist (degrees, right-handed about +z), height
z = j rise + p stagger and distance `radius` from the axis (z), rotated by Rz(phi) from the base
orientation of its chain: every copy is the image of subunit (0, 0) under the lattice's
symmetry. A microtubule is `strands` = 11-16 protofilaments, rise = the 40 A monomer rise, twist
near 0 (a supertwist), stagger = starts x rise / strands (3 starts for 11-14 protofilaments, 4 for
15-16; Chretien & Wade 1991, Biol. Cell 71, 161), with two chains alternating along each
protofilament (alpha/beta: dimers repeat every 80 A; an odd number of starts leaves a seam).
Actin is one strand with rise 27.5 A and twist -166.7 degrees: the left-handed one-start
genetic helix whose every second subunit forms the two right-handed long-pitch strands.
"""

from __future__ import annotations

import itertools
import math

import attrs
import numpy as np
import torch

from .atoms import Atoms
from .rotations import quaternion_to_matrix

__all__ = [
    "PROTEIN_VOLUME_PER_ATOM",
    "INNER_CONTACT",
    "OUTER_CONTACT",
    "Chains",
    "Assembly",
    "rotation_about",
    "random_rotations",
    "helical_lattice",
    "point_group",
    "ring_complex",
    "cage_complex",
    "cluster_complex",
    "random_complex",
    "Box",
    "crowd",
]

PROTEIN_VOLUME_PER_ATOM = 17.0
"""A^3 of protein per non-hydrogen atom: 1.21 A^3/Da (0.73 cm^3/g) times ~14 Da (an atom with its hydrogens)."""
INNER_CONTACT = 0.8
"""Contact factor between the subunits of one complex (neighbours interlock)."""
OUTER_CONTACT = 0.9
"""Contact factor between separate objects (they touch, barely interpenetrating)."""


@attrs.frozen(eq=False)
class Chains:
    """The chains copies are drawn from: their atoms, mean positions (A), radii (A) and volumes (A^3)."""

    atoms: tuple[Atoms, ...] = attrs.field(converter=tuple)
    means: np.ndarray = attrs.field(init=False)
    radii: np.ndarray = attrs.field(init=False)
    volumes: np.ndarray = attrs.field(init=False)

    def __attrs_post_init__(self):
        if not self.atoms:
            raise ValueError("Chains needs at least one chain")
        means = np.stack([a.positions.mean(axis=0) for a in self.atoms])
        rg = np.array([math.sqrt(((a.positions - m) ** 2).sum(axis=1).mean()) for a, m in zip(self.atoms, means)])
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "radii", math.sqrt(5 / 3) * rg)
        object.__setattr__(self, "volumes", PROTEIN_VOLUME_PER_ATOM * np.array([len(a) for a in self.atoms], dtype=np.float64))

    def __len__(self) -> int:
        return len(self.atoms)


def _blank(n: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, 3)), np.zeros(n)


@attrs.frozen(eq=False)
class Assembly:
    """Copies of chains: `chains` (m,) indices, `rotations` (m, 3, 3), `centres` (m, 3) in A;
    `blocker_centres` (b, 3) and `blocker_radii` (b,) in A: spheres that only keep copies out."""

    chains: np.ndarray = attrs.field(converter=lambda c: np.asarray(c, dtype=np.int64).reshape(-1))
    rotations: np.ndarray = attrs.field(converter=lambda r: np.asarray(r, dtype=np.float64).reshape(-1, 3, 3))
    centres: np.ndarray = attrs.field(converter=lambda t: np.asarray(t, dtype=np.float64).reshape(-1, 3))
    blocker_centres: np.ndarray = attrs.field(factory=lambda: _blank()[0], converter=lambda t: np.asarray(t, dtype=np.float64).reshape(-1, 3))
    blocker_radii: np.ndarray = attrs.field(factory=lambda: _blank()[1], converter=lambda r: np.asarray(r, dtype=np.float64).reshape(-1))

    def __attrs_post_init__(self):
        m = len(self.chains)
        if self.rotations.shape[0] != m or self.centres.shape[0] != m:
            raise ValueError(f"an assembly needs one rotation and one centre per copy; got {m} chains, "
                             f"{self.rotations.shape[0]} rotations, {self.centres.shape[0]} centres")
        if self.blocker_centres.shape[0] != self.blocker_radii.shape[0]:
            raise ValueError("an assembly needs one radius per blocker")

    def __len__(self) -> int:
        return len(self.chains)

    @classmethod
    def empty(cls) -> "Assembly":
        """An assembly with no copies."""
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, 3, 3)), np.zeros((0, 3)))

    @classmethod
    def concat(cls, parts) -> "Assembly":
        """All copies and blockers of `parts`, in order."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.chains for p in parts]),
            np.concatenate([p.rotations for p in parts]),
            np.concatenate([p.centres for p in parts]),
            np.concatenate([p.blocker_centres for p in parts]),
            np.concatenate([p.blocker_radii for p in parts]),
        )

    def moved(self, rotation, shift) -> "Assembly":
        """The assembly rotated by `rotation` (3, 3) about the origin, then shifted by `shift` (3,) A."""
        rotation = np.asarray(rotation, dtype=np.float64)
        shift = np.asarray(shift, dtype=np.float64)
        return Assembly(
            self.chains,
            rotation @ self.rotations,
            self.centres @ rotation.T + shift,
            self.blocker_centres @ rotation.T + shift,
            self.blocker_radii,
        )

    def centred(self) -> "Assembly":
        """The assembly shifted so that the mean of its copies' centres is the origin."""
        return self.moved(np.eye(3), -self.centres.mean(axis=0)) if len(self) else self

    def select(self, keep: np.ndarray, keep_blockers: np.ndarray | None = None) -> "Assembly":
        """The copies where `keep` (m,) is true, and the blockers where `keep_blockers` is (all by default)."""
        kb = slice(None) if keep_blockers is None else keep_blockers
        return Assembly(self.chains[keep], self.rotations[keep], self.centres[keep],
                        self.blocker_centres[kb], self.blocker_radii[kb])

    def radii(self, chains: Chains) -> np.ndarray:
        """Each copy's clash radius (A)."""
        return chains.radii[self.chains]

    def atoms(self, chains: Chains, source: str = "assembly") -> Atoms:
        """The atoms of every copy, x' = R (x - mean) + t, copies in order."""
        if len(self) == 0:
            raise ValueError("an assembly without copies has no atoms")
        positions = []
        for k, rotation, centre in zip(self.chains, self.rotations, self.centres):
            positions.append((chains.atoms[k].positions - chains.means[k]) @ rotation.T + centre)
        picked = [chains.atoms[k] for k in self.chains]
        return Atoms(
            np.concatenate(positions),
            np.concatenate([a.elements for a in picked]),
            np.concatenate([a.b_factors for a in picked]),
            np.concatenate([a.occupancies for a in picked]),
            source=source,
        )


def rotation_about(axis, degrees: float) -> np.ndarray:
    """The right-handed rotation (3, 3) by `degrees` about `axis` (x, y, z; any length), float64."""
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    a = math.radians(degrees)
    cross = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + math.sin(a) * cross + (1 - math.cos(a)) * cross @ cross


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """n rotations (n, 3, 3) uniform on SO(3), from normalised 4D Gaussian quaternions drawn by `rng`."""
    return quaternion_to_matrix(torch.from_numpy(rng.normal(size=(n, 4)))).numpy()


def _rz(degrees: np.ndarray) -> np.ndarray:
    a = np.radians(np.asarray(degrees, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    out = np.zeros(a.shape + (3, 3))
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1], out[..., 2, 2] = c, -s, s, c, 1.0
    return out


def helical_lattice(
    radius: float,
    rise: float,
    twist: float,
    length: float,
    strands: int = 1,
    stagger: float = 0.0,
    chain_cycle=(0,),
    base_rotations=None,
    phase: float = 0.0,
) -> Assembly:
    """Subunits of a helical lattice about the z axis with heights in [-length / 2, length / 2] (A).

    Subunit j of strand p: azimuth phase + 360 p / strands + j twist (degrees), height
    j rise + p stagger, `radius` from the axis; chain chain_cycle[j mod len(chain_cycle)] in
    orientation Rz(azimuth) base_rotations[j mod len(chain_cycle)] (identity by default).
    The module docstring gives microtubule and actin parameters.
    """
    if not (radius >= 0 and rise > 0 and length >= 0 and strands >= 1):
        raise ValueError(f"a helical lattice needs radius >= 0, rise > 0, length >= 0 and strands >= 1; "
                         f"got radius {radius}, rise {rise}, length {length}, strands {strands}")
    cycle = np.asarray(chain_cycle, dtype=np.int64).reshape(-1)
    base = np.broadcast_to(np.eye(3), (len(cycle), 3, 3)) if base_rotations is None else np.asarray(base_rotations, dtype=np.float64)
    if base.shape != (len(cycle), 3, 3):
        raise ValueError(f"base_rotations must be ({len(cycle)}, 3, 3), one per chain of the cycle; got {base.shape}")
    ps, js = [], []
    for p in range(strands):
        offset = p * stagger
        first = math.ceil((-length / 2 - offset) / rise)
        last = math.floor((length / 2 - offset) / rise)
        js.append(np.arange(first, last + 1))
        ps.append(np.full(max(0, last - first + 1), p))
    p, j = np.concatenate(ps), np.concatenate(js)
    phi = phase + 360.0 * p / strands + j * twist
    rz = _rz(phi)
    slot = j % len(cycle)
    centres = np.stack([radius * np.cos(np.radians(phi)), radius * np.sin(np.radians(phi)), j * rise + p * stagger], axis=1)
    return Assembly(cycle[slot], rz @ base[slot], centres)


def _closure(generators: list[np.ndarray]) -> np.ndarray:
    """Every product of `generators` (a finite rotation group), identity first."""
    group = [np.eye(3)]
    keys = {tuple(np.round(np.eye(3), 6).ravel())}
    frontier = list(group)
    while frontier:
        new = []
        for g, h in itertools.product(frontier, generators):
            gh = g @ h
            key = tuple(np.round(gh, 6).ravel() + 0.0)
            if key not in keys:
                keys.add(key)
                new.append(gh)
        group.extend(new)
        frontier = new
    return np.stack(group)


def point_group(name: str) -> np.ndarray:
    """Rotations (n, 3, 3) of a point group: "C<n>" (n-fold about z), "D<n>" (plus 2-fold about x),
    "T" (12), "O" (24) or "I" (60; 5-fold axes through (0, +-1, +-golden ratio) and cyclic permutations)."""
    if name in ("T", "O", "I"):
        three = rotation_about((1, 1, 1), 120)
        second = {"T": rotation_about((0, 0, 1), 180), "O": rotation_about((0, 0, 1), 90),
                  "I": rotation_about((0, 1, (1 + math.sqrt(5)) / 2), 72)}[name]
        return _closure([three, second])
    if name[:1] in ("C", "D") and name[1:].isdigit() and int(name[1:]) >= 1:
        n = int(name[1:])
        ring = [rotation_about((0, 0, 1), 360 * i / n) for i in range(n)]
        flips = [np.eye(3)] if name[0] == "C" else [np.eye(3), rotation_about((1, 0, 0), 180)]
        return np.stack([f @ r for f in flips for r in ring])
    raise ValueError(f"unknown point group {name!r}: use C<n>, D<n>, T, O or I")


def ring_complex(chains: Chains, ring_chains, n: int, rng: np.random.Generator, contact: float = INNER_CONTACT) -> Assembly:
    """A stack of rings of `n` copies each (proteasome- or chaperonin-like), centred at the origin.

    Ring i holds chain ring_chains[i], in one random orientation turned about z by 360/n per copy;
    rings of the lower half are flipped (2-fold about x), so a palindromic stack has D_n symmetry.
    Neighbours in a ring and between rings touch at `contact` times the sum of radii.
    """
    ring_chains = np.asarray(ring_chains, dtype=np.int64).reshape(-1)
    r_max = chains.radii[ring_chains].max()
    ring_radius = contact * r_max / math.sin(math.pi / n) if n > 1 else 0.0
    spacing = contact * 2 * r_max
    m = len(ring_chains)
    upper = random_rotations((m + 1) // 2, rng)
    flip = rotation_about((1, 0, 0), 180)
    phi = 360.0 * np.arange(n) / n
    ring = np.stack([ring_radius * np.cos(np.radians(phi)), ring_radius * np.sin(np.radians(phi)), np.zeros(n)], axis=1)
    parts = []
    for i, k in enumerate(ring_chains):
        # the lower half mirrors the upper half by a 2-fold about x (which maps z to -z)
        base = upper[i] if i < len(upper) else flip @ upper[m - 1 - i]
        z = (i - (m - 1) / 2) * spacing
        parts.append(Assembly(np.full(n, k), _rz(phi) @ base, ring + [0.0, 0.0, z]))
    return Assembly.concat(parts)


def cage_complex(chains: Chains, chain: int, group: str, rng: np.random.Generator, contact: float = INNER_CONTACT, tries: int = 16) -> Assembly:
    """A closed shell (ferritin-, encapsulin- or capsid-like): one copy of `chain` per rotation of `group`.

    The copies are g v and g R0 for a random orientation R0 and a random direction v, chosen among
    `tries` draws to spread the copies evenly; the shell radius makes the closest copies touch.
    """
    rotations = point_group(group)
    directions = rng.normal(size=(tries, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    images = np.einsum("gij,tj->tgi", rotations, directions)  # (tries, group, 3)
    gaps = np.linalg.norm(images[:, 1:] - images[:, :1], axis=2).min(axis=1)  # closest image of copy 0
    good = np.flatnonzero(gaps >= 0.75 * gaps.max())
    pick = int(rng.choice(good))
    radius = contact * 2 * chains.radii[chain] / gaps[pick]
    base = random_rotations(1, rng)[0]
    return Assembly(np.full(len(rotations), chain), rotations @ base, radius * images[pick])


def cluster_complex(
    chains: Chains, members, rng: np.random.Generator, contact: float = INNER_CONTACT, directions: int = 8
) -> Assembly:
    """A compact irregular cluster (ribosome-like), centred at the origin.

    Copies of `members` (chain indices) are added one by one, each randomly oriented: of
    `directions` random rays towards the cluster's centre, the copy comes in along the one on which
    it stops closest to the centre, at first touch with a copy already there.
    """
    members = np.asarray(members, dtype=np.int64).reshape(-1)
    radii = chains.radii[members]
    centres = np.zeros((len(members), 3))
    for i in range(1, len(members)):
        u = rng.normal(size=(directions, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        centre = centres[:i].mean(axis=0)
        # coming in along -u, copy i first touches copy k at distance along + sqrt(reach^2 - across^2)
        d = centres[:i] - centre
        reach = contact * (radii[:i] + radii[i])
        along = u @ d.T  # (directions, i)
        across2 = (d**2).sum(axis=1) - along**2
        touch = np.where(across2 < reach**2, along + np.sqrt(np.maximum(reach**2 - across2, 0)), -np.inf).max(axis=1)
        touch = np.where(np.isfinite(touch), touch, (along + reach).max(axis=1))  # a ray that misses every copy
        best = int(np.argmin(touch))
        centres[i] = centre + touch[best] * u[best]
    return Assembly(members, random_rotations(len(members), rng), centres).centred()


def random_complex(chains: Chains, rng: np.random.Generator, max_chains: int = 60) -> tuple[str, Assembly]:
    """A random complex and its kind: "ring" (1-4 rings of 5-9), "cage" (T, O or I shell) or
    "cluster" (3 to `max_chains` chains, log-uniform; a few distinct chains, repeated)."""
    kind = str(rng.choice(["ring", "cage", "cluster"], p=[0.3, 0.2, 0.5]))
    n_chains = len(chains)
    if kind == "ring":
        n, rings = int(rng.integers(5, 10)), int(rng.integers(1, 5))
        upper = rng.integers(0, n_chains, size=(rings + 1) // 2)
        ring_chains = np.concatenate([upper, upper[: rings // 2][::-1]])  # palindromic: alpha beta beta alpha
        return kind, ring_complex(chains, ring_chains, n, rng)
    if kind == "cage":
        groups = [g for g, size in (("T", 12), ("O", 24), ("I", 60)) if size <= max(max_chains, 12)]
        return kind, cage_complex(chains, int(rng.integers(n_chains)), str(rng.choice(groups)), rng).centred()
    k = int(round(math.exp(rng.uniform(math.log(3), math.log(max(3, max_chains))))))
    distinct = rng.integers(0, n_chains, size=int(rng.integers(1, min(k, 8) + 1)))
    return kind, cluster_complex(chains, rng.choice(distinct, size=k), rng)


class Box:
    """A cubic box being filled: copies are added only where they clash with nothing already there.

    The box spans [low, low + edge]^3 A. Copies centred more than `margin` A outside it are
    dropped when an assembly is added (their density could not reach the box).
    """

    def __init__(self, chains: Chains, edge: float, low: float = 0.0, margin: float = 40.0, contact: float = OUTER_CONTACT):
        self.chains, self.edge, self.low, self.margin, self.contact = chains, float(edge), float(low), float(margin), float(contact)
        self.parts: list[Assembly] = []
        self._centres, self._radii = _blank()

    def _near(self, points: np.ndarray, margin: float) -> np.ndarray:
        return ((points >= self.low - margin) & (points <= self.low + self.edge + margin)).all(axis=1)

    def clashes(self, assembly: Assembly) -> bool:
        """Whether any copy or blocker of `assembly` comes closer than `contact` x radii to one placed."""
        centres = np.concatenate([assembly.centres, assembly.blocker_centres])
        radii = np.concatenate([assembly.radii(self.chains), assembly.blocker_radii])
        if not len(self._radii) or not len(radii):
            return False
        # squared distances without an (m, n, 3) temporary: |a|^2 + |b|^2 - 2 a.b
        d2 = (centres**2).sum(1)[:, None] + (self._centres**2).sum(1)[None, :] - 2 * centres @ self._centres.T
        return bool((d2 < (self.contact * (radii[:, None] + self._radii[None, :])) ** 2).any())

    def add(self, assembly: Assembly) -> Assembly | None:
        """Add what of `assembly` lies near the box unless it clashes; returns what was added, or None."""
        near = assembly.select(self._near(assembly.centres, self.margin),
                               self._near(assembly.blocker_centres, self.margin + assembly.blocker_radii.max(initial=0)))
        if len(near) == 0 or self.clashes(near):
            return None
        self.parts.append(near)
        self._centres = np.concatenate([self._centres, near.centres, near.blocker_centres])
        self._radii = np.concatenate([self._radii, near.radii(self.chains), near.blocker_radii])
        return near

    def add_randomly(self, assembly: Assembly, rng: np.random.Generator, attempts: int = 20) -> Assembly | None:
        """Add `assembly` (centred at the origin) randomly rotated at a uniform point of the box;
        up to `attempts` draws until one does not clash; returns what was added, or None."""
        for _ in range(attempts):
            shift = self.low + rng.uniform(0, self.edge, size=3)
            placed = self.add(assembly.moved(random_rotations(1, rng)[0], shift))
            if placed is not None:
                return placed
        return None

    def volume_inside(self, assembly: Assembly) -> float:
        """Protein volume (A^3) of the copies of `assembly` centred inside the box."""
        return float(self.chains.volumes[assembly.chains[self._near(assembly.centres, 0.0)]].sum())

    @property
    def fill(self) -> float:
        """Protein volume of the copies centred inside the box over the box volume."""
        return sum(self.volume_inside(p) for p in self.parts) / self.edge**3

    def assembly(self) -> Assembly:
        """Everything placed so far, in order."""
        return Assembly.concat(self.parts)


def crowd(box: Box, rng: np.random.Generator, fill: float, complex_share: float, max_chains: int = 60, patience: int = 50) -> dict:
    """Fill `box` with random complexes, then free chains, up to `fill` (protein volume fraction).

    Complexes are added until they hold `complex_share` of the target (or `patience` complexes in
    a row find no room), then single chains until the box holds `fill` (or `patience` chains in a
    row find no room). Returns counts: {"ring": .., "cage": .., "cluster": .., "free": .., "chains": ..}.
    """
    counts = {"ring": 0, "cage": 0, "cluster": 0, "free": 0, "chains": 0}
    target = fill * box.edge**3
    have = sum(box.volume_inside(p) for p in box.parts)
    misses = 0
    while have < complex_share * target and misses < patience:
        kind, assembly = random_complex(box.chains, rng, max_chains)
        placed = box.add_randomly(assembly, rng, attempts=5)
        if placed is None:
            misses += 1
            continue
        misses = 0
        counts[kind] += 1
        counts["chains"] += len(placed)
        have += box.volume_inside(placed)
    misses = 0
    while have < target and misses < patience:
        k = int(rng.integers(len(box.chains)))
        placed = box.add_randomly(Assembly([k], np.eye(3)[None], np.zeros((1, 3))), rng, attempts=5)
        if placed is None:
            misses += 1
            continue
        misses = 0
        counts["free"] += 1
        counts["chains"] += len(placed)
        have += box.volume_inside(placed)
    return counts
