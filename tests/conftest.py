"""Shared fixtures: small synthetic maps, the shared real data (skipped where absent), markers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryoinverse.mrc import write_volume
from cryoinverse.volume import Volume

TINY_TASK = """\
device = "cpu"

[prior]
kind = "gaussian"

[operator]
kind = "spectral-noise"
noise_variance = 0.01

[sampler]
kind = "flow-posterior-euler"
steps = 10
guidance = "exact"

[inputs]
observation = "observation.mrc"
reference = "reference.mrc"
"""
"""A small valid task: gaussian prior, white spectral noise, 10 exact-guidance steps (maps beside it)."""

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(pytest.mark.skip(reason="slow: run with --runslow"))
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repository; tests using it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def blob_density(n: int = 16, seed: int = 0, n_atoms: int = 30, voxel_size: float = 2.0) -> Volume:
    """A protein-like test density: a few Gaussian blobs near the box centre (float32, z-y-x)."""
    rng = np.random.default_rng(seed)
    grid = np.indices((n, n, n)).astype(np.float64)
    data = np.zeros((n, n, n))
    for _ in range(n_atoms):
        c = n / 2 + rng.normal(scale=n / 8, size=3)
        r2 = sum((grid[a] - c[a]) ** 2 for a in range(3))
        data += math.exp(rng.normal(0, 0.3)) * np.exp(-r2 / (2 * 1.2**2))
    return Volume(torch.from_numpy(data.astype(np.float32)), voxel_size, (0.0, 0.0, 0.0))


@pytest.fixture
def density() -> Volume:
    """A 16^3 blob density at 2 A/voxel."""
    return blob_density()


@pytest.fixture
def write_map(tmp_path):
    """write_map(name, volume) -> path of an MRC file written into tmp_path."""

    def write(name: str, volume: Volume) -> Path:
        return write_volume(tmp_path / name, volume)

    return write
