"""One training step shared by the trainers (`cryoinverse.priors.training`, `cryoinverse.posers.fastar_train`)."""

from __future__ import annotations

import torch

__all__ = ["optimiser_step"]

EMA_WARMUP = 10  # steps: the EMA decay starts near 0 and rises as (1 + step) / (EMA_WARMUP + step)


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
