"""`projection`: particle images = projections of the map along z after each image's pose,
in-plane shift and optional CTF, plus white Gaussian noise.

    y_i = CTF_i * P(R_i, s_i) x + n_i,    n_i ~ N(0, noise_variance I)  per pixel,

with the projection P, the rotation R_i (volume -> image frame) and the shift s_i (Å, content
moves by +s) of `cryoinverse.projection` and `cryoinverse.rotations`, and the CTF of
`cryoinverse.ctf` (RELION's sign). Many images make one observation: a stack (N, n, n) of
n x n images whose pixel size equals the map's voxel size, for maps of n^3 voxels.

Poses and CTFs come from a RELION STAR file: R = Euler_angles2matrix(rlnAngleRot, rlnAngleTilt,
rlnAnglePsi), and s = -(rlnOriginXAngst, rlnOriginYAngst) (or -(rlnOriginX, rlnOriginY) x pixel
size): RELION's origin is where the particle centre is *taken from*, so its predicted image is
the projection shifted by minus the origin (ObservationModel::predictObservation). Images come
from `particles` (one per STAR row, in order) or from the STAR's rlnImageName (INDEX@STACK,
relative to the STAR's folder). In Python, `Projection.from_poses` takes poses directly.

Without poses (`poses_known = false`, no STAR, or a STAR without angles) the task needs a pose
model: a `[poser]` section. The runner then estimates the poses against `inputs.initial_map`, or
a sampler that searches poses itself (`flow-posterior-posesearch`) does, through `set_poses`.
Until then `rotations` raises; the STAR's CTF and images are read all the same.

Many images: `batch_images` makes `log_likelihood` use a random subset of that many images per
call, scaled by N / batch (an unbiased estimate of the full sum), so a step costs the projection
of `batch_images` images, not N.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import attrs
import mrcfile
import numpy as np
import torch

from cryoinverse.components import PrepareContext
from cryoinverse.ctf import CTFParams, ctf_grid
from cryoinverse.errors import DataError, SpecError
from cryoinverse.hookspecs import hookimpl
from cryoinverse.params import one_of, param, positive
from cryoinverse.projection import project_fourier, project_real, shift_and_filter
from cryoinverse.rotations import euler_zyz_to_matrix
from cryoinverse.particles import image_sources, read_stack, stack_header
from cryoinverse.star import pixel_size_of, read_particles

ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def write_particles(
    stack: str | Path,
    star: str | Path,
    images: torch.Tensor,
    rotations: torch.Tensor,
    shifts: torch.Tensor | None,
    pixel_size: float,
    ctf: CTFParams | None = None,
) -> tuple[Path, Path]:
    """Write images (N, n, n) as an MRC stack and their poses (and CTF) as a RELION 3.1 STAR file.

    Shifts are in Å (x, y), written as rlnOriginX/YAngst = -shift (RELION's sign); the STAR's
    rlnImageName points at the stack by its file name, so keep the two files side by side.
    Both are written atomically.
    """
    from cryoinverse.mrc import atomic_path
    from cryoinverse.rotations import matrix_to_euler_zyz
    from cryoinverse.star import write_star

    stack, star = Path(stack), Path(star)
    count = images.shape[0]
    with atomic_path(stack) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(images.detach().to("cpu", torch.float32).numpy())
            mrc.set_image_stack()
            mrc.voxel_size = pixel_size
    rot, tilt, psi = matrix_to_euler_zyz(torch.as_tensor(rotations, dtype=torch.float64))
    shifts = torch.zeros(count, 2, dtype=torch.float64) if shifts is None else torch.as_tensor(shifts, dtype=torch.float64)
    particles = {
        "rlnImageName": [f"{i + 1}@{stack.name}" for i in range(count)],
        "rlnAngleRot": rot.numpy(), "rlnAngleTilt": tilt.numpy(), "rlnAnglePsi": psi.numpy(),
        "rlnOriginXAngst": (-shifts[:, 0]).numpy(), "rlnOriginYAngst": (-shifts[:, 1]).numpy(),
        "rlnOpticsGroup": np.ones(count, dtype=int),
    }
    optics = {"rlnOpticsGroup": [1], "rlnImagePixelSize": [pixel_size], "rlnImageSize": [images.shape[-1]]}
    if ctf is not None:
        first = lambda v: float(torch.as_tensor(v).reshape(-1)[0])  # noqa: E731 (one optics group)
        optics.update(rlnVoltage=[first(ctf.voltage)], rlnSphericalAberration=[first(ctf.cs)], rlnAmplitudeContrast=[first(ctf.amplitude_contrast)])
        particles.update(
            rlnDefocusU=torch.as_tensor(ctf.defocus_u).expand(count).numpy(),
            rlnDefocusV=torch.as_tensor(ctf.defocus_v).expand(count).numpy(),
            rlnDefocusAngle=torch.as_tensor(ctf.defocus_angle).expand(count).numpy(),
        )
    write_star(star, {"optics": optics, "particles": particles})
    return stack, star


@attrs.define
class Projection:
    """Particle images: projections of the map after rotation and shift, optional CTF, white noise."""

    name: ClassVar[str] = "projection"
    observes: ClassVar[str] = "images"
    observation_fields: ClassVar[tuple[str, ...]] = ("particles", "star", "images")

    particles: Path | None = param(None, help="particle stack (.mrcs), one image per STAR row in order")
    star: Path | None = param(
        None,
        help="RELION STAR file: angles rlnAngleRot/Tilt/Psi, shifts rlnOriginX/YAngst (or rlnOriginX/Y in pixels), "
        "CTF columns; images from rlnImageName when particles is not given",
    )
    method: str = param("fourier", help="projection: fourier (Fourier-slice) or real (line integrals)", validator=one_of("fourier", "real"))
    interpolation: str = param(
        "trilinear", help="fourier method: trilinear (line sums of the trilinearly interpolated map, as real) or sinc (of the band-limited map; cheaper)", validator=one_of("trilinear", "sinc")
    )
    ctf: bool = param(True, help="apply each image's CTF from the STAR file")
    noise_variance: float = param(1.0, help="per-pixel white noise variance of the images (density units squared)", validator=positive)
    poses_known: bool = param(True, help="false: ignore any angles in the STAR file; the task's [poser] estimates the poses")
    batch_images: int | None = param(None, help="images per log-likelihood evaluation (a random subset, scaled by N / batch); default all", validator=positive)
    seed: int = param(0, help="seed of the random image subsets drawn when batch_images is set")
    pixel_size: float | None = param(None, help="image pixel size in Å, overriding the STAR file and the stack header", validator=positive)
    datadir: Path | None = param(None, help="folder to look for the stacks named by rlnImageName in first (RELION's --datadir); then beside the STAR file, then the working folder")

    _rotations: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)
    _shifts: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)
    _ctf_params: CTFParams | None = attrs.field(default=None, init=False, repr=False)
    _images: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)
    _sources: list | None = attrs.field(default=None, init=False, repr=False)
    _box: int | None = attrs.field(default=None, init=False, repr=False)
    _pixel: float | None = attrs.field(default=None, init=False, repr=False)
    _cache: dict = attrs.field(factory=dict, init=False, repr=False)
    _rng: torch.Generator | None = attrs.field(default=None, init=False, repr=False)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_poses(
        cls,
        rotations: torch.Tensor,
        shifts: torch.Tensor | None = None,
        ctf_params: CTFParams | None = None,
        noise_variance: float = 1.0,
        pixel_size: float = 1.0,
        method: str = "fourier",
        images: torch.Tensor | None = None,
    ) -> "Projection":
        """An operator with poses given directly: rotations (N, 3, 3), shifts (N, 2) in Å (x, y)."""
        op = cls(method=method, ctf=ctf_params is not None, noise_variance=noise_variance, pixel_size=pixel_size)
        op._set_poses(torch.as_tensor(rotations), None if shifts is None else torch.as_tensor(shifts), ctf_params)
        op._pixel = float(pixel_size)
        if images is not None:
            op._set_images(torch.as_tensor(images), "images")
        return op

    def set_poses(self, rotations: torch.Tensor | None, shifts: torch.Tensor | None = None) -> None:
        """Set the poses: rotations (N, 3, 3) volume -> image, shifts (N, 2) in Å (x, y); the CTF is kept.

        `None` forgets them (the operator then needs a poser again)."""
        if rotations is None:
            self._rotations = self._shifts = None
            self._cache.clear()
            return
        count = self._images.shape[0] if self._images is not None else None
        rotations = torch.as_tensor(rotations)
        if count is not None and rotations.shape[0] != count:
            raise ValueError(f"{rotations.shape[0]} poses for {count} images")
        self._set_poses(rotations, None if shifts is None else torch.as_tensor(shifts), self._ctf_params)

    def _set_poses(self, rotations: torch.Tensor, shifts: torch.Tensor | None, ctf_params: CTFParams | None) -> None:
        rotations = rotations.to(torch.float64)
        if rotations.ndim != 3 or rotations.shape[-2:] != (3, 3):
            raise ValueError(f"rotations must be (N, 3, 3); got {tuple(rotations.shape)}")
        n = rotations.shape[0]
        shifts = torch.zeros(n, 2, dtype=torch.float64) if shifts is None else shifts.to(torch.float64)
        if tuple(shifts.shape) != (n, 2):
            raise ValueError(f"shifts must be (N, 2) = ({n}, 2) in Å; got {tuple(shifts.shape)}")
        if ctf_params is not None and len(ctf_params) not in (1, n):
            raise ValueError(f"CTF parameters are given for {len(ctf_params)} images, poses for {n}")
        self._rotations, self._shifts, self._ctf_params = rotations, shifts, ctf_params
        self._cache.clear()

    def _set_images(self, images: torch.Tensor, where: str) -> torch.Tensor:
        if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
            raise DataError(f"{where}: images must be a stack (N, n, n); got shape {tuple(images.shape)}")
        if self._rotations is not None and images.shape[0] != self._rotations.shape[0]:
            raise DataError(f"{where}: {images.shape[0]} images but {self._rotations.shape[0]} poses")
        if self._box is not None and images.shape[-1] != self._box:
            raise DataError(f"{where}: images are {images.shape[-1]}x{images.shape[-1]}; expected {self._box}x{self._box}")
        self._box = int(images.shape[-1])
        self._images = images.to(torch.float32)
        return self._images

    # -- properties ----------------------------------------------------------------------------

    @property
    def images(self) -> torch.Tensor | None:
        """The observed stack (N, n, n) when it was given or loaded, else None."""
        return self._images

    @property
    def rotations(self) -> torch.Tensor:
        """Rotations (N, 3, 3) float64, volume frame -> image frame."""
        if self._rotations is None:
            raise RuntimeError("projection has no poses yet: call prepare(ctx) or use Projection.from_poses")
        return self._rotations

    @property
    def shifts(self) -> torch.Tensor:
        """In-plane shifts (N, 2) in Å, (x, y); content moves by +shift."""
        self.rotations  # noqa: B018 - raises when there are no poses
        return self._shifts

    @property
    def ctf_params(self) -> CTFParams | None:
        """Per-image CTF parameters, or None when no CTF is applied."""
        return self._ctf_params if self.ctf else None

    @property
    def n_images(self) -> int:
        """Number of images (known from the poses, the CTFs or the stack)."""
        if self._rotations is not None:
            return self._rotations.shape[0]
        if self._images is not None:
            return self._images.shape[0]
        if self._ctf_params is not None:
            return len(self._ctf_params)
        raise RuntimeError("projection knows no images yet: call prepare(ctx)")

    @property
    def has_poses(self) -> bool:
        """True once poses are known (from the STAR file, `from_poses` or `set_poses`)."""
        return self._rotations is not None

    @property
    def image_pixel_size(self) -> float:
        """The pixel size in use, Å: `pixel_size`, else the STAR file's or the stack's (1 when nothing gives it)."""
        return float(self._pixel or 1.0)

    # -- spec hooks ----------------------------------------------------------------------------

    def needs_poser(self) -> bool:
        """True when the poses are unknown and must come from a poser."""
        if self._rotations is not None:
            return False
        if not self.poses_known:
            return True
        if self.star is None:
            return True
        try:
            table = read_particles(self.star)
        except DataError:
            return False  # prepare reports the unreadable file
        return any(c not in table for c in ANGLE_COLUMNS)

    def prepare(self, ctx: PrepareContext) -> None:
        """Read poses (when known), shifts and CTFs from the STAR file; check the image geometry against the maps."""
        if self._rotations is None and self._ctf_params is None and self.star is not None:
            self._load_star(Path(self.star))
        if self.particles is not None and self._images is None:
            count, n, vs = stack_header(Path(self.particles))
            if (self._rotations is not None or self._ctf_params is not None) and count != self.n_images:
                raise SpecError(
                    f"[operator] particles: {Path(self.particles).name} holds {count} images but the STAR file "
                    f"has {self.n_images} rows; give one STAR row per image, in order"
                )
            self._box = n
            if self._pixel is None:
                self._pixel = vs
        self._check_geometry(ctx)

    def _load_star(self, path: Path) -> None:
        where = f"[operator] star: {path}"
        if not path.is_file():
            raise SpecError(f"{where}: file not found")
        try:
            table = read_particles(path)
        except DataError as exc:
            raise SpecError(f"[operator] star: {exc}") from None
        has_angles = self.poses_known and all(c in table for c in ANGLE_COLUMNS)
        try:
            pixel = self.pixel_size or pixel_size_of(table, path)
        except DataError as exc:
            raise SpecError(f"[operator] star: {exc}") from None
        if len(next(iter(table.values()))) == 0:
            raise SpecError(f"{where}: has no particle rows")
        origin = None
        if "rlnOriginXAngst" in table and "rlnOriginYAngst" in table:
            origin = np.stack([table["rlnOriginXAngst"], table["rlnOriginYAngst"]], axis=-1).astype(np.float64)
        elif "rlnOriginX" in table and "rlnOriginY" in table:
            if pixel is None:
                raise SpecError(f"{where}: shifts are in pixels (rlnOriginX/Y) but no pixel size is known; set pixel_size")
            origin = np.stack([table["rlnOriginX"], table["rlnOriginY"]], axis=-1).astype(np.float64) * pixel
        shifts = None if origin is None else -torch.from_numpy(origin)  # RELION: predicted = projection shifted by -origin
        ctf_params = None
        if self.ctf:
            try:
                ctf_params = CTFParams.from_star(table, where=path.name)
            except (DataError, ValueError) as exc:
                raise SpecError(f"[operator] ctf: {exc}; set ctf = false to project without a CTF") from None
        if has_angles:
            rot, tilt, psi = (torch.from_numpy(np.asarray(table[c], dtype=np.float64)) for c in ANGLE_COLUMNS)
            self._set_poses(euler_zyz_to_matrix(rot, tilt, psi), shifts, ctf_params)
        else:
            self._ctf_params = ctf_params
        if "rlnImageName" in table and self.particles is None:
            try:
                self._sources = image_sources(path, table["rlnImageName"], self.datadir)
            except DataError as exc:
                raise SpecError(f"[operator] star: {exc}") from None
            headers = [stack_header(f) for f, _, _ in self._sources]
            sizes = sorted({n for _, n, _ in headers})
            if len(sizes) > 1:
                raise SpecError(f"{where}: the stacks named by rlnImageName have different image sizes {sizes}")
            self._box = sizes[0]
            if pixel is None:
                pixel = headers[0][2]
        self._pixel = pixel

    def _check_geometry(self, ctx: PrepareContext | None) -> None:
        if ctx is None or self._box is None or ctx.shape is None or None in tuple(ctx.shape):
            return
        n = self._box
        if tuple(ctx.shape) != (n, n, n):
            raise SpecError(
                f"[operator] projection: the images are {n}x{n} pixels but the task's maps are "
                f"{'x'.join(map(str, ctx.shape))} voxels; maps must be {n}^3 (same sampling as the images)"
            )
        if ctx.voxel_size is None:
            return
        if self._pixel is None:
            self._pixel = float(ctx.voxel_size)
        elif abs(self._pixel - ctx.voxel_size) > 1e-3 * self._pixel:
            raise SpecError(
                f"[operator] projection: the images have {self._pixel:g} Å pixels but the task's maps have "
                f"{ctx.voxel_size:g} Å voxels; they must be equal (set [operator] pixel_size or [inputs] voxel_size "
                "if a header is wrong, or resample the maps)"
            )

    def load_observation(self, path: str | Path, voxel_size: float | None = None) -> torch.Tensor:
        """The particle stack at `path` as a tensor (N, n, n); `voxel_size` is the pixel size if none is known."""
        images, vs = read_stack(path)
        if self._pixel is None:
            self._pixel = float(voxel_size or vs or 1.0)
        return self._set_images(images, str(path))

    def default_observation(self) -> torch.Tensor | None:
        """The stack from `particles`, or from the STAR's rlnImageName (after `prepare`)."""
        if self._images is not None:
            return self._images
        if self.particles is not None:
            images, vs = read_stack(self.particles)
            if self._pixel is None:
                self._pixel = vs
            return self._set_images(images, str(self.particles))
        if self._sources:
            stacks = torch.cat([read_stack(f, idx)[0] for f, idx, _ in self._sources])
            rows = torch.from_numpy(np.concatenate([r for _, _, r in self._sources]))
            images = torch.empty_like(stacks)
            images[rows] = stacks  # back to the STAR's row order
            return self._set_images(images, f"[operator] star: {self.star}")
        return None

    def volume_geometry(self) -> tuple[tuple[int, int, int], float] | None:
        """((n, n, n), pixel size in Å) of the maps these images see, once the stack is known."""
        if self._box is None:
            return None
        return (self._box,) * 3, float(self._pixel or 1.0)

    # -- the operator --------------------------------------------------------------------------

    def filters(self, n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """Each image's CTF (N, n, n) in `torch.fft.fft2` order, or None without a CTF."""
        params = self.ctf_params
        if params is None:
            return None
        key = ("ctf", n, str(device), dtype)
        if key not in self._cache:
            values = ctf_grid(params, n, float(self._pixel or 1.0))
            if values.shape[0] == 1 and self.n_images > 1:
                values = values.expand(self.n_images, n, n)
            self._cache[key] = values.to(device=device, dtype=dtype).contiguous()
        return self._cache[key]

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Noise-free images: (n, n, n) -> (N, n, n), batch (B, n, n, n) -> (B, N, n, n); only `indices` when given."""
        pixel = float(self._pixel or 1.0)
        rotations = self.rotations.to(device=x.device, dtype=x.dtype)
        shifts = self.shifts.to(device=x.device, dtype=x.dtype)
        filters = self.filters(x.shape[-1], x.device, x.dtype)
        if indices is not None:
            rotations, shifts = rotations[indices], shifts[indices]
            filters = None if filters is None else filters[indices]
        has_shift = bool(shifts.abs().max() > 0) if shifts.numel() else False
        if self.method == "real":
            images = project_real(x, rotations, shifts if has_shift else None, pixel)
            return shift_and_filter(images, None, filters)
        if self.interpolation == "trilinear":  # shifts inside: its aliases move with the content
            return shift_and_filter(project_fourier(x, rotations, shifts if has_shift else None, pixel), None, filters)
        images = project_fourier(x, rotations, None, pixel, interpolation="sinc")
        return shift_and_filter(images, shifts / pixel if has_shift else None, filters)

    def subset(self) -> torch.Tensor | None:
        """A random subset of `batch_images` image indices (sorted), or None for all images."""
        total = self.n_images
        if self.batch_images is None or self.batch_images >= total:
            return None
        if self._rng is None:
            self._rng = torch.Generator().manual_seed(self.seed)
        return torch.randperm(total, generator=self._rng)[: self.batch_images].sort().values

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-1/2 sum over images and pixels of (A x - y)^2 / noise_variance: (B,) for a batch, () for one map.

        With `batch_images`, the sum over a random subset times N / batch (a new subset each call).
        """
        indices = self.subset()
        if indices is not None:
            y = y[indices.to(y.device)]
        residual = self.forward(x, None if indices is None else indices.to(x.device)) - y.to(device=x.device, dtype=x.dtype)
        scale = 1.0 if indices is None else self.n_images / indices.numel()
        return -0.5 * scale * residual.square().sum(dim=(-3, -2, -1)) / self.noise_variance

    def signal_power(self, n: int, images: torch.Tensor | None = None) -> torch.Tensor:
        """Per-shell power of the clean map (orthonormal 3D FFT, shells of an n^3 box) estimated from the images.

        By the Fourier-slice theorem a projection's orthonormal 2D coefficient at frequency k is
        sqrt(n) times the map's orthonormal 3D coefficient there, so E|Y_k|^2 = c_k^2 n S(|k|) +
        noise_variance: S = (shell mean |Y|^2 - noise_variance) / (n shell mean c^2). Shells beyond
        the images' reach (the 3D corners) take the last one's value.
        """
        from cryoinverse.fourier import n_shells

        y = self._images if images is None else images
        if y is None:
            raise RuntimeError("projection has no images to estimate a spectrum from")
        y = y.to(torch.float64)
        m = y.shape[-1]
        k = torch.fft.fftfreq(m, dtype=torch.float64) * m
        shell = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2).round().long()  # (m, m)
        power = (torch.fft.fft2(y, norm="ortho").abs().square()).mean(0)
        filters = self.filters(m, "cpu", torch.float64)
        c2 = torch.ones_like(power) if filters is None else filters.square().mean(0)
        count = n_shells(n)
        top = min(int(shell.max()) + 1, count)
        flat, idx = shell.reshape(-1), shell.reshape(-1).clamp(max=count - 1)
        sums = torch.zeros(count, dtype=torch.float64).index_add_(0, idx, power.reshape(-1))
        weights = torch.zeros(count, dtype=torch.float64).index_add_(0, idx, c2.reshape(-1))
        counts = torch.zeros(count, dtype=torch.float64).index_add_(0, idx, torch.ones_like(flat, dtype=torch.float64))
        noise = 0.0 if self.noise_variance is None else float(self.noise_variance)
        s = (sums / counts.clamp(min=1) - noise).clamp(min=0) / (m * (weights / counts.clamp(min=1)).clamp(min=1e-12))
        s[top:] = s[top - 1]
        return s

    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noisy images A x + n with white noise of `noise_variance` per pixel."""
        clean = self.forward(x)
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype, device=clean.device)
        return clean + math.sqrt(self.noise_variance) * noise


@hookimpl
def register_operators(register):
    register(Projection)
