"""HDiT for 3D maps: the network of the learned flow prior (CryoFM appendix B.1).

CryoFM's network is the Hourglass Diffusion Transformer (HDiT, Crowson et al. 2024, arXiv
2401.11605; k-diffusion's `image_transformer_v2`) carried over from 2D images to 3D maps:

    (B, D, H, W) --patchify p^3--> tokens (B, D/p, H/p, W/p, C0)
        level 0 down (neighborhood attention) --merge 2^3--> level 1 down ... --> innermost
        level (global attention) --split 2^3, lerp with the skip--> ... level 0 up
    --RMSNorm, un-patchify--> (B, D, H, W)

Every transformer layer is an attention block and a GEGLU feed-forward block, each pre-normed by
an AdaRMSNorm whose per-channel scale (1 + Linear(c)) comes from the time conditioning c:
Fourier features of t (DiT's sinusoidal embedding of 1000 t) -> Linear -> HDiT's mapping network
(RMSNorm'ed GEGLU residual blocks). Attention is HDiT's cosine-similarity attention (q and k
normalised, a learned per-head scale, initially 10) with axial rotary position embedding in 3D:
per head, 6 f channels (f = head_dim // 12; about half the head, as HDiT rotates half) rotate
by z, y and x positions (token centres in [-1, 1]) at f log-spaced frequencies in [pi, 10 pi].
Merges are 3D pixel-unshuffles (2x2x2 tokens -> one, then Linear); splits are the inverse
(Linear, pixel-shuffle) merged with the skip by lerp(skip, x, f) with a learned f (initially
0.5), as in the HDiT paper. The output projection, the attention and feed-forward output
projections and the AdaRMSNorm projections start at zero (an untrained model outputs zeros).

Parameter counts (HDiT's feed-forward width d_ff = 3 x width, mapping network width 256, depth
2, d_ff 768), counted on the meta device by `count_parameters`:
    cryofm-s  336.4 M   (paper: ~335 M, +0.4 %)
    cryofm-l  309.7 M   (paper: ~309 M, +0.2 %)
    small       3.2 M,  tiny  0.11 M

Attention per level is a configuration choice (`LevelConfig.attention`):
    "neighborhood"  exact neighborhood attention in pure torch (`neighborhood_attention`: SDPA
                    with a window mask up to 4096 tokens, query tiles against key regions above)
    "natten"        natten.functional.na3d (when natten is importable); the same definition
    "dense"         torch scaled_dot_product_attention over all tokens of the level (global)
The first two compute the same function and are interchangeable on one set of weights
(`HDiTConfig.with_local_attention`); "dense" at an outer level is a different (global) model,
which DESIGN section 9 measured far faster on GPUs than natten without its fused kernels.
Neighborhood attention follows natten's definition: the query at index i of an axis of n tokens
sees keys start .. start + k - 1 with start = clamp(i - k // 2, 0, n - k): the window is shifted
to stay inside the grid at the borders, never zero-padded. Where k > n the window is the whole
axis (natten would refuse; here both backends use min(k, n)). Measured on 2 shared CPU cores (16^3
tokens, 12 heads x 64): masked 1.2 s, tiled 2.9 s, natten 0.21 (flex attention, no backward on
CPU) 12 s per call; all agree to 1e-6.

Model code only: loading and saving weights is `cryoinverse.priors.cryofm`.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_BACKENDS = ("neighborhood", "natten", "dense")
LOCAL_BACKENDS = ("neighborhood", "natten")


def _check_backend(instance, attribute, value) -> None:
    if value not in ATTENTION_BACKENDS:
        raise ValueError(f"{attribute.name}: must be one of {', '.join(map(repr, ATTENTION_BACKENDS))}; got {value!r}")


def _check_positive(instance, attribute, value) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{attribute.name}: must be a positive integer; got {value!r}")


# ---------------------------------------------------------------------------------------------
# Configuration


@attrs.frozen
class LevelConfig:
    """One level of the hourglass: `depth` layers on the way down and `depth` on the way up
    (the innermost level has `depth` layers once)."""

    width: int = attrs.field(validator=_check_positive)
    depth: int = attrs.field(validator=_check_positive)
    d_ff: int = attrs.field(validator=_check_positive)
    head_dim: int = attrs.field(default=64, validator=_check_positive)
    attention: str = attrs.field(default="neighborhood", validator=_check_backend)
    kernel: int = attrs.field(default=7, validator=_check_positive)

    @property
    def heads(self) -> int:
        return self.width // self.head_dim

    @property
    def local(self) -> bool:
        """Neighborhood attention (either backend), as opposed to global."""
        return self.attention in LOCAL_BACKENDS


@attrs.frozen
class MappingConfig:
    """The time-conditioning network: Fourier features -> Linear -> `depth` GEGLU blocks."""

    width: int = attrs.field(default=256, validator=_check_positive)
    depth: int = attrs.field(default=2, validator=_check_positive)
    d_ff: int = attrs.field(default=768, validator=_check_positive)


def _levels(value: Any) -> tuple[LevelConfig, ...]:
    return tuple(v if isinstance(v, LevelConfig) else LevelConfig(**v) for v in value)


def _mapping(value: Any) -> MappingConfig:
    return value if isinstance(value, MappingConfig) else MappingConfig(**value)


@attrs.frozen
class HDiTConfig:
    """An HDiT architecture for (B, box, box, box) maps; levels outermost first."""

    name: str
    box: int = attrs.field(validator=_check_positive)  # the input box it is built for
    levels: tuple[LevelConfig, ...] = attrs.field(converter=_levels)
    patch: int = attrs.field(default=4, validator=_check_positive)
    mapping: MappingConfig = attrs.field(factory=MappingConfig, converter=_mapping)

    def __attrs_post_init__(self) -> None:
        if not self.levels:
            raise ValueError(f"architecture {self.name!r}: needs at least one level")
        for i, level in enumerate(self.levels):
            if level.width % level.head_dim:
                raise ValueError(f"architecture {self.name!r}: level {i} width {level.width} is not a multiple of head_dim {level.head_dim}")
        if self.box % self.granularity:
            raise ValueError(f"architecture {self.name!r}: box {self.box} is not a multiple of {self.granularity} (patch x 2^(levels - 1))")

    @property
    def granularity(self) -> int:
        """Map edges must be multiples of this: patch size times one merge per inner level."""
        return self.patch * 2 ** (len(self.levels) - 1)

    def with_local_attention(self, backend: str) -> "HDiTConfig":
        """The same network with its neighborhood levels run by `backend` ('neighborhood' or
        'natten'; both compute the same attention). Global levels are left as they are."""
        if backend not in LOCAL_BACKENDS:
            raise ValueError(f"local attention backend must be one of {', '.join(map(repr, LOCAL_BACKENDS))}; got {backend!r}")
        levels = tuple(attrs.evolve(lv, attention=backend) if lv.local else lv for lv in self.levels)
        return attrs.evolve(self, levels=levels)

    def to_dict(self) -> dict:
        """JSON-ready fields (`from_dict` inverts it)."""
        return attrs.asdict(self, value_serializer=lambda _inst, _f, v: list(v) if isinstance(v, tuple) else v)

    @classmethod
    def from_dict(cls, data: dict) -> "HDiTConfig":
        """Build from `to_dict` output; raises ValueError/TypeError naming a bad or unknown field."""
        data = dict(data)
        levels = data.pop("levels", None)
        if not isinstance(levels, list):
            raise ValueError("levels: expected a list of level tables")
        known = {f.name for f in attrs.fields(LevelConfig)}
        for i, level in enumerate(levels):
            if not isinstance(level, dict):
                raise ValueError(f"levels[{i}]: expected a table")
            unknown = sorted(set(level) - known)
            if unknown:
                raise ValueError(f"levels[{i}]: unknown field(s) {', '.join(unknown)} (fields: {', '.join(sorted(known))})")
        mapping = data.pop("mapping", {})
        if not isinstance(mapping, dict):
            raise ValueError("mapping: expected a table")
        unknown = sorted(set(mapping) - {f.name for f in attrs.fields(MappingConfig)})
        if unknown:
            raise ValueError(f"mapping: unknown field(s) {', '.join(unknown)}")
        unknown = sorted(set(data) - {f.name for f in attrs.fields(cls)})
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        return cls(levels=levels, mapping=mapping, **data)


def _level(width: int, depth: int, attention: str, head_dim: int = 64, kernel: int = 7, ff_ratio: int = 3) -> LevelConfig:
    return LevelConfig(width=width, depth=depth, d_ff=ff_ratio * width, head_dim=head_dim, attention=attention, kernel=kernel)


CONFIGS: dict[str, HDiTConfig] = {
    # CryoFM-S: 1 neighborhood + 1 global level, 64^3 boxes (1.5 A/voxel in the paper).
    "cryofm-s": HDiTConfig(
        name="cryofm-s", box=64, patch=4,
        levels=(_level(768, 4, "neighborhood"), _level(1536, 8, "dense")),
    ),
    # CryoFM-L: 2 neighborhood + 1 global level.
    "cryofm-l": HDiTConfig(
        name="cryofm-l", box=64, patch=4,
        levels=(_level(320, 2, "neighborhood"), _level(640, 2, "neighborhood"), _level(1280, 12, "dense")),
    ),
    # For tests: ~0.13 M parameters, 16^3 maps as 8^3 tokens (patch 2) then 4^3.
    "tiny": HDiTConfig(
        name="tiny", box=16, patch=2,
        levels=(_level(32, 1, "neighborhood", head_dim=16, kernel=5, ff_ratio=2), _level(64, 1, "dense", head_dim=16, ff_ratio=2)),
        mapping=MappingConfig(width=32, depth=1, d_ff=64),
    ),
    # CPU-trainable: ~3.2 M parameters; 64^3 maps as 16^3 tokens then 8^3 (also runs on 32^3).
    "small": HDiTConfig(
        name="small", box=64, patch=4,
        levels=(_level(96, 2, "neighborhood", head_dim=32), _level(192, 4, "dense", head_dim=32)),
        mapping=MappingConfig(width=128, depth=1, d_ff=384),
    ),
    # The shipped default prior: ~2.1 M parameters (4.2 MB as float16), same layout as "small".
    "compact": HDiTConfig(
        name="compact", box=64, patch=4,
        levels=(_level(64, 2, "neighborhood", head_dim=32), _level(160, 4, "dense", head_dim=32)),
        mapping=MappingConfig(width=128, depth=1, d_ff=384),
    ),
}

PAPER_PARAMETERS = {"cryofm-s": 335e6, "cryofm-l": 309e6}  # CryoFM appendix B.1


def config_by_name(name: str) -> HDiTConfig:
    """A named architecture; KeyError listing the known names otherwise."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(CONFIGS))}") from None


def build_model(config: str | HDiTConfig) -> HDiT:
    """A freshly initialised HDiT of a named or given architecture (outputs zeros until trained)."""
    return HDiT(config_by_name(config) if isinstance(config, str) else config)


def count_parameters(config: HDiTConfig) -> int:
    """Number of parameters of `config`, built on the meta device (no memory, instant)."""
    with torch.device("meta"):
        model = HDiT(config)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Attention kernels on (B, X, Y, Z, heads, head_dim), natten's heads-last layout


def _axis_windows(n: int, kernel: int, device) -> torch.Tensor:
    """(n, k') key indices seen by each query index of an axis; k' = min(kernel, n) (natten na3d)."""
    k = min(kernel, n)
    start = (torch.arange(n, device=device) - kernel // 2).clamp(min=0, max=n - k)
    return start[:, None] + torch.arange(k, device=device)


def neighborhood_indices(grid: tuple[int, int, int], kernel: int, device=None) -> torch.Tensor:
    """(N, K) flat key indices of every query's window, N = X Y Z tokens, K = product of k'."""
    (x, y, z) = grid
    wx, wy, wz = (_axis_windows(n, kernel, device) for n in grid)
    idx = (wx[:, None, None, :, None, None] * y + wy[None, :, None, None, :, None]) * z + wz[None, None, :, None, None, :]
    return idx.reshape(x * y * z, -1)


def neighborhood_mask(grid: tuple[int, int, int], kernel: int, device=None) -> torch.Tensor:
    """(N, N) boolean mask, True where a query (row) sees a key (column)."""
    allowed = []
    for n in grid:
        a = torch.zeros(n, n, dtype=torch.bool, device=device)
        a.scatter_(1, _axis_windows(n, kernel, device), True)
        allowed.append(a)
    ax, ay, az = allowed
    mask = ax[:, None, None, :, None, None] & ay[None, :, None, None, :, None] & az[None, None, :, None, None, :]
    n_tokens = grid[0] * grid[1] * grid[2]
    return mask.reshape(n_tokens, n_tokens)


def _to_sequence(t: torch.Tensor) -> torch.Tensor:
    """(B, X, Y, Z, h, d) -> (B, h, N, d)."""
    b, *_, h, d = t.shape
    return t.reshape(b, -1, h, d).transpose(1, 2)


def _from_sequence(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, h, N, d) -> the (B, X, Y, Z, h, d) shape of `like`."""
    return t.transpose(1, 2).reshape(like.shape[:-1] + t.shape[-1:])


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Global attention over all tokens (torch SDPA); (B, X, Y, Z, h, d) in and out."""
    out = F.scaled_dot_product_attention(_to_sequence(q), _to_sequence(k), _to_sequence(v), scale=scale)
    return _from_sequence(out, q)


def _tile_size(n: int, tile: int) -> int:
    """The largest of tile, tile / 2, ..., 1 that divides n."""
    while n % tile:
        tile //= 2
    return tile


def _axis_tiles(n: int, kernel: int, tile: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Key regions and masks of the query tiles of one axis.

    Query tile j holds queries j T .. j T + T - 1; their windows (starts non-decreasing in the
    query index) lie in a region of R = min(T + k' - 1, n) keys starting at r0 (clamped into the
    axis). Returns region indices (n / T, R) and the mask (n / T, T, R) of which region keys each
    query sees.
    """
    k = min(kernel, n)
    r = min(tile + k - 1, n)
    queries = torch.arange(n, device=device).reshape(-1, tile)  # (nt, T)
    window_start = (queries - kernel // 2).clamp(min=0, max=n - k)
    region = window_start[:, :1].clamp(max=n - r) + torch.arange(r, device=device)  # (nt, R)
    mask = (region[:, None, :] >= window_start[:, :, None]) & (region[:, None, :] < window_start[:, :, None] + k)
    return region, mask


def neighborhood_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: int, scale: float | None = None,
    method: str = "auto", tile: int = 4,
) -> torch.Tensor:
    """Exact 3D neighborhood attention in pure torch, with natten na3d's window definition.

    q, k, v: (B, X, Y, Z, heads, head_dim); `scale` multiplies q.k (default head_dim^-1/2).
    method "masked": SDPA over all N tokens with an (N, N) boolean window mask (memory N^2);
    "tiled": queries in tiles of `tile`^3 tokens attend, by SDPA with a small mask, to the
    region of (tile + kernel - 1)^3 keys that holds all their windows (memory ~ N (tile + k - 1)^3
    / tile^3 gathered keys); "auto": masked up to 4096 tokens (a 64^3 box at patch 4), tiled above.
    """
    grid = tuple(q.shape[1:4])
    n_tokens = grid[0] * grid[1] * grid[2]
    if method == "auto":
        method = "masked" if n_tokens <= 4096 else "tiled"
    if method == "masked":
        mask = neighborhood_mask(grid, kernel, q.device)
        out = F.scaled_dot_product_attention(_to_sequence(q), _to_sequence(k), _to_sequence(v), attn_mask=mask, scale=scale)
        return _from_sequence(out, q)
    if method != "tiled":
        raise ValueError(f"method must be 'auto', 'masked' or 'tiled'; got {method!r}")
    b, X, Y, Z, h, d = q.shape
    tx, ty, tz = (_tile_size(n, tile) for n in grid)
    (rx, mx), (ry, my), (rz, mz) = (_axis_tiles(n, kernel, t, q.device) for n, t in zip(grid, (tx, ty, tz)))
    nt = (X // tx) * (Y // ty) * (Z // tz)
    # flat key indices of each tile's region (nt, Rx Ry Rz) and the tile mask (nt, Tx Ty Tz, Rx Ry Rz)
    region = (rx[:, None, None, :, None, None] * Y + ry[None, :, None, None, :, None]) * Z + rz[None, None, :, None, None, :]
    region = region.reshape(nt, -1)
    mask = (
        mx[:, None, None, :, None, None, :, None, None]
        & my[None, :, None, None, :, None, None, :, None]
        & mz[None, None, :, None, None, :, None, None, :]
    ).reshape(nt, tx * ty * tz, -1)
    qt = q.reshape(b, X // tx, tx, Y // ty, ty, Z // tz, tz, h, d).permute(0, 7, 1, 3, 5, 2, 4, 6, 8)
    qt = qt.reshape(b, h, nt, tx * ty * tz, d)
    ks, vs = _to_sequence(k), _to_sequence(v)  # (B, h, N, d)
    out = F.scaled_dot_product_attention(qt, ks[:, :, region], vs[:, :, region], attn_mask=mask, scale=scale)
    out = out.reshape(b, h, X // tx, Y // ty, Z // tz, tx, ty, tz, d).permute(0, 2, 5, 3, 6, 4, 7, 1, 8)
    return out.reshape(q.shape)


def natten_available() -> bool:
    """Whether natten can be imported (its na3d backs the 'natten' attention)."""
    try:
        import natten.functional  # noqa: F401
    except ImportError:
        return False
    return True


def natten_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: int, scale: float | None = None) -> torch.Tensor:
    """natten.functional.na3d with the kernel clamped to the grid (min(kernel, n) per axis)."""
    try:
        from natten.functional import na3d
    except ImportError:
        raise ImportError(
            "attention = 'natten' needs the natten package (pip install natten); "
            "'neighborhood' computes the same attention in pure torch"
        ) from None
    kernel_size = tuple(min(kernel, n) for n in q.shape[1:4])
    return na3d(q, k, v, kernel_size=kernel_size, scale=scale)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str, kernel: int, scale: float | None = None) -> torch.Tensor:
    """Self-attention of (B, X, Y, Z, heads, head_dim) tokens by the named backend."""
    if backend == "dense":
        return dense_attention(q, k, v, scale)
    if backend == "neighborhood":
        return neighborhood_attention(q, k, v, kernel, scale)
    if backend == "natten":
        return natten_attention(q, k, v, kernel, scale)
    raise ValueError(f"unknown attention backend {backend!r}; known: {', '.join(ATTENTION_BACKENDS)}")


# ---------------------------------------------------------------------------------------------
# Layers (HDiT's, in 3D; tokens are (B, X, Y, Z, C))


def zero_init(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    return layer


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = reduce(torch.promote_types, (x.dtype, scale.dtype, torch.float32))
    mean_sq = torch.mean(x.to(dtype) ** 2, dim=-1, keepdim=True)
    return x * (scale.to(dtype) * torch.rsqrt(mean_sq + eps)).to(x.dtype)


def scale_for_cosine_sim(q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k normalised to length sqrt(scale): q.k = scale x cosine similarity."""
    dtype = reduce(torch.promote_types, (q.dtype, k.dtype, scale.dtype, torch.float32))
    sqrt_scale = torch.sqrt(scale.to(dtype))
    scale_q = sqrt_scale * torch.rsqrt(torch.sum(q.to(dtype) ** 2, dim=-1, keepdim=True) + eps)
    scale_k = sqrt_scale * torch.rsqrt(torch.sum(k.to(dtype) ** 2, dim=-1, keepdim=True) + eps)
    return q * scale_q.to(q.dtype), k * scale_k.to(k.dtype)


class RMSNorm(nn.Module):
    def __init__(self, features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.scale, self.eps)


class AdaRMSNorm(nn.Module):
    """RMSNorm whose per-channel scale is 1 + Linear(cond), cond the time conditioning (B, c)."""

    def __init__(self, features: int, cond_features: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.linear = zero_init(nn.Linear(cond_features, features, bias=False))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale = self.linear(cond) + 1
        return rms_norm(x, scale.reshape(scale.shape[:1] + (1,) * (x.ndim - 2) + scale.shape[-1:]), self.eps)


class LinearGEGLU(nn.Linear):
    """Linear to 2 d_ff channels, then value * gelu(gate)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, 2 * out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = super().forward(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


def rope_frequencies(head_dim: int) -> int:
    """Frequencies per axis of the 3D axial RoPE: 6 f of head_dim channels rotate (f >= 1)."""
    return max(1, head_dim // 12)


def token_positions(grid: tuple[int, int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """(X, Y, Z, 3) token centres in [-1, 1] along each axis (the same frame at every level)."""
    axes = [(torch.arange(n, device=device, dtype=dtype) + 0.5) * (2.0 / n) - 1.0 for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def axial_rope(grid: tuple[int, int, int], head_dim: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (X, Y, Z, 1, 3 f) of HDiT's axial RoPE in 3D: f log-spaced frequencies in [pi, 10 pi]
    per axis (computed here rather than stored, so the weights file holds parameters only)."""
    f = rope_frequencies(head_dim)
    freqs = torch.linspace(math.log(math.pi), math.log(10.0 * math.pi), f + 1, device=device)[:-1].exp()
    pos = token_positions(grid, device)
    theta = torch.cat([pos[..., a : a + 1] * freqs for a in range(3)], dim=-1)
    return theta.cos()[..., None, :], theta.sin()[..., None, :]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2 n channels of x (..., d) in pairs (i, i + n) by angles (cos, sin) (..., n)."""
    n = cos.shape[-1]
    x1, x2, rest = x[..., :n], x[..., n : 2 * n], x[..., 2 * n :]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest), dim=-1)


class AttentionBlock(nn.Module):
    """Pre-normed cosine-similarity self-attention with 3D RoPE, residual."""

    def __init__(self, level: LevelConfig, cond_features: int):
        super().__init__()
        self.head_dim = level.head_dim
        self.heads = level.heads
        self.backend = level.attention
        self.kernel = level.kernel
        self.norm = AdaRMSNorm(level.width, cond_features)
        self.qkv_proj = nn.Linear(level.width, 3 * level.width, bias=False)
        self.scale = nn.Parameter(torch.full([self.heads], 10.0))
        self.out_proj = zero_init(nn.Linear(level.width, level.width, bias=False))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
        skip = x
        x = self.norm(x, cond)
        qkv = self.qkv_proj(x).unflatten(-1, (3, self.heads, self.head_dim))
        q, k, v = qkv.unbind(-3)  # (B, X, Y, Z, heads, head_dim)
        q, k = scale_for_cosine_sim(q, k, self.scale[:, None], 1e-6)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        x = attend(q, k, v, self.backend, self.kernel, scale=1.0)
        return skip + self.out_proj(x.flatten(-2))


class FeedForwardBlock(nn.Module):
    """Pre-normed GEGLU feed-forward, residual."""

    def __init__(self, width: int, d_ff: int, cond_features: int):
        super().__init__()
        self.norm = AdaRMSNorm(width, cond_features)
        self.up_proj = LinearGEGLU(width, d_ff)
        self.down_proj = zero_init(nn.Linear(d_ff, width, bias=False))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return x + self.down_proj(self.up_proj(self.norm(x, cond)))


class TransformerLayer(nn.Module):
    def __init__(self, level: LevelConfig, cond_features: int):
        super().__init__()
        self.self_attn = AttentionBlock(level, cond_features)
        self.ff = FeedForwardBlock(level.width, level.d_ff, cond_features)

    def forward(self, x: torch.Tensor, rope, cond: torch.Tensor) -> torch.Tensor:
        return self.ff(self.self_attn(x, rope, cond), cond)


class Level(nn.ModuleList):
    def forward(self, x: torch.Tensor, rope, cond: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, rope, cond)
        return x


class MappingFeedForwardBlock(nn.Module):
    def __init__(self, width: int, d_ff: int):
        super().__init__()
        self.norm = RMSNorm(width)
        self.up_proj = LinearGEGLU(width, d_ff)
        self.down_proj = zero_init(nn.Linear(d_ff, width, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down_proj(self.up_proj(self.norm(x)))


class MappingNetwork(nn.Module):
    def __init__(self, config: MappingConfig):
        super().__init__()
        self.in_norm = RMSNorm(config.width)
        self.blocks = nn.ModuleList([MappingFeedForwardBlock(config.width, config.d_ff) for _ in range(config.depth)])
        self.out_norm = RMSNorm(config.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_norm(x)
        for block in self.blocks:
            x = block(x)
        return self.out_norm(x)


def time_features(t: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, width) sinusoidal features of 1000 t (DiT's timestep embedding)."""
    half = width // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (1000.0 * t.to(torch.float32))[:, None] * freqs
    return torch.cat((args.cos(), args.sin()), dim=-1)


def pixel_unshuffle_3d(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, X, Y, Z, C) -> (B, X/p, Y/p, Z/p, p^3 C): each p^3 block of tokens becomes one."""
    b, X, Y, Z, c = x.shape
    x = x.reshape(b, X // p, p, Y // p, p, Z // p, p, c).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, X // p, Y // p, Z // p, p**3 * c)


def pixel_shuffle_3d(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of `pixel_unshuffle_3d`."""
    b, X, Y, Z, c = x.shape
    c //= p**3
    x = x.reshape(b, X, Y, Z, p, p, p, c).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, X * p, Y * p, Z * p, c)


class TokenMerge(nn.Module):
    def __init__(self, in_features: int, out_features: int, patch: int = 2):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(in_features * patch**3, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_unshuffle_3d(x, self.patch))


class TokenSplitWithoutSkip(nn.Module):
    def __init__(self, in_features: int, out_features: int, patch: int = 2):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(in_features, out_features * patch**3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle_3d(self.proj(x), self.patch)


class TokenSplit(TokenSplitWithoutSkip):
    """Split, then lerp(skip, x, fac) with a learned fac (HDiT's skip merge), initially 0.5."""

    def __init__(self, in_features: int, out_features: int, patch: int = 2):
        super().__init__(in_features, out_features, patch)
        self.fac = nn.Parameter(torch.full([1], 0.5))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.lerp(skip, super().forward(x), self.fac.to(x.dtype))


# ---------------------------------------------------------------------------------------------
# The model


class HDiT(nn.Module):
    """v(x_t, t): (B, D, H, W) maps and (B,) times in [0, 1] -> (B, D, H, W) velocities.

    Edges must be multiples of `config.granularity`; the model runs on any such grid, but its
    position frame is relative ([-1, 1] across the box), so it is meant for the box it was
    trained on.
    """

    def __init__(self, config: HDiTConfig):
        super().__init__()
        self.config = config
        levels, mapping = config.levels, config.mapping
        self.patch_in = TokenMerge(1, levels[0].width, config.patch)
        self.time_in_proj = nn.Linear(mapping.width, mapping.width, bias=False)
        self.mapping = MappingNetwork(mapping)
        self.down_levels, self.up_levels = nn.ModuleList(), nn.ModuleList()
        for level in levels[:-1]:
            self.down_levels.append(Level([TransformerLayer(level, mapping.width) for _ in range(level.depth)]))
            self.up_levels.append(Level([TransformerLayer(level, mapping.width) for _ in range(level.depth)]))
        self.mid_level = Level([TransformerLayer(levels[-1], mapping.width) for _ in range(levels[-1].depth)])
        self.merges = nn.ModuleList([TokenMerge(a.width, b.width) for a, b in zip(levels[:-1], levels[1:])])
        self.splits = nn.ModuleList([TokenSplit(b.width, a.width) for a, b in zip(levels[:-1], levels[1:])])
        self.out_norm = RMSNorm(levels[0].width)
        self.patch_out = zero_init_split(TokenSplitWithoutSkip(levels[0].width, 1, config.patch))

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"HDiT expects maps (B, D, H, W); got shape {tuple(x.shape)}")
        g = self.config.granularity
        if any(n % g for n in x.shape[1:]):
            raise ValueError(f"HDiT {self.config.name!r}: map edges {tuple(x.shape[1:])} must be multiples of {g}")
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        cond = self.mapping(self.time_in_proj(time_features(t, self.config.mapping.width)))

        x = self.patch_in(x[..., None])
        skips = []
        for i, (down_level, merge) in enumerate(zip(self.down_levels, self.merges)):
            rope = axial_rope(tuple(x.shape[1:4]), self.config.levels[i].head_dim, x.device)
            x = down_level(x, rope, cond)
            skips.append((x, rope))
            x = merge(x)
        x = self.mid_level(x, axial_rope(tuple(x.shape[1:4]), self.config.levels[-1].head_dim, x.device), cond)
        for up_level, split, (skip, rope) in reversed(list(zip(self.up_levels, self.splits, skips))):
            x = up_level(split(x, skip), rope, cond)
        return self.patch_out(self.out_norm(x))[..., 0]


def zero_init_split(layer: TokenSplitWithoutSkip) -> TokenSplitWithoutSkip:
    nn.init.zeros_(layer.proj.weight)
    return layer
