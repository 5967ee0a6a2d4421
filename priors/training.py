"""`cryoinverse train prior`: rectified-flow training of a learned prior (CryoFM section 3, DESIGN.md section 8).

Data: a folder of MRC maps, each resampled (Fourier crop/pad) to the target voxel size and
normalised as CryoFM-1 (clip below 0, divide by the 99.999th percentile, z = (x - 0.04) / 0.09).
Each example is a random crop of `box`^3 with a random rotation: uniform on SO(3) by trilinear
resampling, or (`rot24`) one of the 24 exact cube rotations. Objective: t ~ U(0, 1),
x0 ~ N(0, I), x_t = t x1 + (1 - t) x0, loss = mean |v(x_t, t) - (x1 - x0)|^2.
Optimiser: AdamW (betas 0.9, 0.98; weight decay 0.01) with linear warm-up, gradient clipping,
an EMA of the weights (the EMA is what gets saved as the prior); bf16 autocast on CUDA.
Checkpoints (model, EMA, optimiser, step, RNG state) every `checkpoint_every` steps and at the
end, written atomically; `resume` continues from the last one. Under `torchrun` the model is
wrapped in DistributedDataParallel and each rank draws its own examples; rank 0 writes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import attrs
import torch
import torch.nn.functional as F

from cryoinverse.errors import DataError, SpecError
from cryoinverse.mrc import read_volume
from cryoinverse.optim import TrainingRun, mixed_precision
from cryoinverse.optim import lr_at as _lr_at  # noqa: F401 (the schedule's name here, which tests import)
from cryoinverse.params import one_of, param, positive
from cryoinverse.rotations import random_rotations

BACKGROUND_Z = (0.0 - 0.04) / 0.09  # a zero density in CryoFM-1 units: the padding value


def cryofm_normalize(x: torch.Tensor, percentile: float = 99.999) -> tuple[torch.Tensor, float]:
    """CryoFM-1 normalisation of one map: (z, scale) with z = (clip(x, 0) / scale - 0.04) / 0.09."""
    clipped = x.clamp(min=0)
    flat = clipped.reshape(-1).to(torch.float64)
    k = max(1, int(math.ceil(percentile / 100 * flat.numel())))
    scale = float(flat.kthvalue(k).values)
    if not scale > 0:
        raise DataError("map has no positive density; it cannot be normalised")
    return ((clipped / scale - 0.04) / 0.09).to(torch.float32), scale


@attrs.frozen
class TrainConfig:
    """Settings of one training run (every field is a CLI option of `cryoinverse train prior`)."""

    data: Path = param(help="folder of clean MRC maps (*.mrc, *.map)")
    out: Path = param(help="output folder: checkpoint.pt, prior.safetensors + prior.json, log.jsonl")
    arch: str = param("tiny", help="architecture config name (see priors/hdit.py)")
    box: int = param(32, help="training crop edge in voxels", validator=positive)
    voxel_size: float = param(1.5, help="voxel size in Angstrom the maps are resampled to", validator=positive)
    steps: int = param(1000, help="optimiser steps", validator=positive)
    batch_size: int = param(4, help="crops per step (per rank)", validator=positive)
    lr: float = param(1e-4, help="peak learning rate", validator=positive)
    warmup: int = param(200, help="linear warm-up steps")
    schedule: str = param("constant", help="learning rate after warm-up: constant, or cosine decay to 10% at the last step", validator=one_of("constant", "cosine"))
    weight_decay: float = param(0.01, help="AdamW weight decay")
    ema_decay: float = param(0.999, help="EMA decay of the saved weights")
    grad_clip: float = param(1.0, help="gradient-norm clip")
    rot24: bool = param(False, help="rotate by the 24 exact cube rotations instead of uniform SO(3)")
    seed: int = param(0, help="random seed")
    device: str = param("auto", help="auto, cpu or cuda[:N]")
    scale_jitter: float = param(0.0, help="density-scale augmentation: each crop's CryoFM-1 scale times exp(u), u uniform in +-this (0: none)")
    init: str = param("", help="start from these weights (.safetensors of the same architecture) instead of random ones")
    checkpoint_every: int = param(500, help="steps between checkpoints", validator=positive)
    log_every: int = param(10, help="steps between log lines", validator=positive)


def maps_in(folder: Path, voxel_size: float):
    """(path, volume at `voxel_size`) for every .mrc/.map file of `folder`, in name order; DataError if none."""
    from cryoinverse.resample import fourier_resample

    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise DataError(f"{folder}: is a file; give the folder that holds the training maps")
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in (".mrc", ".map"))
    if not paths:
        raise DataError(f"{folder}: no .mrc or .map files to train on")
    for path in paths:
        volume = read_volume(path)
        if abs(volume.voxel_size - voxel_size) > 1e-3 * voxel_size:
            volume = fourier_resample(volume, voxel_size)
        yield path, volume


def load_training_maps(folder: Path, voxel_size: float, box: int) -> tuple[list[torch.Tensor], list[dict]]:
    """Normalised maps (each at least `box` per edge after padding) and a summary of what went in."""
    maps, summary = [], []
    for path, volume in maps_in(folder, voxel_size):
        z, scale = cryofm_normalize(volume.data)
        pad = [max(0, box - s) for s in z.shape]
        if any(pad):
            z = F.pad(z, [0, pad[2], 0, pad[1], 0, pad[0]], value=BACKGROUND_Z)
        maps.append(z)
        summary.append({"file": path.name, "shape": list(volume.shape), "voxel_size": volume.voxel_size, "scale": scale})
    return maps, summary


def _rot24(x: torch.Tensor, index: int) -> torch.Tensor:
    """Cube rotation `index` (0..23): one of 6 faces brought to z, then 0-3 quarter turns about z."""
    face, turn = divmod(index, 4)
    dims = (-3, -2, -1)
    if face < 4:
        x = torch.rot90(x, face, dims=(dims[0], dims[1]))
    elif face == 4:
        x = torch.rot90(x, 1, dims=(dims[0], dims[2]))
    else:
        x = torch.rot90(x, -1, dims=(dims[0], dims[2]))
    return torch.rot90(x, turn, dims=(dims[1], dims[2]))


def random_crop(volume: torch.Tensor, box: int, generator: torch.Generator, rot24: bool) -> torch.Tensor:
    """A `box`^3 crop with a random rotation (trilinear on SO(3), or an exact cube rotation)."""
    if rot24:
        starts = [int(torch.randint(0, s - box + 1, (1,), generator=generator)) for s in volume.shape]
        crop = volume[starts[0] : starts[0] + box, starts[1] : starts[1] + box, starts[2] : starts[2] + box]
        return _rot24(crop, int(torch.randint(0, 24, (1,), generator=generator)))
    reach = int(math.ceil(box * math.sqrt(3))) + 1  # a rotated box fits inside this cube
    padded = volume
    pads = [max(0, reach - s) for s in volume.shape]
    if any(pads):
        widths = [w for p in reversed(pads) for w in (p // 2, p - p // 2)]  # F.pad wants (x, y, z) pairs
        padded = F.pad(volume, widths, value=BACKGROUND_Z)
    starts = [int(torch.randint(0, s - reach + 1, (1,), generator=generator)) for s in padded.shape]
    region = padded[starts[0] : starts[0] + reach, starts[1] : starts[1] + reach, starts[2] : starts[2] + reach]
    rotation = random_rotations(1, generator).to(torch.float32)[0]  # acts on (x, y, z)
    lin = (torch.arange(box, dtype=torch.float32) - (box - 1) / 2) * 2 / (reach - 1)
    gz, gy, gx = torch.meshgrid(lin, lin, lin, indexing="ij")
    xyz = torch.stack([gx, gy, gz], dim=-1) @ rotation  # rows: R^T applied to each (x, y, z)
    sample = F.grid_sample(region[None, None] - BACKGROUND_Z, xyz[None], mode="bilinear", align_corners=True)
    return sample[0, 0] + BACKGROUND_Z


def jitter_scale(z: torch.Tensor, spread: float, generator: torch.Generator) -> torch.Tensor:
    """Crops (B, ...) in CryoFM-1 units as if each map's scale were off by exp(u), u ~ U(-spread, spread).

    z = (x / s - 0.04) / 0.09, so dividing s by f gives (z - z0) f + z0 with z0 the zero density:
    the prior learns densities whose scale estimate is off, as it is on noisy maps.
    """
    u = (torch.rand(z.shape[0], generator=generator, dtype=torch.float64) * 2 - 1) * spread
    factor = torch.exp(u).to(z.dtype).view(-1, *([1] * (z.ndim - 1)))
    return (z - BACKGROUND_Z) * factor + BACKGROUND_Z


def flow_matching_loss(model: Callable, x1: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rectified-flow loss mean |v(x_t, t) - (x1 - x0)|^2 for a batch of clean normalised crops."""
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    t = torch.rand(x1.shape[0], generator=generator, device=x1.device, dtype=x1.dtype)
    tb = t.view(-1, 1, 1, 1)
    x_t = tb * x1 + (1 - tb) * x0
    return (model(x_t, t) - (x1 - x0)).float().square().mean()


def train_prior(cfg: TrainConfig, build_model: Callable[[str], torch.nn.Module], save_prior: Callable, echo: Callable[[str], None] = print, progress=None) -> Path:
    """Train, checkpoint and save the EMA prior; returns the path of the saved weights."""
    from cryoinverse.devices import resolve_device

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(cfg.device)
    if world > 1:
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    maps, summary = load_training_maps(cfg.data, cfg.voxel_size, cfg.box)
    with torch.random.fork_rng(devices=[]):  # initial weights from the seed, not from the process's RNG state
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.arch).to(device)
    if cfg.init:
        from cryoinverse.priors.cryofm import load_prior

        start, meta = load_prior(cfg.init)
        if meta.architecture.name != cfg.arch:
            raise SpecError(f"--init {cfg.init}: architecture {meta.architecture.name!r}, not {cfg.arch!r}")
        model.load_state_dict(start.state_dict())
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + rank)
    device_generator = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + rank + 1)
    run = TrainingRun.start(cfg, model, {"generator": generator, "device_generator": device_generator}, device,
                            must_match=("arch", "box"), echo=echo)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    autocast = mixed_precision(device)

    def step_loss(step: int) -> tuple[torch.Tensor, Callable[[], dict]]:
        picks = torch.randint(0, len(maps), (cfg.batch_size,), generator=generator)
        x1 = torch.stack([random_crop(maps[int(i)], cfg.box, generator, cfg.rot24) for i in picks])
        if cfg.scale_jitter > 0:
            x1 = jitter_scale(x1, cfg.scale_jitter, generator)
        with autocast:
            loss = flow_matching_loss(net, x1.to(device), device_generator)
        return loss, lambda: {}  # no fields beyond the loss

    run.train(step_loss, progress=progress, write=rank == 0)
    weights = cfg.out / "prior.safetensors"
    if rank == 0:
        meta = {
            "voxel_size": cfg.voxel_size, "box": cfg.box, "normalization": "cryofm-1",
            "training": {
                "arch": cfg.arch, "steps": cfg.steps, "batch_size": cfg.batch_size * world, "lr": cfg.lr, "warmup": cfg.warmup,
                "schedule": cfg.schedule, "ema_decay": cfg.ema_decay, "rot24": cfg.rot24, "seed": cfg.seed,
                "scale_jitter": cfg.scale_jitter, "init": cfg.init or None, "maps": summary,
            },
        }
        save_prior(weights, run.ema, cfg.arch, meta)
    if world > 1:
        torch.distributed.barrier()
    return weights
