"""The network of poser `fastar` (CryoFastAR-style): images of a set of views -> Fourier planar maps.

A ViT encoder, shared over the views, turns each image (normalised to zero mean and unit variance)
into patch tokens with learned positions. The decoder alternates view-integration blocks (every
view's tokens cross-attend to the reference view's, the first view, which carries a learned
embedding) and view-update blocks (self-attention within each view). A linear head gives, per
pixel, the 3D planar-map coordinates (`cryoinverse.planar`) and a confidence c = 1 + exp(s). A
translation head reads each view's mean token and predicts its in-plane shift. With
`absolute_head`, a training-only head reads each view's mean *encoder* token and predicts the
view's rotation in its map's own frame (a 6D representation, Gram-Schmidt to a rotation,
Zhou et al. 2019): supervising it gives the encoder a direct signal of each view's orientation,
which the relative task alone does not (the reference view's planar map is fixed). Attention is
`torch.nn.functional.scaled_dot_product_attention`.

The loss is CryoFastAR's (DUSt3R's) confidence-weighted regression,
    L = mean over pixels of  c |P - P*|^2 - alpha log c,
so pixels the network cannot place (e.g. frequencies the CTF zeroes) learn a low confidence and
weigh little in the weighted Kabsch that turns planar maps into rotations; plus `shift_weight`
times the mean squared shift error in units of a quarter image (`FastAROutput.shifts`).
"""

from __future__ import annotations

import attrs
import torch
import torch.nn as nn
import torch.nn.functional as F

from typing import NamedTuple

__all__ = ["FastARConfig", "CONFIGS", "FastAR", "FastAROutput", "planar_loss", "rotation_from_6d", "absolute_loss"]

SHIFT_UNIT = 0.25  # shifts are predicted in units of a quarter of the image edge


class FastAROutput(NamedTuple):
    """What FastAR predicts for (B, V) views of n x n pixels."""

    maps: torch.Tensor  # (B, V, n, n, 3) planar maps in the reference view's frame
    confidence: torch.Tensor  # (B, V, n, n) >= 1
    shifts: torch.Tensor  # (B, V, 2) in-plane shifts (x, y), pixels; content moved by +shift
    absolute: torch.Tensor | None = None  # (B, V, 3, 3) each view's rotation in its map's frame (absolute_head only)


@attrs.frozen
class FastARConfig:
    """Sizes of a FastAR network."""

    image_size: int = 64  # pixels per image edge
    patch: int = 8  # pixels per patch edge
    dim: int = 64  # token width
    heads: int = 4  # attention heads
    encoder_depth: int = 2  # encoder blocks
    decoder_depth: int = 2  # (view-integration, view-update) pairs
    mlp_ratio: int = 4  # MLP width / token width
    absolute_head: bool = False  # a training-only head: each view's rotation in its map's frame, from the encoder

    def __attrs_post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")


CONFIGS = {
    "tiny": FastARConfig(image_size=32, patch=4, dim=64, heads=4, encoder_depth=2, decoder_depth=2),
    "small": FastARConfig(image_size=64, patch=8, dim=192, heads=6, encoder_depth=6, decoder_depth=4),
    "base": FastARConfig(image_size=128, patch=8, dim=384, heads=8, encoder_depth=12, decoder_depth=8),
}


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, t, h, d // h).transpose(1, 2)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    """Pre-norm attention (self or cross) and MLP, both residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        y = self.norm(x)
        x = x + self.attn(y, y if context is None else self.norm_context(context))
        return x + self.mlp(self.norm_mlp(x))


class FastAR(nn.Module):
    """Views (B, V, n, n) -> `FastAROutput` (planar maps, confidences, shifts); view 0 is the reference."""

    def __init__(self, config: FastARConfig):
        super().__init__()
        c = self.config = config
        tokens = (c.image_size // c.patch) ** 2
        self.embed = nn.Conv2d(1, c.dim, kernel_size=c.patch, stride=c.patch)
        self.position = nn.Parameter(torch.randn(1, tokens, c.dim) * 0.02)
        self.reference = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.encoder = nn.ModuleList(_Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.encoder_depth))
        self.integrate = nn.ModuleList(_Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.decoder_depth))
        self.update = nn.ModuleList(_Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.decoder_depth))
        self.norm = nn.LayerNorm(c.dim)
        self.shift = nn.Linear(c.dim, 2)
        self.head = nn.Linear(c.dim, c.patch * c.patch * 4)
        self.absolute = nn.Linear(c.dim, 6) if c.absolute_head else None

    def forward(self, images: torch.Tensor) -> FastAROutput:
        c = self.config
        b, v, n, _ = images.shape
        if n != c.image_size:
            raise ValueError(f"the network takes {c.image_size}x{c.image_size} images; got {n}x{n}")
        x = images.reshape(b * v, 1, n, n)
        x = (x - x.mean(dim=(-2, -1), keepdim=True)) / x.std(dim=(-2, -1), keepdim=True).clamp(min=1e-6)
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.position  # (B V, T, D)
        for block in self.encoder:
            tokens = block(tokens)
        t = tokens.shape[1]
        absolute = None if self.absolute is None else rotation_from_6d(self.absolute(tokens.mean(dim=1))).reshape(b, v, 3, 3)
        tokens = tokens.reshape(b, v, t, c.dim)
        tokens = tokens + torch.cat([self.reference.expand(b, 1, 1, c.dim), torch.zeros_like(tokens[:, 1:, :1])], dim=1)
        for integrate, update in zip(self.integrate, self.update):
            ref = tokens[:, :1].expand(b, v, t, c.dim).reshape(b * v, t, c.dim)
            flat = integrate(tokens.reshape(b * v, t, c.dim), context=ref)
            tokens = update(flat).reshape(b, v, t, c.dim)
        tokens = self.norm(tokens)
        shifts = self.shift(tokens.mean(dim=2)) * (SHIFT_UNIT * n)
        out = self.head(tokens)  # (B, V, T, p p 4)
        g = n // c.patch
        out = out.reshape(b, v, g, g, c.patch, c.patch, 4).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, v, n, n, 4)
        return FastAROutput(out[..., :3], 1.0 + torch.exp(out[..., 3].clamp(max=20.0)), shifts, absolute)


def rotation_from_6d(x: torch.Tensor) -> torch.Tensor:
    """Rotations (..., 3, 3) from 6D vectors (..., 6): the rows are Gram-Schmidt of the two 3-vectors and their cross product."""
    a, b = x[..., :3], x[..., 3:]
    e1 = F.normalize(a, dim=-1)
    e2 = F.normalize(b - (e1 * b).sum(dim=-1, keepdim=True) * e1, dim=-1)
    return torch.stack([e1, e2, torch.cross(e1, e2, dim=-1)], dim=-2)


def absolute_loss(predicted: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Mean squared Frobenius distance between predicted and true rotations (..., 3, 3): 8 sin^2(angle / 2) each."""
    return (predicted - rotations).square().sum(dim=(-2, -1)).mean()


def planar_loss(
    maps: torch.Tensor, confidence: torch.Tensor, target: torch.Tensor, alpha: float = 0.2,
    shifts: torch.Tensor | None = None, target_shifts: torch.Tensor | None = None, shift_weight: float = 1.0,
    hand_aware: bool = False,
) -> torch.Tensor:
    """mean of c |P - P*|^2 - alpha log c (the reference view, whose planar map is fixed, included),
    plus shift_weight times the mean |s - s*|^2 in quarter images when shifts are given.

    `hand_aware`: each set (first axis) scores the smaller of its losses against P* and against P* with
    its z components negated, the planar maps of the mirror map's poses J R J (J = diag(1, 1, -1)): a
    set of projections fits a map and its mirror equally, so a plain loss has two right answers and is
    least near their average (z = 0), from which no rotation follows."""
    err = (maps - target).square().sum(dim=-1)
    if hand_aware:
        mirrored = target * torch.tensor([1.0, 1.0, -1.0], dtype=target.dtype, device=target.device)
        err_m = (maps - mirrored).square().sum(dim=-1)
        per_set = lambda e: (confidence * e - alpha * torch.log(confidence)).flatten(1).mean(dim=1)  # noqa: E731
        loss = torch.minimum(per_set(err), per_set(err_m)).mean()
    else:
        loss = (confidence * err - alpha * torch.log(confidence)).mean()
    if shifts is not None and target_shifts is not None:
        unit = SHIFT_UNIT * maps.shape[-2]
        loss = loss + shift_weight * ((shifts - target_shifts) / unit).square().sum(dim=-1).mean()
    return loss
