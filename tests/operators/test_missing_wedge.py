"""missing-wedge: mask geometry at known angles, operator laws, in-painting with the gaussian prior."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from cryoinverse.components import Likelihood, Observation, PrepareContext
from cryoinverse.errors import SpecError
from cryoinverse.fourier import fftn, ifftn, n_shells, shell_index
from cryoinverse.metrics import compare
from cryoinverse.mrc import read_volume
from cryoinverse.operators.missing_wedge import MissingWedge, wedge_mask
from cryoinverse.priors.gaussian import GaussianPrior
from cryoinverse.samplers.flow_posterior_pseudoinverse import FlowPosteriorPseudoinverse
from cryoinverse.specs import load_spec
from cryoinverse.spectra import background_noise_power, half_map_statistics
from cryoinverse.testing import check_operator
from cryoinverse.volume import Volume
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


# --- tomography inputs: tilt files, odd/even tomograms, background noise ---------------------------


def _at_minus_k(values: torch.Tensor) -> torch.Tensor:
    """values[(-i) mod n] on each axis: the coefficient at -k for every k."""
    index = np.ix_(*(np.negative(np.arange(n)) % n for n in values.shape))
    return torch.from_numpy(values.numpy()[index])


def _tilt_file(folder, angles, name="TS_01.tlt"):
    path = folder / name
    path.write_text("".join(f"{a:7.2f}\n" for a in angles) + "\n")
    return path


def test_tilt_file_sets_the_range(tmp_path):
    angles = [0, 3, -3, 6, -6, 9, -9, -57.0, 63.0, 60.0]  # dose-symmetric order, asymmetric range
    op = MissingWedge(tilt_file=_tilt_file(tmp_path, angles), noise_variance=0.01)
    assert (op.tilt_min, op.tilt_max) == (-57.0, 63.0)
    assert torch.equal(op.mask((11, 21, 15)), wedge_mask((11, 21, 15), -57.0, 63.0))
    # on even edges the Nyquist coefficients, their own partners, are measured when k or -k is
    even = op.mask((12, 20, 16))
    geometric = wedge_mask((12, 20, 16), -57.0, 63.0)
    assert torch.equal(even, geometric | _at_minus_k(geometric)) and not torch.equal(even, geometric)
    assert torch.equal(even, _at_minus_k(even))
    # an explicit range that agrees with the file is accepted; one that does not is refused, naming both
    assert MissingWedge(tilt_file=tmp_path / "TS_01.tlt", tilt_min=-57.0).tilt_max == 63.0
    with pytest.raises(ValueError, match=r"tilt_max = 60 disagrees with tilt_file .*TS_01.tlt \(63\); give one or the other"):
        MissingWedge(tilt_file=tmp_path / "TS_01.tlt", tilt_max=60.0)
    with pytest.raises(ValueError, match="discrete_tilts needs tilt_file"):
        MissingWedge(discrete_tilts=True)


def test_discrete_tilts_measure_only_their_planes(tmp_path):
    # Tilts -45, 0, 45 on a 16^3 cube, planes one Fourier sample thick: exactly the index planes
    # i_z = 0, i_z = -i_x and i_z = i_x (the tilt axis y lies in all three).
    op = MissingWedge(tilt_file=_tilt_file(tmp_path, [-45, 0, 45]), discrete_tilts=True, noise_variance=0.01)
    n = 16
    i = np.fft.fftfreq(n) * n
    iz, iy, ix = np.meshgrid(i, i, i, indexing="ij")
    planes = (iz == 0) | (iz == -ix) | (iz == ix)
    np.testing.assert_array_equal(op.mask(n).numpy(), planes)
    assert op.measured_fraction(n) < MissingWedge(tilt_min=-45, tilt_max=45).measured_fraction(n)
    # tilts every 1 degree over -60..60: below the Crowther frequency (here shell 57) the planes fill the
    # wedge; what they add lies within half a sample of the outermost planes
    dense = MissingWedge(tilt_file=_tilt_file(tmp_path, range(-60, 61), "dense.tlt"), discrete_tilts=True).mask(n)
    wedge = wedge_mask(n, -60, 60)
    assert bool(dense[wedge].all())
    extra = dense & ~wedge
    kz, kx = (torch.from_numpy(a) for a in (iz, ix))
    edge_distance = torch.minimum(*((kz * math.cos(t) + kx * math.sin(t)).abs() for t in (math.radians(60), math.radians(-60))))
    assert int(extra.sum()) > 0 and float(edge_distance[extra].max()) <= 0.5 + 1e-9


def test_dose_limit_ends_each_plane_where_its_dose_destroyed_the_signal(tmp_path):
    """Tilts -45 and 45 with no dose keep whole planes; tilt 0 after 60 e/A^2 keeps |k| up to the frequency
    where 60 e/A^2 is the optimal exposure 2.51284 (0.245 k^-1.665 + 2.81) of Grant & Grigorieff (2015)."""
    from cryoinverse.operators.missing_wedge import dose_limit_frequency
    from tests.framework.test_tilts import relion_tilt_series

    star = tmp_path / "TS_01.star"
    star.write_text(relion_tilt_series("TS_01", [-45.0, 0.0, 45.0], None, [0.0, 60.0, 0.0]))
    op = MissingWedge(tilt_file=star, discrete_tilts=True, dose_limit=True, noise_variance=0.01)
    with pytest.raises(SpecError, match="dose_limit: the map's voxel size is needed"):
        op.mask(16)
    voxel = 4.0
    op.prepare(PrepareContext(shape=(16, 16, 16), voxel_size=voxel, device=torch.device("cpu")))
    k_limit = ((60.0 / 2.51284 - 2.81) / 0.245) ** (-1 / 1.665)  # 1/A, solved by hand from the formula
    assert dose_limit_frequency(60.0) == pytest.approx(k_limit, rel=1e-12)
    assert dose_limit_frequency(2.51284 * 2.81) == math.inf  # below the critical exposure's floor: no limit
    n = 16
    i = np.fft.fftfreq(n) * n
    iz, iy, ix = np.meshgrid(i, i, i, indexing="ij")
    radius_a = np.sqrt(iz**2 + iy**2 + ix**2) / (n * voxel)  # 1/A
    want = (iz == -ix) | (iz == ix) | ((iz == 0) & (radius_a <= k_limit))
    np.testing.assert_array_equal(op.mask(n).numpy(), want)
    assert 0 < int(((iz == 0) & ~want).sum())  # the limit cut something on this box
    # the same doses as SerialEM records them: the same planes
    from tests.framework.test_tilts import mdoc

    serialem = tmp_path / "TS_01.mdoc"
    serialem.write_text(mdoc([{"TiltAngle": a, "PriorRecordDose": d} for a, d in ((-45.0, 0.0), (0.0, 60.0), (45.0, 0.0))]))
    from_mdoc = MissingWedge(tilt_file=serialem, discrete_tilts=True, dose_limit=True, noise_variance=0.01)
    from_mdoc.prepare(PrepareContext(shape=(16, 16, 16), voxel_size=voxel, device=torch.device("cpu")))
    np.testing.assert_array_equal(from_mdoc.mask(n).numpy(), want)


def test_dose_limit_at_other_voltages(tmp_path):
    """N_e(k) is 0.8 times lower at 200 kV (Grant & Grigorieff 2015), 0.532 at 100 kV, linear in between:
    the same pre-exposure then destroys more; the voltage comes from the field, else the tilt file."""
    from cryoinverse.operators.missing_wedge import critical_exposure_factor, dose_limit_frequency
    from tests.framework.test_tilts import mdoc

    assert [critical_exposure_factor(v) for v in (300, 200, 100, 250, 120)] == pytest.approx([1.0, 0.8, 0.532, 0.9, 0.5856], rel=1e-12)
    for bad in (80.0, 400.0, math.nan):
        with pytest.raises(ValueError, match="outside 100-300 kV"):
            critical_exposure_factor(bad)
    k_200 = ((60.0 / (2.51284 * 0.8) - 2.81) / 0.245) ** (-1 / 1.665)
    assert dose_limit_frequency(60.0, 200.0) == pytest.approx(k_200, rel=1e-12)
    assert dose_limit_frequency(60.0, 200.0) < dose_limit_frequency(60.0)
    assert dose_limit_frequency(2.51284 * 2.81 * 0.8 * (1 - 1e-9), 200.0) == math.inf  # at the floor: no limit

    path = tmp_path / "TS_01.mdoc"
    path.write_text(mdoc([{"TiltAngle": a, "PriorRecordDose": d} for a, d in ((-45.0, 0.0), (0.0, 60.0), (45.0, 0.0))],
                         header="Voltage = 200\n"))
    ctx = PrepareContext(shape=(16, 16, 16), voxel_size=4.0, device=torch.device("cpu"))
    masks = {}
    for name, voltage in (("file", None), ("300", 300.0), ("200", 200.0)):
        op = MissingWedge(tilt_file=path, discrete_tilts=True, dose_limit=True, voltage=voltage, noise_variance=0.01)
        op.prepare(ctx)
        masks[name] = op.mask(16)
    assert torch.equal(masks["file"], masks["200"])  # the file's Voltage = 200
    assert int(masks["300"].sum()) > int(masks["200"].sum())  # 300 kV keeps more of the 0 tilt's plane
    with pytest.raises(ValueError, match="voltage is used by dose_limit only"):
        MissingWedge(tilt_file=path, voltage=200.0)
    with pytest.raises(ValueError, match="voltage: 400 kV is outside"):
        MissingWedge(tilt_file=path, discrete_tilts=True, dose_limit=True, voltage=400.0)
    path.write_text(path.read_text().replace("Voltage = 200", "Voltage = 0"))
    with pytest.raises(ValueError, match=r"voltage: 0 kV is outside 100-300 kV.*recorded in tilt_file .*TS_01.mdoc; give voltage"):
        MissingWedge(tilt_file=path, discrete_tilts=True, dose_limit=True)
    MissingWedge(tilt_file=path, discrete_tilts=True, dose_limit=True, voltage=300.0)  # the field overrides the file


def test_dose_limit_and_tomogram_need_what_they_use(tmp_path):
    with pytest.raises(ValueError, match="dose_limit needs discrete_tilts"):
        MissingWedge(tilt_file=_tilt_file(tmp_path, [-30, 0, 30]), dose_limit=True)
    with pytest.raises(ValueError, match=r"dose_limit: tilt_file .*TS_01.tlt gives no doses"):
        MissingWedge(tilt_file=tmp_path / "TS_01.tlt", discrete_tilts=True, dose_limit=True)
    with pytest.raises(ValueError, match="tomogram names a tomogram of a RELION tilt_file; give tilt_file"):
        MissingWedge(tomogram="TS_01")


def test_a_relion_tomograms_star_gives_aligned_range_and_half_tomograms_to_a_task(tmp_path, write_map):
    """The task names tomograms.star and the tomogram: its aligned tilts set the wedge, its half-set tomograms
    (paths relative to the RELION project) are the odd/even halves: the observation and the noise come from them."""
    from cryoinverse.runner import execute
    from tests.framework.test_tilts import relion_project

    relion_project(tmp_path)
    shape = (16, 16, 16)
    clean = blob_density(16)
    m = wedge_mask(shape, -50.2, 54.9)
    g = torch.Generator().manual_seed(3)
    halves = []
    for half in (1, 2):
        noisy = clean.data.double() + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)
        halves.append(clean.with_data(ifftn(m * fftn(noisy)).float()))
        write_map(f"Tomograms/job007/tomograms/rec_TS_01_half{half}.mrc", halves[-1])
    task = tmp_path / "task.toml"
    task.write_text(
        'device = "cpu"\nseed = 0\n[prior]\nkind = "gaussian"\n[sampler]\nkind = "flow-posterior-pseudoinverse"\nsteps = 2\n'
        '[operator]\nkind = "missing-wedge"\ntilt_file = "Tomograms/job007/tomograms.star"\ntomogram = "TS_01"\n'
    )
    spec = load_spec(task)
    op = spec.operator
    assert (op.tilt_min, op.tilt_max) == (-50.2, 54.9)  # rlnTomoYTilt, not the nominal -51..54
    assert op.half_maps == [(tmp_path / "Tomograms/job007/tomograms" / f"rec_TS_01_half{h}.mrc").resolve() for h in (1, 2)]
    assert op.tilt_series.doses == (30.0, 6.0, 0.0, 3.0, 33.0)
    report = execute(spec).report
    assert "half_maps" in report  # the reference-free check of odd/even restorations ran
    torch.testing.assert_close(op.default_observation().data, 0.5 * (halves[0].data + halves[1].data))


def test_tilt_file_relative_to_the_task_file_and_its_errors(tmp_path, write_map):
    (tmp_path / "tilts").mkdir()
    _tilt_file(tmp_path / "tilts", [-54, -51, 0, 51, 57], "TS_01.rawtlt")
    write_map("tomogram.mrc", blob_density(16))
    task = tmp_path / "task.toml"
    body = (
        'device = "cpu"\n[prior]\nkind = "gaussian"\n[sampler]\nkind = "flow-posterior-pseudoinverse"\nsteps = 2\n'
        '[inputs]\nobservation = "tomogram.mrc"\n[operator]\nkind = "missing-wedge"\n'
    )
    task.write_text(body + 'tilt_file = "tilts/TS_01.rawtlt"\n')
    op = load_spec(task).operator
    assert op.tilt_file == tmp_path / "tilts" / "TS_01.rawtlt" and (op.tilt_min, op.tilt_max) == (-54.0, 57.0)
    (tmp_path / "tilts" / "bad.tlt").write_text("-54\n-51\n\n0,5\n")
    task.write_text(body + 'tilt_file = "tilts/bad.tlt"\n')
    with pytest.raises(SpecError) as info:
        load_spec(task)
    assert f"{task}: [operator] tilt file {tmp_path / 'tilts' / 'bad.tlt'}: line 4: '0,5' is not a number" in str(info.value)
    task.write_text(body + 'tilt_file = "tilts/none.tlt"\n')
    with pytest.raises(SpecError, match="none.tlt: file not found"):
        load_spec(task)


def test_one_noise_source_and_the_old_default():
    assert MissingWedge().noise_variance == 1e-4  # task files that give no noise keep working
    assert MissingWedge(noise_power=[0.1] * 9).noise_variance is None
    for zero in (0, 0.0):  # noise-free is a noise level (0 == False must not read as "not given")
        wedge = MissingWedge(noise_variance=zero)
        assert wedge.noise_variance == 0
        x = torch.randn(12, 12, 12, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(wedge.simulate(x, torch.Generator().manual_seed(1)), wedge.forward(x[None])[0])
    with pytest.raises(ValueError, match="give only one of noise_variance, noise_power, half_maps, background_noise; got noise_variance, background_noise"):
        MissingWedge(noise_variance=0.1, background_noise=True)
    with pytest.raises(ValueError, match="got noise_power, half_maps"):
        MissingWedge(noise_power=[1.0] * 9, half_maps=["a.mrc", "b.mrc"])
    with pytest.raises(ValueError, match="half_maps: needs exactly two maps"):
        MissingWedge(half_maps=["a.mrc"])
    with pytest.raises(Exception, match="not estimated yet"):
        MissingWedge(background_noise=True).fourier_diagonal(8)


HALF_SHAPE = (16, 32, 24)


def _odd_even(tmp_path, write_map, tilts=(-57.0, 63.0)):
    """Odd and even tomograms written to tmp_path: a shared blob map plus independent coloured noise, wedge-masked."""
    g = torch.Generator().manual_seed(7)
    grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in HALF_SHAPE), indexing="ij"))
    signal = torch.zeros(HALF_SHAPE, dtype=torch.float64)
    for _ in range(12):
        centre = torch.tensor(HALF_SHAPE, dtype=torch.float64) * torch.rand(3, generator=g, dtype=torch.float64)
        signal += torch.exp(-((grid - centre[:, None, None, None]) ** 2).sum(0) / (2 * 1.5**2))
    r = torch.arange(n_shells(HALF_SHAPE), dtype=torch.float64)
    noise_half = 0.02 + 0.03 * torch.exp(-(((r - 10) / 6) ** 2))
    m = wedge_mask(HALF_SHAPE, *tilts)
    halves = []
    for name in ("odd.mrc", "even.mrc"):
        noise = ifftn(torch.sqrt(noise_half[shell_index(HALF_SHAPE)]) * fftn(torch.randn(HALF_SHAPE, generator=g, dtype=torch.float64)))
        half = ifftn(m * fftn(signal + noise))
        halves.append(write_map(name, Volume(half.float(), 10.52)))
    return halves, signal, noise_half / 2


def test_half_maps_give_the_observation_and_noise_on_the_measured_coefficients(tmp_path, write_map):
    (odd, even), _, truth = _odd_even(tmp_path, write_map)
    op = MissingWedge(tilt_min=-57, tilt_max=63, half_maps=[odd, even])
    op.prepare(PrepareContext(HALF_SHAPE, 10.52, torch.device("cpu"), None, [op]))
    h1, h2 = (read_volume(p) for p in (odd, even))
    torch.testing.assert_close(op.default_observation().data, 0.5 * (h1.data + h2.data))
    assert op.default_observation().voxel_size == pytest.approx(10.52)
    assert op.halves()[0].shape == HALF_SHAPE
    a, noise = op.fourier_diagonal(HALF_SHAPE)
    m = wedge_mask(HALF_SHAPE, -57, 63)
    m = m | _at_minus_k(m)
    assert torch.equal(a, m.double())
    want = half_map_statistics(h1.data, h2.data, measured=m)["noise_full"]
    torch.testing.assert_close(noise, want[shell_index(HALF_SHAPE)])
    # near the truth (shells 4..Nyquist hold >= 60 measured coefficients: 5 standard errors is 0.9 at
    # most, the mean over them within 10%)
    ratio = (op.shell_noise_power(HALF_SHAPE) / truth)[4:17]
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.1) and float((ratio - 1).abs().max()) < 0.9
    # one half: the same wedge, twice the noise; the half-map model exists only with half maps
    half = op.for_half_map()
    torch.testing.assert_close(half.fourier_diagonal(HALF_SHAPE)[1], 2 * noise)
    assert half.halves() is None and torch.equal(half.mask(HALF_SHAPE), m)
    with pytest.raises(Exception, match="only noise estimated from half maps"):
        MissingWedge(noise_variance=0.1).for_half_map()


def test_background_noise_of_the_observation_in_a_task(tmp_path, write_map):
    (odd, _), _, _ = _odd_even(tmp_path, write_map)

    tomogram = read_volume(odd)
    op = MissingWedge(tilt_min=-57, tilt_max=63, background_noise=True, background_cube=12)
    op.prepare(PrepareContext(HALF_SHAPE, 10.52, torch.device("cpu"), tomogram, [op]))
    want = background_noise_power(tomogram.data, op.mask, cube=12)
    torch.testing.assert_close(op.shell_noise_power(HALF_SHAPE), want)
    # an observation given in the operator's own table is read by load_observation, which estimates too
    other = MissingWedge(tilt_min=-57, tilt_max=63, background_noise=True, background_cube=12)
    assert other.load_observation(odd).shape == HALF_SHAPE
    torch.testing.assert_close(other.shell_noise_power(HALF_SHAPE), want)


def _conformance_configurations(tmp_path, write_map):

    (odd, even), _, _ = _odd_even(tmp_path, write_map)
    tilts = _tilt_file(tmp_path, [-57 + 3 * i for i in range(41)])  # -57..63
    background = MissingWedge(tilt_file=tilts, background_noise=True, background_cube=12)
    background.estimate_noise_from_background(read_volume(odd))
    return {
        "tilt-file-noise-power": MissingWedge(tilt_file=tilts, noise_power=[0.02 + 0.001 * r for r in range(20)]),
        "half-maps": MissingWedge(tilt_file=tilts, half_maps=[odd, even]),
        "half-maps-one-half": MissingWedge(tilt_file=tilts, half_maps=[odd, even]),
        "background": background,
        "discrete-tilts": MissingWedge(tilt_file=tilts, discrete_tilts=True, plane_thickness=2.0, noise_variance=0.01),
    }


@pytest.mark.parametrize("name", ["tilt-file-noise-power", "half-maps", "half-maps-one-half", "background", "discrete-tilts"])
def test_tomography_configurations_conform(tmp_path, write_map, name):
    op = _conformance_configurations(tmp_path, write_map)[name]
    if name == "half-maps-one-half":
        op.prepare(PrepareContext(HALF_SHAPE, 10.52, torch.device("cpu"), None, [op]))
        op = op.for_half_map()
    check_operator(op)  # on 16^3 and 12x16x9 boxes: estimated spectra are read at those boxes' frequencies


CLI_TASK = """\
device = "cpu"
seed = 1

[prior]
kind = "gaussian"

[operator]
kind = "missing-wedge"
{noise}

[sampler]
kind = "flow-posterior-euler"
steps = 4
guidance = "exact"

[inputs]
reference = "clean.mrc"
{observation}

[outputs]
map = "out/restored.mrc"
"""


def _run_cli(task):
    from click.testing import CliRunner

    from cryoinverse.cli import build_cli

    result = CliRunner().invoke(build_cli(), ["run", str(task), "--quiet"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return json.loads((task.parent / "out" / "restored.json").read_text())


def test_cli_run_with_a_tilt_file_and_odd_even_tomograms(tmp_path, write_map, monkeypatch):
    (odd, even), signal, _ = _odd_even(tmp_path, write_map)
    write_map("clean.mrc", Volume(signal.float(), 10.52))
    (tmp_path / "tilts").mkdir()
    _tilt_file(tmp_path / "tilts", [-57 + 3 * i for i in range(41)])
    task = tmp_path / "task.toml"
    noise = 'tilt_file = "tilts/TS_01.tlt"\nhalf_maps = ["odd.mrc", "even.mrc"]'
    task.write_text(CLI_TASK.format(noise=noise, observation=""))
    monkeypatch.chdir(tmp_path / "tilts")  # relative paths resolve against the task file, not here
    report = _run_cli(task)
    restored = read_volume(tmp_path / "out" / "restored.mrc")
    assert restored.shape == HALF_SHAPE and restored.voxel_size == pytest.approx(10.52)
    operator = report["task"]["operators"][0]
    assert (operator["tilt_min"], operator["tilt_max"]) == (-57.0, 63.0) and operator["noise_variance"] is None
    # the observation is the odd/even average; the runner restored each half too (its half-map check)
    assert report["metrics"]["observation"]["correlation"] > 0.5
    assert report["metrics"]["restored"]["correlation"] > report["metrics"]["observation"]["correlation"]
    assert {"input", "restored", "curve"} <= set(report["half_maps"])
    # the prior fills the wedge; the half-map check compares only what was measured, so that is no
    # "overridden data" warning (compared over every coefficient, 2 of 7 strong shells were flagged)
    assert report["warnings"] == []


def test_cli_run_on_a_bare_tomogram_with_background_noise(tmp_path, write_map):
    (odd, _), signal, _ = _odd_even(tmp_path, write_map)
    write_map("clean.mrc", Volume(signal.float(), 10.52))
    task = tmp_path / "task.toml"
    task.write_text(CLI_TASK.format(noise="tilt_min = -57\ntilt_max = 63\nbackground_noise = true\nbackground_cube = 12", observation='observation = "odd.mrc"'))
    report = _run_cli(task)
    assert "half_maps" not in report and report["warnings"] == []
    assert report["metrics"]["restored"]["correlation"] > report["metrics"]["observation"]["correlation"]
