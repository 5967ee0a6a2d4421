"""The training harness of the trainers (`cryoinverse.priors.training`, `cryoinverse.posers.fastar_train`).

A `TrainingRun` is AdamW (betas 0.9, 0.98) on a network, an EMA copy of its weights (what a
trainer saves), named random generators and the number of optimiser steps taken. Its files live
in the config's `out` folder: `checkpoint.pt` (model, ema, optimiser, each generator's state under
its name, step, config), written atomically every `checkpoint_every` steps and where the run
stops, from which a rerun resumes bit-identically on the same device; and `log.jsonl`, one JSON
line every `log_every` steps. The trainer keeps its own numerics: the data, the batches, the loss.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import pickle
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import attrs
import torch

from .errors import DataError, SpecError
from .mrc import atomic_path

__all__ = [
    "TrainSettings", "TrainingRun", "StepLoss", "lr_at", "optimiser_step", "load_checkpoint", "save_checkpoint",
    "config_dict", "mixed_precision", "save_weights",
]

EMA_WARMUP = 10  # steps: the EMA decay starts near 0 and rises as (1 + step) / (EMA_WARMUP + step)
BETAS = (0.9, 0.98)
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


class TrainSettings(Protocol):
    """The fields of a trainer's attrs config that the harness reads."""

    out: Path  # the run's folder
    steps: int  # optimiser steps of the whole run
    lr: float  # peak learning rate
    warmup: int  # steps of linear warm-up
    schedule: str  # after warm-up: "constant", or "cosine" decay to 10% at the last step
    weight_decay: float  # AdamW's
    ema_decay: float  # the EMA's decay per step once warmed up
    grad_clip: float  # gradient-norm clip
    checkpoint_every: int  # steps between checkpoints
    log_every: int  # steps between log lines


StepLoss = Callable[[int], tuple[torch.Tensor, Callable[[], dict]]]
"""Called with a 0-based step: the loss of that step's batch, and a function giving the extra fields
of a log line about that batch (called after the optimiser step, only when a line is written)."""


def lr_at(step: int, settings: TrainSettings) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up, then the schedule."""
    warm = min(1.0, (step + 1) / max(1, settings.warmup))
    if settings.schedule == "constant" or step < settings.warmup:
        return settings.lr * warm
    progress = (step - settings.warmup) / max(1, settings.steps - 1 - settings.warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def optimiser_step(loss: torch.Tensor, model: torch.nn.Module, ema: torch.nn.Module, optimiser: torch.optim.Optimizer,
                   step: int, grad_clip: float, ema_decay: float) -> None:
    """Backpropagate `loss`, clip the gradient norm to `grad_clip`, step the optimiser, and move the
    EMA copy towards the model by 1 - min(ema_decay, (1 + step) / (EMA_WARMUP + step)): the short
    warm-up keeps the EMA from holding the random initial weights for thousands of steps."""
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimiser.step()
    with torch.no_grad():
        decay = min(ema_decay, (1 + step) / (EMA_WARMUP + step))
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def config_dict(config: Any) -> dict:
    """An attrs config as plain JSON values (paths as strings): what checkpoints and metadata record."""
    return attrs.asdict(config, value_serializer=lambda i, a, v: str(v) if isinstance(v, Path) else v)


def load_checkpoint(path: Path, device: torch.device | str) -> dict:
    """The state saved at `path`, its tensors on `device`; DataError if it holds anything but tensors,
    numbers and strings (such a file is not loaded: unpickling it could run code)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"{path}: holds more than tensors, numbers and strings, and is not loaded (it could run code); "
            f"use another --out ({str(exc).splitlines()[0]})"
        ) from None


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` to `path` atomically: an interrupted write leaves the previous checkpoint whole."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def save_weights(path: Path, module: torch.nn.Module, meta: dict) -> None:
    """`module`'s state as safetensors at `path` and `meta` as JSON beside it (same name, .json), each atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    with atomic_path(path.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2) + "\n")


def mixed_precision(device: torch.device):
    """The autocast context of a training forward pass: bf16 on CUDA, full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@attrs.define(eq=False)
class TrainingRun:
    """The state of one training run: network, EMA copy, optimiser, random generators, steps taken.

    Not frozen: it owns tensors and advances. `generators` are saved in the checkpoint under their
    names; `config` is the trainer's attrs config (a `TrainSettings`), recorded in each checkpoint.
    """

    config: TrainSettings
    model: torch.nn.Module
    ema: torch.nn.Module
    optimiser: torch.optim.Optimizer
    generators: dict[str, torch.Generator]
    step: int = 0

    @classmethod
    def start(cls, config: TrainSettings, model: torch.nn.Module, generators: dict[str, torch.Generator],
              device: torch.device, must_match: tuple[str, ...] = (), echo: Callable[[str], None] = print) -> TrainingRun:
        """AdamW and an EMA copy for `model`, resumed from `out/checkpoint.pt` where there is one.

        A checkpoint whose config differs from `config` in a field of `must_match` (say the
        architecture) is refused with a SpecError; `echo` is told the step a run resumes at.
        """
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=BETAS, weight_decay=config.weight_decay)
        run = cls(config, model, ema, optimiser, generators)
        config.out.mkdir(parents=True, exist_ok=True)
        if run.checkpoint.exists():
            state = load_checkpoint(run.checkpoint, device)
            run._check(state["config"], must_match)
            run.restore(state)
            echo(f"resumed from {run.checkpoint} at step {run.step}")
        return run

    @property
    def checkpoint(self) -> Path:
        """Where the run's checkpoint is written."""
        return self.config.out / CHECKPOINT

    @property
    def finished(self) -> bool:
        """Whether every step of the config has been taken."""
        return self.step >= self.config.steps

    def _check(self, saved: dict, must_match: tuple[str, ...]) -> None:
        ours = config_dict(self.config)
        if any(saved.get(key) != ours[key] for key in must_match):
            then = ", ".join(f"{key} {saved.get(key)!r}" for key in must_match)
            now = ", ".join(f"{key} {ours[key]!r}" for key in must_match)
            raise SpecError(f"{self.checkpoint}: was trained with {then}, not {now}; use another --out")

    def state(self) -> dict:
        """What a checkpoint holds: model, ema, optimiser, each generator's state by name, step, config."""
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimiser": self.optimiser.state_dict(),
            **{name: g.get_state() for name, g in self.generators.items()}, "step": self.step, "config": config_dict(self.config),
        }

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint's `state` (as `state()` gives)."""
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimiser.load_state_dict(state["optimiser"])
        for name, g in self.generators.items():
            g.set_state(state[name])
        self.step = state["step"]

    def train(self, step_loss: StepLoss, until: int | None = None, progress: Callable[[int], None] | None = None,
              write: bool = True) -> None:
        """Take optimiser steps until `until` steps (default: all of the config's) are done.

        Each step sets the learning rate (`lr_at`), takes `step_loss(step)`, and makes an
        `optimiser_step`; then `progress(1)`. With `write`: a log line (step, mean loss since the
        last line, the batch's extra fields, lr, elapsed seconds) every `log_every` steps and at the
        config's last step; a checkpoint every `checkpoint_every` steps and where the loop stops.
        Only one process of a distributed run writes (the others pass write=False).
        """
        cfg = self.config
        last = cfg.steps if until is None else min(cfg.steps, until)
        started, losses = time.perf_counter(), []
        with open(cfg.out / LOG, "a") if write else contextlib.nullcontext() as log:
            while self.step < last:
                for group in self.optimiser.param_groups:
                    group["lr"] = lr_at(self.step, cfg)
                loss, fields = step_loss(self.step)
                optimiser_step(loss, self.model, self.ema, self.optimiser, self.step, cfg.grad_clip, cfg.ema_decay)
                self.step += 1
                losses.append(float(loss.detach()))
                if progress is not None:
                    progress(1)
                if not write:
                    continue
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    entry = {
                        "step": self.step, "loss": sum(losses) / len(losses), **fields(),
                        "lr": lr_at(self.step - 1, cfg), "elapsed_s": time.perf_counter() - started,
                    }
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
                    losses = []
                if self.step % cfg.checkpoint_every == 0 or self.step == last:
                    save_checkpoint(self.checkpoint, self.state())
