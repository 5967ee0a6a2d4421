"""The flow path shared by priors and samplers (CryoFM, this project's direction).

x_t = t x1 + (1 - t) x0 with x0 ~ N(0, I) at t = 0 and data x1 at t = 1; velocity target
x1 - x0; data estimate x1_hat = x_t + (1 - t) v(x_t, t). Euler steps run at t_i = i / N.
"""

from __future__ import annotations

import torch


def euler_times(steps: int) -> list[float]:
    """Start times t_i = i / steps of the Euler steps, i = 0..steps-1."""
    return [i / steps for i in range(steps)]


def data_estimate(x_t: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """x1_hat = x_t + (1 - t) v."""
    return x_t + (1.0 - t) * v


def per_sample_rms(g: torch.Tensor) -> torch.Tensor:
    """Root-mean-square of each batch element of (B, ...), shaped (B, 1, 1, 1) for broadcasting."""
    flat = g.reshape(g.shape[0], -1)
    return flat.square().mean(dim=1).sqrt().reshape(-1, *([1] * (g.ndim - 1)))
