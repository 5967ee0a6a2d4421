"""Every task spec in examples/ validates and runs as it is, on the maps `cryoinverse demo` writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cryoinverse.demo import run_demo
from cryoinverse.runner import run_task
from cryoinverse.specs import load_spec

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples"
EXAMPLES = sorted(EXAMPLE_DIR.glob("*.toml"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("examples")
    run_demo(root / "demo-out", steps=5, samples=2, prior="gaussian")  # only its maps are needed here
    env = {**os.environ, "CRYOINVERSE": f"{sys.executable} -m cryoinverse"}
    subprocess.run(["bash", str(EXAMPLE_DIR / "degrade_recipe.sh"), str(root / "demo-out")], check=True, env=env, capture_output=True)
    subprocess.run([sys.executable, str(EXAMPLE_DIR / "make_projection_inputs.py"), str(root / "demo-out"), "100"], check=True, capture_output=True)
    (root / "examples").mkdir()
    for path in EXAMPLES:
        shutil.copy(path, root / "examples" / path.name)
    return root


def test_there_are_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(workdir, example):
    spec = load_spec(workdir / "examples" / example.name, ["sampler.steps=10"])
    result = run_task(spec)
    assert spec.outputs.map.exists() and spec.outputs.report_path.exists()
    assert result.volume.shape == (64, 64, 64)
    assert result.volume.voxel_size == pytest.approx(1.5)
    metrics = result.report["metrics"]
    if example.stem == "projection_known_poses":  # no degraded map to compare with: 10 steps already find the shape
        assert metrics["restored"]["correlation"] > 0.25
    elif example.stem == "missing_wedge_inpaint":  # a stationary prior cannot fill the wedge (see the file)
        assert metrics["restored"]["correlation"] > 0.5
    elif "observation" in metrics:  # a restoration: it must correlate better with the truth than its input
        assert metrics["restored"]["correlation"] > metrics["observation"]["correlation"] + 0.1
    else:  # prior samples: spectrum-matched noise, uncorrelated with the reference
        assert abs(metrics["restored"]["correlation"]) < 0.2
