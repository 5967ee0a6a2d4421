"""Chunked restoration (cryoinverse.chunked): equal to the whole-map run where the model is local, exact on one
chunk, files atomic, geometry kept, and every refusal with its message."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

import attrs
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cryoinverse import chunked as chunked_module
from cryoinverse.chunked import _for_chunk, block_noise, check_chunkable, chunk_plan, chunks_of, density_scale
from cryoinverse.cli import build_cli
from cryoinverse.errors import DataError, SpecError
from cryoinverse.fourier import frequency_grid, reference_edge
from cryoinverse.mrc import MappedVolume, read_volume, write_volume
from cryoinverse.operators.anisotropic_noise import AnisotropicNoise
from cryoinverse.operators.missing_wedge import MissingWedge
from cryoinverse.operators.spectral_noise import SpectralNoise
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.runner import run_task
from cryoinverse.samplers.flow_posterior_euler import FlowPosteriorEuler
from cryoinverse.spectra import spectrum_on_box
from cryoinverse.specs import Inputs, Outputs, TaskSpec
from cryoinverse.volume import Volume

SHAPE = (20, 50, 36)  # z is shorter than a chunk (one chunk along z), y and x are cut
ORIGIN = (12.5, -30.0, 7.0)


@attrs.define
class BinomialWiener(GaussianPrior):
    """A Gaussian prior whose posterior mean under white noise of power `noise` is T y, with
    T(k) = 1/2 prod_axes cos^2(pi k): the 3-tap binomial filter (1/4, 1/2, 1/4) along each axis,
    halved. Its kernel reaches exactly one voxel, so chunking must reproduce it away from the border."""

    name: ClassVar[str] = "binomial-wiener"
    noise: float = 1.0

    def prepare(self, ctx) -> None:
        pass

    def _coefficient_power(self, x: torch.Tensor) -> torch.Tensor:
        kz, ky, kx = frequency_grid(tuple(x.shape[-3:]))
        t = 0.5 * (torch.cos(math.pi * kz) * torch.cos(math.pi * ky) * torch.cos(math.pi * kx)).square()
        return (self.noise * t / (1 - t)).to(x.device)  # P / (P + N) = T


def binomial_reference(y: np.ndarray) -> np.ndarray:
    """T y in float64 numpy, periodic on the whole map (an independent reference for the closed form)."""
    out = y.astype(np.float64)
    for axis in range(3):
        out = 0.25 * np.roll(out, 1, axis) + 0.5 * out + 0.25 * np.roll(out, -1, axis)
    return 0.5 * out


@pytest.fixture
def observed(tmp_path) -> tuple[Path, torch.Tensor]:
    """A 20 x 50 x 36 map (smooth blobs plus white noise) at 3 A, origin off zero."""
    g = torch.Generator().manual_seed(3)
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in SHAPE), indexing="ij")
    blobs = sum(torch.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / 8.0) for c in torch.rand(12, 3, generator=g) * torch.tensor(SHAPE))
    data = 3 * blobs + torch.randn(SHAPE, generator=g)
    path = tmp_path / "observation.mrc"
    write_volume(path, Volume(data, 3.0, ORIGIN))
    return path, data


def task(observation: Path, out: Path, prior, operator, steps: int, chunk: int | None, overlap: int | None = None, samples: int = 1, std: bool = False) -> TaskSpec:
    outputs = Outputs(map=out, std=out.with_name(out.stem + "_std.mrc") if std else None)
    return TaskSpec(
        prior=prior, operators=[operator], sampler=FlowPosteriorEuler(steps=steps, guidance="exact"), inputs=Inputs(observation=observation),
        outputs=outputs, device="cpu", samples=samples, chunk=chunk, chunk_overlap=overlap,
    )


def test_chunks_equal_the_whole_map_run_where_the_filter_reaches_no_chunk_edge(observed, tmp_path):
    # One exact-guidance step from t = 0 is the posterior mean: the Wiener filter T y, whatever the
    # initial noise. T's kernel reaches 1 voxel, less than the margin (16 // 4 = 4) the blending
    # discards at inner chunk faces, so every chunk computes the whole-map value wherever it has
    # weight, except within 1 voxel of the map's border in y and x, where a chunk wraps onto its own
    # far face and the whole map onto the map's (z is one chunk, wrapped alike). There the results
    # must agree to float32 rounding: 1e-5 of the map's largest value (the values pass through a few
    # float32 FFTs and a sum of at most 4 weighted chunks, each ~1e-7 relative).
    path, y = observed
    whole = run_task(task(path, tmp_path / "whole.mrc", BinomialWiener(), SpectralNoise(noise_variance=1.0), 1, None))
    chunked = run_task(task(path, tmp_path / "chunked.mrc", BinomialWiener(), SpectralNoise(noise_variance=1.0), 1, 24, overlap=16))
    a, b = read_volume(tmp_path / "whole.mrc"), read_volume(tmp_path / "chunked.mrc")
    assert b.shape == SHAPE and b.voxel_size == 3.0 and b.origin == pytest.approx(ORIGIN)
    report = chunked.report["chunks"]
    assert report["count"] == 15 and report["grid"] == [1, 5, 3] and report["size"] == [20, 24, 24] and report["margin"] == 4
    reference = binomial_reference(y.numpy())
    scale = float(np.abs(reference).max())
    assert np.abs(a.data.numpy() - reference).max() < 1e-5 * scale  # the whole-map run is the closed form
    inner = (slice(None), slice(1, -1), slice(1, -1))
    assert float((a.data - b.data)[inner].abs().max()) < 1e-5 * scale
    assert float((a.data - b.data)[:, 0].abs().max()) > 1e-3 * scale  # the border differs: the comparison is sharp
    assert whole.report["task"]["chunk"] is None and chunked.report["task"]["chunk"] == 24


def test_one_chunk_covering_the_map_is_the_unchunked_run_exactly(observed, tmp_path):
    # Estimated spectrum, 3 steps and 2 samples: the result depends on the initial noise, so this
    # checks that a map within one chunk takes the unchunked path in every respect, std included.
    path, _ = observed
    make = lambda name, chunk: task(path, tmp_path / name, GaussianPrior(), SpectralNoise(noise_variance=0.5), 3, chunk, samples=2, std=True)
    run_task(make("whole.mrc", None))
    result = run_task(make("one.mrc", 64))
    assert result.report["chunks"]["count"] == 1 and result.volume is None
    for suffix in ("", "_std"):
        a, b = read_volume(tmp_path / f"whole{suffix}.mrc"), read_volume(tmp_path / f"one{suffix}.mrc")
        assert torch.equal(a.data, b.data) and b.origin == pytest.approx(ORIGIN) and b.voxel_size == 3.0
    assert (tmp_path / "one_slices.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_failing_midway_leaves_no_file(observed, tmp_path, monkeypatch):
    path, _ = observed
    real, calls = chunked_module.execute, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated failure in chunk 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked_module, "execute", failing)
    spec = task(path, tmp_path / "out" / "restored.mrc", GaussianPrior(), SpectralNoise(noise_variance=0.5), 2, 24, samples=2, std=True)
    with pytest.raises(RuntimeError, match="chunk 2"):
        run_task(spec)
    assert len(calls) == 3
    leftovers = [p.name for p in (tmp_path / "out").iterdir()] if (tmp_path / "out").exists() else []
    assert leftovers == []  # neither the map, the std map, nor their temporary .part files


def test_block_noise_is_one_field_whatever_the_crop():
    big = block_noise(7, 2, (0, 0, 0), (40, 70, 50))
    for start, size in (((3, 30, 10), (20, 24, 24)), ((0, 45, 26), (40, 25, 24))):
        crop = block_noise(7, 2, start, size)
        assert torch.equal(crop, big[(slice(None), *(slice(s, s + n) for s, n in zip(start, size)))])
    assert not torch.equal(block_noise(8, 2, (0, 0, 0), (40, 70, 50)), big)
    assert abs(float(big.mean())) < 0.01 and abs(float(big.std()) - 1) < 0.01


def test_chunks_cover_the_map_with_weights_summing_to_one_and_each_voxel_owned_once():
    shape = (20, 50, 36)
    chunks = chunks_of(chunk_plan(shape, 24, 16))
    total, owned = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.int64)
    for c in chunks:
        total[c.region] += c.weights
        core = tuple(slice(s + a, s + b) for s, (a, b) in zip(c.start, c.owned))
        owned[core] += 1
    assert torch.allclose(total, torch.ones(shape, dtype=torch.float64), atol=1e-12) and bool((owned == 1).all())


def test_per_shell_spectra_are_read_at_the_chunk_shells():
    power = torch.linspace(4.0, 0.1, 40)
    shape, size = (20, 50, 36), (20, 24, 24)
    prior = _for_chunk(GaussianPrior(power=power.tolist()), size, shape, shallow=True)
    wedge = _for_chunk(MissingWedge(noise_power=power.tolist()), size, shape)
    expected = spectrum_on_box(power, reference_edge(shape), size)
    assert torch.allclose(torch.tensor(prior.power, dtype=torch.float64), expected)
    assert torch.allclose(torch.tensor(wedge.noise_power, dtype=torch.float64), expected)
    assert _for_chunk(GaussianPrior(power=power.tolist()), shape, shape).power == power.tolist()  # a chunk that is the map: unchanged


def test_density_scale_is_the_whole_map_percentile(observed):
    from cryoinverse.priors.cryofm import percentile_scale

    path, y = observed
    spec = task(path, Path("unused.mrc"), GaussianPrior(), SpectralNoise(noise_variance=0.5), 1, 24)
    with MappedVolume(path) as source:
        for p in (99.999, 99.0, 90.0):
            scale = density_scale(spec, source, chunks_of(chunk_plan(SHAPE, 24, 16)), p, from_estimate=False, device=torch.device("cpu"))
            assert scale == percentile_scale(y, p)


def test_cryofm_restores_chunk_by_chunk_with_one_network_and_one_density_scale(observed, tmp_path, monkeypatch):
    import cryoinverse.priors.cryofm as cryofm

    path, _ = observed
    loads = []
    real = cryofm.load_prior
    monkeypatch.setattr(cryofm, "load_prior", lambda *a, **k: loads.append(1) or real(*a, **k))
    write_volume(tmp_path / "at_1.5.mrc", Volume(read_volume(path).data, 1.5, ORIGIN))  # the default network's voxel size: no resampling
    spec = task(tmp_path / "at_1.5.mrc", tmp_path / "restored.mrc", cryofm.CryoFMPrior(weights="default"), MissingWedge(noise_variance=0.5), 2, 24, overlap=8)
    spec = attrs.evolve(spec, sampler=FlowPosteriorEuler(steps=2))  # Wiener guidance
    result = run_task(spec)
    report = result.report["chunks"]
    assert report["count"] == 6 and report["density_scale"]["of"] == "Wiener estimates" and report["density_scale"]["value"] > 0
    assert result.report["task"]["prior"]["scale"] == report["density_scale"]["value"]
    assert len(loads) == 1  # the network is loaded once and shared by every chunk's prior
    restored = read_volume(tmp_path / "restored.mrc")
    assert restored.shape == SHAPE and bool(torch.isfinite(restored.data).all()) and float(restored.data.std()) > 0


def test_what_needs_the_whole_map_is_refused_with_the_field_named(observed, tmp_path):
    path, _ = observed
    with_reference = attrs.evolve(task(path, tmp_path / "r.mrc", GaussianPrior(), SpectralNoise(noise_variance=0.5), 1, 24),
                                  inputs=Inputs(observation=path, reference=path))
    with pytest.raises(SpecError, match=r"\[inputs\] reference: metrics need the whole map's Fourier transform.*cryoinverse fsc"):
        run_task(with_reference)
    halves = task(path, tmp_path / "r.mrc", GaussianPrior(), AnisotropicNoise(half_maps=[path, path]), 1, 24)
    with pytest.raises(SpecError, match=r"\[operator\] half_maps: a map of the whole box cannot be used chunk by chunk"):
        check_chunkable(halves)  # its half-map noise has direction factors, which no per-shell noise_power holds
    none = attrs.evolve(task(path, tmp_path / "r.mrc", GaussianPrior(), SpectralNoise(noise_variance=0.5), 1, 24), operators=[])
    with pytest.raises(SpecError, match="one observed map through one operator; the task has 0"):
        check_chunkable(none)
    assert not (tmp_path / "r.mrc").exists()


TASK = """\
device = "cpu"
{chunk}
[prior]
kind = "gaussian"

[operator]
kind = "missing-wedge"
noise_variance = 0.1

[sampler]
kind = "flow-posterior-pseudoinverse"
steps = 2

[inputs]
observation = "observation.mrc"
"""


def test_cli_run_with_chunk_writes_the_map_and_a_report_of_the_chunks(observed, tmp_path):
    (tmp_path / "task.toml").write_text(TASK.format(chunk=""))
    cli = build_cli()
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "task.toml"), "--chunk", "24", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "restored.json").read_text())
    assert report["chunks"]["count"] == 6 and report["chunks"]["overlap"] == 6 and report["task"]["chunk"] == 24
    assert report["chunks"]["seconds"] > 0 and report["chunks"]["peak_rss_MiB"] > 0
    assert read_volume(tmp_path / "restored.mrc").shape == SHAPE and "restored in 6 chunks" in result.output
    (tmp_path / "task.toml").write_text(TASK.format(chunk="chunk_overlap = 4\nchunk = 5"))
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "task.toml")])
    assert result.exit_code != 0 and "chunk: must be at least 8 voxels; got 5" in result.output
    (tmp_path / "task.toml").write_text(TASK.format(chunk="chunk_overlap = 4"))
    result = CliRunner().invoke(cli, ["validate", str(tmp_path / "task.toml")])
    assert result.exit_code != 0 and "chunk_overlap: only used with chunk" in result.output


def coloured_noise(shape: tuple[int, int, int], power, seed: int) -> torch.Tensor:
    """Stationary noise whose ortho-FFT power at physical frequency f (cycles per voxel) is power(f), float64."""
    kz, ky, kx = frequency_grid(shape)
    f = torch.sqrt(kz**2 + ky**2 + kx**2).to(torch.float64)
    white = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.fft.ifftn(torch.sqrt(power(f)) * torch.fft.fftn(white, norm="ortho"), norm="ortho").real


HALF_SHAPE = (40, 96, 80)


def noise_power_of(f: torch.Tensor) -> torch.Tensor:
    """Each half map's noise power: rising with frequency, as in real half maps."""
    return 0.2 + 8.0 * f**2


@pytest.fixture
def half_maps(tmp_path) -> tuple[Path, Path, torch.Tensor]:
    """Two half maps at 10 A: one smooth signal plus independent noise of power noise_power_of(f) each."""
    signal = 2.0 * coloured_noise(HALF_SHAPE, lambda f: torch.exp(-((f / 0.08) ** 2)), 0)
    paths = []
    for i in (1, 2):
        paths.append(tmp_path / f"half{i}.mrc")
        write_volume(paths[-1], Volume((signal + coloured_noise(HALF_SHAPE, noise_power_of, 10 + i)).to(torch.float32), 10.0))
    return paths[0], paths[1], signal


@pytest.mark.parametrize("operator", [SpectralNoise, lambda **kw: MissingWedge(tilt_min=-60.0, tilt_max=60.0, **kw)], ids=["spectral", "wedge"])
def test_noise_from_half_maps_chunk_by_chunk_matches_the_known_spectrum(half_maps, operator):
    # The average of two halves with independent noise of power P(f) has noise power P(f) / 2 per
    # coefficient (ortho FFT), at every box size. Estimated chunk by chunk (chunks of 32, each a
    # tapered, non-periodic crop of the noise, 24 of them averaged) and read at the whole map's
    # shells, it must follow P(f) / 2 at the shells' frequencies r / 96 within 15 % from shell 8
    # (1/12 cycles per voxel: three of a chunk's shells; below, a 32-voxel chunk cannot resolve the
    # rising spectrum) to Nyquist; untapered chunks read 20-30 % high there (edge leakage of the
    # high-frequency noise). The whole-map estimate from the same halves meets the same bound.
    from cryoinverse.chunked import half_map_noise_power

    p1, p2, _ = half_maps
    op = operator(half_maps=[p1, p2])
    chunks = chunks_of(chunk_plan(HALF_SHAPE, 32, 8))
    with MappedVolume(p1) as h1, MappedVolume(p2) as h2:
        chunked = half_map_noise_power(op, (h1, h2), chunks, HALF_SHAPE)
    whole = op.half_map_noise(read_volume(p1), read_volume(p2))
    r = torch.arange(8, 49, dtype=torch.float64)
    expected = noise_power_of(r / 96) / 2
    assert len(chunks) == 24 and chunked.shape == whole.shape
    assert float(((chunked[8:49] - expected) / expected).abs().max()) < 0.15
    assert float(((whole[8:49] - expected) / expected).abs().max()) < 0.15


def half_map_task(h1: Path, h2: Path, out: Path, chunk: int | None, observation: Path | None = None, steps: int = 3) -> TaskSpec:
    return TaskSpec(
        prior=GaussianPrior(), operators=[MissingWedge(tilt_min=-50.0, tilt_max=60.0, half_maps=[h1, h2])],
        sampler=FlowPosteriorEuler(steps=steps, guidance="exact"), inputs=Inputs(observation=observation), outputs=Outputs(map=out),
        device="cpu", chunk=chunk, chunk_overlap=8 if chunk else None,
    )


def test_a_chunked_run_takes_odd_even_half_maps_without_an_observation(half_maps, tmp_path):
    from cryoinverse.chunked import half_map_noise_power

    p1, p2, _ = half_maps
    # one chunk covering the map: exactly the unchunked run (halves' average, noise from the halves)
    whole = run_task(half_map_task(p1, p2, tmp_path / "whole.mrc", None))
    one = run_task(half_map_task(p1, p2, tmp_path / "one.mrc", 128))
    assert one.report["chunks"]["count"] == 1 and one.report["chunks"]["noise_from_half_maps"]["observation"] == "the halves' average"
    a, b = read_volume(tmp_path / "whole.mrc"), read_volume(tmp_path / "one.mrc")
    assert torch.allclose(a.data, b.data, rtol=0, atol=1e-5 * float(a.data.abs().max()))
    assert whole.report["task"]["operators"][0]["half_maps"] is not None
    # many chunks: the operator runs with the one spectrum estimated over all chunks
    many = run_task(half_map_task(p1, p2, tmp_path / "many.mrc", 32))
    assert many.report["chunks"]["count"] == 24
    with MappedVolume(p1) as h1, MappedVolume(p2) as h2:
        expected = half_map_noise_power(MissingWedge(tilt_min=-50.0, tilt_max=60.0), (h1, h2), chunks_of(chunk_plan(HALF_SHAPE, 32, 8)), HALF_SHAPE)
    operator = many.report["task"]["operators"][0]
    assert operator["half_maps"] is None and torch.allclose(torch.tensor(operator["noise_power"], dtype=torch.float64), expected)
    restored = read_volume(tmp_path / "many.mrc")
    assert restored.shape == HALF_SHAPE and restored.voxel_size == 10.0 and bool(torch.isfinite(restored.data).all())
    # One exact step is the posterior mean (the Wiener filter, whatever the initial noise): chunked
    # with the halves' noise it follows the whole-map filter closely (each chunk estimates its own
    # gaussian prior spectrum, and a chunk's FFT wraps at its faces: not equal, but close)
    means = [read_volume(run_task(half_map_task(p1, p2, tmp_path / f"mean{c}.mrc", c or None, steps=1)).written[0]).data for c in (0, 32)]
    inner = (slice(4, -4), slice(4, -4), slice(4, -4))
    corr = float(torch.corrcoef(torch.stack([m[inner].reshape(-1) for m in means]))[0, 1])
    assert corr > 0.95


def test_half_maps_of_another_shape_than_the_observation_are_refused(half_maps, tmp_path, observed):
    p1, p2, _ = half_maps
    path, _ = observed
    with pytest.raises((SpecError, DataError), match="half|shape|box"):
        run_task(half_map_task(p1, p2, tmp_path / "r.mrc", 32, observation=path))
    assert not (tmp_path / "r.mrc").exists()
