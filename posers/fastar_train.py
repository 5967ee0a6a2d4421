"""`cryoinverse train poser`: training of the FastAR learned poser on simulated projections (DESIGN.md section 10).

Data: a folder of MRC maps, each resampled (Fourier crop/pad) to the training voxel size,
cropped or zero-padded about its centre to the architecture's `image_size`^3, and scaled to unit
maximum. Each step draws `batch_size` sets; a set is one random map seen from `views` uniform
random rotations (`project_fourier`, band-limited "sinc" interpolation), optionally shifted by
up to `shift_max` pixels, multiplied by a CTF (300 kV, Cs 2.7 mm, 10% amplitude contrast,
defocus uniform in 0.8-2.5 um per view, pixel = voxel size) and given white Gaussian noise of
variance var(image) / SNR, SNR log-uniform per set.

The target of view i is its Fourier planar map in view 0's frame (`cryoinverse.planar`), which
depends on the rotations only, and its shift (pixels), which the translation head predicts.
Loss: `planar_loss` (confidence-weighted regression, DUSt3R / CryoFastAR), with `hand_aware` the
smaller of each set's losses against its two hands (the map's and its mirror's planar maps); with
`absolute_weight` > 0, plus that weight times `absolute_loss` of the network's absolute head (each
view's rotation in its map's own frame, which simulation knows; training only).

Progressive schedule (CryoFastAR section "progressive training"), in fractions of `steps`:
- until `clean_until`: `min_views` views (3: two views leave the angle about their common line
  free), clean projections (stage 1), of the first `stage1_maps` maps only (CryoFastAR starts from
  one molecule; 0: all maps);
- views then rise linearly from `min_views` to `views`, reached at `views_full`;
- noise starts at `noise_from`; the lowest SNR drawn falls log-linearly from `snr_max` to
  `snr_min`, reached at `noise_full`;
- the CTF is applied from `ctf_from` (with `--ctf`).
Every set of a step has the same number of views; the schedule depends on the step only, so a
resumed run draws exactly what an uninterrupted one does.

Optimiser: AdamW (betas 0.9, 0.98) with linear warm-up (`cryoinverse.optim.lr_at`), gradient
clipping, an EMA of the weights (saved as the poser). Checkpoints (`checkpoint.pt`: model, EMA,
optimiser, generator state, step, config) every `checkpoint_every` steps and at the end, written
atomically; rerunning with the same `--out` resumes from it, bit-identically on the same device.
`log.jsonl` gets step, mean loss, median rotation error (degrees; weighted Kabsch of the
predicted maps vs the true R_i R_0^T, views 1.. of the batch, each set after the better of its two
hands), median shift error (pixels, all
views), with the absolute head its median error (degrees, all views), views, SNR floor, CTF, lr, time.
Output: `poser.safetensors` (EMA weights) + `poser.json` (arch, network config, voxel size,
training settings, maps); `load_poser` rebuilds the network from them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import attrs
import torch

from cryoinverse.errors import DataError, SpecError
from cryoinverse.optim import TrainingRun, config_dict, mixed_precision, save_weights
from cryoinverse.params import one_of, param, positive
from cryoinverse.posers.fastar_model import CONFIGS, FastAR, FastARConfig, absolute_loss, planar_loss
from cryoinverse.priors.training import maps_in
from cryoinverse.resample import fit_box

__all__ = ["PoserTrainConfig", "train_poser", "load_poser", "load_poser_maps", "simulate_sets", "stage_at"]

DEFOCUS_RANGE_A = (8000.0, 25000.0)  # 0.8-2.5 um


def _fraction(instance, attribute, value) -> None:
    if not 0.0 <= value <= 1.0:
        raise SpecError(f"{attribute.name} = {value}: a fraction of the steps in [0, 1] is needed")


@attrs.frozen
class PoserTrainConfig:
    """Settings of one poser training run (every field is a CLI option of `cryoinverse train poser`)."""

    maps: Path = param(help="folder of MRC maps (*.mrc, *.map) to project")
    out: Path = param(help="output folder: checkpoint.pt, poser.safetensors + poser.json, log.jsonl")
    arch: str = param("tiny", help=f"network config name ({', '.join(CONFIGS)}; posers/fastar_model.py)", validator=one_of(*CONFIGS))
    steps: int = param(1000, help="optimiser steps", validator=positive)
    views: int = param(8, help="views per set at the end of the schedule (view 0 is the reference)", validator=positive)
    batch_size: int = param(4, help="sets per step", validator=positive)
    lr: float = param(3e-4, help="peak learning rate", validator=positive)
    warmup: int = param(100, help="linear warm-up steps")
    schedule: str = param("constant", help="learning rate after warm-up: constant, or cosine decay to 10% at the last step", validator=one_of("constant", "cosine"))
    weight_decay: float = param(0.01, help="AdamW weight decay")
    ema_decay: float = param(0.999, help="EMA decay of the saved weights")
    grad_clip: float = param(1.0, help="gradient-norm clip")
    alpha: float = param(0.2, help="weight of the -log(confidence) term of the loss")
    shift_weight: float = param(1.0, help="weight of the shift term of the loss (squared error in quarter images)")
    snr_min: float = param(0.1, help="lowest SNR (signal variance / noise variance) drawn once noise is fully on", validator=positive)
    snr_max: float = param(10.0, help="highest SNR drawn (SNR log-uniform per set); inf or 0: no noise at all")
    ctf: bool = param(True, help="multiply projections by a random CTF (300 kV, defocus 0.8-2.5 um) from ctf_from on")
    shift_max: float = param(0.0, help="random in-plane shifts up to this many pixels in x and y (0: none)")
    voxel_size: float = param(3.0, help="voxel size in Angstrom the maps are resampled to (the pixel size of the images)", validator=positive)
    clean_until: float = param(0.1, help="fraction of the steps with 2 clean views (stage 1)", validator=_fraction)
    stage1_maps: int = param(0, help="stage 1 projects only the first this many maps (name order; CryoFastAR: 1); 0: all")
    views_full: float = param(0.5, help="fraction of the steps at which the view count reaches --views", validator=_fraction)
    noise_from: float = param(0.2, help="fraction of the steps from which noise is added", validator=_fraction)
    noise_full: float = param(0.7, help="fraction of the steps at which the lowest SNR drawn reaches --snr-min", validator=_fraction)
    ctf_from: float = param(0.3, help="fraction of the steps from which the CTF is applied", validator=_fraction)
    hand_aware: bool = param(True, help="each set's loss is the smaller of its two hands' (a set of projections fits a map and its mirror alike)")
    absolute_weight: float = param(0.0, help="weight of an auxiliary loss on each view's rotation in its map's frame (an extra head; 0: none)")
    min_views: int = param(3, help="views per set at the start of the schedule (two views leave the angle about their common line free)", validator=positive)
    seed: int = param(0, help="random seed")
    device: str = param("auto", help="auto, cpu or cuda[:N]")
    checkpoint_every: int = param(500, help="steps between checkpoints", validator=positive)
    log_every: int = param(10, help="steps between log lines", validator=positive)


@attrs.frozen
class Stage:
    """What the sets of one step look like."""

    views: int
    snr_floor: float  # lowest SNR drawn; inf: clean
    ctf: bool
    maps: int = 0  # draw from the first this many maps only; 0: all


def _noise_on(cfg: PoserTrainConfig) -> bool:
    return math.isfinite(cfg.snr_max) and cfg.snr_max > 0


def stage_at(step: int, cfg: PoserTrainConfig) -> Stage:
    """The progressive schedule at optimiser step `step` (0-based); see the module docstring."""
    t = step / cfg.steps

    def ramp(start: float, end: float) -> float:  # 0 before start, 1 from end, linear between
        if t >= end:
            return 1.0
        return max(0.0, (t - start) / (end - start)) if end > start else 0.0

    first = min(cfg.min_views, cfg.views)
    if t < cfg.clean_until:
        return Stage(views=first, snr_floor=math.inf, ctf=False, maps=cfg.stage1_maps)
    views = first + round(ramp(cfg.clean_until, cfg.views_full) * max(0, cfg.views - first))
    floor = math.inf
    if _noise_on(cfg) and t >= cfg.noise_from:
        lo, hi = math.log(min(cfg.snr_min, cfg.snr_max)), math.log(cfg.snr_max)
        floor = math.exp(hi + ramp(cfg.noise_from, cfg.noise_full) * (lo - hi))
    return Stage(views=views, snr_floor=floor, ctf=cfg.ctf and t >= cfg.ctf_from)


def load_poser_maps(folder: Path, voxel_size: float, n: int) -> tuple[list[torch.Tensor], list[dict]]:
    """Maps (n, n, n) at `voxel_size`, scaled to unit maximum, and a summary of what went in."""
    maps, summary = [], []
    for path, volume in maps_in(folder, voxel_size):
        data = fit_box(volume.data.to(torch.float32), n)
        peak = float(data.abs().max())
        if not peak > 0:
            raise DataError(f"{path}: the map is zero inside the central {n}^3 box at {voxel_size} A; it cannot be projected")
        maps.append(data / peak)
        summary.append({"file": path.name, "shape": list(volume.shape), "voxel_size": volume.voxel_size})
    return maps, summary


def simulate_sets(maps: list[torch.Tensor], stage: Stage, cfg: PoserTrainConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch: images (B, V, n, n), rotations (B, V, 3, 3), shifts (B, V, 2) in pixels (x, y) and the SNR of each set (B,), on the CPU."""
    from cryoinverse.ctf import CTFParams, ctf_grid
    from cryoinverse.projection import project_fourier, shift_and_filter
    from cryoinverse.rotations import random_rotations

    b, v, n = cfg.batch_size, stage.views, maps[0].shape[0]
    picks = torch.randint(0, min(stage.maps, len(maps)) if stage.maps > 0 else len(maps), (b,), generator=generator)
    rotations = random_rotations(b * v, generator).reshape(b, v, 3, 3)
    images = torch.stack([project_fourier(maps[int(i)], rotations[k].to(torch.float32), interpolation="sinc") for k, i in enumerate(picks)])
    shifts = filters = None
    if cfg.shift_max > 0:
        shifts = (torch.rand(b * v, 2, generator=generator, dtype=torch.float64) * 2 - 1) * cfg.shift_max
    if stage.ctf:
        defocus = DEFOCUS_RANGE_A[0] + torch.rand(b * v, generator=generator, dtype=torch.float64) * (DEFOCUS_RANGE_A[1] - DEFOCUS_RANGE_A[0])
        filters = ctf_grid(CTFParams(defocus_u=defocus, defocus_v=defocus, voltage=300.0), n, cfg.voxel_size).to(torch.float32)
    if shifts is not None or filters is not None:
        images = shift_and_filter(images.reshape(b * v, n, n), shifts, filters).reshape(b, v, n, n)
    snr = torch.full((b,), math.inf, dtype=torch.float64)
    if math.isfinite(stage.snr_floor):
        lo, hi = math.log(stage.snr_floor), math.log(cfg.snr_max)
        snr = torch.exp(lo + torch.rand(b, generator=generator, dtype=torch.float64) * (hi - lo))
        signal = images.reshape(b, -1).var(dim=1).to(torch.float64)
        sigma = (signal / snr).sqrt().to(images.dtype).view(b, 1, 1, 1)
        images = images + sigma * torch.randn(images.shape, generator=generator, dtype=images.dtype)
    shifts = torch.zeros(b, v, 2, dtype=torch.float32) if shifts is None else shifts.reshape(b, v, 2).to(torch.float32)
    return images.to(torch.float32), rotations, shifts, snr


def _median_rotation_error(maps: torch.Tensor, confidence: torch.Tensor, rotations: torch.Tensor) -> float:
    """Median angle (degrees) between the rotations the planar maps give and the true R_i R_0^T, views 1.."""
    from cryoinverse.planar import rotations_from_planar_maps
    from cryoinverse.rotations import geodesic_distance

    b, v = rotations.shape[:2]
    if v < 2:
        return float("nan")
    with torch.no_grad():
        found = rotations_from_planar_maps(maps[:, 1:].reshape(b * (v - 1), *maps.shape[2:]).double(), confidence[:, 1:].reshape(b * (v - 1), *confidence.shape[2:]).double())
    truth = (rotations[:, 1:] @ rotations[:, :1].transpose(-1, -2)).reshape(-1, 3, 3)
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=truth.dtype))
    plain = geodesic_distance(found.cpu(), truth).reshape(b, v - 1)
    mirrored = geodesic_distance(found.cpu(), mirror @ truth @ mirror).reshape(b, v - 1)
    better = torch.where((plain.median(dim=1).values <= mirrored.median(dim=1).values)[:, None], plain, mirrored)  # per set
    return float(better.median())


def train_poser(cfg: PoserTrainConfig, echo: Callable[[str], None] = print, progress=None, stop_after: int | None = None) -> Path:
    """Train, checkpoint and save the EMA poser; returns the path of `poser.safetensors`.

    `stop_after`: checkpoint and return after this many steps, as an interrupted run would (the
    schedule still spans `cfg.steps`; no poser is written); rerun without it to finish.
    """
    from cryoinverse.devices import resolve_device
    from cryoinverse.rotations import geodesic_distance

    device = resolve_device(cfg.device)
    net_config = attrs.evolve(CONFIGS[cfg.arch], absolute_head=cfg.absolute_weight > 0)
    maps, summary = load_poser_maps(cfg.maps, cfg.voxel_size, net_config.image_size)
    with torch.random.fork_rng(devices=[]):  # initial weights from the seed, not from the process's RNG state
        torch.manual_seed(cfg.seed)
        model = FastAR(net_config).to(device)
    generator = torch.Generator().manual_seed(cfg.seed * 7919 + 17)
    run = TrainingRun.start(cfg, model, {"generator": generator}, device, must_match=("arch",), echo=echo)
    autocast = mixed_precision(device)

    def step_loss(step: int) -> tuple[torch.Tensor, Callable[[], dict]]:
        stage = stage_at(step, cfg)
        images, rotations, shifts, _ = simulate_sets(maps, stage, cfg, generator)
        target = torch.stack([_planar(r, net_config.image_size) for r in rotations]).to(device)
        with autocast:
            out = model(images.to(device))
        pred, confidence, pred_shifts = out.maps, out.confidence, out.shifts
        loss = planar_loss(pred.float(), confidence.float(), target, cfg.alpha, pred_shifts.float(), shifts.to(device), cfg.shift_weight,
                           hand_aware=cfg.hand_aware)
        if out.absolute is not None:
            loss = loss + cfg.absolute_weight * absolute_loss(out.absolute.float(), rotations.to(device, torch.float32))

        def fields() -> dict:
            return {
                "rotation_error_deg": _median_rotation_error(pred.detach().float(), confidence.detach().float(), rotations),
                **({} if out.absolute is None else {"absolute_error_deg": float(geodesic_distance(
                    out.absolute.detach().double().cpu().reshape(-1, 3, 3), rotations.reshape(-1, 3, 3)).median())}),
                "shift_error_px": float((pred_shifts.detach().float().cpu() - shifts).norm(dim=-1).median()), "views": stage.views,
                "snr_floor": stage.snr_floor if math.isfinite(stage.snr_floor) else None, "ctf": stage.ctf,
            }

        return loss, fields

    run.train(step_loss, until=stop_after, progress=progress)
    weights = cfg.out / "poser.safetensors"
    if not run.finished:
        return weights
    settings = config_dict(cfg)
    for key in ("maps", "out", "device"):
        settings.pop(key)
    meta = {
        "arch": cfg.arch, "config": attrs.asdict(net_config), "voxel_size": cfg.voxel_size,
        "training": {**settings, "snr_max": settings["snr_max"] if math.isfinite(cfg.snr_max) else None}, "maps": summary,
    }
    save_weights(weights, run.ema, meta)
    return weights


def _planar(rotations: torch.Tensor, n: int) -> torch.Tensor:
    from cryoinverse.planar import planar_maps

    return planar_maps(rotations, n).to(torch.float32)


def load_poser(path: str | Path, device: str | torch.device = "cpu") -> tuple[FastAR, dict]:
    """The EMA network of `train poser` (in eval mode) and its metadata, from poser.safetensors, poser.json or their folder."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "poser.safetensors"
    weights, meta_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for p in (weights, meta_path):
        if not p.exists():
            raise DataError(f"{p}: not found; a trained poser is a .safetensors file with a .json beside it (cryoinverse train poser)")
    meta = json.loads(meta_path.read_text())
    try:
        config = FastARConfig(**meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{meta_path}: no valid network config ({exc})") from None
    model = FastAR(config)
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise DataError(f"{weights}: the weights do not fit the network in {meta_path.name} ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), meta
