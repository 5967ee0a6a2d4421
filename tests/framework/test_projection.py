"""projection: `project_fourier(..., interpolation="trilinear")` against the independent real-space
projector `project_real` (which reproduces cryoDRGN's toy projections) on cryoDRGN's sharp toy map at
its own rotations, with sub-pixel shifts, on smooth blobs, white noise and box corners; its gradient,
batches, dtypes and the errors a user sees. The sinc reading's checks (Fourier-slice theorem, analytic
line integrals, exactness on the grid) are in tests/operators/test_projection.py."""

from __future__ import annotations

import inspect

import mrcfile
import numpy as np
import pytest
import torch

from cryoinverse import projection
from cryoinverse.projection import project_fourier, project_real
from cryoinverse.rotations import axis_rotation, random_rotations

F64 = torch.float64
TRILINEAR = dict(interpolation="trilinear")


def relative_errors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a - b|| / ||b|| per image over the last two axes."""
    return (a - b).flatten(-2).norm(dim=-1) / b.flatten(-2).norm(dim=-1)


def toy(shared_data, count: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """cryoDRGN's 30^3 toy map (180 non-zero voxels) and its first `count` rotations (its R is ours)."""
    d = shared_data / "particles"
    with mrcfile.open(d / "toymodel_small_nocenter.mrc") as mrc:
        volume = torch.from_numpy(mrc.data.astype(np.float64))
    rotations = torch.from_numpy(np.load(d / "toy_rot_trans.npz")["rotations"][:count].astype(np.float64))
    return volume, rotations


def test_trilinear_reading_reproduces_real_space_projections_of_the_toy_map(shared_data):
    # Measured on these 50 rotations: mean 0.86%, worst 1.43%. The sinc reading (the default) models
    # the band-limited map instead: 11.7% mean, 7.5% at best.
    volume, rotations = toy(shared_data)
    real = project_real(volume, rotations)
    errors = relative_errors(project_fourier(volume, rotations, **TRILINEAR), real)
    assert float(errors.mean()) < 0.01
    assert float(errors.max()) < 0.02
    assert float(relative_errors(project_fourier(volume, rotations, interpolation="sinc"), real).min()) > 0.05
    # On the grid the aliases left out add up coherently: measured 3.6-4.4%, as documented.
    grid = torch.stack([torch.eye(3, dtype=F64), axis_rotation("x", 90.0), axis_rotation("z", 90.0), axis_rotation("y", -90.0)])
    assert float(relative_errors(project_fourier(volume, grid, **TRILINEAR), project_real(volume, grid)).max()) < 0.05


def test_trilinear_shifts_are_sub_pixel_shifts_of_the_line_sums(shared_data):
    # project_real shifts its sampling grid before interpolating; the trilinear reading puts the phase
    # on every folded term. Measured 0.78% mean; the same phase ramp on the cropped image instead: 7%.
    volume, rotations = toy(shared_data)
    pixel = 2.0
    shifts = torch.randn(rotations.shape[0], 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 3 * pixel  # Å
    errors = relative_errors(project_fourier(volume, rotations, shifts, pixel, **TRILINEAR), project_real(volume, rotations, shifts, pixel))
    assert float(errors.mean()) < 0.01


def test_trilinear_reading_tracks_real_on_smooth_maps_and_white_noise():
    # Smooth blobs hardly alias: measured 0.4-0.7%. White noise is the sharpest map there is: 6-7%
    # (the sinc reading: 65%). Odd and even boxes.
    n = 24
    c = torch.arange(n, dtype=F64) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    centres = [(3.0, -2.0, 1.5), (-4.0, 1.0, -2.5), (0.5, 4.0, 3.0)]
    blobs = sum(torch.exp(-((x - a) ** 2 + (y - b) ** 2 + (z - h) ** 2) / (2 * 1.5**2)) for a, b, h in centres)
    rotations = random_rotations(6, torch.Generator().manual_seed(4))
    assert float(relative_errors(project_fourier(blobs, rotations, **TRILINEAR), project_real(blobs, rotations)).max()) < 0.01
    for n in (12, 13):
        noise = torch.randn(n, n, n, generator=torch.Generator().manual_seed(n), dtype=F64)
        errors = relative_errors(project_fourier(noise, rotations, **TRILINEAR), project_real(noise, rotations))
        assert float(errors.max()) < 0.1


def test_content_projected_out_of_the_image_is_dropped_not_wrapped():
    # A corner voxel (r = (-6, -6, -6)) turned 45 degrees about z lands at x = 0, y = -8.5, outside the
    # 12 x 12 image: project_real shows nothing. The trilinear reading forms its image with period
    # p > (sqrt(3) + 1) n / 2, so no copy wraps in: measured peak 0.005 (the sinc reading: 0.08).
    n = 12
    v = torch.zeros(n, n, n, dtype=F64)
    v[0, 0, 0] = 1.0
    rotation = axis_rotation("z", 45.0)[None]
    assert float(project_real(v, rotation).abs().max()) == 0.0
    assert float(project_fourier(v, rotation, **TRILINEAR).abs().max()) < 0.02


def test_trilinear_reading_is_linear_batched_and_differentiable():
    g = torch.Generator().manual_seed(12)
    rotations = random_rotations(3, g)
    shifts = torch.tensor([[0.7, -1.2], [2.0, 0.4], [-0.3, 0.0]], dtype=F64)
    v = torch.randn(9, 9, 9, generator=g, dtype=F64)
    batch = torch.stack([v, -2 * v])
    out = project_fourier(batch, rotations, shifts, **TRILINEAR)
    assert out.shape == (2, 3, 9, 9)
    torch.testing.assert_close(out[1], -2 * project_fourier(v, rotations, shifts, **TRILINEAR))
    single = project_fourier(v.float(), rotations.float(), shifts.float(), **TRILINEAR)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), out[0], atol=1e-4, rtol=1e-4)
    x = torch.randn(2, 5, 5, 5, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: project_fourier(x, rotations[:2], shifts[:2], **TRILINEAR), (x,), eps=1e-6, atol=1e-6)


def test_bad_arguments_are_reported():
    v = torch.zeros(6, 6, 6)
    rotations = torch.eye(3)[None]
    with pytest.raises(ValueError, match=r"interpolation must be 'sinc' or 'trilinear'; got 'cubic'"):
        project_fourier(v, rotations, interpolation="cubic")
    with pytest.raises(ValueError, match=r"alias_threshold must be in \[1e-4, 1\); got 0"):
        project_fourier(v, rotations, interpolation="trilinear", alias_threshold=0)
    for interpolation in ("sinc", "trilinear"):
        with pytest.raises(ValueError, match="oversampling must be an integer >= 1; got 1.5"):
            project_fourier(v, rotations, oversampling=1.5, interpolation=interpolation)


def test_trilinear_defaults_are_the_documented_ones():
    # The module docstring's accuracy table measures these defaults: keep the two in step.
    params = inspect.signature(project_fourier).parameters
    assert params["alias_threshold"].default == 0.03 and params["oversampling"].default is None
    assert "threshold 0.03 (*)" in projection.__doc__ and "spectrum padded 3 times" in projection.__doc__
