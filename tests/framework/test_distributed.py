"""Under `torchrun`, commands on particle stacks split the images over 2 CPU ranks and give the one-rank result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cryoinverse.mrc import read_volume
from cryoinverse.poses_io import read_poses_star
from cryoinverse.rotations import geodesic_distance
from tests.framework.test_cli_poses import simulate_stack
from tests.framework.test_reconstruct import invoke


def torchrun(*args, ranks: int = 2) -> subprocess.CompletedProcess:
    """`cryoinverse ARGS` launched by torchrun on `ranks` CPU processes of one thread each (gloo)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "cryoinverse", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return simulate_stack(tmp_path_factory.mktemp("stack"), count=60)


def close_poses(a, b) -> float:
    """Median angle (degrees) between the rotations of two STAR files of the same rows."""
    return float(geodesic_distance(read_poses_star(a).rotations, read_poses_star(b).rotations).median())


def test_refine_on_two_ranks_gives_the_one_rank_result(data, tmp_path):
    args = ("refine", data["truth"], "--map", data["map"], "--initial-resolution", "15", "--iterations", "2", "--json")
    one = invoke(*args, "--out-dir", tmp_path / "one")
    assert one.exit_code == 0, one.stderr
    two = torchrun(*args, "--out-dir", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads(two.stdout.strip().splitlines()[-1])["images"] == 60  # one JSON line: rank 0 alone reports
    assert close_poses(tmp_path / "one" / "poses.star", tmp_path / "two" / "poses.star") < 0.01
    for name in ("map.mrc", "half1.mrc", "half2.mrc"):
        a, b = read_volume(tmp_path / "one" / name).data, read_volume(tmp_path / "two" / name).data
        assert float((a - b).norm() / a.norm()) < 1e-4, name
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["ranks"] == 2


def test_poses_and_abinitio_on_two_ranks_give_the_one_rank_result(data, tmp_path):
    args = ("poses", data["particles"], "--map", data["map"], "-p", "level=1", "--chunk", "25")
    one = invoke(*args, "--out", tmp_path / "one.star")
    assert one.exit_code == 0, one.stderr
    two = torchrun(*args, "--out", tmp_path / "two.star")
    assert two.returncode == 0, two.stderr[-3000:]
    assert close_poses(tmp_path / "one.star", tmp_path / "two.star") < 0.01
    assert not (tmp_path / "two.star.partial.npz").exists()
    args = ("abinitio", data["particles"], "--resolution", "12", "--start-resolution", "24", "--iterations", "3", "--starts", "2",
            "--batch", "40", "--json")
    one = invoke(*args, "--out-dir", tmp_path / "ab1")
    assert one.exit_code == 0, one.stderr
    two = torchrun(*args, "--out-dir", tmp_path / "ab2")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_volume(tmp_path / "ab1" / "map.mrc").data, read_volume(tmp_path / "ab2" / "map.mrc").data
    assert float((a - b).norm() / a.norm()) < 1e-3
    assert np.allclose(json.loads((tmp_path / "ab2" / "report.json").read_text())["start_kept"],
                       json.loads((tmp_path / "ab1" / "report.json").read_text())["start_kept"])
