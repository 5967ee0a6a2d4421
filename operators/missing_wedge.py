"""`missing-wedge`: cryo-ET in-painting; only Fourier coefficients inside the tilt range are measured.

A tilt series about the tilt axis (y by default) with tilt angles theta in [tilt_min, tilt_max]
measures the central planes perpendicular to the beam direction, which at tilt theta is
(z, x) = (cos theta, sin theta) for axis y, or (z, y) = (cos theta, sin theta) for axis x.
Coefficient k lies on the plane of theta = atan(-k_z / k_x) (axis y), so the measured set is
M = {k : tilt_min <= atan(-k_z / k_x) <= tilt_max}, plus the tilt axis itself (k_z = k_x = 0).
The observation is y = F^-1(M (F x + F n)), with noise n on the measured coefficients only.

Maps may have any shape (nz, ny, nx), as tomogram crops do: k is the physical frequency in
cycles per voxel (per-axis `fftfreq(nz)`, `fftfreq(ny)`, `fftfreq(nx)`, `cryoinverse.fourier`;
voxels are cubic), so the wedge has the same angles in space whatever the box.

Tilts. `tilt_min` / `tilt_max` in degrees, or `tilt_file`: an IMOD / Warp `.tlt` / `.rawtlt`, an
AreTomo `.aln` (its aligned TILT column), a SerialEM `.mdoc` or a RELION 5 tilt-series or tomograms `.star` file
(`cryoinverse.tilts.read_tilt_series`; `tomogram` names the tomogram in a file of several) whose
lowest and highest angles set the range. A RELION tomograms.star row that names half-set
tomograms (rlnTomoReconstructedTomogramHalf1/2) gives `half_maps` when no other noise is given.
With `discrete_tilts` only the planes of the file's angles are measured, each a slab of
`plane_thickness` Fourier samples of the box's longest edge: |k . d_theta| <= plane_thickness /
(2 n_ref), d_theta the beam direction (beyond the Crowther frequency the planes no longer touch).
With `dose_limit` as well (a file that gives each tilt's dose: RELION's rlnMicrographPreExposure, SerialEM's)
each plane ends at the frequency its pre-exposure D has destroyed: where D exceeds the optimal
exposure 2.51284 N_e(k) of Grant & Grigorieff (2015), N_e(k) = 0.245 k^-1.665 + 2.81 e/A^2 (k in
1/A, measured at 300 kV), i.e. |k| <= ((D / 2.51284 - 2.81) / 0.245)^(-1 / 1.665) (no limit while
D / 2.51284 <= 2.81); this needs the map's voxel size. At other voltages N_e is scaled
(`critical_exposure_factor`: 0.8 at 200 kV, 0.532 at 100 kV, linear in between); the voltage is
`voltage`, else the tilt file's (RELION rlnVoltage, SerialEM Voltage), else 300 kV.

Noise, one of (per coefficient k: E|F(n)_k|^2 = N_k, ortho FFT):
- `noise_variance`: white, N_k = noise_variance (the default, 1e-4, when nothing else is given);
- `noise_power`: a per-shell list N_r (shells 0..Nyquist at least, as `spectral-noise`);
- `half_maps = [odd, even]`: two independent reconstructions (odd/even frames or tilts, as for
  cryoCARE). The observation defaults to their average, and its noise N_r = <|F1 - F2|^2> / 4
  per shell, averaged over the measured coefficients only (`half_map_statistics(..., measured)`):
  outside the wedge both halves hold no data. `halves()` / `for_half_map()` give the runner's
  half-map check what it needs;
- `background_noise`: estimated from the observed tomogram alone, from its quietest cubes
  (`cryoinverse.spectra.background_noise_power`, which states what it assumes: stationary noise,
  cubes without signal).
Estimated spectra are per shell of the box they came from and are read at the physical
frequency of another box's shells (`cryoinverse.spectra.spectrum_on_box`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import attrs
import torch

from cryoinverse.components import PrepareContext
from cryoinverse.errors import SpecError
from cryoinverse.fourier import Shape, box_text, expand_shells, fftn, frequency_grid, ifftn, n_shells, reference_edge, spectrum_for_box
from cryoinverse.halfmaps import HalfMapNoise
from cryoinverse.hookspecs import hookimpl
from cryoinverse.mrc import read_volume
from cryoinverse.params import non_negative, one_of, param, positive
from cryoinverse.spectra import QUIET_FACTOR, background_noise_power, half_map_statistics, spectrum_on_box
from cryoinverse.tilts import TiltSeries, read_tilt_series
from cryoinverse.volume import Volume

DEFAULT_TILTS = (-60.0, 60.0)
DEFAULT_NOISE_VARIANCE = 1e-4
NOISE_SOURCES = ("noise_variance", "noise_power", "half_maps", "background_noise")
TILT_TOLERANCE = 1e-3  # degrees: a tilt_min / tilt_max this close to the tilt file's extreme agrees with it
OPTIMAL_EXPOSURE = 2.51284  # optimal / critical exposure (Grant & Grigorieff 2015)
CRITICAL_EXPOSURE = (0.245, -1.665, 2.81)  # N_e(k) = a k^b + c, e/A^2, k in 1/A (300 kV)
# N_e at other voltages: times these factors (kV, factor), linear in between. 200 kV: 0.8, the 20% lower
# critical exposure Grant & Grigorieff (2015) give; 100 kV: 0.532, as cisTEM's dose filter takes it.
VOLTAGE_FACTORS = ((100.0, 0.532), (200.0, 0.8), (300.0, 1.0))
DEFAULT_VOLTAGE = 300.0


def critical_exposure_factor(voltage: float) -> float:
    """The factor on N_e(k) at `voltage` kV (1 at 300 kV); ValueError outside 100-300 kV."""
    low, high = VOLTAGE_FACTORS[0][0], VOLTAGE_FACTORS[-1][0]
    if not (math.isfinite(voltage) and low <= voltage <= high):
        raise ValueError(f"voltage: {voltage:g} kV is outside {low:g}-{high:g} kV, where the critical exposure is known")
    for (v0, f0), (v1, f1) in zip(VOLTAGE_FACTORS, VOLTAGE_FACTORS[1:]):
        if voltage <= v1:
            return f0 + (f1 - f0) * (voltage - v0) / (v1 - v0)
    return VOLTAGE_FACTORS[-1][1]


def dose_limit_frequency(dose: float, voltage: float = DEFAULT_VOLTAGE) -> float:
    """The highest spatial frequency (1/A) a plane keeps after a pre-exposure of `dose` e/A^2 at
    `voltage` kV (inf: all)."""
    a, b, c = CRITICAL_EXPOSURE
    excess = dose / (OPTIMAL_EXPOSURE * critical_exposure_factor(voltage)) - c
    return math.inf if excess <= 0 else (excess / a) ** (1.0 / b)


def _angle(instance, attribute, value: float | None) -> None:
    if value is not None and not -90.0 <= value <= 90.0:
        raise ValueError(f"{attribute.name}: must be within [-90, 90] degrees; got {value}")


def _two_paths(instance, attribute, value) -> None:
    if value is not None and len(value) != 2:
        raise ValueError(f"{attribute.name}: needs exactly two maps (odd, even); got {len(value)}")


def _cube(instance, attribute, value: int) -> None:
    if value < 8:
        raise ValueError(f"{attribute.name}: must be at least 8 voxels; got {value}")


def _fraction(instance, attribute, value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{attribute.name}: must be in (0, 1]; got {value}")


def _folded_angle(kz: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """The tilt angle (degrees, in (-90, 90]) of the plane containing each k: atan(-k_z / other)."""
    theta = torch.rad2deg(torch.atan2(-kz, other))  # atan2 handles other == 0 (= +-90)
    return torch.where(theta > 90, theta - 180, torch.where(theta <= -90, theta + 180, theta))


def wedge_mask(shape: Shape, tilt_min: float, tilt_max: float, axis: str = "y") -> torch.Tensor:
    """Boolean (nz, ny, nx) mask of the measured coefficients for a tilt range in degrees (see module doc).

    `shape` is the box: an edge n (n^3) or (z, y, x).
    """
    kz, ky, kx = frequency_grid(shape)
    other = kx if axis == "y" else ky
    theta = _folded_angle(kz, other)
    measured = (theta >= tilt_min - 1e-9) & (theta <= tilt_max + 1e-9)
    on_axis = (kz == 0) & (other == 0)
    return measured | on_axis


def tilt_planes_mask(
    shape: Shape, angles: list[float], thickness: float = 1.0, axis: str = "y", limits: list[float] | None = None,
) -> torch.Tensor:
    """Boolean (nz, ny, nx) mask of the coefficients within thickness / (2 n_ref) cycles per voxel of a tilt's plane.

    The plane of tilt theta (degrees) is k_z cos theta + k_other sin theta = 0 (see module doc);
    `thickness` is in Fourier samples of the box's longest edge (1 / n_ref cycles per voxel).
    `limits`: per angle, the largest |k| (cycles per voxel) its plane holds (inf: no limit).
    """
    kz, ky, kx = frequency_grid(shape)
    other = kx if axis == "y" else ky
    half = 0.5 * thickness / reference_edge(shape)
    radius = torch.sqrt(kz**2 + ky**2 + kx**2)
    out = torch.zeros(kz.shape, dtype=torch.bool)
    widest: dict[float, float] = {}  # a repeated angle keeps its least limited plane
    for angle, limit in zip(angles, limits or [math.inf] * len(angles)):
        widest[angle] = max(widest.get(angle, 0.0), limit)
    for angle, limit in sorted(widest.items()):
        theta = math.radians(angle)
        plane = (kz * math.cos(theta) + other * math.sin(theta)).abs() <= half + 1e-12
        out |= plane if math.isinf(limit) else plane & (radius <= limit + 1e-12)
    return out


def _reflected(values: torch.Tensor) -> torch.Tensor:
    """values at -k for every k of the last three axes (index i -> (-i) mod n)."""
    return torch.roll(torch.flip(values, dims=(-3, -2, -1)), shifts=(1, 1, 1), dims=(-3, -2, -1))


@attrs.define
class MissingWedge(HalfMapNoise):
    """Cryo-ET missing wedge: a Fourier mask of a tilt range (or of the measured tilts), with white, per-shell or estimated noise."""

    name: ClassVar[str] = "missing-wedge"

    tilt_min: float | None = param(None, help="lowest tilt angle in degrees (default -60, or the tilt file's lowest)", validator=_angle)
    tilt_max: float | None = param(None, help="highest tilt angle in degrees (default 60, or the tilt file's highest)", validator=_angle)
    tilt_axis: str = param("y", help="tilt axis: y or x", validator=one_of("y", "x"))
    tilt_file: Path | None = param(
        None, help="tilt series: IMOD/Warp .tlt/.rawtlt, AreTomo .aln (aligned angles), SerialEM .mdoc or RELION 5 tilt-series/tomograms .star: sets tilt_min and tilt_max"
    )
    tomogram: str | None = param(None, help="with a RELION .star tilt_file holding several tomograms: the rlnTomoName of this one")
    discrete_tilts: bool = param(False, help="measure only the planes of the tilt file's angles, not the whole range between them (needs tilt_file)")
    dose_limit: bool = param(False, help="with discrete_tilts: each plane ends at the frequency its tilt's pre-exposure destroyed (needs doses in tilt_file)")
    voltage: float | None = param(None, help="with dose_limit: acceleration voltage in kV, 100-300 (default: the tilt file's, else 300)")
    plane_thickness: float = param(1.0, help="with discrete_tilts: thickness of each measured plane, in Fourier samples of the longest edge", validator=positive)
    noise_variance: float | None = param(
        None, help="white noise variance on the measured coefficients (0 = noise-free; 1e-4 when no other noise is given)", validator=non_negative
    )
    noise_power: list[float] | None = param(None, help="per-shell noise power of the observation on the measured coefficients (ortho FFT), shells 0..Nyquist at least")
    half_maps: list[Path] | None = param(
        None, help="odd and even tomograms: the observation defaults to their average, its noise is estimated over the measured coefficients", validator=_two_paths, is_map=True
    )
    background_noise: bool = param(False, help="estimate the noise per shell from the observation's quiet (particle-free) cubes: a tomogram without odd/even halves")
    background_cube: int = param(20, help="with background_noise: edge of the cubes, in voxels (at most the shortest edge is used)", validator=_cube)
    background_fraction: float = param(0.25, help=f"with background_noise: quantile of the cubes' low-pass variance taken as background; cubes up to {QUIET_FACTOR:g} times it are used", validator=_fraction)

    _series: TiltSeries | None = attrs.field(default=None, init=False, repr=False)
    _voxel_size: float | None = attrs.field(default=None, init=False, repr=False)
    _spectrum: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)
    _spectrum_edge: int | None = attrs.field(default=None, init=False, repr=False)
    _halves: tuple[Volume, Volume] | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.tilt_file is not None:
            self._series = read_tilt_series(self.tilt_file, self.tomogram)
            lowest, highest = self._series.range
            for field, value, extreme in (("tilt_min", self.tilt_min, lowest), ("tilt_max", self.tilt_max, highest)):
                if value is not None and abs(value - extreme) > TILT_TOLERANCE:
                    raise ValueError(f"{field} = {value:g} disagrees with tilt_file {self.tilt_file} ({extreme:g}); give one or the other")
            self.tilt_min, self.tilt_max = lowest, highest
        elif self.discrete_tilts:
            raise ValueError("discrete_tilts needs tilt_file (the measured angles)")
        elif self.tomogram is not None:
            raise ValueError("tomogram names a tomogram of a RELION tilt_file; give tilt_file")
        if self.dose_limit and not self.discrete_tilts:
            raise ValueError("dose_limit needs discrete_tilts (it limits each tilt's plane)")
        if self.dose_limit and self._series.doses is None:
            raise ValueError(f"dose_limit: tilt_file {self.tilt_file} gives no doses (RELION's rlnMicrographPreExposure does)")
        if self.voltage is not None and not self.dose_limit:
            raise ValueError("voltage is used by dose_limit only; set dose_limit = true or leave voltage out")
        if self.dose_limit:  # an unknown voltage is refused now, not at run time
            try:
                critical_exposure_factor(self.dose_voltage)
            except ValueError as exc:
                raise ValueError(str(exc) if self.voltage is not None else f"{exc} (recorded in tilt_file {self.tilt_file}; give voltage)") from None
        if self.tilt_min is None:
            self.tilt_min = DEFAULT_TILTS[0]
        if self.tilt_max is None:
            self.tilt_max = DEFAULT_TILTS[1]
        if self.tilt_min >= self.tilt_max:
            raise ValueError(f"tilt_min ({self.tilt_min}) must be below tilt_max ({self.tilt_max})")
        given = [f for f in NOISE_SOURCES if getattr(self, f) is not None and getattr(self, f) is not False]  # 0 is a noise level, not absent
        if not given and self._series is not None and self._series.half_maps is not None:
            self.half_maps, given = list(self._series.half_maps), ["half_maps"]
        if len(given) > 1:
            raise ValueError(f"give only one of {', '.join(NOISE_SOURCES)}; got {', '.join(given)}")
        if not given:
            self.noise_variance = DEFAULT_NOISE_VARIANCE

    @classmethod
    def describe_notes(cls) -> list[str]:
        """Lines `cryoinverse describe missing-wedge` prints after the fields."""
        return [
            f"Noise: one of {', '.join(NOISE_SOURCES)}; noise_variance = {DEFAULT_NOISE_VARIANCE:g} when none is given.",
            "half_maps (odd/even tomograms) or background_noise estimate the noise per shell over the measured coefficients only.",
        ]

    # -- geometry ---------------------------------------------------------------------------------

    def mask(self, shape: Shape) -> torch.Tensor:
        """Boolean (nz, ny, nx) mask of the measured coefficients of a box (edge n or (z, y, x)), Hermitian-symmetric.

        On an even edge the Nyquist coefficient is its own partner, read as -0.5 cycles per voxel by
        `fftfreq`; for an asymmetric tilt range or discrete tilts it is measured when k or -k is, so
        that M F x stays the transform of a real map and F(A x) = M F(x) holds exactly.
        """
        if self.discrete_tilts:
            m = tilt_planes_mask(shape, list(self._series.angles), self.plane_thickness, self.tilt_axis, self._plane_limits())
        else:
            m = wedge_mask(shape, self.tilt_min, self.tilt_max, self.tilt_axis)
        return m | _reflected(m)

    def _plane_limits(self) -> list[float] | None:
        """Per tilt, the largest |k| (cycles per voxel) its dose leaves measured; None without dose_limit."""
        if not self.dose_limit:
            return None
        if self._voxel_size is None:
            raise SpecError("[operator] dose_limit: the map's voxel size is needed (from its header or [inputs] voxel_size)")
        return [dose_limit_frequency(d, self.dose_voltage) * self._voxel_size for d in self._series.doses]

    @property
    def dose_voltage(self) -> float:
        """The voltage (kV) dose_limit uses: `voltage`, else the tilt file's, else 300."""
        if self.voltage is not None:
            return self.voltage
        recorded = self._series.voltage if self._series is not None else None
        return recorded if recorded is not None else DEFAULT_VOLTAGE

    @property
    def tilt_series(self) -> TiltSeries | None:
        """The tilt series read from tilt_file (angles, doses, tilt-axis angle, half-set tomograms), or None."""
        return self._series

    def measured_fraction(self, shape: Shape) -> float:
        """Fraction of coefficients measured (1 - missing fraction)."""
        return float(self.mask(shape).to(torch.float64).mean())

    # -- noise ------------------------------------------------------------------------------------

    def prepare(self, ctx: PrepareContext) -> None:
        """Estimate the noise from the half maps, or from the observation's background, when asked to."""
        if ctx.voxel_size:
            self._voxel_size = ctx.voxel_size
        if self.half_maps is not None and self._halves is None:
            h1, h2 = (read_volume(p) for p in self.half_maps)
            if h1.shape != h2.shape:
                raise SpecError(f"[operator] half_maps: shapes differ ({box_text(h1.shape)} vs {box_text(h2.shape)})")
            self.estimate_noise_from_halves(h1, h2)
        if self.background_noise and ctx.observation is not None:
            self.estimate_noise_from_background(ctx.observation)

    def load_observation(self, path: str | Path, voxel_size: float | None = None) -> Volume:
        """The observed map at `path`; with background_noise, its noise is estimated from it."""
        observation = read_volume(path, voxel_size)
        if self.background_noise:
            self.estimate_noise_from_background(observation)
        return observation

    def estimate_noise_from_halves(self, half_map_1: Volume | torch.Tensor, half_map_2: Volume | torch.Tensor) -> "MissingWedge":
        """Set the noise of the average (h1 + h2) / 2 from two half maps, over this wedge's measured coefficients; returns self."""
        h1, h2 = (h if isinstance(h, Volume) else Volume(h) for h in (half_map_1, half_map_2))
        self._spectrum, self._spectrum_edge = self.half_map_noise(h1, h2), reference_edge(h1.shape)
        self._halves = (h1, h2)
        return self

    def half_map_noise(self, half_map_1: Volume | torch.Tensor, half_map_2: Volume | torch.Tensor) -> torch.Tensor:
        """Noise power per shell of the average (h1 + h2) / 2 on the halves' own box, over the measured coefficients; sets nothing."""
        h1, h2 = (h.data if isinstance(h, Volume) else h for h in (half_map_1, half_map_2))
        return half_map_statistics(h1, h2, measured=self.mask(tuple(h1.shape[-3:])))["noise_full"]

    def estimate_noise_from_background(self, observation: Volume | torch.Tensor) -> "MissingWedge":
        """Set the noise per shell from the observation's quietest cubes (`background_noise_power`); returns self."""
        data = observation.data if isinstance(observation, Volume) else observation
        shape = tuple(data.shape[-3:])
        self._spectrum = background_noise_power(data, self.mask, self.background_cube, self.background_fraction)
        self._spectrum_edge = reference_edge(shape)
        return self

    def shell_noise_power(self, shape: Shape) -> torch.Tensor:
        """Noise power per shell (float64, shells 0..corner) of a box on its measured coefficients."""
        if self.noise_power is not None:
            return spectrum_for_box(self.noise_power, shape, "operator.noise_power").clamp(min=1e-30)
        if self._spectrum is not None:
            return spectrum_on_box(self._spectrum, self._spectrum_edge, shape).clamp(min=1e-30)
        if self.noise_variance is not None:
            return torch.full((n_shells(shape),), self._variance(), dtype=torch.float64)
        source = "half_maps" if self.half_maps is not None else "background_noise"
        raise SpecError(
            f"[operator] {self.name}: the noise from {source} is not estimated yet "
            "(prepare(ctx) with the observation, or estimate_noise_from_halves / estimate_noise_from_background)"
        )

    def _variance(self) -> float:
        # A noise-free observation still needs a finite likelihood weight for gradient samplers.
        return max(self.noise_variance, 1e-12)

    def _white(self) -> bool:
        return self.noise_power is None and self._spectrum is None and self.noise_variance is not None

    # -- the operator -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """F^-1(M F x): the map with its missing wedge removed."""
        m = self.mask(tuple(x.shape[-3:])).to(x.device)
        return ifftn(m * fftn(x)).to(x.dtype)

    def fourier_diagonal(self, shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, N) per coefficient of a box (edge n or (z, y, x)): a = M (0/1), N = the noise power (white or per shell)."""
        a = self.mask(shape).to(torch.float64)
        if self._white():
            return a, torch.full_like(a, self._variance())
        return a, expand_shells(self.shell_noise_power(shape), shape)

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-1/2 sum over measured k of |F(x)_k - F(y)_k|^2 / N_k, per batch element."""
        shape = tuple(x.shape[-3:])
        m = self.mask(shape).to(x.device)
        residual = fftn(x - y) * m
        if self._white():
            return -0.5 * residual.abs().square().sum(dim=(-3, -2, -1)) / self._variance()
        weight = (1.0 / expand_shells(self.shell_noise_power(shape), shape)).to(x.device, x.dtype)
        return -0.5 * (weight * residual.abs().square()).sum(dim=(-3, -2, -1))

    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """F^-1(M (F x + F n)): the wedge removed, noise of power N_k on the measured part."""
        noisy = x.to(torch.float64)
        white = self._white()
        if not white or self.noise_variance > 0:
            draw = torch.randn(x.shape, generator=generator, dtype=torch.float64, device=x.device)
            if white:
                noisy = noisy + math.sqrt(self.noise_variance) * draw
            else:
                shape = tuple(x.shape[-3:])
                amplitude = torch.sqrt(expand_shells(self.shell_noise_power(shape), shape)).to(x.device)
                noisy = noisy + ifftn(amplitude * fftn(draw))
        return self.forward(noisy).to(x.dtype)

    def pseudo_inverse(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """F^-1(M F y + (1 - M) F x): the measured coefficients of y put into x."""
        m = self.mask(tuple(x.shape[-3:])).to(x.device)
        return ifftn(torch.where(m, fftn(y.to(x.dtype)), fftn(x))).to(x.dtype)


@hookimpl
def register_operators(register):
    register(MissingWedge)
