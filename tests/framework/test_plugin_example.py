"""The third-party plugin in tests/plugin_example, installed for real with pip, as users do.

`pip install --target` puts the module and its `.dist-info` (with the entry point) in a
temporary folder; subprocesses of `cryoinverse` with that folder on PYTHONPATH must find the
operator, the command and the distribution. The numbers: under the gaussian prior, exact
guidance samples the posterior of y = s x + n, whose mean is the Wiener filter.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cryoinverse.components import Likelihood, Observation
from cryoinverse.fourier import expand_shells, fftn, ifftn, n_shells
from cryoinverse.mrc import read_volume
from cryoinverse.plugins import new_plugin_manager
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.registry import Registry
from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler

PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "plugin_example"
MODULE = "cryoinverse_scale_example"
DISTRIBUTION = "cryoinverse-scale-example"

# What the console script `cryoinverse` runs; with sys.executable it is the Python of the tests.
CLI_MAIN = "from cryoinverse.cli import main; main()"

TASK = """\
seed = 0
device = "cpu"
samples = 4

[prior]
kind = "gaussian"
power_from = "reference.mrc"

[operator]
kind = "scaled-noise"
scale = 0.5
noise_variance = 0.01

[sampler]
kind = "flow-posterior-euler"
guidance = "exact"
steps = 20

[inputs]
observation = "observed.mrc"
reference = "reference.mrc"

[outputs]
map = "restored.mrc"
report = "report.json"
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """A folder holding the plugin as `pip install --target` leaves it (module + .dist-info)."""
    root = tmp_path_factory.mktemp("plugin_example")
    # Build from a copy: setuptools writes build/ and *.egg-info/ into the folder it builds.
    source = shutil.copytree(PLUGIN_SOURCE, root / "source", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--no-build-isolation", "--no-index", "--target", str(site), str(source),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    return site


@pytest.fixture
def scale_example(plugin_site, monkeypatch):
    """The installed plugin module, imported from the pip target folder (removed afterwards)."""
    monkeypatch.syspath_prepend(str(plugin_site))
    yield importlib.import_module(MODULE)
    sys.modules.pop(MODULE, None)


def cryoinverse(site: Path, *args: str, cwd: Path) -> str:
    """Run the `cryoinverse` CLI in a fresh process that sees `site`; returns its stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env.pop("CRYOINVERSE_LOAD_PLUGINS", None)  # load every entry point, as a user's shell would
    done = subprocess.run([sys.executable, "-c", CLI_MAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"cryoinverse {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_installed_plugin_runs_a_task_from_the_cli(plugin_site, tmp_path, write_map, density):
    assert (plugin_site / f"{MODULE}.py").is_file()
    assert list(plugin_site.glob("cryoinverse_scale_example-0.1.0.dist-info/entry_points.txt"))

    listed = cryoinverse(plugin_site, "list", "operator", cwd=tmp_path)
    assert any("scaled-noise" in line and "[scale-example]" in line for line in listed.splitlines()), listed

    infos = json.loads(cryoinverse(plugin_site, "plugins", "--json", cwd=tmp_path))
    ours = [info for info in infos if info["name"] == "scale-example"]
    assert ours == [
        {
            "name": "scale-example",
            "builtin": False,
            "distribution": f"{DISTRIBUTION} 0.1.0",
            "hooks": ["register_commands", "register_operators"],
        }
    ]

    info = cryoinverse(plugin_site, "scale-example-info", cwd=tmp_path)
    assert info == "cryoinverse-scale-example: operator 'scaled-noise' (y = s x + n, white noise)\n"

    # The benchmark input is made by the plugin's own simulate(), through `cryoinverse degrade`.
    reference = write_map("reference.mrc", density)
    cryoinverse(
        plugin_site, "degrade", str(reference), "observed.mrc", "-k", "scaled-noise",
        "-p", "scale=0.5", "-p", "noise_variance=0.01", "--seed", "1", cwd=tmp_path,
    )
    observed = read_volume(tmp_path / "observed.mrc")
    residual = observed.data.double() - 0.5 * density.data.double()
    # 4096 voxels of N(0, 0.01): the sample variance has relative standard error sqrt(2/4096) = 2.2%.
    assert abs(residual.var().item() / 0.01 - 1) < 0.1

    (tmp_path / "task.toml").write_text(TASK)
    out = cryoinverse(plugin_site, "run", "task.toml", "--quiet", cwd=tmp_path)
    assert {"wrote restored.mrc", "wrote report.json"} <= set(out.splitlines()), out  # relative to the task file

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["task"]["operators"] == [{"kind": "scaled-noise", "noise_variance": 0.01, "scale": 0.5}]
    assert report["task"]["sampler"]["guidance"] == "exact"
    assert report["samples"]["count"] == 4
    metrics = report["metrics"]
    for name in ("restored", "observation"):
        assert {"auc", "resolution_0.5", "resolution_0.143", "correlation", "rmse", "failed", "curve"} <= set(metrics[name])
    # The observation is at half scale; the posterior mean undoes the scale (rmse ~0.5 |x| before).
    assert metrics["restored"]["rmse"] < 0.5 * metrics["observation"]["rmse"]
    assert metrics["restored"]["correlation"] > 0.95

    restored = read_volume(tmp_path / "restored.mrc")
    assert restored.shape == (16, 16, 16)
    assert restored.voxel_size == pytest.approx(density.voxel_size, rel=1e-4)


def test_scaled_noise_is_fourier_diagonal(scale_example):
    op = scale_example.ScaledNoise(noise_variance=0.3, scale=1.7)
    a, noise = op.fourier_diagonal(8)
    assert a.shape == noise.shape == (8, 8, 8) and a.dtype == noise.dtype == torch.float64
    assert torch.all(a == 1.7) and torch.all(noise == 0.3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 8, 8, 8, generator=g, dtype=torch.float64), torch.randn(8, 8, 8, generator=g, dtype=torch.float64)
    # Parseval (ortho FFT): the real-space sum equals the Fourier-diagonal form the exact guidance uses.
    fourier = -0.5 * ((a * fftn(x) - fftn(y)).abs().square() / noise).sum(dim=(-3, -2, -1))
    torch.testing.assert_close(op.log_likelihood(x, y), fourier)
    torch.testing.assert_close(op.forward(x), 1.7 * x)


def test_exact_posterior_mean_is_the_wiener_filter(scale_example):
    pm = new_plugin_manager(load_entrypoints=False)
    pm.register(scale_example, name="scale-example")
    ScaledNoise = Registry(pm).get("operator", "scaled-noise")
    assert Path(sys.modules[ScaledNoise.__module__].__file__).parent == Path(scale_example.__file__).parent

    n, s, var = 16, 0.5, 0.1
    r = torch.arange(n_shells(n), dtype=torch.float64)
    spectrum = 3.0 * torch.exp(-((r / 3.0) ** 2)) + 0.05  # s^2 P / N from 7.6 (low shells) to 0.13
    prior = GaussianPrior(power=spectrum.tolist())
    op = ScaledNoise(noise_variance=var, scale=s)
    g = torch.Generator().manual_seed(0)
    y = op.simulate(prior.draw(1, n, g)[0], g)

    p = expand_shells(spectrum, n)
    wiener = ifftn(s * p / (s * s * p + var) * fftn(y.double()))
    sampler = FlowPosteriorEuler(guidance="exact", steps=20)
    likelihood = Likelihood([Observation(op, y)])
    samples = sampler.run(prior, likelihood, torch.randn(256, n, n, n, generator=g), g).double()
    m = len(samples)
    mean = samples.mean(dim=0)

    # Every Euler step maps t_i m_post to t_(i+1) m_post exactly (the posterior velocity is affine
    # in x_t), so the sample mean has no discretisation bias, only Monte Carlo error; 20 steps do
    # shrink the sample variance (to ~0.8 of the posterior's), so the standard error is measured.
    spread = (fftn(samples) - fftn(mean)).abs().square().sum(dim=0) / (m - 1)
    z2 = (fftn(mean) - fftn(wiener)).abs().square() / (spread / m)
    # Measured rms z = 0.98. Its mean over 4096 coefficients has a standard error of ~2%, so 1.15
    # is > 5 standard errors, and fails for a bias of ~0.55 standard errors in every coefficient.
    assert z2.mean().sqrt() < 1.15, z2.mean().sqrt()

    # The same in map units: measured relative error 0.053 against a Monte Carlo expectation of
    # sqrt(sum posterior variance / m) / |wiener| = 0.060 (exact posterior variance P N / (s^2 P + N)).
    relative = ((mean - wiener).norm() / wiener.norm()).item()
    expected = ((p * var / (s * s * p + var)).sum() / m).sqrt().item() / wiener.norm().item()
    assert relative < 1.2 * expected, (relative, expected)
