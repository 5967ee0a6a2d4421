"""scripts/make_filament_maps.py and scripts/make_complex_maps.py on real chains: filament copies on
their helix, and maps of the asked box and voxel size."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoinverse.assemblies import Chains, random_rotations
from cryoinverse.atoms import read_atoms
from cryoinverse.mrc import read_volume

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
MODELS = ("1ahsA", "2cayA", "3so6A", "4dkcA")


def load_script(name: str, monkeypatch):
    """The script `name` as a module (its folder on sys.path, as when it is run)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def models(shared_data) -> list[Path]:
    return [shared_data / "models" / f"{m}.pdb" for m in MODELS]


@pytest.mark.parametrize("kind", ["tube", "thin"])
def test_filament_copies_sit_on_the_helix_they_report(kind, models, monkeypatch):
    filaments = load_script("make_filament_maps", monkeypatch)
    chains = Chains([read_atoms(p) for p in models])
    rng = np.random.default_rng(7)
    lattice, params = filaments.random_filament(kind, chains, 300.0, rng)
    turn, shift = random_rotations(1, rng)[0], np.array([310.0, 280.0, 350.0])
    placed = lattice.moved(turn, shift)
    atoms = placed.atoms(chains).positions
    sizes = [len(chains.atoms[k]) for k in placed.chains]
    means = np.array([c.mean(axis=0) for c in np.split(atoms, np.cumsum(sizes)[:-1])])
    local = (means - shift) @ turn  # centres of mass in the filament frame (axis z)

    r, rise, twist, n = params["radius"], params["rise"], params["twist"], params["strands"]
    if kind == "tube":
        assert 11 <= n <= 16 and 84 <= r <= 143 and 39 <= rise <= 42 and len(params["chain_cycle"]) == 2
        assert params["stagger"] == pytest.approx((3 if n <= 14 else 4) * rise / n)
        assert len(placed.blocker_radii) > 0
    else:
        assert n == 1 and 25 <= r <= 45 and 26.5 <= rise <= 28.5 and -168 <= twist <= -163
    expected = []
    for p in range(n):
        for j in range(-50, 51):
            z = j * rise + p * params["stagger"]
            if abs(z) <= 150.0:
                phi = math.radians(params["phase"] + 360.0 * p / n + j * twist)
                expected.append((r * math.cos(phi), r * math.sin(phi), z))
    expected = np.array(expected)
    assert len(local) == len(expected)
    np.testing.assert_allclose(np.hypot(local[:, 0], local[:, 1]), r, rtol=0, atol=1e-9)
    nearest = np.linalg.norm(local[:, None] - expected[None], axis=2).argmin(axis=1)
    assert len(set(nearest.tolist())) == len(expected)
    np.testing.assert_allclose(local, expected[nearest], rtol=0, atol=1e-9)


@pytest.mark.parametrize("script", ["make_complex_maps", "make_filament_maps"])
def test_maps_keep_the_box_and_voxel_size(script, models, tmp_path, monkeypatch, capsys):
    module = load_script(script, monkeypatch)
    module.main([*map(str, models), "--out-dir", str(tmp_path), "--count", "1", "--box", "18", "--voxel-size", "10.52",
                 "--fill-min", "0.03", "--fill-max", "0.03", "--max-chains", "8", "--seed", "3"])
    (path,) = tmp_path.glob("*.mrc")
    volume = read_volume(path)
    assert volume.shape == (18, 18, 18)
    assert volume.voxel_size == pytest.approx(10.52, rel=1e-6)
    assert volume.origin == (0.0, 0.0, 0.0)
    assert float(volume.data.max()) > 0
    printed = capsys.readouterr().out
    assert f"wrote {path}" in printed and "chains" in printed and "% of voxels above half max" in printed


def test_keep_existing_simulates_only_the_missing_maps_and_the_same_ones(models, tmp_path, monkeypatch):
    module = load_script("make_complex_maps", monkeypatch)
    args = [*map(str, models), "--out-dir", str(tmp_path), "--count", "2", "--box", "16", "--voxel-size", "10",
            "--fill-min", "0.03", "--fill-max", "0.03", "--max-chains", "8", "--seed", "5"]
    module.main(args)
    first, second = sorted(tmp_path.glob("*.mrc"))
    kept, redone = read_volume(first).data, read_volume(second).data
    first.write_bytes(b"left alone")
    second.unlink()
    module.main([*args, "--keep-existing"])
    assert first.read_bytes() == b"left alone"
    assert torch.equal(read_volume(second).data, redone)
    assert not torch.equal(kept, redone)
