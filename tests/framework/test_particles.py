"""Particle stacks from real RELION STAR files (3.0, 3.1 with six optics groups, cryoDRGN's toy file,
cryo-ET tilt images), mixed pixel sizes, Fourier resampling against closed forms, and poses written
back into the same files with every untouched value kept as written."""

from __future__ import annotations

import math

import mrcfile
import numpy as np
import pytest
import torch

from cryoinverse.ctf import CTFParams, CTFWarning, ctf_grid
from cryoinverse.errors import DataError
from cryoinverse.mrc import MRCHeaderWarning
from cryoinverse.particles import (
    SCORE_COLUMN,
    ParticleStack,
    read_particle_stack,
    resample_images,
    write_poses_star,
)
from cryoinverse.rotations import euler_zyz_to_matrix, random_rotations
from cryoinverse.star import StarBlock, read_particles, read_star, write_star

F64 = torch.float64


def gaussian_images(n: int, pixel: float, centres, sigma: float) -> torch.Tensor:
    """Gaussians exp(-|r - c|^2 / (2 sigma^2)) (Å) sampled on n x n pixels centred at pixel n // 2: (len(centres), n, n)."""
    x = (torch.arange(n, dtype=F64) - n // 2) * pixel
    images = []
    for cx, cy in centres:
        images.append(torch.exp(-((x[None, :] - cx) ** 2 + (x[:, None] - cy) ** 2) / (2 * sigma**2)))
    return torch.stack(images)


def trigonometric_reference(image: np.ndarray, pixel: float, new_pixel: float, m: int) -> np.ndarray:
    """numpy float64: the image's periodic band-limited interpolant (complex DFT, Nyquist of an even
    edge read as a cosine), low-passed at the new Nyquist, sampled on m x m pixels of `new_pixel`
    with pixel m // 2 on pixel n // 2 and 0 beyond the image."""
    n = image.shape[-1]
    k = np.fft.fftfreq(n) * n
    t = n // 2 + (np.arange(m) - m // 2) * new_pixel / pixel
    limit = min(n / 2, n * pixel / (2 * new_pixel))
    basis = np.exp(2j * np.pi * np.outer(t, k) / n)
    basis[:, np.abs(k) > limit + 1e-9] = 0
    basis[:, np.isclose(np.abs(k), limit)] *= 0.5
    if n % 2 == 0 and np.isclose(limit, n / 2):
        basis[:, k == -n / 2] = np.cos(np.pi * t)[:, None]  # +n/2 and -n/2 share one coefficient
    basis[(t < -0.5) | (t > n - 0.5)] = 0
    return (basis @ np.fft.fft2(image) @ basis.T).real / n**2


# -- resampling --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "pixel", "new_pixel", "box"), [(16, 1.0, 0.9, None), (15, 1.0, 1.2, None), (16, 1.0, 1.5, None), (16, 1.0, 16 / 10, 14), (9, 2.0, 2.0, 12)])
def test_resampling_matches_an_independent_dft_interpolation(n, pixel, new_pixel, box):
    image = np.random.default_rng(n).normal(size=(n, n))
    out = resample_images(torch.from_numpy(image), pixel, new_pixel, box)
    m = box or round(n * pixel / new_pixel)
    np.testing.assert_allclose(out.numpy(), trigonometric_reference(image, pixel, new_pixel, m), atol=1e-11, rtol=0)



@pytest.mark.parametrize(("n", "pixel", "new_pixel", "box"), [(64, 1.0, 1.3, None), (63, 1.25, 1.24, None), (48, 2.0, 1.0, 90), (64, 1.0, 1.0, 40)])
def test_resampling_samples_a_band_limited_image_at_the_new_pixels(n, pixel, new_pixel, box):
    # A Gaussian of sigma 3 pixels is band-limited to 1e-11 at both grids' Nyquist, and ~0 at the box
    # edge; off-centre copies check that pixel n // 2 stays at the same place in Å.
    sigma = 3.0 * max(pixel, new_pixel)
    centres = [(0.0, 0.0), (7.3, -4.1)]
    out = resample_images(gaussian_images(n, pixel, centres, sigma), pixel, new_pixel, box)
    m = box or round(n * pixel / new_pixel)
    assert out.shape == (2, m, m)
    expected = gaussian_images(m, new_pixel, centres, sigma)
    offset = (torch.arange(m) - m // 2) * new_pixel  # Å from the centre
    inside = offset.abs() <= (n // 2 - 1) * pixel
    mask = inside[:, None] & inside[None, :]
    torch.testing.assert_close(out[:, mask], expected[:, mask], atol=1e-9, rtol=0)
    beyond = (offset < -(n // 2 + 0.5) * pixel) | (offset > (n - n // 2 - 0.5) * pixel)  # zero-padded
    assert (out[:, beyond] == 0).all() and (out[:, :, beyond] == 0).all()


def test_resampling_is_the_identity_at_the_same_grid_and_exact_within_a_padded_box():
    images = torch.randn(3, 17, 17, generator=torch.Generator().manual_seed(0))
    assert resample_images(images, 1.5, 1.5) is images
    padded = resample_images(images, 1.5, 1.5, box=21)
    torch.testing.assert_close(padded[:, 2:19, 2:19], images, atol=1e-5, rtol=0)
    assert float(padded[:, :2].abs().max()) == 0.0
    # Upsampling then coming back is exact for any image: zero-padding then cropping the spectrum.
    back = resample_images(resample_images(images.double(), 1.5, 0.75), 0.75, 1.5)
    torch.testing.assert_close(back, images.double(), atol=1e-9, rtol=0)


# -- reading real files ------------------------------------------------------------------------


def test_relion30_file_takes_the_pixel_size_from_detector_and_magnification(shared_data):
    d = shared_data / "particles"
    stack = read_particle_stack(d / "empiar_10076_7.star")
    assert isinstance(stack, ParticleStack) and len(stack) == 7 and stack.box == 320
    assert stack.pixel_size == pytest.approx(5 * 1e4 / 38168)  # the header says 0
    with mrcfile.open(d / "empiar_10076_7.mrc", permissive=True) as mrc:
        np.testing.assert_array_equal(stack.images.numpy(), mrc.data)
    assert stack.rotations is None and stack.shifts is None  # the file has no poses
    assert float(stack.ctf.defocus_u[2]) == 15150.7 and float(stack.ctf.amplitude_contrast[0]) == 0.07
    assert stack.particle_block == "" and stack.table["rlnMicrographName"][6] == 7


def test_cryodrgn_toy_file_takes_the_header_pixel_size(shared_data):
    with pytest.warns(MRCHeaderWarning):
        stack = read_particle_stack(shared_data / "particles" / "toy_projections.star")
    assert stack.images.shape == (1000, 30, 30) and stack.pixel_size == 1.0
    assert stack.rotations is None and stack.particle_block == "images"
    with pytest.warns(MRCHeaderWarning):
        assert read_particle_stack(shared_data / "particles" / "toy_projections.star", pixel_size=2.5, ctf=False).ctf is None


def test_tilt_images_use_the_star_pixel_size_and_a_ctf_that_never_amplifies(shared_data):
    d = shared_data / "particles"
    with pytest.warns(CTFWarning, match="219 of 219 rlnCtfBfactor values are negative .-507 to -13"):
        stack = read_particle_stack(d / "sta_testing_bin8.star")
    assert stack.images.shape == (219, 64, 64)
    assert stack.pixel_size == pytest.approx(1.96)  # detector 1.96 µm at 10000x; the header's 1 Å is wrong
    table = read_particles(d / "sta_testing_bin8.star")
    expected = euler_zyz_to_matrix(*(torch.from_numpy(table[c]) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
    torch.testing.assert_close(stack.rotations, expected)
    assert stack.shifts is None
    # RELION's exp(-B s^2/4) with B = -507 would be 1.5e7 at the corner; read as attenuation, every
    # CTF value is finite and at most the scale factor (cos(tilt)) in magnitude.
    grid = ctf_grid(stack.ctf, stack.box, stack.pixel_size)
    assert torch.isfinite(grid).all()
    assert bool((grid.abs() <= stack.ctf.scale[:, None, None] + 1e-12).all())
    assert float(grid.abs().amax(dim=(1, 2)).min()) > 0.01  # attenuated, not zeroed
    with pytest.raises(ValueError, match="bfactor must be >= 0"):
        CTFParams(defocus_u=1e4, defocus_v=1e4, bfactor=-13.0)


def _relion31_with_local_images(shared_data, tmp_path, image_size: int = 256):
    """relion31.6opticsgroups.star with its 139 rows pointing at the 5 real images of relion31.mrcs."""
    d = shared_data / "particles"
    blocks = read_star(d / "relion31.6opticsgroups.star", keep_text=True)
    stack = (d / "relion31.mrcs").resolve()
    blocks["particles"].set_column("rlnImageName", [f"{i % 5 + 1}@{stack}" for i in range(139)])
    blocks["optics"].set_column("rlnImageSize", np.full(6, image_size))
    return write_star(tmp_path / "relion31_local.star", blocks)


def test_relion31_mixed_pixel_sizes_are_refused_or_resampled(shared_data, tmp_path):
    star = _relion31_with_local_images(shared_data, tmp_path)
    with pytest.raises(DataError, match=r"optics groups 2, 5: 1.24 Å pixels, 256x256; optics groups 1, 3, 4, 6: 1.25 Å pixels, 256x256.*resample=True: to 1.24 Å"):
        read_particle_stack(star, resample=False)
    stack = read_particle_stack(star, resample=True)
    groups = stack.table["rlnOpticsGroup"]
    assert stack.pixel_size == 1.24 and stack.box == 258  # the finest pixels; 256 x 1.25 / 1.24 = 258.06
    with mrcfile.open(shared_data / "particles" / "relion31.mrcs", permissive=True) as mrc:
        raw = torch.from_numpy(mrc.data.astype(np.float32))
    row = int(np.flatnonzero(groups == 2)[0])  # a 1.24 Å image: copied into the larger box unchanged
    torch.testing.assert_close(stack.images[row, 1:257, 1:257], raw[row % 5], atol=1e-4, rtol=1e-5)
    row = int(np.flatnonzero(groups == 1)[0])  # a 1.25 Å image, interpolated
    expected = trigonometric_reference(raw[row % 5].double().numpy(), 1.25, 1.24, 258)
    np.testing.assert_allclose(stack.images[row].numpy(), expected, atol=2e-4 * np.abs(expected).max(), rtol=0)
    np.testing.assert_allclose(stack.source_pixel_sizes, np.where(np.isin(groups, [2, 5]), 1.24, 1.25))
    # Poses and CTF per row, optics groups merged: group 4 has Cs 2.6 mm.
    table = read_particles(shared_data / "particles" / "relion31.6opticsgroups.star")
    torch.testing.assert_close(stack.shifts[:, 0], -torch.from_numpy(table["rlnOriginXAngst"]))
    np.testing.assert_array_equal(stack.ctf.cs.numpy(), np.where(groups == 4, 2.6, 2.7))
    assert float(stack.ctf.voltage[0]) == 200.0
    # Resampling to a given pixel size and box (a reference map's, say).
    small = read_particle_stack(star, resample=2.5, box=100, ctf=False)
    assert small.pixel_size == 2.5 and small.images.shape == (139, 100, 100)


def test_bad_particle_files_are_reported(shared_data, tmp_path):
    d = shared_data / "particles"
    with pytest.raises(DataError, match=r"row 1: image stack Polish/job520/Micrographs/0003_shiny.mrcs not found .looked in"):
        read_particle_stack(d / "relion31.6opticsgroups.star")
    star = _relion31_with_local_images(shared_data, tmp_path, image_size=196)
    with pytest.raises(DataError, match="row 1 says rlnImageSize 196 but its stack holds 256x256 images"):
        read_particle_stack(star, resample=True)
    blocks = read_star(d / "empiar_10076_7.star", keep_text=True)
    blocks[""].set_column("rlnImageName", [f"{i + 2}@{(d / 'empiar_10076_7.mrc').resolve()}" for i in range(7)])
    with pytest.raises(DataError, match=r"row 7 asks for image 8 of .*empiar_10076_7.mrc, which holds 7"):
        read_particle_stack(write_star(tmp_path / "beyond.star", blocks))
    blocks[""].drop_column("rlnImageName")
    with pytest.raises(DataError, match="has no rlnImageName column"):
        read_particle_stack(write_star(tmp_path / "names.star", blocks))
    # Without images beside it the STAR file's folder is not enough; datadir says where they are.
    moved = write_star(tmp_path / "elsewhere.star", read_star(d / "empiar_10076_7.star", keep_text=True))
    with pytest.raises(DataError, match="image stack empiar_10076_7.mrc not found"):
        read_particle_stack(moved)
    assert len(read_particle_stack(moved, datadir=d)) == 7


# -- writing poses -----------------------------------------------------------------------------


STAR_FILES = ["relion31.6opticsgroups.star", "empiar_10076_7.star", "toy_projections.star", "sta_testing_bin8.star"]


@pytest.mark.parametrize("name", STAR_FILES)
def test_poses_round_trip_and_untouched_values_keep_their_text(shared_data, tmp_path, name):
    source = shared_data / "particles" / name
    before = read_star(source, keep_text=True)
    count = len(read_particles(source)["rlnImageName"])
    g = torch.Generator().manual_seed(3)
    rotations = random_rotations(count, g)
    shifts = (torch.rand(count, 2, generator=g, dtype=F64) - 0.5) * 20
    scores = torch.randn(count, generator=g, dtype=F64)
    out = write_poses_star(source, tmp_path / "poses.star", rotations, shifts, scores)
    after = read_star(out, keep_text=True)
    assert list(after) == list(before)  # every block, in order (optics kept)
    table = read_particles(out)
    back = euler_zyz_to_matrix(*(torch.from_numpy(table[c]) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")))
    torch.testing.assert_close(back, rotations, atol=1e-12, rtol=0)
    torch.testing.assert_close(-torch.from_numpy(np.stack([table["rlnOriginXAngst"], table["rlnOriginYAngst"]], 1)), shifts, atol=1e-12, rtol=0)
    np.testing.assert_array_equal(table[SCORE_COLUMN], scores.numpy())
    replaced = {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginX", "rlnOriginY", SCORE_COLUMN}
    for block_name, block in before.items():
        kept = after[block_name]
        assert [c for c in kept.table if c not in replaced] == [c for c in block.table if c not in replaced]
        for column, text in block.text.items():
            if column not in replaced:
                np.testing.assert_array_equal(kept.text[column], text, err_msg=f"{name}: {column}")
    # A file before RELION 3.1 also gets pixel origins, where its pixel size is known.
    pixel = {"empiar_10076_7.star": 5e4 / 38168, "sta_testing_bin8.star": 1.96}.get(name)
    if pixel is not None:
        np.testing.assert_allclose(table["rlnOriginX"], table["rlnOriginXAngst"] / pixel)
        np.testing.assert_allclose(table["rlnOriginY"], table["rlnOriginYAngst"] / pixel)
    else:
        assert "rlnOriginX" not in table


def test_a_particle_stack_writes_poses_that_read_back(shared_data, tmp_path):
    d = shared_data / "particles"
    with pytest.warns(CTFWarning):
        stack = read_particle_stack(d / "sta_testing_bin8.star")
    rotations = random_rotations(len(stack), torch.Generator().manual_seed(4))
    shifts = torch.full((len(stack), 2), 1.5, dtype=F64)
    out = write_poses_star(stack, tmp_path / "poses.star", rotations, shifts, torch.zeros(len(stack)))
    with pytest.warns(CTFWarning):
        again = read_particle_stack(out, datadir=d)
    torch.testing.assert_close(again.rotations, rotations, atol=1e-12, rtol=0)
    torch.testing.assert_close(again.shifts, shifts)
    torch.testing.assert_close(again.images, stack.images)
    # Pixel origins (the file has no optics block) follow the shifts: -1.5 Å / 1.96 Å.
    np.testing.assert_allclose(again.table["rlnOriginX"], -1.5 / 1.96)
    with pytest.raises(ValueError, match=r"rotations must be \(219, 3, 3\)"):
        write_poses_star(stack, tmp_path / "bad.star", rotations[:5], shifts)


def test_old_pixel_origins_are_updated_or_dropped_never_left_contradicting(tmp_path):
    particles = StarBlock("particles", table={"rlnImageName": np.array(["1@a.mrcs", "2@a.mrcs"]), "rlnOriginX": np.array([3.0, 4.0]), "rlnOriginY": np.array([0.0, 1.0])})
    blocks = {"optics": StarBlock("optics", table={"rlnOpticsGroup": np.array([1])}), "particles": particles}
    shifts = torch.tensor([[1.0, 2.0], [-2.0, 0.5]], dtype=F64)
    rotations = torch.eye(3, dtype=F64).expand(2, 3, 3)
    with pytest.warns(UserWarning, match="rlnOriginX/Y .pixels. dropped"):
        table = read_particles(write_poses_star(blocks, tmp_path / "a.star", rotations, shifts))
    assert "rlnOriginX" not in table and table["rlnOriginXAngst"].tolist() == [-1.0, 2.0]
    table = read_particles(write_poses_star(blocks, tmp_path / "b.star", rotations, shifts, pixel_size=2.0))
    assert table["rlnOriginX"].tolist() == [-0.5, 1.0] and table["rlnOriginY"].tolist() == [-1.0, -0.25]
    assert particles.table["rlnOriginX"].tolist() == [3.0, 4.0]  # the source blocks are not changed


def test_key_value_blocks_and_awkward_text_survive_a_round_trip(tmp_path):
    text = """
# version 50001

data_general

_rlnTomoSubTomosAre2DStacks                       1
_rlnComment   'two words'

data_particles

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnClassNumber #3
_rlnNote #4
1@stack.mrcs   0.070  3  "_looks like a name"
2@stack.mrcs   1.322898e+05  4  "#not a comment"
"""
    source = tmp_path / "in.star"
    source.write_text(text)
    before = read_star(source, keep_text=True)
    after = read_star(write_star(tmp_path / "out.star", before), keep_text=True)
    assert after["general"].values == {"rlnTomoSubTomosAre2DStacks": 1, "rlnComment": "two words"}
    assert after["general"].text == before["general"].text
    assert after["particles"].text["rlnAngleRot"].tolist() == ["0.070", "1.322898e+05"]
    assert after["particles"].table["rlnNote"].tolist() == ["_looks like a name", "#not a comment"]
    assert math.isclose(after["particles"].table["rlnAngleRot"][1], 132289.8)
