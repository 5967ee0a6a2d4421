"""cryoinverse bench: the protocol end to end on tiny maps, resumable, shardable; degradation levels."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from click.testing import CliRunner

from cryoinverse import bench as bench_module
from cryoinverse.bench import load_bench, merge_parts, read_rows, run_bench
from cryoinverse.cli import build_cli
from cryoinverse.demo import demo_map
from cryoinverse.errors import SpecError
from cryoinverse.levels import noise_power_for_resolution, noise_variance_for_resolution
from cryoinverse.metrics import compare
from cryoinverse.operators.spectral_noise import SpectralNoise
from tests.conftest import blob_density
from tests.reference import fsc_np

SPEC = """
maps = ["clean/*.mrc"]
out_dir = "out"
seed = 0
[[degradations]]
name = "spectral-6A"
kind = "spectral-noise"
target_resolution = 6.0
[[degradations]]
name = "wedge45"
kind = "missing-wedge"
tilt_min = -45.0
tilt_max = 45.0
noise_variance = 0.0
[[methods]]
name = "degraded"
[[methods]]
name = "gaussian"
prior = { kind = "gaussian" }
sampler = { kind = "flow-posterior-euler", guidance = "exact", steps = 8 }
"""


@pytest.fixture
def bench_dir(tmp_path, write_map):
    (tmp_path / "clean").mkdir()
    for i in range(2):
        write_map(f"clean/m{i}.mrc", blob_density(20, seed=i, n_atoms=50, voxel_size=1.5))
    (tmp_path / "bench.toml").write_text(SPEC)
    return tmp_path


def test_bench_cli_table_csv_and_plot(bench_dir):
    result = CliRunner().invoke(build_cli(), ["bench", str(bench_dir / "bench.toml"), "-q"])
    assert result.exit_code == 0, result.output
    rows = read_rows(bench_dir / "out" / "runs.csv")
    assert len(rows) == 2 * 2 * 2
    assert (bench_dir / "out" / "fsc.png").read_bytes()[:4] == b"\x89PNG"
    assert "spectral-6A" in result.output and "AUC-FSC" in result.output
    # the "degraded" rows recomputed independently: same noise (same seed) -> same AUC with a numpy FSC
    from cryoinverse.mrc import read_volume
    import torch

    for i, name in enumerate(["m0.mrc", "m1.mrc"]):
        clean = read_volume(bench_dir / "clean" / name)
        op = SpectralNoise(noise_power=noise_power_for_resolution(clean, 6.0).tolist())  # the default: logistic FSC
        degraded = op.simulate(clean.data, torch.Generator().manual_seed(i))
        curve = fsc_np(degraded.double().numpy(), clean.data.double().numpy())
        row = next(r for r in rows if r["map"] == name and r["degradation"] == "spectral-6A" and r["method"] == "degraded")
        assert float(row["auc"]) == pytest.approx(curve[1:].mean(), abs=1e-6)


def test_bench_is_resumable(bench_dir, monkeypatch):
    spec = load_bench(bench_dir / "bench.toml")
    run_bench(spec)
    before = (bench_dir / "out" / "runs.csv").read_text()

    def boom(*args, **kwargs):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(bench_module, "run_one", boom)
    run_bench(spec)
    assert (bench_dir / "out" / "runs.csv").read_text() == before


def test_sharded_runs_merge_to_the_single_run(bench_dir, tmp_path):
    single = load_bench(bench_dir / "bench.toml")
    run_bench(single)
    shutil.copytree(bench_dir / "clean", tmp_path / "sharded" / "clean")
    (tmp_path / "sharded" / "bench.toml").write_text(SPEC)
    sharded = load_bench(tmp_path / "sharded" / "bench.toml")
    for rank in range(2):
        run_bench(sharded, rank=rank, world=2)
    merge_parts(sharded.out_dir, 2)
    a = read_rows(single.out_dir / "runs.csv")
    b = read_rows(sharded.out_dir / "runs.csv")
    drop = ("wall_s", "peak_mem_mb")
    strip = lambda rows: sorted(tuple((k, v) for k, v in r.items() if k not in drop) for r in rows)  # noqa: E731
    assert strip(a) == strip(b)


@pytest.mark.slow
def test_torchrun_two_processes(bench_dir):
    run = subprocess.run(["torchrun", "--nproc_per_node=2", "--no-python", "cryoinverse", "bench", str(bench_dir / "bench.toml"), "-q"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(read_rows(bench_dir / "out" / "runs.csv")) == 8


def test_bad_bench_specs(tmp_path):
    (tmp_path / "b.toml").write_text('maps = ["none/*.mrc"]\n[[degradations]]\nkind = "missing-wedge"\ntarget_resolution = 5.0\n')
    with pytest.raises(SpecError) as err:
        load_bench(tmp_path / "b.toml")
    text = str(err.value)
    assert "no file matches 'none/*.mrc'" in text
    assert "target_resolution: only for" in text
    assert "[[methods]]: none given" in text


@pytest.mark.parametrize("target", [4.0, 6.0, 10.0])
def test_degradation_hits_its_target_resolution_within_one_shell(target):
    ref = demo_map()
    n, vs = ref.shape[-1], ref.voxel_size
    op = SpectralNoise(noise_variance=noise_variance_for_resolution(ref, target))
    import torch

    got = compare(ref.with_data(op.simulate(ref.data, torch.Generator().manual_seed(0))), ref).resolution_05
    shell_target, shell_got = n * vs / target, n * vs / got
    assert abs(shell_got - shell_target) <= 1.0, (got, target)


def test_half_map_degradation_estimates_the_noise_from_its_halves():
    import torch

    from cryoinverse.bench import Degradation
    from cryoinverse.registry import get_registry

    clean = demo_map()
    deg = Degradation("spectral-6A", {"kind": "spectral-noise"}, target_resolution=6.0, half_maps=True)
    degraded, op, halves = deg.degrade(clean, get_registry(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(degraded.data, 0.5 * (halves[0].data + halves[1].data))
    # the estimated noise power of the average follows the wanted one (shells 8..31 hold >= 800 coefficients)
    want = noise_power_for_resolution(clean, 6.0)[8:32]
    got = op.shell_noise_power(64)[8:32]
    assert float((got / want).mean()) == pytest.approx(1.0, abs=0.1)
    assert compare(degraded, clean).resolution_05 == pytest.approx(6.0, rel=0.05)


def test_bad_noise_shaping_fields(tmp_path):
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "a.mrc").write_bytes(b"")
    (tmp_path / "b.toml").write_text(
        'maps = ["clean/*.mrc"]\n'
        '[[degradations]]\nkind = "spectral-noise"\ntarget_resolution = 6.0\nnoise_shape = "pink"\n'
        '[[degradations]]\nkind = "spectral-noise"\nnoise_variance = 1.0\nfsc_width = 0.2\n'
        '[[degradations]]\nkind = "spectral-noise"\ntarget_resolution = 6.0\nfsc_curve = "missing.csv"\n'
        '[[methods]]\nname = "degraded"\n'
    )
    with pytest.raises(SpecError) as err:
        load_bench(tmp_path / "b.toml")
    text = str(err.value)
    assert "noise_shape: must be one of logistic, white; got 'pink'" in text
    assert "[degradations.1] fsc_width: need target_resolution" in text
    assert "fsc_curve" in text and "missing.csv" in text
