"""Assemblies of chains: helical lattices against their formula, point groups, symmetric complexes, packing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cryoinverse.assemblies import (
    Assembly,
    Box,
    Chains,
    cage_complex,
    cluster_complex,
    crowd,
    helical_lattice,
    point_group,
    random_rotations,
    ring_complex,
    rotation_about,
)
from cryoinverse.atoms import Atoms


def blob_chains(count: int = 3, seed: int = 0) -> Chains:
    """Small random chains: 150-250 carbon atoms in a Gaussian cloud of 3-4 A, off the origin."""
    rng = np.random.default_rng(seed)
    atoms = []
    for i in range(count):
        n = int(rng.integers(150, 251))
        positions = rng.normal(scale=rng.uniform(3, 4), size=(n, 3)) + rng.uniform(-50, 50, size=3)
        atoms.append(Atoms.create(positions, "C", source=f"blob{i}"))
    return Chains(atoms)


def copy_means(assembly: Assembly, chains: Chains) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each copy's mean atom position (float64) and its atoms, read back from `Assembly.atoms`."""
    atoms = assembly.atoms(chains).positions
    sizes = [len(chains.atoms[k]) for k in assembly.chains]
    copies = np.split(atoms, np.cumsum(sizes)[:-1])
    return np.array([c.mean(axis=0) for c in copies]), copies


def lattice_points(radius, rise, twist, length, strands, stagger, phase, cycle):
    """(p, j, chain, (x, y, z)) of every subunit, written out from the lattice formula in float64."""
    points = []
    for p in range(strands):
        for j in range(-1000, 1001):
            z = j * rise + p * stagger
            if abs(z) > length / 2:
                continue
            phi = math.radians(phase + 360.0 * p / strands + j * twist)
            points.append((p, j, cycle[j % len(cycle)], (radius * math.cos(phi), radius * math.sin(phi), z)))
    return points


@pytest.mark.parametrize(
    "radius, rise, twist, strands, stagger, cycle",
    [
        (37.0, 27.5, -166.7, 1, 0.0, (1,)),  # actin
        (103.5, 40.8, 0.0, 13, 3 * 40.8 / 13, (0, 2)),  # 13_3 microtubule, alpha/beta
        (121.0, 41.2, -0.3, 15, 4 * 41.2 / 15, (2, 1)),  # 15_4 with a supertwist
    ],
)
def test_helical_lattice_puts_every_copy_where_the_formula_says(radius, rise, twist, strands, stagger, cycle):
    chains = blob_chains()
    rng = np.random.default_rng(1)
    length, phase = 333.0, 17.0
    lattice = helical_lattice(radius, rise, twist, length, strands, stagger, cycle, random_rotations(len(cycle), rng), phase)
    turn, shift = random_rotations(1, rng)[0], np.array([120.0, -40.0, 75.0])
    means, copies = copy_means(lattice.moved(turn, shift), chains)
    local = (means - shift) @ turn  # back into the lattice frame: turn^T (x - shift)
    expected = lattice_points(radius, rise, twist, length, strands, stagger, phase, cycle)
    assert len(local) == len(expected) > strands
    np.testing.assert_allclose(np.hypot(local[:, 0], local[:, 1]), radius, rtol=0, atol=1e-9)
    where = {}
    for p, j, chain, xyz in expected:
        i = int(np.argmin(np.linalg.norm(local - xyz, axis=1)))
        np.testing.assert_allclose(local[i], xyz, rtol=0, atol=1e-9)
        assert lattice.chains[i] == chain
        where[p, j] = i
    assert len(set(where.values())) == len(expected)
    # the lattice's screw, rise and twist per subunit, maps each copy's atoms onto the next copy of its chain
    step = len(cycle)
    screw = rotation_about((0, 0, 1), step * twist)
    for (p, j), i in where.items():
        if (p, j + step) in where:
            here, there = (copies[i] - shift) @ turn, (copies[where[p, j + step]] - shift) @ turn
            np.testing.assert_allclose(here @ screw.T + [0, 0, step * rise], there, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name, order", [("T", 12), ("O", 24), ("I", 60), ("C7", 7), ("D5", 10)])
def test_point_groups_are_closed_groups_of_rotations(name, order):
    group = point_group(name)
    assert group.shape == (order, 3, 3)
    np.testing.assert_allclose(group @ group.transpose(0, 2, 1), np.broadcast_to(np.eye(3), group.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(group), 1.0, atol=1e-12)
    keys = {tuple(np.round(g, 6).ravel() + 0.0) for g in group}
    assert len(keys) == order
    assert all(tuple(np.round(g @ h, 6).ravel() + 0.0) in keys for g in group for h in group[:5])


def test_point_group_names_are_checked():
    with pytest.raises(ValueError, match="unknown point group 'X3': use C<n>, D<n>, T, O or I"):
        point_group("X3")


def assert_symmetric(assembly: Assembly, group: np.ndarray):
    """Each rotation of `group` maps every copy (centre and orientation) onto a copy of the same chain."""
    for g in group:
        for chain, rotation, centre in zip(assembly.chains, assembly.rotations, assembly.centres):
            i = int(np.argmin(np.linalg.norm(assembly.centres - g @ centre, axis=1)))
            np.testing.assert_allclose(assembly.centres[i], g @ centre, atol=1e-9)
            np.testing.assert_allclose(assembly.rotations[i], g @ rotation, atol=1e-9)
            assert assembly.chains[i] == chain


def test_cages_and_palindromic_ring_stacks_have_their_symmetry_and_touch():
    chains = blob_chains()
    rng = np.random.default_rng(2)
    for group in ("T", "O", "I"):
        cage = cage_complex(chains, 1, group, rng)
        assert_symmetric(cage, point_group(group))
        gaps = np.linalg.norm(cage.centres[:, None] - cage.centres[None], axis=2) + np.eye(len(cage)) * 1e9
        np.testing.assert_allclose(gaps.min(), 0.8 * 2 * chains.radii[1], rtol=1e-9)
    stack = ring_complex(chains, [0, 2, 2, 0], 7, rng)
    assert len(stack) == 28
    assert_symmetric(stack, point_group("D7"))


def test_clusters_touch_without_clashing():
    chains = blob_chains()
    rng = np.random.default_rng(3)
    members = rng.integers(0, 3, size=20)
    cluster = cluster_complex(chains, members, rng)
    np.testing.assert_allclose(cluster.centres.mean(axis=0), 0, atol=1e-9)
    radii = chains.radii[members]
    ratio = np.linalg.norm(cluster.centres[:, None] - cluster.centres[None], axis=2) / (radii[:, None] + radii[None])
    ratio += np.eye(len(members)) * 1e9
    assert ratio.min() == pytest.approx(0.8, rel=1e-9)
    assert np.all(ratio.min(axis=1) < 0.8 + 1e-9)  # every copy touches another


def test_box_refuses_clashes_drops_far_copies_and_keeps_lumens_free():
    chains = blob_chains()
    box = Box(chains, edge=200.0, low=0.0, margin=30.0)
    one = Assembly([0], np.eye(3)[None], [[100.0, 100.0, 100.0]])
    assert box.add(one) is not None
    assert box.add(one.moved(np.eye(3), [0.8 * 2 * chains.radii[0], 0, 0])) is None  # closer than 0.9 x (r + r)
    assert box.add(one.moved(np.eye(3), [0.95 * 2 * chains.radii[0], 0, 0])) is not None
    far = Assembly([1, 1], np.broadcast_to(np.eye(3), (2, 3, 3)), [[10.0, 10.0, 10.0], [10.0, 10.0, -40.0]])
    assert len(box.add(far)) == 1  # the copy 40 A outside the box, beyond the margin, is dropped
    assert box.fill == pytest.approx(chains.volumes[[0, 0, 1]].sum() / 200.0**3)
    lumen = Assembly([2], np.eye(3)[None], [[50.0, 150.0, 50.0]], [[150.0, 150.0, 150.0]], [30.0])
    assert box.add(lumen) is not None
    assert box.add(Assembly([0], np.eye(3)[None], [[150.0, 150.0, 150.0 + 0.8 * (30.0 + chains.radii[0])]])) is None


def test_crowd_reaches_its_fill():
    chains = blob_chains()
    box = Box(chains, edge=150.0, low=-5.0)
    counts = crowd(box, np.random.default_rng(4), fill=0.2, complex_share=0.5, max_chains=12)
    assert counts["chains"] == len(box.assembly())
    assert counts["free"] > 0 and counts["ring"] + counts["cage"] + counts["cluster"] > 0
    assert 0.2 <= box.fill < 0.2 + chains.volumes.max() / 150.0**3  # free chains stop at the first past the fill
