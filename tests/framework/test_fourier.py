"""Fourier shells of boxes of any shape, and FSC on them, against float64 references built
coefficient by coefficient from explicit physical frequencies (cycles per voxel)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from cryoinverse.fourier import (
    box_text,
    compact_shape,
    expand_shells,
    frequency_grid,
    grid_shape,
    n_shells,
    nyquist,
    reference_edge,
    shell_average,
    shell_counts,
    shell_index,
    shell_resolutions,
    spectrum_for_box,
)
from cryoinverse.metrics import compare, fsc
from cryoinverse.spectra import half_map_statistics, radial_power
from cryoinverse.volume import Volume

SHAPES = [(12, 16, 9), (9, 30, 14), (7, 7, 11), (36, 20, 8)]  # the last has rounding ties (|k| n_ref = 4.5)


def frequency(i: int, n: int) -> float:
    """Cycles per voxel of index i on an axis of n voxels: i / n up to the middle, then (i - n) / n."""
    return i / n if i <= (n - 1) // 2 else (i - n) / n


def radii_by_loop(shape: tuple[int, int, int]) -> np.ndarray:
    """|k| n_ref of every coefficient, one at a time, n_ref the longest edge."""
    n_ref = max(shape)
    out = np.empty(shape, dtype=np.float64)
    for i, j, l in itertools.product(*(range(n) for n in shape)):
        out[i, j, l] = math.sqrt(frequency(i, shape[0]) ** 2 + frequency(j, shape[1]) ** 2 + frequency(l, shape[2]) ** 2) * n_ref
    return out


def shells_by_loop(shape: tuple[int, int, int]) -> np.ndarray:
    """round(|k| n_ref) of every coefficient (shapes without rounding ties only)."""
    radii = radii_by_loop(shape)
    assert not _ties(radii).any(), "a tie (|k| n_ref = m + 1/2) makes the reference ambiguous"
    return np.round(radii).astype(np.int64)


def _ties(radii: np.ndarray) -> np.ndarray:
    return np.abs(radii - np.floor(radii) - 0.5) < 1e-9


def fsc_by_loop(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FSC of shells 0..n_ref // 2 from numpy's unnormalised FFT, summed shell by shell."""
    shells = shells_by_loop(a.shape)
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    curve = []
    for r in range(max(a.shape) // 2 + 1):
        m = shells == r
        curve.append(np.sum(fa[m] * np.conj(fb[m])).real / np.sqrt(np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2)))
    return np.array(curve)


@pytest.mark.parametrize("shape", SHAPES, ids=box_text)
def test_shells_of_a_non_cubic_box_are_bands_of_physical_frequency(shape):
    radii = radii_by_loop(shape)
    ties = _ties(radii)
    want = np.round(radii).astype(np.int64)  # numpy rounds ties to even, as torch does
    got = shell_index(shape)
    assert tuple(got.shape) == shape and got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy()[~ties], want[~ties])
    assert set(np.abs(got.numpy()[ties] - radii[ties]).round(6).tolist()) <= {0.5}  # a tie goes to one of its two shells
    assert n_shells(shape) == want.max() + 1
    assert nyquist(shape) == max(shape) // 2 == reference_edge(shape) // 2
    counts = shell_counts(shape)
    np.testing.assert_array_equal(counts.numpy(), np.bincount(want.ravel(), minlength=n_shells(shape)))
    assert bool((counts[: nyquist(shape) + 1] > 0).all())  # the longest axis puts a coefficient in every shell to Nyquist
    kz, ky, kx = frequency_grid(shape)
    assert float(kz[1, 0, 0]) == 1 / shape[0] and float(kx[0, 0, -1]) == -1 / shape[2]


def test_one_frequency_is_one_shell_and_one_resolution_on_every_box():
    # A coefficient of physical frequency |k| (cycles per voxel) lies in shell round(|k| n_ref), whose
    # resolution n_ref * voxel / r is voxel / |k| within half a shell, on cubes and other boxes alike.
    voxel = 1.7
    for shape, index in (((12, 16, 9), (3, 0, 0)), ((16, 16, 16), (0, 4, 0)), ((20, 8, 40), (5, 2, 0))):
        k = math.sqrt(sum(frequency(i, n) ** 2 for i, n in zip(index, shape)))
        r = int(shell_index(shape)[index])
        assert r == round(k * max(shape))
        assert float(shell_resolutions(shape, voxel)[r]) == pytest.approx(voxel / k, rel=0.5 / r)  # within half a shell
    assert float(shell_resolutions((12, 16, 9), voxel)[4]) == pytest.approx(16 * voxel / 4)
    assert math.isinf(float(shell_resolutions((12, 16, 9), voxel)[0]))


@pytest.mark.parametrize("n", [8, 9, 16, 17])
def test_a_cube_keeps_the_shells_of_an_edge(n):
    assert grid_shape(n) == (n, n, n) and compact_shape((n, n, n)) == n and box_text(n) == f"{n}^3"
    assert torch.equal(shell_index(n), shell_index((n, n, n)))
    np.testing.assert_array_equal(shell_index(n).numpy(), shells_by_loop((n, n, n)))
    assert n_shells(n) == n_shells((n, n, n)) == int(round(math.sqrt(3) * (n // 2))) + 1
    assert nyquist(n) == n // 2
    assert compact_shape(torch.Size([n, n + 1, n])) == (n, n + 1, n)


def test_shell_average_and_expand_shells_agree_with_a_loop():
    shape = (12, 16, 9)
    g = torch.Generator().manual_seed(0)
    values = torch.rand(2, *shape, generator=g, dtype=torch.float64)
    shells = shells_by_loop(shape)
    got = shell_average(values)
    assert got.shape == (2, n_shells(shape))
    for r in range(n_shells(shape)):
        np.testing.assert_allclose(got[:, r].numpy(), values.numpy()[:, shells == r].mean(axis=1), rtol=1e-12)
    per_shell = torch.arange(n_shells(shape), dtype=torch.float64) ** 2
    np.testing.assert_array_equal(expand_shells(per_shell, shape).numpy(), shells.astype(np.float64) ** 2)
    # a spectrum given to Nyquist (9 shells) is held to the corner (14 shells) on this box
    held = spectrum_for_box([1.0] * 8 + [2.0], shape)
    assert n_shells(shape) == shells.max() + 1 == 14
    assert held.shape == (14,) and float(held[-1]) == 2.0
    with pytest.raises(ValueError, match="a 12x16x9 box needs at least 9"):
        spectrum_for_box([1.0] * 8, shape)


def test_shell_average_of_an_empty_shell_is_zero_not_nan():
    # The boxes tried here have no empty shell (the longest axis fills 0..Nyquist, the corners are
    # dense), so the guard is checked with a shell whose coefficients are all zero on purpose.
    shape = (8, 12, 10)
    values = torch.ones(shape, dtype=torch.float64)
    values[shell_index(shape) == 3] = 0.0
    average = shell_average(values)
    assert bool(torch.isfinite(average).all()) and float(average[3]) == 0.0 and float(average[4]) == 1.0


def correlated_pair(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A map with 1/(1 + shell) amplitudes and a noisy, rescaled copy: an FSC that falls with frequency."""
    rng = np.random.default_rng(seed)
    a = np.fft.ifftn(np.fft.fftn(rng.standard_normal(shape)) / (1.0 + shells_by_loop(shape))).real + 0.3
    return a, 0.7 * a + 0.2 * rng.standard_normal(shape)


@pytest.mark.parametrize("shape", SHAPES[:3], ids=box_text)
def test_fsc_of_non_cubic_maps_matches_a_float64_loop(shape):
    a, b = correlated_pair(shape, seed=sum(shape))
    want = fsc_by_loop(a, b)
    got = fsc(torch.from_numpy(a), torch.from_numpy(b))
    assert got.dtype == torch.float64 and got.shape == (max(shape) // 2 + 1,)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    assert want[1] - want[-1] > 0.2  # a falling curve, not a trivial one
    got32 = fsc(torch.from_numpy(a.astype(np.float32)), torch.from_numpy(b.astype(np.float32)))
    np.testing.assert_allclose(got32.numpy(), want, atol=1e-5)
    # the report's curve: shell r at n_ref * voxel / r Angstrom
    c = compare(Volume(torch.from_numpy(a).float(), 2.5), Volume(torch.from_numpy(b).float(), 2.5))
    assert [p[0] for p in c.curve] == pytest.approx([max(shape) * 2.5 / r for r in range(1, max(shape) // 2 + 1)])
    assert [p[1] for p in c.curve] == pytest.approx(want[1:].tolist(), abs=1e-5)


@pytest.mark.parametrize("shape", [(16, 16, 16), (12, 32, 20), (24, 10, 30)], ids=box_text)
def test_fsc_resolution_is_the_physical_cutoff_whatever_the_box(shape):
    # b is a with every coefficient above 0.2 cycles per voxel removed (5 voxels, 7.5 A at 1.5 A):
    # FSC is 1 in shells wholly below the cut, 0 wholly above, so FSC-0.5 falls at 7.5 A within a shell.
    rng = np.random.default_rng(1)
    a = rng.standard_normal(shape)
    kz, ky, kx = np.meshgrid(*(np.fft.fftfreq(n) for n in shape), indexing="ij")
    b = np.fft.ifftn(np.fft.fftn(a) * (np.sqrt(kz**2 + ky**2 + kx**2) < 0.2)).real
    c = compare(Volume(torch.from_numpy(b).float(), 1.5), Volume(torch.from_numpy(a).float(), 1.5))
    shell_width = 1.5 * max(shape) / (0.2 * max(shape)) ** 2  # resolution change of one shell at the cut
    assert c.resolution_05 == pytest.approx(7.5, abs=shell_width)


def test_half_map_statistics_and_radial_power_on_a_non_cubic_box():
    shape = (16, 40, 24)
    g = torch.Generator().manual_seed(3)
    signal = torch.randn(shape, generator=g, dtype=torch.float64)
    h1 = signal + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    h2 = signal + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    stats = half_map_statistics(h1, h2)
    assert all(v.shape == (n_shells(shape),) and bool(torch.isfinite(v).all()) for v in stats.values())
    # white signal of power 1 and half-map noise of power 0.25: FSC = 1 / 1.25, noise 0.25 (shells
    # 2..Nyquist, weighted by their coefficients: about 15000, so a standard error near 0.003)
    top = nyquist(shape) + 1
    w = shell_counts(shape)[2:top].double()

    def mean(v: torch.Tensor) -> float:
        return float((v[2:top] * w).sum() / w.sum())

    assert mean(stats["fsc"]) == pytest.approx(0.8, abs=0.015)
    assert mean(stats["noise_half"]) == pytest.approx(0.25, rel=0.03)
    assert mean(radial_power(signal)) == pytest.approx(1.0, rel=0.03)
