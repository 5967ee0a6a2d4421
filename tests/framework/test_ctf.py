"""CTF: wavelength from physical constants, zeros in closed form, values against an independent numpy
formula written in CTFFIND4's form, grid layout, parameter handling and STAR columns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoinverse.ctf import CTFParams, ctf_grid, ctf_values, electron_wavelength, frequency_grid
from cryoinverse.errors import DataError

# CODATA 2018
H, M0, E, C = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0


def wavelength_np(kv: float) -> float:
    v = kv * 1e3
    return H / math.sqrt(2 * M0 * E * v * (1 + E * v / (2 * M0 * C**2))) * 1e10


def ctf_np(fx, fy, u, v, angle, kv, cs, amp, phase, bfactor):
    """CTFFIND4 (Rohou & Grigorieff 2015, eqs. 1-2) -w1 sin(chi) - w2 cos(chi), negated: RELION's sign."""
    lam = wavelength_np(kv)
    g2 = fx**2 + fy**2
    a_g = np.arctan2(fy, fx)
    df = 0.5 * (u + v + (u - v) * np.cos(2 * (a_g - np.deg2rad(angle))))
    chi = np.pi * lam * g2 * df - 0.5 * np.pi * cs * 1e7 * lam**3 * g2**2 + np.deg2rad(phase)
    w2 = amp
    w1 = np.sqrt(1 - w2**2)
    return -(-w1 * np.sin(chi) - w2 * np.cos(chi)) * np.exp(-bfactor * g2 / 4)


@pytest.mark.parametrize("kv", [100.0, 200.0, 300.0])
def test_wavelength_from_physical_constants(kv):
    assert float(electron_wavelength(kv)) == pytest.approx(wavelength_np(kv), rel=1e-9)
    # RELION's approximation of the same formula (ctf.h) agrees to 1e-5.
    v = kv * 1e3
    assert float(electron_wavelength(kv)) == pytest.approx(12.2643247 / math.sqrt(v * (1 + 0.978466e-6 * v)), rel=1e-5)
    assert float(electron_wavelength(300.0)) == pytest.approx(0.019687, abs=1e-6)  # the tabulated value


def test_zeros_of_a_pure_defocus_ctf_are_at_the_closed_form():
    # Cs = 0, no amplitude contrast, no phase shift: CTF = sin(pi lambda z s^2), zero k at sqrt(k / (lambda z)).
    z = 15000.0
    params = CTFParams(defocus_u=z, defocus_v=z, defocus_angle=0.0, voltage=300.0, cs=0.0, amplitude_contrast=0.0)
    lam = wavelength_np(300.0)
    for k in (1, 2, 3):
        s_k = math.sqrt(k / (lam * z))
        s = torch.tensor([s_k * (1 - 1e-3), s_k, s_k * (1 + 1e-3)], dtype=torch.float64)
        values = ctf_values(params, s, torch.zeros_like(s))[0]
        assert abs(float(values[1])) < 1e-9
        assert float(values[0]) * float(values[2]) < 0  # a sign change, not a touch
    first = math.sqrt(1 / (lam * z))
    inside = torch.linspace(1e-4, first * 0.999, 50, dtype=torch.float64)
    assert (ctf_values(params, inside, torch.zeros_like(inside)) > 0).all()  # RELION's sign: positive lobe first


def test_values_match_the_ctffind4_formula():
    rng = np.random.default_rng(0)
    n_img = 4
    kw = dict(
        u=rng.uniform(8000, 25000, n_img), v=rng.uniform(8000, 25000, n_img), angle=rng.uniform(-90, 90, n_img),
        kv=300.0, cs=2.7, amp=rng.uniform(0.05, 0.15, n_img), phase=rng.uniform(0, 90, n_img), bfactor=rng.uniform(0, 100, n_img),
    )
    params = CTFParams(defocus_u=kw["u"], defocus_v=kw["v"], defocus_angle=kw["angle"], voltage=kw["kv"], cs=kw["cs"],
                       amplitude_contrast=kw["amp"], phase_shift=kw["phase"], bfactor=kw["bfactor"])
    fx, fy = rng.uniform(-0.3, 0.3, (2, 200))
    got = ctf_values(params, torch.from_numpy(fx), torch.from_numpy(fy)).numpy()
    for i in range(n_img):
        expected = ctf_np(fx, fy, kw["u"][i], kw["v"][i], kw["angle"][i], kw["kv"], kw["cs"], kw["amp"][i], kw["phase"][i], kw["bfactor"][i])
        np.testing.assert_allclose(got[i], expected, atol=1e-10)


def test_zero_frequency_and_envelope():
    params = CTFParams(defocus_u=20000.0, defocus_v=18000.0, amplitude_contrast=0.07, bfactor=200.0, scale=0.5)
    zero = torch.zeros(1, dtype=torch.float64)
    assert float(ctf_values(params, zero, zero)) == pytest.approx(0.5 * 0.07, abs=1e-12)  # CTF(0) = scale * A


def test_astigmatism_angle_is_the_direction_of_defocus_u():
    u, v, angle = 20000.0, 12000.0, 30.0
    params = CTFParams(defocus_u=u, defocus_v=v, defocus_angle=angle, cs=0.0, amplitude_contrast=0.0)
    lam = wavelength_np(300.0)
    for z, direction in ((u, angle), (v, angle + 90.0)):
        s = math.sqrt(1 / (lam * z))
        a = math.radians(direction)
        value = ctf_values(params, torch.tensor([s * math.cos(a)], dtype=torch.float64), torch.tensor([s * math.sin(a)], dtype=torch.float64))
        assert abs(float(value)) < 1e-9


def test_grid_layout_follows_fft2():
    n, px = 8, 1.5
    fx, fy = frequency_grid(n, px)
    assert float(fx[0, 1]) == pytest.approx(1 / (n * px)) and float(fy[1, 0]) == pytest.approx(1 / (n * px))
    assert float(fx[0, n // 2]) == pytest.approx(-0.5 / px)  # fftfreq puts Nyquist at -1/2
    params = CTFParams(defocus_u=[9000.0, 15000.0], defocus_v=[8000.0, 14000.0], defocus_angle=[10.0, 70.0])
    grid = ctf_grid(params, n, px)
    assert grid.shape == (2, n, n)
    torch.testing.assert_close(ctf_grid(params, n, px, centred=True), torch.fft.fftshift(grid, dim=(-2, -1)))
    torch.testing.assert_close(grid[1], ctf_values(params[1], fx, fy)[0])


def test_params_broadcast_index_and_validate():
    params = CTFParams(defocus_u=[1.0e4, 2.0e4, 3.0e4], defocus_v=2.0e4, voltage=200.0)
    assert len(params) == 3 and params.voltage.shape == (3,) and float(params.defocus_v[2]) == 2.0e4
    assert len(params[1:]) == 2 and float(params[2].defocus_u) == 3.0e4
    with pytest.raises(ValueError, match="different lengths"):
        CTFParams(defocus_u=[1.0, 2.0], defocus_v=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="amplitude contrast must be in"):
        CTFParams(defocus_u=1.0e4, defocus_v=1.0e4, amplitude_contrast=1.0)


def test_params_from_star_columns(shared_data):
    from cryoinverse.star import read_particles

    table = read_particles(shared_data / "particles" / "empiar_10076_7.star")
    params = CTFParams.from_star(table)
    assert len(params) == 7
    assert float(params.defocus_u[0]) == 15301.1 and float(params.defocus_v[0]) == 14916.4
    assert float(params.defocus_angle[0]) == 5.28 and float(params.cs[0]) == 2.7
    assert float(params.amplitude_contrast[0]) == 0.07 and float(params.phase_shift[0]) == 0.0


def test_params_from_star_name_missing_columns():
    with pytest.raises(DataError, match="no CTF column.*rlnVoltage"):
        CTFParams.from_star({"rlnDefocusU": np.ones(2), "rlnDefocusV": np.ones(2), "rlnDefocusAngle": np.zeros(2),
                             "rlnSphericalAberration": np.ones(2), "rlnAmplitudeContrast": np.ones(2) * 0.1})


def test_params_match_cryodrgn_ctf_array(shared_data):
    # cryoDRGN parsed the same STAR into sta_ribosome_ctf.npy: columns D, Apix, dfU, dfV, dfang, kV, Cs, w, phase.
    from cryoinverse.star import read_particles

    table = read_particles(shared_data / "particles" / "sta_testing_bin8.star")
    with pytest.warns(UserWarning, match="219 of 219 rlnCtfBfactor values are negative"):
        params = CTFParams.from_star(table)
    theirs = np.load(shared_data / "particles" / "sta_ribosome_ctf.npy")
    for column, name in zip(range(2, 9), ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast", "phase_shift")):
        np.testing.assert_allclose(getattr(params, name).numpy(), theirs[:, column], rtol=1e-6, err_msg=name)
    assert float(params.bfactor[1]) == 26.0  # per-tilt dose B-factor rlnCtfBfactor = -26, read as attenuation


def _ctf_table(defocus_u, defocus_v) -> dict:
    count = len(defocus_u)
    return {"rlnDefocusU": np.asarray(defocus_u, dtype=float), "rlnDefocusV": np.asarray(defocus_v, dtype=float),
            "rlnDefocusAngle": np.zeros(count), "rlnVoltage": np.full(count, 300.0),
            "rlnSphericalAberration": np.full(count, 2.7), "rlnAmplitudeContrast": np.full(count, 0.1)}


def test_negative_defocus_is_refused_naming_rows_and_convention():
    with pytest.raises(DataError, match=r"negative defocus .* in every row \(row 1, 2, 3; .*positive underfocus"):
        CTFParams.from_star(_ctf_table([-15000, -14000, -9000], [-15200, -14100, -9100]), where="particles.star")
    with pytest.raises(DataError, match=r"particles.star: negative defocus .* in 1 of 3 rows \(row 2;"):
        CTFParams.from_star(_ctf_table([15000, -14000, 9000], [15200, -14100, 9100]), where="particles.star")
    # near focus one axis may cross zero (astigmatism): the mean defocus decides
    assert len(CTFParams.from_star(_ctf_table([300.0, 1000.0], [-100.0, 900.0]))) == 2
