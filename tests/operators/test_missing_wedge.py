"""missing-wedge: mask geometry at known angles, operator laws, in-painting with the gaussian prior."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoinverse.components import Likelihood, Observation
from cryoinverse.fourier import fftn, ifftn, shell_index
from cryoinverse.metrics import compare
from cryoinverse.operators.missing_wedge import MissingWedge, wedge_mask
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.samplers.flow_posterior_pseudoinverse import FlowPosteriorPseudoinverse
from tests.conftest import blob_density


def _numpy_wedge(n: int, tilt_min: float, tilt_max: float) -> np.ndarray:
    # Independent construction: coefficient (kz, ky, kx) is measured iff some tilt theta in range has
    # kz cos(theta) + kx sin(theta) = 0, scanning theta on a fine grid (tilt axis y).
    k = np.fft.fftfreq(n)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    measured = np.zeros((n, n, n), dtype=bool)
    norm = np.sqrt(kz**2 + kx**2)
    for theta in np.deg2rad(np.linspace(tilt_min, tilt_max, 4001)):
        measured |= np.abs(kz * np.cos(theta) + kx * np.sin(theta)) <= 1e-3 * np.maximum(norm, 1e-12)
    return measured | (norm == 0)


@pytest.mark.parametrize("tilts", [(-60, 60), (-45, 45), (-30, 50)])
def test_mask_matches_plane_scan(tilts):
    n = 16
    expected = _numpy_wedge(n, *tilts)
    got = wedge_mask(n, *tilts).numpy()
    assert (got == expected).mean() > 0.995  # only coefficients within 0.06 deg of the wedge edge may differ


def test_known_coefficients():
    n = 16
    m = wedge_mask(n, -60, 60)
    # k along x (tilt 0 plane contains it), along y (the tilt axis): measured; along z: missing.
    assert m[0, 0, 3] and m[0, 3, 0] and not m[3, 0, 0]
    # kz = kx: the plane at 45 degrees; measured for +-60, missing for +-30.
    assert m[2, 0, 2] and not wedge_mask(n, -30, 30)[2, 0, 2]
    # angle atan(2) = 63.4 deg: just outside +-60
    assert not m[2, 0, 1]
    # tilt axis x: k along y is now missing, along x measured.
    mx = wedge_mask(n, -60, 60, axis="x")
    assert mx[0, 0, 3] and not mx[3, 0, 0] and mx[0, 0, 0]  # the zero frequency is always measured


def test_missing_fraction_approaches_the_angular_fraction():
    # In a sphere, the missing fraction of a +-theta wedge is (90 - theta) / 90 of directions in the z-x plane.
    n = 64
    m = wedge_mask(n, -45, 45)
    inside = shell_index(n) <= n // 2
    frac = float(m[inside].double().mean())
    assert frac == pytest.approx(0.5, abs=0.02)


def test_operator_laws():
    op = MissingWedge(noise_variance=0.0)
    x = torch.randn(2, 16, 16, 16, dtype=torch.float64)
    y = op.forward(torch.randn(16, 16, 16, dtype=torch.float64))
    # A is an orthogonal projector: A A = A and <A x, z> = <x, A z>.
    torch.testing.assert_close(op.forward(op.forward(x)), op.forward(x))
    z = torch.randn_like(x)
    assert float((op.forward(x) * z).sum()) == pytest.approx(float((x * op.forward(z)).sum()), rel=1e-10)
    # pseudo-inverse: A P(x, y) = y for y in the range of A; and P keeps x outside it.
    p = op.pseudo_inverse(x, y)
    torch.testing.assert_close(op.forward(p), y.expand_as(p))
    torch.testing.assert_close(p - op.forward(p), x - op.forward(x))


def test_validation():
    with pytest.raises(ValueError, match="tilt_min"):
        MissingWedge(tilt_min=30, tilt_max=-30)
    with pytest.raises(ValueError, match="within"):
        MissingWedge(tilt_max=120)


def test_pseudoinverse_sampler_inpaints_with_a_low_resolution_mean():
    # A zero-mean stationary Gaussian prior cannot fill the wedge: the missing coefficients are
    # independent of the measured ones under it. With a mean map (a low-pass "initial model", 8 A)
    # the wedge is filled with that information and AUC-FSC rises above the degraded map's.
    ref = blob_density(32, seed=1, n_atoms=60, voxel_size=1.5)
    n = 32
    low_pass = ifftn(fftn(ref.data.double()) * (shell_index(n) <= n * 1.5 / 8)).float()
    op = MissingWedge(tilt_min=-45, tilt_max=45, noise_variance=0.0)
    g = torch.Generator().manual_seed(0)
    y = op.simulate(ref.data, g)
    prior = GaussianPrior.from_map(ref, mean=ref.with_data(low_pass))
    out = FlowPosteriorPseudoinverse(steps=30).run(prior, Likelihood([Observation(op, y)]), torch.randn(4, n, n, n, generator=g), g)
    degraded = compare(ref.with_data(y), ref)
    restored = compare(ref.with_data(out.mean(0)), ref)
    assert restored.auc > degraded.auc + 0.01, (restored.auc, degraded.auc)
    assert restored.correlation > degraded.correlation + 0.02
    # data consistency: the measured coefficients of the result are the observation's
    torch.testing.assert_close(op.forward(out.mean(0)), y, atol=1e-4, rtol=1e-4)


def test_measured_fraction():
    assert MissingWedge(tilt_min=-90, tilt_max=90).measured_fraction(8) == pytest.approx(1.0)
    assert 0 < MissingWedge().measured_fraction(16) < 1
    assert math.isclose(MissingWedge(tilt_min=-45, tilt_max=45).measured_fraction(8), float(wedge_mask(8, -45, 45).double().mean()))


# --- non-cubic boxes (tomogram crops) -----------------------------------------------------------


def _wedge_by_angle(shape: tuple[int, int, int], tilt_min: float, tilt_max: float, axis: str) -> np.ndarray:
    """Measured set from the angle of each coefficient's physical frequency (cycles per voxel), one at a time."""
    out = np.zeros(shape, dtype=bool)
    for index in np.ndindex(*shape):
        kz, ky, kx = (i / n if i <= (n - 1) // 2 else (i - n) / n for i, n in zip(index, shape))
        other = kx if axis == "y" else ky
        if kz == 0 and other == 0:
            out[index] = True  # the tilt axis: in every tilt's plane
        elif other == 0:
            out[index] = tilt_max >= 90 or tilt_min <= -90  # the plane of a 90-degree tilt
        else:
            angle = math.degrees(math.atan(-kz / other))
            out[index] = tilt_min <= angle <= tilt_max
    return out


@pytest.mark.parametrize("shape", [(12, 20, 9), (36, 20, 16), (9, 16, 24)])
@pytest.mark.parametrize("tilts, axis", [((-60, 60), "y"), ((-45, 50), "y"), ((-30, 70), "x")])
def test_non_cubic_mask_matches_the_angle_of_each_physical_frequency(shape, tilts, axis):
    want = _wedge_by_angle(shape, *tilts, axis)
    got = wedge_mask(shape, *tilts, axis=axis)
    assert tuple(got.shape) == shape
    np.testing.assert_array_equal(got.numpy(), want)
    assert 0.2 < want.mean() < 0.9  # both measured and missing coefficients are checked


def test_non_cubic_wedge_uses_physical_not_index_angles():
    # On a 12x16x9 box, index (2, 0, 1) is k = (2/12, 0, 1/9) cycles per voxel: atan(1.5) = 56.3
    # degrees from the x axis, inside +-60; index counting would say atan(2) = 63.4, outside.
    m = wedge_mask((12, 16, 9), -60, 60)
    assert m[2, 0, 1] and m[-2, 0, 1]
    assert not m[3, 0, 1]  # atan(2.25) = 66.0 degrees
    assert not wedge_mask((12, 12, 12), -60, 60)[2, 0, 1]  # on a cube the same index is 63.4 degrees


def test_non_cubic_missing_fraction_is_the_angular_fraction():
    m = wedge_mask((32, 64, 48), -45, 45)
    inside = shell_index((32, 64, 48)) <= 32
    assert float(m[inside].double().mean()) == pytest.approx(0.5, abs=0.02)


def test_operator_on_a_non_cubic_map_is_a_projector_and_inpaints():
    shape = (10, 24, 14)
    op = MissingWedge(tilt_min=-50, tilt_max=50, noise_variance=0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    ax = op.forward(x)
    torch.testing.assert_close(op.forward(ax), ax)
    z = torch.randn_like(x)
    assert float((ax * z).sum()) == pytest.approx(float((x * op.forward(z)).sum()), rel=1e-10)
    y = op.forward(torch.randn(shape, generator=g, dtype=torch.float64))
    torch.testing.assert_close(op.forward(op.pseudo_inverse(x, y)), y.expand_as(x))
    a, noise = op.fourier_diagonal(shape)
    assert torch.equal(a.bool(), wedge_mask(shape, -50, 50)) and tuple(noise.shape) == shape
    assert op.measured_fraction(shape) == pytest.approx(float(wedge_mask(shape, -50, 50).double().mean()))
