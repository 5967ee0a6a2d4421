"""Degradation levels: FSC-shaped noise meets its target by the metric's own definition."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cryoinverse.cli import build_cli
from cryoinverse.demo import demo_map
from cryoinverse.errors import DataError
from cryoinverse.levels import (
    expected_fsc,
    logistic_fsc,
    noise_power_for_fsc,
    noise_power_for_resolution,
    read_fsc_curve,
)
from cryoinverse.metrics import compare, fsc, resolution_at
from cryoinverse.mrc import read_volume
from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.spectra import radial_power


def test_logistic_closed_form():
    curve = logistic_fsc(40, crossing=12.3, width=1.5)
    r = np.arange(40, dtype=np.float64)
    np.testing.assert_allclose(curve.numpy(), 0.01 + 0.98 / (1 + np.exp((r - 12.3) / 1.5)), rtol=1e-12)


def test_noise_power_inverts_the_fsc_relation():
    signal = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    curve = torch.tensor([0.9, 0.7, 0.5, 0.1], dtype=torch.float64)
    noise = noise_power_for_fsc(signal, curve)
    np.testing.assert_allclose(torch.sqrt(signal / (signal + noise)).numpy(), curve.numpy(), rtol=1e-12)


@pytest.mark.parametrize("target", [4.0, 6.0, 10.0])
def test_expected_curve_crosses_at_the_target_by_the_metric(target):
    curve = expected_fsc(64, 1.5, target)
    assert resolution_at(curve[:33], 1.5, 0.5, 64) == pytest.approx(target, rel=1e-6)
    assert bool((curve[1:] <= curve[:-1]).all())  # falls monotonically


@pytest.mark.parametrize("target", [4.0, 6.0, 10.0])
def test_logistic_noise_puts_the_measured_crossing_at_the_target(target):
    ref = demo_map()
    op = SpectralNoise(noise_power=noise_power_for_resolution(ref, target).tolist())
    got = [compare(ref.with_data(op.simulate(ref.data, torch.Generator().manual_seed(s))), ref).resolution_05 for s in range(3)]
    assert abs(float(np.mean(got)) - target) < 0.03 * target, got


def test_logistic_noise_falls_steeply_past_the_resolution():
    """Unlike white noise, FSC-shaped noise leaves almost nothing beyond the resolution."""
    ref = demo_map()
    n = ref.shape[-1]
    cut = int(n * ref.voxel_size / 5.0)  # shells finer than 5 A
    measured = {}
    for shape in ("logistic", "white"):
        op = SpectralNoise(noise_power=noise_power_for_resolution(ref, 6.0, shape).tolist())
        curve = fsc(op.simulate(ref.data, torch.Generator().manual_seed(0)), ref)
        measured[shape] = float(curve[cut:].mean())
    assert measured["logistic"] < 0.15 < measured["white"], measured


def test_expected_fsc_equals_measured_fsc_per_shell():
    """Each shell's FSC(x + n, x) over many draws equals sqrt(S / (S + N)) = the wanted curve."""
    ref = demo_map()
    n = ref.shape[-1]
    power = noise_power_for_resolution(ref, 6.0)
    op = SpectralNoise(noise_power=power.tolist())
    curves = torch.stack([fsc(op.simulate(ref.data, torch.Generator().manual_seed(s)), ref) for s in range(8)])
    want = expected_fsc(n, ref.voxel_size, 6.0)[: n // 2 + 1]
    # shells 4..Nyquist hold >= 200 coefficients: the sample FSC is within a few percent
    np.testing.assert_allclose(curves.mean(0)[4:].numpy(), want[4:].numpy(), atol=0.04)


def test_curve_from_a_file_is_stretched_to_the_target(tmp_path):
    path = tmp_path / "fsc.csv"
    res = np.array([40.0, 20.0, 10.0, 8.0, 6.0, 5.0, 4.0, 3.0])
    values = np.array([1.0, 0.99, 0.9, 0.8, 0.5, 0.3, 0.1, 0.02])
    path.write_text("resolution_A,fsc\n" + "\n".join(f"{r},{v}" for r, v in zip(res, values)) + "\n")
    freq, fsc_values = read_fsc_curve(path)
    curve = expected_fsc(64, 1.5, 8.0, curve=(freq, fsc_values))
    assert resolution_at(curve[:33], 1.5, 0.5, 64) == pytest.approx(8.0, rel=1e-6)
    # stretched by 6/8 in frequency: the value at 8 A * (8/6) = 10.67 A is the file's at 8 A
    shell = 64 * 1.5 / (8.0 * 8.0 / 6.0)
    lo = int(shell)
    at = float(curve[lo] + (shell - lo) * (curve[lo + 1] - curve[lo]))
    assert at == pytest.approx(0.8, abs=0.03)


def test_half_map_curve_conversion(tmp_path):
    path = tmp_path / "half.csv"
    path.write_text("frequency,fsc\n0.0,1.0\n0.1,0.6\n0.2,0.143\n0.3,0.0\n")
    _, full = read_fsc_curve(path, half_map=True)
    np.testing.assert_allclose(full, np.sqrt(2 * np.array([1.0, 0.6, 0.143, 0.0]) / (1 + np.array([1.0, 0.6, 0.143, 0.0]))))


@pytest.mark.parametrize(
    "text, message",
    [
        ("a,b\n1,2\n", "needs a header with an 'fsc' column"),
        ("resolution_A,fsc\n10,0.9\n", "at least two rows"),
        ("resolution_A,fsc\n10,0.9\n5,0.8\n", "must start above 0.5 and fall below it"),
        ("resolution_A,fsc\n10,x\n5,0.2\n", "not numbers"),
    ],
)
def test_bad_curve_files(tmp_path, text, message):
    path = tmp_path / "c.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_fsc_curve(path)


def test_degrade_writes_half_maps_whose_average_is_the_output(tmp_path):
    from cryoinverse.mrc import write_volume

    write_volume(tmp_path / "ref.mrc", demo_map())
    out = tmp_path / "deg.mrc"
    result = CliRunner().invoke(build_cli(), ["degrade", str(tmp_path / "ref.mrc"), str(out), "-k", "spectral-noise", "--target-resolution", "6", "--half-maps"])
    assert result.exit_code == 0, result.output
    h1, h2, full = (read_volume(p).data for p in (tmp_path / "deg_half1.mrc", tmp_path / "deg_half2.mrc", out))
    torch.testing.assert_close(full, 0.5 * (h1 + h2), atol=1e-6, rtol=1e-6)
    ref = demo_map()
    # each half carries twice the full map's noise power
    want = noise_power_for_resolution(ref, 6.0)
    got = radial_power(h1 - ref.data)[8:32] / want[8:32]
    assert abs(float(got.mean()) - 2.0) < 0.2
    assert compare(read_volume(out), ref).resolution_05 == pytest.approx(6.0, rel=0.05)


def test_degrade_half_maps_need_a_target(tmp_path):
    from cryoinverse.mrc import write_volume

    write_volume(tmp_path / "ref.mrc", demo_map())
    result = CliRunner().invoke(build_cli(), ["degrade", str(tmp_path / "ref.mrc"), str(tmp_path / "d.mrc"), "-k", "spectral-noise", "--half-maps"])
    assert result.exit_code != 0
    assert "needs --target-resolution" in result.output
