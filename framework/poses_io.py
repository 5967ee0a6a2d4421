"""Poses of whole particle stacks: estimated chunk by chunk with checkpoints, compared, written, drawn.

- `estimate_star_poses(star, volume, out, poser)`: what `cryoinverse poses` does: the images of
  a STAR file on the map's grid, their poses in chunks, the STAR file written with them.
- `estimate_in_chunks` runs a poser over `chunk` images at a time. After each chunk the poses so
  far go atomically into a checkpoint (`<out>.partial.npz`: rotations, shifts and scores of the
  finished images, and the fingerprint of the inputs and settings), so a stopped run continues
  where it stopped (`resume=True`) and refuses a checkpoint made from other inputs or settings,
  naming what changed. Chunks start at multiples of `chunk`, so a resumed run does the same work.
- `fingerprint(parts)`: one short digest per input or setting (tensors by their bytes).
- `read_poses_star(path)`: the poses a STAR file holds (known poses to compare with).
- `write_new_poses_star(out, stack, poses, pixel_size, box)`: a RELION 3.1 STAR for images that
  did not come from one (`cryoinverse.particles.write_poses_star` rewrites a STAR that exists).
- `read_stack_for_map(star, voxel_size, box)`: a STAR file's images (and CTFs) on a map's grid.
- `rebase_image_names(blocks, source, out)`: a STAR's image paths for a copy written elsewhere.
- `viewing_directions` and `write_sky_map`: where the particles are seen from, as a PNG.

Conventions are those of `cryoinverse.poses`: rotations (N, 3, 3) volume -> image, shifts (N, 2)
in Å moving the image content by +shift, one score per image (higher is better).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from .ctf import CTFParams, ctf_grid
from .distributed import gather_rows, is_writer, share
from .errors import DataError
from .mrc import atomic_path
from .poses import Poses
from .progress import ProgressFactory, silent
from .volume import Volume

__all__ = [
    "estimate_star_poses",
    "StarPoses",
    "checkpoint_path",
    "fingerprint",
    "estimate_in_chunks",
    "read_poses_star",
    "write_new_poses_star",
    "viewing_directions",
    "write_sky_map",
    "median_score",
    "read_stack_for_map",
    "rebase_image_names",
]


def checkpoint_path(out: str | os.PathLike) -> Path:
    """Where the checkpoint of a run writing `out` goes: `<out>.partial.npz` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".partial.npz")


def _digest(value: Any) -> Any:
    """Tensors and arrays by a digest of their dtype, shape and bytes; anything else as it is (JSON-ready)."""
    if isinstance(value, CTFParams):
        return _digest(torch.stack([getattr(value, f) for f in ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs",
                                                                   "amplitude_contrast", "phase_shift", "bfactor", "scale")]))
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous().numpy()
    if isinstance(value, np.ndarray):
        h = hashlib.sha256(f"{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
        return h.hexdigest()[:16]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _digest(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_digest(v) for v in value]
    return value


def fingerprint(parts: dict[str, Any]) -> dict[str, Any]:
    """What a result depends on, one entry per part: tensors (images, a map, CTFs) by a digest of
    their bytes, numbers and settings as they are. Two runs with equal fingerprints do the same work."""
    return {k: _digest(v) for k, v in parts.items()}


def _load_checkpoint(path: Path, expected: dict, total: int) -> tuple[Poses | None, int]:
    """The finished poses in checkpoint `path` and their count; DataError when it belongs to another run."""
    try:
        with np.load(path, allow_pickle=False) as data:
            saved = json.loads(str(data["fingerprint"]))
            rotations, shifts, scores = data["rotations"], data["shifts"], data["scores"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a readable checkpoint ({exc}); delete it or pass --overwrite to start again") from None
    changed = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
    if changed:
        raise DataError(
            f"{path}: the checkpoint was made with other inputs or settings (changed: {', '.join(changed)}); "
            "rerun with the same ones to continue, or without --resume and with --overwrite to start again"
        )
    done = len(rotations)
    if done > total or len(shifts) != done or len(scores) != done:
        raise DataError(f"{path}: holds {done} poses for {total} images; delete it or pass --overwrite to start again")
    if done == 0:
        return None, 0
    return Poses(torch.from_numpy(rotations), torch.from_numpy(shifts), torch.from_numpy(scores)), done


def _save_checkpoint(path: Path, poses: Poses, key: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(
                f,
                rotations=poses.rotations.numpy(),
                shifts=poses.shifts.numpy(),
                scores=poses.scores.numpy(),
                fingerprint=np.array(json.dumps(key, sort_keys=True)),
            )


def _concat(parts: list[Poses]) -> Poses:
    return Poses(
        torch.cat([p.rotations for p in parts]), torch.cat([p.shifts for p in parts]), torch.cat([p.scores for p in parts])
    )


def _ctf_chunk(ctf: CTFParams | torch.Tensor | None, sl: slice, n: int, pixel_size: float, squared: bool) -> torch.Tensor | None:
    if ctf is None:
        return None
    if isinstance(ctf, CTFParams):  # one set of parameters serves every image
        values = ctf_grid(ctf if len(ctf) == 1 else ctf[sl], n, pixel_size).expand(sl.stop - sl.start, n, n)
    else:
        values = ctf[sl]
    return values.square() if squared else values


def estimate_in_chunks(
    poser: Any,
    images: torch.Tensor,
    volume: torch.Tensor,
    pixel_size: float,
    ctf: CTFParams | torch.Tensor | None = None,
    chunk: int = 1000,
    checkpoint: str | os.PathLike | None = None,
    key: dict | None = None,
    resume: bool = False,
    progress: ProgressFactory = silent,
    device: torch.device | str = "cpu",
    ctf_premultiplied: bool = False,
) -> tuple[Poses, int]:
    """Poses of `images` (N, n, n) against `volume` (n, n, n) at `pixel_size` Å, `chunk` images per
    call of `poser.estimate`; returns (poses, number of images taken from the checkpoint).

    `ctf`: CTF parameters (N or 1 images; the grids are made chunk by chunk) or grids (N, n, n) in
    `torch.fft.fft2` order; with `ctf_premultiplied` (images already multiplied by their CTF) the
    references are multiplied by CTF^2. `checkpoint`: where the finished poses are saved after each
    chunk, with `key` (a `fingerprint`); with `resume`, a checkpoint there is continued when its key
    matches, else DataError naming what changed. The checkpoint is removed at the end. Under `torchrun`
    each rank estimates its share of every chunk and all ranks get every pose (`cryoinverse.distributed`).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 image; got {chunk}")
    total, n = images.shape[0], images.shape[-1]
    key = dict(key or {}, chunk=chunk)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    parts: list[Poses] = []
    done = 0
    if resume and checkpoint is not None and checkpoint.exists():
        finished, done = _load_checkpoint(checkpoint, key, total)
        if finished is not None:
            parts.append(finished)
    resumed = done
    volume = volume.to(device=device, dtype=torch.float32)
    poser = _with_stack_statistics(poser, images, ctf, pixel_size, ctf_premultiplied, device)
    with progress(total, "poses") as update:
        update(done)
        for start in range(done, total, chunk):
            sl = slice(start, min(total, start + chunk))
            filters = _ctf_chunk(ctf, sl, n, pixel_size, ctf_premultiplied)
            mine = share(torch.arange(sl.stop - sl.start))  # under torchrun: this rank's images of the chunk
            est = poser.estimate(
                images[sl][mine].to(device=device, dtype=torch.float32),
                volume,
                pixel_size,
                ctf=None if filters is None else filters[mine].to(device=device, dtype=torch.float32),
            )
            count = sl.stop - sl.start
            parts.append(Poses(*(gather_rows(t.cpu().to(torch.float64), count) for t in (est.rotations, est.shifts, est.scores))))
            if checkpoint is not None and sl.stop < total and is_writer():
                _save_checkpoint(checkpoint, _concat(parts), key)
            update(sl.stop - sl.start)
    if checkpoint is not None and checkpoint.exists() and is_writer():
        checkpoint.unlink()
    return _concat(parts), resumed


STATISTICS_CHUNK = 512  # images per part when a stack's statistics are summed: a fixed split, so the sums are bit-identical whatever `chunk` is


def _with_stack_statistics(poser: Any, images: torch.Tensor, ctf, pixel_size: float, squared: bool, device) -> Any:
    """`poser` given the statistics of the whole stack when it takes them (`cryoinverse.components.StackPoser`)."""
    from .components import StackPoser

    if not isinstance(poser, StackPoser):
        return poser
    total, n = images.shape[0], images.shape[-1]
    statistics = None
    for start in range(0, total, STATISTICS_CHUNK):
        sl = slice(start, min(total, start + STATISTICS_CHUNK))
        filters = _ctf_chunk(ctf, sl, n, pixel_size, squared)
        part = poser.stack_statistics(images[sl].to(device=device, dtype=torch.float32),
                                      None if filters is None else filters.to(device=device, dtype=torch.float32))
        statistics = part if statistics is None else statistics + part
    return poser.with_stack_statistics(statistics)


def read_poses_star(path: str | os.PathLike, pixel_sizes=None) -> Poses:
    """The poses (angles and origins) of a STAR file's particle rows; `pixel_sizes` (Å) convert
    origins in pixels when the file gives no pixel size. DataError when it has no angles."""
    from .particles import poses_from_table
    from .star import particle_table, pixel_sizes_of, read_star

    path = Path(path)
    table = particle_table(read_star(path), path)
    sizes = pixel_sizes_of(table, path)
    rotations, shifts = poses_from_table(table, sizes if sizes is not None else pixel_sizes, path)
    if rotations is None:
        raise DataError(f"{path}: has no angles (rlnAngleRot, rlnAngleTilt, rlnAnglePsi) to compare with")
    return Poses(rotations, shifts)


def write_new_poses_star(
    out: str | os.PathLike, stack: str | os.PathLike, poses: Poses, pixel_size: float, box: int
) -> Path:
    """A RELION 3.1 STAR file (one optics group) of the images of MRC stack `stack`, in order, with
    `poses`: angles, origins in Å (= -shift) and a cryoinverseScore column. rlnImageName points at
    the stack relative to the STAR file's folder. Atomic."""
    from .particles import SCORE_COLUMN
    from .rotations import matrix_to_euler_zyz
    from .star import write_star

    out = Path(out)
    count = len(poses)
    target = Path(os.path.relpath(Path(stack).resolve(), out.resolve().parent))
    rot, tilt, psi = matrix_to_euler_zyz(poses.rotations)
    origin = (-poses.shifts).numpy()
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnImagePixelSize": [float(pixel_size)],
              "rlnImageSize": [int(box)], "rlnImageDimensionality": [2]}
    particles = {
        "rlnImageName": [f"{i + 1}@{target.as_posix()}" for i in range(count)],
        "rlnAngleRot": rot.numpy(), "rlnAngleTilt": tilt.numpy(), "rlnAnglePsi": psi.numpy(),
        "rlnOriginXAngst": origin[:, 0], "rlnOriginYAngst": origin[:, 1],
        "rlnOpticsGroup": np.ones(count, dtype=np.int64),
        SCORE_COLUMN: poses.scores.numpy(),
    }
    return write_star(out, {"optics": optics, "particles": particles})


def viewing_directions(rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(azimuth, elevation) in degrees of each image's viewing direction in the volume frame.

    The direction is R^T e_z, the third row of R: (cos rot sin tilt, sin rot sin tilt, cos tilt)
    for RELION's angles, so the azimuth is rlnAngleRot and the elevation 90 - rlnAngleTilt.
    """
    d = torch.as_tensor(rotations, dtype=torch.float64)[:, 2, :]
    azimuth = torch.rad2deg(torch.atan2(d[:, 1], d[:, 0]))
    elevation = torch.rad2deg(torch.asin(d[:, 2].clamp(-1.0, 1.0)))
    return azimuth, elevation


def write_sky_map(path: str | os.PathLike, rotations: torch.Tensor, title: str | None = None) -> Path:
    """PNG of the viewing-direction distribution on a Mollweide (equal-area) projection.

    Bins are equal steps of azimuth by equal steps of sin(elevation), so every bin covers the same
    solid angle (k by 2k bins, k from 6 to 36 as the images allow: about 10 per bin when uniform);
    colour is the density relative to a uniform distribution (1: uniform). Atomic.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    azimuth, elevation = viewing_directions(rotations)
    count = azimuth.numel()
    k = int(min(36, max(6, round(math.sqrt(count / 20)))))
    az_edges = np.linspace(-180.0, 180.0, 2 * k + 1)
    z_edges = np.linspace(-1.0, 1.0, k + 1)
    hist, _, _ = np.histogram2d(azimuth.numpy(), np.sin(np.radians(elevation.numpy())), bins=(az_edges, z_edges))
    density = hist * (hist.size / max(count, 1))  # each equal-area bin holds count / bins when uniform
    # drawn on a finer mesh: the projection bends bin edges that pcolormesh would draw straight
    fine = 8
    lon = np.radians(np.linspace(-180.0, 180.0, 2 * k * fine + 1))
    lat = np.arcsin(np.linspace(-1.0, 1.0, k * fine + 1))
    values = np.repeat(np.repeat(density, fine, axis=0), fine, axis=1)
    fig = plt.figure(figsize=(8, 4.8))
    ax = fig.add_subplot(projection="mollweide")
    mesh = ax.pcolormesh(lon, lat, values.T, cmap="viridis", shading="flat", vmin=0)
    fig.colorbar(mesh, ax=ax, orientation="horizontal", fraction=0.05, pad=0.1, label="images per solid angle / uniform")
    ax.set_xlabel("rlnAngleRot (azimuth)")
    ax.set_ylabel("90° − rlnAngleTilt (elevation)", labelpad=24)
    ax.grid(True, alpha=0.4)
    ax.set_title(title or f"viewing directions of {count} images", pad=14)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def median_score(poses: Poses) -> float:
    """Median of the finite scores (NaN when there are none)."""
    finite = poses.scores[torch.isfinite(poses.scores)]
    return float(torch.quantile(finite, 0.5)) if finite.numel() else math.nan


def read_stack_for_map(
    star: str | os.PathLike,
    voxel_size: float,
    box: int,
    resample: bool | None = None,
    ctf: bool = True,
    pixel_size: float | None = None,
    datadir: str | os.PathLike | None = None,
):
    """The particle images of STAR file `star` on the grid of a map of `box`^3 voxels of `voxel_size` Å.

    resample: True resamples every image to the map's grid (optics groups of different pixel sizes
    or boxes included); None resamples images of one pixel size and box when their grid differs
    from the map's, and refuses mixed ones (`read_particle_stack`'s message); False refuses images
    whose grid differs. Resampling is Fourier interpolation with the image centre fixed
    (`cryoinverse.particles.resample_images`), so poses in Å and CTFs are unchanged. With `ctf`,
    each image's CTF is read when the STAR file has CTF columns (rlnDefocusU ...). `datadir`: a
    folder to look for the image stacks in first (`cryoinverse.particles.image_sources`).
    Returns (ParticleStack, a note saying what was resampled, or None).
    """
    from .particles import read_particle_stack, resample_images

    star = Path(star)
    if resample:
        stack = read_particle_stack(star, pixel_size=pixel_size, ctf=False, resample=float(voxel_size), box=box, datadir=datadir)
        before = sorted({float(f"{a:.6g}") for a in stack.source_pixel_sizes})
        note = f"images resampled from {', '.join(f'{a:g}' for a in before)} Å pixels to the map's grid ({box} px of {voxel_size:g} Å)"
    else:
        stack = read_particle_stack(star, pixel_size=pixel_size, ctf=False, resample=False, datadir=datadir)
        note = None
        same = abs(stack.pixel_size - voxel_size) <= 1e-3 * voxel_size and stack.box == box
        if not same and resample is False:
            raise DataError(
                f"{star}: the images are {stack.box}x{stack.box} pixels of {stack.pixel_size:g} Å but the map is {box}^3 voxels "
                f"of {voxel_size:g} Å; resample the images to the map's grid, or give a map on the images' grid"
            )
        if not same:
            note = (f"images resampled from {stack.box} px of {stack.pixel_size:g} Å to the map's grid "
                    f"({box} px of {voxel_size:g} Å)")
            images = torch.cat([resample_images(part, stack.pixel_size, voxel_size, box)
                                for part in stack.images.split(1024)])
            stack = attrs.evolve(stack, images=images, pixel_size=float(voxel_size))
    if ctf and "rlnDefocusU" in stack.table:
        stack = attrs.evolve(stack, ctf=CTFParams.from_star(stack.table, where=str(star)))
    return stack, note


def rebase_image_names(blocks: dict, source: str | os.PathLike, out: str | os.PathLike) -> dict:
    """STAR blocks read from `source`, with the rlnImageName stacks that were found beside `source`
    renamed relative to the folder of `out`, so a copy written there still finds its images.

    Names that are absolute, or that resolve only from the working folder (RELION's project-relative
    names), are kept as written. Returns `blocks` itself when nothing changes, else changed copies.
    """
    from .star import particle_block, split_image_name

    source, out = Path(source), Path(out)
    here, there = source.resolve().parent, out.resolve().parent
    name = particle_block(blocks, source)
    table = blocks[name].table
    if here == there or "rlnImageName" not in table:
        return blocks
    renamed, changed = [], False
    for text in np.asarray(blocks[name].text.get("rlnImageName", table["rlnImageName"])).tolist():
        index, file = split_image_name(str(text))
        if not Path(file).is_absolute() and (here / file).is_file():
            file = Path(os.path.relpath(here / file, there)).as_posix()
            changed = True
        renamed.append(f"{index + 1}@{file}" if "@" in str(text) else file)
    if not changed:
        return blocks
    blocks = dict(blocks)
    blocks[name] = blocks[name].copy()
    blocks[name].set_column("rlnImageName", np.array(renamed))
    return blocks


@attrs.frozen
class StarPoses:
    """What `estimate_star_poses` did: the stack as matched (on the map's grid), its poses, how many
    came from a checkpoint, the seconds spent estimating, a note on resampling (or None), the STAR written."""

    stack: Any
    poses: Poses
    resumed: int
    seconds: float
    note: str | None
    path: Path


def estimate_star_poses(
    star: str | os.PathLike,
    volume: Volume,
    out: str | os.PathLike,
    poser: Any,
    chunk: int = 1000,
    resume: bool = False,
    resample: bool | None = None,
    ctf: bool = True,
    pixel_size: float | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFactory = silent,
    datadir: str | os.PathLike | None = None,
) -> StarPoses:
    """Poses of the images of STAR file `star` against `volume` by `poser`, written to STAR file `out`.

    The images are put on the map's grid (`read_stack_for_map`: `resample`, `ctf`, `pixel_size`),
    estimated `chunk` at a time with a checkpoint beside `out` (`checkpoint_path`; `resume`
    continues one made from the same inputs and settings), and `out` is `star` with the new
    angles, origins and scores (`cryoinverse.particles.write_poses_star`; image paths rebased for
    `out`'s folder).
    """
    from .particles import write_poses_star

    star, out = Path(star), Path(out)
    if not volume.is_cubic:
        raise DataError(f"the map's shape {volume.shape} is not cubic; a pose search needs a cubic map")
    stack, note = read_stack_for_map(star, volume.voxel_size, volume.shape[-1], resample, ctf, pixel_size, datadir)
    settings = {f.name: getattr(poser, f.name) for f in attrs.fields(type(poser)) if f.init} if attrs.has(type(poser)) else {}
    key = fingerprint({
        "images": stack.images, "pixel_size": stack.pixel_size, "ctf": stack.ctf, "ctf_premultiplied": stack.ctf_premultiplied,
        "map": volume.data, "poser": {"kind": getattr(poser, "name", type(poser).__name__), **settings},
    })
    start = time.perf_counter()
    poses, resumed = estimate_in_chunks(
        poser, stack.images, volume.data, stack.pixel_size, stack.ctf, chunk, checkpoint_path(out), key, resume,
        progress=progress, device=device, ctf_premultiplied=stack.ctf_premultiplied,
    )
    seconds = time.perf_counter() - start
    stack = attrs.evolve(stack, blocks=rebase_image_names(stack.blocks, star, out))
    path = write_poses_star(stack, out, poses.rotations, poses.shifts, poses.scores) if is_writer() else out
    return StarPoses(stack, poses, resumed, seconds, note, path)
