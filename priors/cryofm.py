"""`cryofm`: the learned flow prior of CryoFM, an HDiT velocity network loaded from safetensors.

Files: `NAME.safetensors` (the parameters of `cryoinverse.priors.hdit.HDiT`) and `NAME.json`
beside it, as `save_prior` writes them:

    {
      "format": "cryoinverse-prior",
      "architecture": {"family": "hdit", "name": "cryofm-s", "box": 64, "patch": 4,
                       "levels": [...], "mapping": {...}},
      "normalization": {"kind": "cryofm-1", "percentile": 99.999, "offset": 0.04, "scale": 0.09},
      "voxel_size": 1.5,                 # Angstrom per voxel of the training maps
      "box": 64,                         # edge (voxels) of the training boxes
      "time_convention": "noise-at-0",   # see below
      "training": {...}                  # free-form summary: data, steps, EMA, ...
    }

`architecture` may give only a `name` of `cryoinverse.priors.hdit.CONFIGS`; given fields are
authoritative. Loading checks every tensor's name and shape against the architecture and lists
all missing, unexpected and mis-shaped tensors in one message.

Time (this project's convention, DESIGN section 2): t = 0 noise, t = 1 data, the network
predicts x1 - x0 on maps in normalised units. A network trained the other way (CryoFM's public
code: noise at its end of time, velocity from data to noise) is declared with
`"time_convention": "noise-at-1"`; it is then called at 1 - t and its velocity negated, here and
nowhere else.

Normalisation (CryoFM-1): z = (max(x, 0) / s - 0.04) / 0.09 with s the 99.999th percentile of
the clean map, taken in `prepare(ctx)` from the Wiener estimate of the clean map
(`ctx.signal_estimate`, where the operators give one; else, or with `scale_from =
"observation"`, from the observed map) and kept, so `denormalize` (x = (0.09 z + 0.04) s)
inverts `normalize` for non-negative densities. A noisy map's own percentile measures the noise:
under noise rising with frequency it is 1-14 times the clean map's (priors/data/README.md). The clip makes `normalize` lose negative
densities (noise, solvent below zero): denormalize(normalize(x)) = max(x, 0). Without an
observation (and without `scale`), s = 1: maps come out in units of that percentile.

Two priors are shipped with the package (provenance in `data/README.md` beside this module), both
the `compact` architecture on 32^3 boxes: `weights = "default"` (`DEFAULT_WEIGHTS`, simulated
single-particle maps at 1.5 A/voxel) and `weights = "tomo"` (`TOMO_WEIGHTS`, crowded boxes of
complexes and filaments at 10 A/voxel, for tomograms). Without `weights` ("auto"), the runner
picks by the map's voxel size (`for_voxel_size`): "tomo" from `AUTO_TOMO_FROM` A/voxel (the
geometric middle of 1.5 and 10 A, where a map is equally far from both in octaves), else
"default".

The prior expects the solvent at zero. `background` (a density, or "mean") is subtracted before
normalising and added back after (the scale is then taken of the map minus it); with the default
0, `prepare` warns (`InputWarning`, into the run's report) when the map seen at 30 A stays well
above zero everywhere (`background_floor` > BACKGROUND_LIMIT), as a tomogram rescaled to 0-255 does.

The prior itself works on boxes of the trained size only and refuses others with a clear error;
`box` and `voxel_size` tell `cryoinverse.tiling.adapt_prior` (which the runner applies) how to
tile and resample other maps for it.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch

from cryoinverse.components import PrepareContext
from cryoinverse.errors import DataError, InputWarning, SpecError
from cryoinverse.hookspecs import hookimpl
from cryoinverse.mrc import atomic_path
from cryoinverse.params import one_of, param, positive
from cryoinverse.spectra import low_pass

from .hdit import CONFIGS, LOCAL_BACKENDS, HDiT, HDiTConfig, config_by_name, natten_available

FORMAT = "cryoinverse-prior"
TIME_CONVENTIONS = ("noise-at-0", "noise-at-1")
LISTED = 12  # tensor names listed per kind of mismatch before "... and N more"
# The shipped default prior (see data/README.md beside it; scripts/train_default_prior.sh rebuilds it).
DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "data" / "default.safetensors"
# The shipped tomogram-scale prior (data/README.md; scripts/train_tomo_prior.sh rebuilds it).
TOMO_WEIGHTS = Path(__file__).resolve().parent / "data" / "tomo.safetensors"
SHIPPED = {"default": DEFAULT_WEIGHTS, "tomo": TOMO_WEIGHTS}
AUTO_TOMO_FROM = 3.9  # A/voxel: sqrt(1.5 * 10)
# The background check of `prepare`: seen at CHECK_RESOLUTION A, a map whose solvent is at zero
# reaches zero or below somewhere (real and simulated maps here: at most 0.03 of the highest value);
# a tomogram rescaled to 0-255 stays near 0.4 of its highest. Above BACKGROUND_LIMIT (the map minus
# its `background`), `prepare` warns. On simulated crowded tomogram crops a background at 0.4 of the
# peak cost the tomogram prior 0.15 AUC-FSC (below its input), and subtracting the mean gave it back.
CHECK_RESOLUTION = 30.0
BACKGROUND_LIMIT = 0.1


@attrs.frozen
class Normalization:
    """CryoFM-1: z = (max(x, 0) / s - offset) / scale, s the `percentile`-th percentile of the map."""

    kind: str = "cryofm-1"
    percentile: float = 99.999
    offset: float = 0.04
    scale: float = 0.09


@attrs.frozen
class PriorMeta:
    """What the JSON beside the weights says: architecture, normalisation, training geometry."""

    architecture: HDiTConfig
    normalization: Normalization = Normalization()
    voxel_size: float | None = None  # Angstrom per voxel of the training maps
    box: int = 0  # training box edge (voxels); 0 = the architecture's box
    time_convention: str = "noise-at-0"
    training: dict = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not self.box:
            object.__setattr__(self, "box", self.architecture.box)

    def to_dict(self) -> dict:
        """The JSON document (`read_meta` inverts it)."""
        return {
            "format": FORMAT,
            "architecture": {"family": "hdit", **self.architecture.to_dict()},
            "normalization": attrs.asdict(self.normalization),
            "voxel_size": self.voxel_size,
            "box": self.box,
            "time_convention": self.time_convention,
            "training": self.training,
        }


def meta_path(weights: str | Path) -> Path:
    """The JSON config beside a weights file: `<stem>.json`."""
    return Path(weights).with_suffix(".json")


def _check_files(weights: Path) -> str | None:
    """What is wrong with a weights path (None when both files are there)."""
    if weights.suffix != ".safetensors":
        return f"{weights}: expected a .safetensors file"
    if not weights.is_file():
        return f"{weights}: weights file not found"
    if not meta_path(weights).is_file():
        return (
            f"{meta_path(weights)}: JSON config not found; the weights {weights.name} need "
            f"{meta_path(weights).name} beside them (architecture, normalization, voxel_size, box)"
        )
    return None


def read_meta(weights: str | Path) -> PriorMeta:
    """Read and check the JSON config of a weights file (the tensors are not read)."""
    weights = Path(weights)
    problem = _check_files(weights)
    if problem:
        raise DataError(problem)
    path = meta_path(weights)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a JSON object")
    unknown = sorted(set(raw) - {"format", "architecture", "normalization", "voxel_size", "box", "time_convention", "training"})
    if unknown:
        raise DataError(f"{path}: unknown key(s) {', '.join(unknown)}")
    architecture = _architecture(path, raw.get("architecture"))
    norm = raw.get("normalization", {})
    if isinstance(norm, str):
        norm = {"kind": norm}
    try:
        normalization = Normalization(**norm)
    except TypeError as exc:
        raise DataError(f"{path}: normalization: {exc}") from None
    if normalization.kind != "cryofm-1":
        raise DataError(f"{path}: normalization: unknown kind {normalization.kind!r}; known: 'cryofm-1'")
    time_convention = raw.get("time_convention", "noise-at-0")
    if time_convention not in TIME_CONVENTIONS:
        raise DataError(f"{path}: time_convention: must be one of {', '.join(map(repr, TIME_CONVENTIONS))}; got {time_convention!r}")
    box = raw.get("box") or architecture.box
    if not isinstance(box, int) or box % architecture.granularity:
        raise DataError(f"{path}: box: {box!r} is not a positive multiple of {architecture.granularity} (architecture {architecture.name!r})")
    voxel_size = raw.get("voxel_size")
    if voxel_size is not None and not (isinstance(voxel_size, (int, float)) and voxel_size > 0):
        raise DataError(f"{path}: voxel_size: expected a positive number of Angstrom, got {voxel_size!r}")
    return PriorMeta(
        architecture=architecture,
        normalization=normalization,
        voxel_size=None if voxel_size is None else float(voxel_size),
        box=box,
        time_convention=time_convention,
        training=raw.get("training") or {},
    )


def _architecture(path: Path, raw: Any) -> HDiTConfig:
    if not isinstance(raw, dict) or not raw.get("name"):
        raise DataError(f"{path}: architecture: missing; give {{\"name\": ...}} (known: {', '.join(sorted(CONFIGS))}) and its fields")
    raw = dict(raw)
    family = raw.pop("family", "hdit")
    if family != "hdit":
        raise DataError(f"{path}: architecture: unknown family {family!r}; known: 'hdit'")
    name = raw["name"]
    if set(raw) == {"name"}:
        if name not in CONFIGS:
            raise DataError(f"{path}: architecture: unknown architecture {name!r}; known: {', '.join(sorted(CONFIGS))}")
        return CONFIGS[name]
    try:
        return HDiTConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: architecture {name!r}: {exc}") from None


def _shapes_problem(expected: dict[str, tuple], found: dict[str, tuple]) -> list[str]:
    """Lines naming missing, unexpected and mis-shaped tensors (empty when all match)."""

    def listing(items: list[str]) -> str:
        more = f", ... and {len(items) - LISTED} more" if len(items) > LISTED else ""
        return ", ".join(items[:LISTED]) + more

    missing = [f"{k} {tuple(expected[k])}" for k in sorted(set(expected) - set(found))]
    unexpected = [f"{k} {tuple(found[k])}" for k in sorted(set(found) - set(expected))]
    wrong = [
        f"{k}: file {tuple(found[k])}, architecture {tuple(expected[k])}"
        for k in sorted(set(found) & set(expected))
        if tuple(found[k]) != tuple(expected[k])
    ]
    lines = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            lines.append(f"  {label} ({len(items)}): {listing(items)}")
    return lines


def tensor_shapes(weights: str | Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor of a safetensors file, read from its header alone.

    The header lists where each tensor lies; a truncated file (or one that is not safetensors)
    fails here, as it would when loaded. DataError naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{weights}: not a readable safetensors file ({exc})") from None


def check_weights(weights: str | Path, local_attention: str | None = None) -> PriorMeta:
    """What `load_prior` checks, without reading the tensors: the JSON config, the safetensors
    header and every tensor's name and shape against the architecture. Returns the config."""
    weights = Path(weights)
    meta = read_meta(weights)
    config = meta.architecture if local_attention is None else meta.architecture.with_local_attention(local_attention)
    with torch.device("meta"):
        model = HDiT(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = _shapes_problem(expected, tensor_shapes(weights))
    if problems:
        raise DataError(
            f"{weights}: the tensors do not match architecture {config.name!r} of {meta_path(weights).name}:\n" + "\n".join(problems)
        )
    return meta


def load_prior(
    weights: str | Path, device: str | torch.device = "cpu", local_attention: str | None = None
) -> tuple[HDiT, PriorMeta]:
    """The network (eval mode, parameters frozen, float32) and its config, from `weights` + JSON.

    `local_attention` ('neighborhood' or 'natten') replaces the backend of the neighborhood
    levels; both compute the same attention. Raises DataError for a missing file or JSON, an
    unknown architecture, and tensors that do not match it (all listed in one message).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = Path(weights)
    meta = check_weights(weights, local_attention)
    config = meta.architecture
    if local_attention is not None:
        config = config.with_local_attention(local_attention)
    try:
        tensors = load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{weights}: not a readable safetensors file ({exc})") from None
    with torch.device("meta"):
        model = HDiT(config)
    # fresh copies: tensors read from the file may sit at unaligned offsets, where BLAS takes other
    # code paths and results differ in the last bits from the saved model
    state = {k: v.to(torch.float32, copy=True) if v.is_floating_point() else v.clone() for k, v in tensors.items()}
    model.load_state_dict(state, assign=True)  # built on meta: the file's tensors become the parameters
    model.eval().requires_grad_(False)
    return model.to(device), meta


def save_prior(
    path: str | Path,
    model: HDiT,
    config: HDiTConfig | None = None,
    meta: dict | None = None,
    overwrite: bool = True,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `model`'s parameters to `path` (.safetensors) and its JSON config beside it, each atomically.

    `config` (an `HDiTConfig` or a name of `CONFIGS`) defaults to `model.config`; `meta` may set
    normalization (a kind name such as "cryofm-1", or a dict of `Normalization` fields),
    voxel_size (Angstrom), box (training box edge), time_convention and training (a free-form
    summary). `dtype` (e.g. torch.float16, half the size) stores the floating-point tensors in
    that precision; `load_prior` computes in float32 whatever the file holds. Returns the weights path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise DataError(f"{path}: weights must be written to a .safetensors file")
    if isinstance(config, str):
        own = getattr(model, "config", None)
        config = own if own is not None and own.name == config else config_by_name(config)
    config = config or model.config
    meta = dict(meta or {})
    unknown = sorted(set(meta) - {"normalization", "voxel_size", "box", "time_convention", "training"})
    if unknown:
        raise ValueError(f"save_prior: unknown meta key(s) {', '.join(unknown)}")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in HDiT(config).state_dict().items()}
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    problems = _shapes_problem(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise ValueError(f"save_prior: the model does not match architecture {config.name!r}:\n" + "\n".join(problems))
    normalization = meta.pop("normalization", {})
    if isinstance(normalization, str):
        normalization = {"kind": normalization}
    if not isinstance(normalization, Normalization):
        normalization = Normalization(**normalization)
    if normalization.kind != "cryofm-1":
        raise ValueError(f"save_prior: unknown normalization kind {normalization.kind!r}; known: 'cryofm-1'")
    info = PriorMeta(architecture=config, normalization=normalization, **meta)
    with atomic_path(path, overwrite) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "architecture": config.name})
    with atomic_path(meta_path(path), overwrite) as tmp:
        tmp.write_text(json.dumps(info.to_dict(), indent=2, default=str) + "\n")  # Paths in training summaries
    return path


def _weights_value(value) -> str | Path:
    """A shipped prior's name (or "auto") stays a name; anything else is a path."""
    return value if isinstance(value, str) and (value == "auto" or value in SHIPPED) else Path(value)


def _weights_present(instance, attribute, value) -> None:
    """The weights a spec names load as `run` would load them: files, JSON config, safetensors header, tensor shapes."""
    if value == "auto":
        return
    path = SHIPPED.get(value, value) if isinstance(value, str) else Path(value)
    problem = _check_files(path)
    if problem:
        raise ValueError(f"{attribute.name}: {problem}")
    try:
        check_weights(path)
    except DataError as exc:
        raise ValueError(f"{attribute.name}: {exc}") from None


def percentile_scale(data: torch.Tensor, percentile: float) -> float:
    """The `percentile`-th percentile of max(data, 0) (CryoFM-1's density scale), nearest rank:
    the ceil(n percentile / 100)-th smallest of the n voxels, as the training data pipeline
    (`cryoinverse.priors.training.cryofm_normalize`) takes it."""
    flat = data.detach().to("cpu", torch.float64).clamp(min=0.0).reshape(-1)
    rank = min(flat.numel(), max(1, math.ceil(percentile / 100 * flat.numel())))
    s = float(flat.kthvalue(rank).values)
    if not s > 0:
        raise DataError(f"the observed map has no positive densities (its {percentile}th percentile is {s:g}); CryoFM-1 normalisation needs some")
    return s


def background_floor(data: torch.Tensor, voxel_size: float | None, resolution: float = CHECK_RESOLUTION) -> float:
    """The lowest value of the map seen at `resolution` A (`cryoinverse.spectra.low_pass`) over its
    highest: about 0 or below for a density on a zero solvent, well above 0 when the solvent is not at zero."""
    low = low_pass(data, voxel_size, resolution)
    high = float(low.max())
    return float(low.min()) / high if high > 0 else -math.inf


def _background_value(instance, attribute, value) -> None:
    if value != "mean" and (isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value))):
        raise ValueError(f"{attribute.name}: must be a density (a number) or 'mean'; got {value!r}")


def _overlap_below_box(instance, attribute, value) -> None:
    positive(instance, attribute, value)
    if value is not None and value >= instance.box:
        raise ValueError(f"{attribute.name}: must be smaller than the prior's box ({instance.box}); got {value}")


@attrs.define
class CryoFMPrior:
    """CryoFM's learned prior: an HDiT velocity network, CryoFM-1 normalisation, trained box only."""

    name: ClassVar[str] = "cryofm"

    weights: str | Path = param(
        "auto",
        help="network weights (.safetensors, its JSON config <stem>.json beside it), or a shipped prior: default (1.5 A/voxel), tomo (10 A/voxel), "
        "auto (by the map's voxel size)",
        converter=_weights_value,
        validator=_weights_present,
    )
    dtype: str = param(
        "float32",
        help="network precision: float32, or bfloat16 autocast (CUDA only; on CPU it runs float32)",
        validator=one_of("float32", "bfloat16"),
    )
    attention: str = param(
        "saved",
        help="backend of the neighborhood levels: saved (as in the JSON), neighborhood (pure torch) or natten (no backward on CPU)",
        validator=one_of("saved", *LOCAL_BACKENDS),
    )
    scale: float | None = param(
        None,
        help="density that normalisation divides by (CryoFM-1: the map's 99.999th percentile); default: from the observation",
        validator=positive,
    )
    tile_batch: int = param(8, help="boxes per network call when a map is tiled (memory grows with it)", validator=positive)
    tile_overlap: int | None = param(None, help="voxels that neighbouring boxes share when a map is tiled (default: half a box; less is faster)", validator=_overlap_below_box)
    background: float | str = param(
        0.0,
        help="solvent density, subtracted before the prior sees the map and added back after: a number, or mean (the map's mean, "
        "per chunk; for tomograms whose ice is not at zero, e.g. rescaled to 0-255)",
        validator=_background_value,
    )
    scale_from: str = param(
        "estimate",
        help="where the default scale is measured: estimate (the Wiener-filtered observation; noise inflates a raw map's percentile) or observation",
        validator=one_of("estimate", "observation"),
    )

    _meta: PriorMeta | None = attrs.field(default=None, init=False, repr=False)
    _model: HDiT | None = attrs.field(default=None, init=False, repr=False)
    _observed_scale: float | None = attrs.field(default=None, init=False, repr=False)
    _observed_background: float | None = attrs.field(default=None, init=False, repr=False)

    @classmethod
    def describe_notes(cls) -> list[str]:
        """Lines `cryoinverse describe cryofm` adds: the attention backend of each level of the default weights."""
        try:
            levels = read_meta(DEFAULT_WEIGHTS).architecture.levels
        except DataError as exc:
            return [f"default weights: {exc}"]
        backends = ", ".join(f"level {i}: {lv.attention}" for i, lv in enumerate(levels))
        natten = "installed" if natten_available() else "not installed (pip install -e \".[natten]\")"
        return [
            f"default weights {DEFAULT_WEIGHTS.name}: {backends}",
            f"natten: {natten}; attention = \"natten\" runs the neighborhood levels with natten.functional.na3d "
            "(on CPU through PyTorch flex attention, forward only: not with guidance = \"cryofm\", which needs a backward pass)",
        ]

    @property
    def weights_path(self) -> Path:
        """The .safetensors file `weights` names ("auto" not yet resolved: the default prior's)."""
        if isinstance(self.weights, Path):
            return self.weights
        return SHIPPED.get(self.weights, DEFAULT_WEIGHTS)

    def for_voxel_size(self, voxel_size: float | None) -> "CryoFMPrior":
        """This prior with `weights = "auto"` resolved for maps of `voxel_size` A/voxel (itself otherwise)."""
        if self.weights != "auto" or not voxel_size:
            return self
        name = "tomo" if voxel_size >= AUTO_TOMO_FROM and TOMO_WEIGHTS.exists() else "default"
        return attrs.evolve(self, weights=name)

    @property
    def meta(self) -> PriorMeta:
        """The JSON config beside the weights (read once)."""
        if self._meta is None:
            self._meta = read_meta(self.weights_path)
        return self._meta

    @property
    def box(self) -> int:
        """Edge of the boxes the network was trained on; the only box it accepts."""
        return self.meta.box

    @property
    def voxel_size(self) -> float | None:
        """Angstrom per voxel of the training maps (None when the JSON does not say)."""
        return self.meta.voxel_size

    @property
    def density_scale(self) -> float:
        """s of the normalisation: `scale`, else the observation's percentile, else 1."""
        if self.scale is not None:
            return float(self.scale)
        return self._observed_scale if self._observed_scale is not None else 1.0

    @property
    def density_background(self) -> float:
        """b of the normalisation: `background`, or the map's mean taken in `prepare` (0 before)."""
        if self.background != "mean":
            return float(self.background)
        return self._observed_background if self._observed_background is not None else 0.0

    def prepare(self, ctx: PrepareContext) -> None:
        """Check the box (and voxel size), take the density scale from the observation, load the network."""
        meta = self.meta
        if None not in ctx.shape:
            self._check_box(tuple(ctx.shape))
        if ctx.voxel_size and meta.voxel_size and abs(ctx.voxel_size - meta.voxel_size) > 0.01 * meta.voxel_size:
            warnings.warn(
                f"[prior] cryofm: the map has {ctx.voxel_size:g} A/voxel but {self.weights_path.name} was trained at "
                f"{meta.voxel_size:g} A/voxel; resample the map to the prior's voxel size for meaningful results",
                stacklevel=2,
            )
        source = ctx.signal_estimate if self.scale_from == "estimate" else None
        source = source if source is not None else ctx.observation
        if source is not None:
            if self.background == "mean":
                self._observed_background = float(source.data.to(torch.float64).mean())
            background = self.density_background
            if self.scale is None:
                self._observed_scale = percentile_scale(source.data - background, meta.normalization.percentile)
            floor = background_floor(source.data - background, ctx.voxel_size)
            if floor > BACKGROUND_LIMIT:
                warnings.warn(
                    f"[prior] cryofm: the map's solvent is not at zero: seen at {CHECK_RESOLUTION:g} A its lowest value is "
                    f"{floor:.2f} of its highest, where a density on a zero solvent reaches 0. The prior takes everything above "
                    'zero for density: give the solvent\'s density as [prior] background, or "mean"',
                    InputWarning,
                    stacklevel=2,
                )
        self.network(ctx.device)

    def _check_box(self, shape: tuple[int, ...]) -> None:
        box = self.box
        if tuple(shape) != (box, box, box):
            shown = "x".join(str(n) for n in shape)
            raise DataError(
                f"[prior] cryofm: the map is {shown} voxels but {self.weights_path.name} was trained on {box}^3 boxes; "
                f"cut or resample the map to {box}^3, or wrap the prior with cryoinverse.tiling.adapt_prior (as the runner does)"
            )

    def network(self, device: torch.device | str | None = None) -> HDiT:
        """The loaded network, on `device` when given."""
        if self._model is None:
            if self.attention == "natten" and not natten_available():
                raise SpecError("[prior] attention: 'natten' needs the natten package (pip install natten); use 'neighborhood'")
            backend = None if self.attention == "saved" else self.attention
            self._model, self._meta = load_prior(self.weights_path, device or "cpu", local_attention=backend)
        if device is not None and next(self._model.parameters()).device != torch.device(device):
            self._model = self._model.to(device)
        return self._model

    def velocity(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """v(x_t, t) (B, box, box, box) in normalised units, t = 0 noise, t = 1 data; differentiable in x_t."""
        if x_t.ndim != 4:
            raise ValueError(f"cryofm velocity expects a batch (B, z, y, x); got shape {tuple(x_t.shape)}")
        self._check_box(tuple(x_t.shape[1:]))
        model = self.network(x_t.device)
        flipped = self.meta.time_convention == "noise-at-1"
        t_net = torch.full((x_t.shape[0],), 1.0 - float(t) if flipped else float(t), device=x_t.device)
        if self.dtype == "bfloat16" and x_t.is_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                v = model(x_t, t_net)
        else:
            v = model(x_t.to(torch.float32), t_net)
        v = v.to(x_t.dtype)
        return -v if flipped else v

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Density -> CryoFM-1 units: (max(x - b, 0) / s - 0.04) / 0.09, b the background (densities below it are lost)."""
        n = self.meta.normalization
        return ((x - self.density_background).clamp(min=0.0) / self.density_scale - n.offset) / n.scale

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """CryoFM-1 units -> density: (0.09 z + 0.04) s + b (inverts `normalize` for x >= b)."""
        n = self.meta.normalization
        return (z * n.scale + n.offset) * self.density_scale + self.density_background


@hookimpl
def register_priors(register):
    register(CryoFMPrior)
