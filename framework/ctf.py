"""The contrast transfer function (CTF), in RELION's convention with CTFFIND4's parameters.

Units: spatial frequency s in 1/Å; defocus U, V in Å (positive = underfocus), astigmatism
angle in degrees (the direction of U, from the x axis towards y); voltage in kV; spherical
aberration Cs in mm; amplitude contrast A as a fraction; phase shift in degrees; B-factor in Å^2.
CTFFIND4, RELION and cryoSPARC write these numbers the same way.

For a frequency (s_x, s_y) = s (cos a, sin a):

    z(a)     = (U + V) / 2 + (U - V) / 2 cos(2 (a - angle))       defocus along a
    gamma    = pi lambda z s^2 - (pi / 2) Cs lambda^3 s^4 + phase_shift
    CTF      = scale * sin(gamma + alpha) * exp(-B s^2 / 4),      alpha = arctan(A / sqrt(1 - A^2))
             = scale * (sqrt(1 - A^2) sin(gamma) + A cos(gamma)) * exp(-B s^2 / 4)

This is RELION's CTF::getCTF (-sin(chi) with chi = -gamma - alpha), so CTF(0) = +A: it multiplies
projections of a positive density to give images with the protein white, as RELION extracts
particles (contrast inverted). CTFFIND4's paper writes the physical -w1 sin(chi) - w2 cos(chi),
the negative of this; cryoDRGN uses that physical sign too. lambda is the relativistic electron
wavelength, lambda = h / sqrt(2 m0 e V (1 + e V / (2 m0 c^2))) for V in volts, from CODATA constants
(RELION's 12.2643247 / sqrt(V (1 + 0.978466e-6 V)) Å agrees to 6e-6). With Cs = 0, A = 0 and no phase shift the zeros are at s = sqrt(k / (lambda z)).

Images are (y, x) = (H, W); `ctf_grid` evaluates on the frequency layout of `torch.fft.fft2`
(uncentred, `fftfreq` order) or, with `centred=True`, of its `fftshift` (frequency 0 at n // 2).

B-factors never amplify. The envelope is RELION's exp(-B s^2 / 4) (ctf.h: E = exp(K4 u2),
K4 = -Bfac / 4) with B >= 0, so |CTF| <= scale; `CTFParams` refuses a negative B. Tilt-series
STAR files carry a per-tilt dose B-factor in rlnCtfBfactor (B = 4 Å^2 per e/Å^2 of accumulated
dose in the RELION subtomogram scripts of Bharat et al. 2016), and some write it negative:
sta_testing_bin8.star has -13 to -507, -13 more per tilt in dose order. Those values grow with
the dose, so they mean damage, i.e. attenuation; RELION's formula would instead turn them into
gains of up to 1.5e7 (at the corner frequency of that file's 1.96 Å pixels). `CTFParams.from_star` therefore reads a negative
rlnCtfBfactor as B = |rlnCtfBfactor| and says so in one warning (`CTFWarning`).
"""

from __future__ import annotations

import math
import warnings

import attrs
import numpy as np
import torch

from .errors import DataError

__all__ = ["CTFParams", "CTFWarning", "electron_wavelength", "ctf_values", "ctf_grid", "frequency_grid"]


class CTFWarning(UserWarning):
    """A CTF parameter was read other than as the file wrote it (see the module's B-factor rule)."""


# CODATA 2018 (exact SI values for h and e)
_H, _M0, _E, _C = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0


def electron_wavelength(kv) -> torch.Tensor:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV (0.019687 Å at 300 kV)."""
    volts = torch.as_tensor(kv, dtype=torch.float64) * 1e3
    momentum = torch.sqrt(2.0 * _M0 * _E * volts * (1.0 + _E * volts / (2.0 * _M0 * _C**2)))
    return _H / momentum * 1e10


def _vector(value) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value, dtype=np.float64) if not isinstance(value, torch.Tensor) else value)
    return t.to(torch.float64).reshape(-1)


@attrs.frozen
class CTFParams:
    """CTF parameters of N images, each a float64 tensor (N,) (scalars broadcast to N).

    Fields: defocus_u, defocus_v (Å), defocus_angle (deg), voltage (kV), cs (mm),
    amplitude_contrast (fraction), phase_shift (deg), bfactor (Å^2, >= 0: the envelope
    exp(-B s^2 / 4) attenuates), scale.
    """

    defocus_u: torch.Tensor = attrs.field(converter=_vector)
    defocus_v: torch.Tensor = attrs.field(converter=_vector)
    defocus_angle: torch.Tensor = attrs.field(converter=_vector, default=0.0)
    voltage: torch.Tensor = attrs.field(converter=_vector, default=300.0)
    cs: torch.Tensor = attrs.field(converter=_vector, default=2.7)
    amplitude_contrast: torch.Tensor = attrs.field(converter=_vector, default=0.1)
    phase_shift: torch.Tensor = attrs.field(converter=_vector, default=0.0)
    bfactor: torch.Tensor = attrs.field(converter=_vector, default=0.0)
    scale: torch.Tensor = attrs.field(converter=_vector, default=1.0)

    def __attrs_post_init__(self) -> None:
        values = [getattr(self, f.name) for f in attrs.fields(type(self))]
        sizes = {v.numel() for v in values} - {1}
        if len(sizes) > 1:
            shown = ", ".join(f"{f.name}: {getattr(self, f.name).numel()}" for f in attrs.fields(type(self)))
            raise ValueError(f"CTF parameters have different lengths ({shown})")
        n = sizes.pop() if sizes else 1
        for f, v in zip(attrs.fields(type(self)), values):
            object.__setattr__(self, f.name, v.expand(n).clone() if v.numel() != n else v)
        bad = (self.amplitude_contrast < 0) | (self.amplitude_contrast >= 1)
        if bad.any():
            raise ValueError(f"amplitude contrast must be in [0, 1); got {self.amplitude_contrast[bad][0].item()}")
        if (self.voltage <= 0).any():
            raise ValueError("voltage must be > 0 kV")
        if (self.bfactor < 0).any():
            raise ValueError(
                f"bfactor must be >= 0 Å^2 (the envelope exp(-B s^2 / 4) attenuates; a negative B would amplify "
                f"high frequencies); got {self.bfactor.min().item():g}. CTFParams.from_star reads the negative "
                "per-tilt dose B-factors of tilt-series STAR files as |B|"
            )

    def __len__(self) -> int:
        return self.defocus_u.numel()

    def __getitem__(self, index) -> "CTFParams":
        """The parameters of a subset of images (an index, slice or index tensor)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return CTFParams(**{f.name: getattr(self, f.name)[index] for f in attrs.fields(type(self))})

    @property
    def wavelength(self) -> torch.Tensor:
        """Electron wavelength (N,) in Å."""
        return electron_wavelength(self.voltage)

    @classmethod
    def from_star(cls, table: dict, where: str = "STAR file") -> "CTFParams":
        """From RELION STAR columns (optics groups already merged, see `cryoinverse.star`).

        A negative rlnCtfBfactor is read as its magnitude, with one `CTFWarning` naming `where`
        (the module docstring gives the reason).
        """
        required = {
            "defocus_u": "rlnDefocusU",
            "defocus_v": "rlnDefocusV",
            "defocus_angle": "rlnDefocusAngle",
            "voltage": "rlnVoltage",
            "cs": "rlnSphericalAberration",
            "amplitude_contrast": "rlnAmplitudeContrast",
        }
        optional = {"phase_shift": ("rlnPhaseShift", 0.0), "bfactor": ("rlnCtfBfactor", 0.0), "scale": ("rlnCtfScalefactor", 1.0)}
        missing = [c for c in required.values() if c not in table]
        if missing:
            raise DataError(f"{where} has no CTF column(s) {', '.join(missing)}")
        kwargs = {}
        for name, column in required.items():
            kwargs[name] = _numeric(table, column)
        _check_underfocus(kwargs["defocus_u"], kwargs["defocus_v"], where)
        for name, (column, default) in optional.items():
            kwargs[name] = _numeric(table, column) if column in table else default
        bfactor = kwargs["bfactor"]
        negative = np.asarray(bfactor) < 0
        if negative.any():
            b = np.asarray(bfactor)[negative]
            warnings.warn(
                f"{where}: {int(negative.sum())} of {negative.size} rlnCtfBfactor values are negative ({b.min():g} to "
                f"{b.max():g} Å^2), which RELION's envelope exp(-B s^2/4) would turn into gains; read as the "
                "attenuation exp(-|B| s^2/4) of per-tilt dose B-factors",
                CTFWarning,
                stacklevel=2,
            )
            kwargs["bfactor"] = np.abs(bfactor)
        return cls(**kwargs)


def _check_underfocus(u: np.ndarray, v: np.ndarray, where: str) -> None:
    """DataError naming the rows whose mean defocus (U + V) / 2 is negative.

    RELION (and CTFFIND, Gctf) write underfocus as a positive defocus. A file with the opposite sign
    would put every CTF zero in the right place with the wrong phase flips, and a pose search
    then returns confident garbage, so it is refused rather than read."""
    mean = 0.5 * (np.asarray(u, dtype=np.float64) + np.asarray(v, dtype=np.float64))
    negative = np.flatnonzero(mean < 0)
    if negative.size == 0:
        return
    rows = ", ".join(str(r + 1) for r in negative[:LISTED_ROWS]) + (", ..." if negative.size > LISTED_ROWS else "")
    every = "every row" if negative.size == mean.size else f"{negative.size} of {mean.size} rows"
    raise DataError(
        f"{where}: negative defocus (rlnDefocusU/V) in {every} (row {rows}; {mean[negative].min():g} to {mean[negative].max():g} Å). "
        "RELION's convention is positive underfocus (CTFFIND and Gctf write it so); if this file counts underfocus as negative, "
        "negate rlnDefocusU and rlnDefocusV"
    )


LISTED_ROWS = 5  # rows named in a message; the count says how many more


def _numeric(table: dict, column: str) -> np.ndarray:
    values = np.asarray(table[column])
    if not np.issubdtype(values.dtype, np.number):
        raise DataError(f"STAR column {column} is not numeric (first value {values.flat[0]!r})")
    return values.astype(np.float64)


def ctf_values(params: CTFParams, freq_x: torch.Tensor, freq_y: torch.Tensor) -> torch.Tensor:
    """CTF of every image at frequencies (1/Å) broadcast to (...): returns (N, ...) float64."""
    fx = torch.as_tensor(freq_x, dtype=torch.float64)
    fy = torch.as_tensor(freq_y, dtype=torch.float64)
    fx, fy = torch.broadcast_tensors(fx, fy)
    device = fx.device
    shape = (-1,) + (1,) * fx.ndim

    def col(t: torch.Tensor) -> torch.Tensor:
        return t.to(device).reshape(shape)

    s2 = fx * fx + fy * fy
    azimuth = torch.atan2(fy, fx)
    u, v = col(params.defocus_u), col(params.defocus_v)
    angle = torch.deg2rad(col(params.defocus_angle))
    defocus = 0.5 * (u + v) + 0.5 * (u - v) * torch.cos(2.0 * (azimuth - angle))
    lam = col(params.wavelength)
    cs = col(params.cs) * 1e7  # mm -> Å
    gamma = math.pi * lam * defocus * s2 - 0.5 * math.pi * cs * lam**3 * s2 * s2 + torch.deg2rad(col(params.phase_shift))
    a = col(params.amplitude_contrast)
    alpha = torch.atan(a / torch.sqrt(1.0 - a * a))
    envelope = torch.exp(-col(params.bfactor) * s2 / 4.0)
    return col(params.scale) * torch.sin(gamma + alpha) * envelope


def frequency_grid(n: int, pixel_size: float, centred: bool = False, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(freq_x, freq_y) in 1/Å, each (n, n) indexed [y, x], in fft2 (or fftshift-ed) order."""
    k = torch.fft.fftfreq(n, d=pixel_size, dtype=torch.float64, device=device)
    if centred:
        k = torch.fft.fftshift(k)
    fy, fx = torch.meshgrid(k, k, indexing="ij")
    return fx, fy


def ctf_grid(params: CTFParams, n: int, pixel_size: float, centred: bool = False, device=None) -> torch.Tensor:
    """The CTF of every image on an n x n image's frequency grid -> (N, n, n) float64."""
    fx, fy = frequency_grid(n, pixel_size, centred, device)
    return ctf_values(params, fx, fy)
