"""Task specs: TOML -> attrs objects, validated before any work.

A task file has component sections `[prior]`, `[operator]` (or `[[operators]]`), `[sampler]`,
optionally `[poser]`, each with `kind = "<registered name>"` plus that component's own fields
(the attrs fields of the registered class), and plain sections `[inputs]` and `[outputs]`, and
top-level settings (`seed`, `device`, `samples`, `batch`, `check_halves`, and `chunk` /
`chunk_overlap` for chunk-by-chunk restoration of large maps, `cryoinverse.chunked`). Relative
paths are relative to the task file's folder.
Every problem found is reported at once, each naming file, section and field.

The same objects compose in Python without TOML:
    TaskSpec(prior=GaussianPrior(), operators=[SpectralNoise(noise_variance=0.1)],
             sampler=FlowPosteriorEuler(), inputs=Inputs(observation=Path("map.mrc")))
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any

import attrs

from .components import FixedBox, TakesPoses
from .errors import CryoinverseError, DataError, RegistryError, SpecError
from .fourier import box_text, grid_shape
from .mrc import read_header
from .params import help_of, param, positive
from .registry import Registry, get_registry
from .typecheck import convert

COMPONENT_SECTIONS = ("prior", "operator", "sampler", "poser")


def _device(instance, attribute, value: str) -> None:
    if value not in ("auto", "cpu") and not value.startswith("cuda"):
        raise ValueError(f"device: must be 'auto', 'cpu' or 'cuda[:N]'; got {value!r}")


CHUNK_HELP = "restore the map in overlapping cubes of this many voxels per edge, one at a time, memory-mapping input and output (memory bounded by the chunk, not the map); default: the whole map at once"
CHUNK_OVERLAP_HELP = "with chunk: voxels that neighbouring chunks share, blended smoothly (default: a quarter of chunk; a quarter of the overlap at each inner chunk edge is discarded)"
MIN_CHUNK = 8  # voxels per chunk edge: as for maps, fewer leave too few Fourier shells


def _chunk_edge(instance, attribute, value) -> None:
    if value is not None and value < MIN_CHUNK:
        raise ValueError(f"{attribute.name}: must be at least {MIN_CHUNK} voxels; got {value}")


def _non_negative_int(instance, attribute, value) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name}: must be >= 0 voxels; got {value}")


def _box(value):
    """An edge n stays n; a list or tuple of three positive edges becomes the (z, y, x) tuple."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        edges = grid_shape(value)
    except (TypeError, ValueError):
        raise ValueError(f"box: an edge n > 0 or three edges [z, y, x] > 0; got {value!r}") from None
    return edges[0] if isinstance(value, int) else edges


@attrs.frozen
class Inputs:
    """Input maps of a task."""

    observation: Path | None = param(None, help="the observed (degraded) map to restore", is_map=True)
    reference: Path | None = param(None, help="clean reference map: metrics against it go in the report", is_map=True)
    mask: Path | None = param(None, help="mask (0..1) applied to both maps for the reported FSC", is_map=True)
    voxel_size: float | None = param(None, help="voxel size in Angstrom, overriding the maps' headers", validator=positive)
    box: int | tuple[int, int, int] | None = param(
        None, help="box in voxels when no map gives it (prior sampling): an edge n (n^3) or [z, y, x]", converter=_box,
    )
    initial_map: Path | None = param(
        None,
        help="map the [poser] matches the particle images against when their poses are unknown, before sampling "
        "(on the images' grid: their box and pixel size); not needed with a sampler that searches poses itself",
        is_map=True,
    )


@attrs.frozen
class Outputs:
    """Files a task writes; the report defaults to the map's name with .json."""

    map: Path = param(Path("restored.mrc"), help="the restored map (the mean when samples > 1)")
    report: Path | None = param(None, help="JSON report (default: beside the map, same name, .json)")
    std: Path | None = param(None, help="per-voxel standard deviation over samples (needs samples > 1)")
    fsc_plot: Path | None = param(None, help="PNG plot of FSC against the reference")
    fsc_csv: Path | None = param(None, help="CSV of the FSC curve against the reference")
    slices: Path | None = param(None, help="PNG of central slices of input, restored and std maps (default: beside the map, <name>_slices.png)")
    poses: Path | None = param(
        None,
        help="RELION STAR file of the poses estimated for images with unknown poses, written only when poses were estimated "
        "(default: beside the map, <name>_poses.star; <name>_poses_<i>.star per operator when several need poses)",
    )

    @property
    def report_path(self) -> Path:
        """Where the JSON report goes."""
        return self.report if self.report is not None else self.map.with_suffix(".json")

    @property
    def slices_path(self) -> Path:
        """Where the PNG of central slices goes."""
        return self.slices if self.slices is not None else self.map.with_name(f"{self.map.stem}_slices.png")

    def poses_paths(self, count: int) -> list[Path]:
        """Where the estimated poses of `count` operators go (one STAR file each)."""
        path = self.poses if self.poses is not None else self.map.with_name(f"{self.map.stem}_poses.star")
        if count == 1:
            return [path]
        return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(count)]

    def paths(self, poses: int = 0) -> list[Path]:
        """Every file this task will write; `poses`: how many operators' poses it estimates."""
        extra = [self.std, self.fsc_plot, self.fsc_csv]
        return [self.map, self.report_path, self.slices_path, *[p for p in extra if p is not None], *self.poses_paths(poses)[:poses]]


@attrs.define
class TaskSpec:
    """A whole task: components, inputs, outputs and run settings."""

    prior: Any = param(help="the prior component (an instance of a registered prior class)")
    sampler: Any = param(help="the sampler component")
    operators: list = param(factory=list, help="degradation operators, one per observation")
    poser: Any = param(None, help="pose model, for observations with unknown poses")
    inputs: Inputs = param(factory=Inputs, help="input maps")
    outputs: Outputs = param(factory=Outputs, help="output files")
    seed: int = param(0, help="random seed of the initial noise and of everything random")
    device: str = param("auto", help="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'", validator=_device)
    samples: int = param(1, help="number of posterior samples; their mean and std maps are written", validator=positive)
    batch: int | None = param(None, help="samples run together in one batch (default: all; lower it to save memory)", validator=positive)
    observations: list = param(factory=list, help="per-operator observation paths (None: inputs.observation or the operator's own)")
    check_halves: bool = param(True, help="with half maps, also restore each half separately and report their FSC and where the prior overrode the data (two more restorations)")
    chunk: int | None = param(None, help=CHUNK_HELP, validator=_chunk_edge)
    chunk_overlap: int | None = param(None, help=CHUNK_OVERLAP_HELP, validator=_non_negative_int)
    source: Path | None = attrs.field(default=None, metadata={"help": "the task file this spec came from"})

    def observation_paths(self) -> list[Path | None]:
        """The observation path of each operator; a single operator falls back to inputs.observation."""
        paths = list(self.observations) + [None] * (len(self.operators) - len(self.observations))
        if len(self.operators) == 1 and paths[0] is None:
            paths[0] = self.inputs.observation
        return paths

    @property
    def operator(self):
        """The single operator of a one-observation task."""
        return self.operators[0] if self.operators else None


SETTINGS = ("seed", "device", "samples", "batch", "check_halves", "chunk", "chunk_overlap")
TOP_LEVEL = {"prior", "operator", "operators", "sampler", "poser", "inputs", "outputs", *SETTINGS}


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value); the value is read as TOML, else kept as a string."""
    if "=" not in text:
        raise SpecError(f"--set {text!r}: expected SECTION.FIELD=VALUE")
    key, raw = text.split("=", 1)
    keys = [k.strip() for k in key.strip().split(".") if k.strip()]
    if not keys:
        raise SpecError(f"--set {text!r}: empty field name")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return keys, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `--set` overrides to a raw TOML dict (in place); returns it."""
    for text in overrides:
        keys, value = parse_override(text)
        table = raw
        for k in keys[:-1]:
            if k == "operator" and "operators" in raw and isinstance(raw["operators"], list) and len(raw["operators"]) == 1:
                table = raw["operators"][0]
                continue
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                raise SpecError(f"--set {text!r}: {k!r} is not a section")
        table[keys[-1]] = value
    return raw


def load_spec(
    path: str | os.PathLike, overrides: list[str] = (), registry: Registry | None = None, settings: dict[str, Any] | None = None
) -> TaskSpec:
    """Read, override, structure and validate a TOML task file (files and map headers included).

    `overrides` are `--set SECTION.FIELD=VALUE` texts; `settings` are typed top-level values
    (e.g. {"chunk": 112} from `run --chunk`) that replace the file's, None values left out."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: task file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read: {exc}") from None
    apply_overrides(raw, list(overrides))
    raw.update({k: v for k, v in (settings or {}).items() if v is not None})
    spec = spec_from_dict(raw, source=path, registry=registry)
    validate_files(spec)
    return spec


def _where(source: Path | None) -> str:
    return f"{source}: " if source is not None else ""


def _resolve(value: Any, base: Path | None) -> Any:
    if base is None:
        return value
    if isinstance(value, Path):
        return value if value.is_absolute() else Path(os.path.normpath(base / value))
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    return value


def build_attrs(cls: type, table: dict, section: str, source: Path | None, skip: tuple[str, ...] = ()) -> tuple[Any, list[str]]:
    """An instance of attrs class `cls` from a TOML table, with every problem as a message."""
    where = _where(source)
    label = f"[{section}] " if section else ""  # top-level fields have no section
    problems: list[str] = []
    attrs.resolve_types(cls)
    fields = {f.name: f for f in attrs.fields(cls) if f.init and not f.name.startswith("_")}
    kwargs: dict[str, Any] = {}
    base = source.parent if source is not None else None
    for key, value in table.items():
        if key in skip:
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(fields) or "(none)"
            problems.append(f"{where}{label}{key}: unknown field{hint} (fields: {known})")
            continue
        try:
            value = convert(value, fields[key].type)
            if fields[key].converter is not None:  # its own conversion first: the paths it makes are relative to the task file
                value = fields[key].converter(value)
            kwargs[key] = _resolve(value, base)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}{label}{key}: {exc} ({help_of(fields[key])})")
    for name, f in fields.items():  # default paths are relative to the task file too
        if name not in kwargs and name not in skip and isinstance(f.default, Path):
            kwargs[name] = _resolve(f.default, base)
    for key, value in kwargs.items():  # run every validator, so all problems are reported at once
        validator = fields[key].validator
        if validator is not None:
            try:
                validator(None, fields[key], value)
            except (ValueError, TypeError) as exc:
                problems.append(f"{where}{label}{exc}")
            except Exception:  # a validator that needs the instance runs again at construction
                pass
    missing = [n for n, f in fields.items() if f.default is attrs.NOTHING and n not in kwargs and n not in skip]
    for name in missing:
        problems.append(f"{where}{label}{name}: missing ({help_of(fields[name])})")
    if problems:
        return None, problems
    try:
        return cls(**kwargs), []
    except (ValueError, TypeError, CryoinverseError) as exc:
        return None, [f"{where}{label}{exc}"]


def build_component(kind: str, table: Any, section: str, source: Path | None, registry: Registry) -> tuple[Any, list[str]]:
    """A registered component from its TOML table (`kind` plus fields)."""
    where = _where(source)
    if not isinstance(table, dict):
        return None, [f"{where}[{section}]: must be a table with kind = \"<name>\""]
    name = table.get("kind")
    if name is None:
        return None, [f"{where}[{section}] kind: missing; known {kind}s: {', '.join(registry.names(kind))}"]
    if not isinstance(name, str):
        return None, [f"{where}[{section}] kind: expected a string, got {name!r}"]
    try:
        cls = registry.get(kind, name)
    except RegistryError as exc:
        return None, [f"{where}[{section}] kind: {exc}"]
    return build_attrs(cls, table, section, source, skip=("kind",))


def component_from_params(kind: str, name: str, params: list[str] | tuple[str, ...], registry: Registry | None = None) -> Any:
    """A component from command-line `-p field=value` pairs (values read as TOML, as with --set)."""
    table: dict = {"kind": name}
    for text in params:
        keys, value = parse_override(text)
        table[".".join(keys)] = value
    return component_from_table(kind, table, registry)


def component_from_table(kind: str, table: dict, registry: Registry | None = None) -> Any:
    """A component from a table {"kind": name, field: value, ...}; SpecError listing every problem."""
    component, problems = build_component(kind, table, kind, None, registry or get_registry())
    if problems:
        raise SpecError(problems)
    return component


def spec_from_dict(raw: dict, source: Path | None = None, registry: Registry | None = None) -> TaskSpec:
    """Structure a raw task dict into a `TaskSpec`; raises `SpecError` listing every problem."""
    registry = registry or get_registry()
    where = _where(source)
    problems: list[str] = []
    for key in raw:
        if key not in TOP_LEVEL:
            close = difflib.get_close_matches(key, sorted(TOP_LEVEL), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{where}[{key}]: unknown section{hint} (sections: {', '.join(sorted(TOP_LEVEL))})")
    built: dict[str, Any] = {}
    for section in ("prior", "sampler", "poser"):
        if section in raw:
            built[section], errs = build_component(section, raw[section], section, source, registry)
            problems += errs
        elif section != "poser":
            problems.append(f"{where}[{section}]: missing section (known {section}s: {', '.join(registry.names(section))})")
    if "operator" in raw and "operators" in raw:
        problems.append(f"{where}[operator]: give either [operator] or [[operators]], not both")
    tables = raw.get("operators", [raw["operator"]] if "operator" in raw else [])
    if not isinstance(tables, list):
        tables = [tables]
    operators, observations = [], []
    for i, table in enumerate(tables):
        section = "operator" if "operator" in raw else f"operators.{i}"
        path = None
        if isinstance(table, dict) and "observation" in table:
            table = dict(table)
            value = table.pop("observation")
            if isinstance(value, str):
                path = _resolve(Path(value), source.parent if source else None)
            else:
                problems.append(f"{where}[{section}] observation: expected a path, got {value!r}")
        op, errs = build_component("operator", table, section, source, registry)
        problems += errs
        operators.append(op)
        observations.append(path)
    for section, cls in (("inputs", Inputs), ("outputs", Outputs)):
        table = raw.get(section, {})
        if not isinstance(table, dict):
            problems.append(f"{where}[{section}]: must be a table")
            continue
        built[section], errs = build_attrs(cls, table, section, source)
        problems += errs
    settings = {k: raw[k] for k in SETTINGS if k in raw}
    top, errs = build_attrs(_Settings, settings, "", source)
    problems += errs
    if problems:
        raise SpecError(problems)
    spec = TaskSpec(
        prior=built["prior"],
        sampler=built["sampler"],
        operators=operators,
        observations=observations,
        poser=built.get("poser"),
        inputs=built["inputs"],
        outputs=built["outputs"],
        seed=top.seed,
        device=top.device,
        samples=top.samples,
        batch=top.batch,
        check_halves=top.check_halves,
        chunk=top.chunk,
        chunk_overlap=top.chunk_overlap,
        source=source,
    )
    check_structure(spec)
    return spec


@attrs.frozen
class _Settings:
    seed: int = param(0, help="random seed")
    device: str = param("auto", help="'auto', 'cpu' or 'cuda[:N]'", validator=_device)
    samples: int = param(1, help="number of posterior samples", validator=positive)
    batch: int | None = param(None, help="samples run together in one batch", validator=positive)
    check_halves: bool = param(True, help="with half maps, also restore each half separately")
    chunk: int | None = param(None, help="voxels per chunk edge (chunked restoration)", validator=_chunk_edge)
    chunk_overlap: int | None = param(None, help="voxels neighbouring chunks share", validator=_non_negative_int)


def _supplies_observation(op: Any) -> bool:
    return any(getattr(op, f, None) is not None for f in getattr(op, "observation_fields", ("half_maps",)))


def _safe(check) -> bool:
    try:
        return bool(check())
    except CryoinverseError:
        return False  # a broken file is reported by file validation, with its own message


def check_structure(spec: TaskSpec, observation_given: bool = False) -> None:
    """Cross-section checks that need no files: an observation where operators need one, etc."""
    where = _where(spec.source)
    problems = []
    paths = spec.observation_paths()
    for i, op in enumerate(spec.operators):
        if paths[i] is None and not _supplies_observation(op) and not (i == 0 and observation_given):
            if len(spec.operators) == 1:
                problems.append(f"{where}[inputs] observation: missing; the operator needs an observed map (or give half_maps)")
            else:
                problems.append(f"{where}[operators.{i}] observation: missing; give observation = \"path\" in this operator's table")
    for i in unknown_poses(spec):
        op = spec.operators[i]
        section = "operator" if len(spec.operators) == 1 else f"operators.{i}"
        if spec.poser is None:
            problems.append(f"{where}[{section}] {op.name}: the poses are unknown; the task needs a [poser] section (pose models: cryoinverse list poser)")
        elif spec.inputs.initial_map is None and not searches_poses(spec.sampler):
            problems.append(f"{where}[inputs] initial_map: missing; {_initial_map_needed(spec, section, op)}")
    if spec.poser is not None:
        problem = _unused_poser(spec)
        if problem:
            problems.append(f"{where}[poser] {spec.poser.name}: {problem}")
    if spec.outputs.std is not None and spec.samples < 2:
        problems.append(f"{where}[outputs] std: needs samples >= 2 (samples = {spec.samples})")
    if spec.chunk_overlap is not None and spec.chunk is None:
        problems.append(f"{where}chunk_overlap: only used with chunk (the chunk edge in voxels); set chunk too, or remove chunk_overlap")
    elif spec.chunk_overlap is not None and spec.chunk_overlap >= spec.chunk:
        problems.append(f"{where}chunk_overlap: {spec.chunk_overlap} voxels must be smaller than chunk ({spec.chunk})")
    if problems:
        raise SpecError(problems)


def _unused_poser(spec: TaskSpec) -> str | None:
    """Why the task's [poser] would never run (None when it would): a poser places images, so it
    runs only for operators whose poses are unknown, or inside a sampler that searches poses."""
    takes_poses = [op for op in spec.operators if isinstance(op, TakesPoses)]
    if not takes_poses:
        names = ", ".join(op.name for op in spec.operators) or "none"
        return (
            f"no operator of this task observes images with poses (operators: {names}), so the pose model would never run; "
            "remove [poser], or use an operator that takes poses (projection)"
        )
    unreadable = [op for op in takes_poses if getattr(op, "star", None) is not None and not Path(op.star).is_file()]
    if not unreadable and not unknown_poses(spec) and not searches_poses(spec.sampler):
        return (
            f"every operator's poses are known and sampler {spec.sampler.name!r} does not search poses, so the pose model would "
            "never run; remove [poser], or set poses_known = false in the operator's section to estimate the poses"
        )
    return None


def unknown_poses(spec: TaskSpec) -> list[int]:
    """Indices of the operators whose poses are unknown (`needs_poser()`): a poser or the sampler must estimate them."""
    return [i for i, op in enumerate(spec.operators) if isinstance(op, TakesPoses) and _safe(op.needs_poser)]


def searches_poses(sampler: Any) -> bool:
    """Whether a sampler estimates unknown poses itself while it samples (its `searches_poses` ClassVar)."""
    return bool(getattr(sampler, "searches_poses", False))


def _initial_map_needed(spec: TaskSpec, section: str, op: Any) -> str:
    """Why [inputs] initial_map is needed, and what else would do."""
    try:
        samplers = [e.name for e in get_registry().entries("sampler") if searches_poses(e.cls)]
    except CryoinverseError:
        samplers = []
    alternative = f"a sampler that searches poses itself ({', '.join(samplers)})" if samplers else "a sampler that searches poses itself (none is registered)"
    return (
        f"the poses of [{section}] {op.name} are unknown and sampler "
        f"{spec.sampler.name!r} does not search them: give initial_map = \"map.mrc\" (a map on the images' grid for the [poser] "
        f"to match them against), or use {alternative}"
    )


def map_fields(spec: TaskSpec) -> list[tuple[str, str, Path]]:
    """(section, field, path) of every map path set in the spec, components included."""
    found = []
    single_images = len(spec.operators) == 1 and getattr(spec.operators[0], "observes", "volume") != "volume"
    named = [("inputs", spec.inputs), ("prior", spec.prior), ("sampler", spec.sampler), ("poser", spec.poser)]
    named += [("operator" if len(spec.operators) == 1 else f"operators.{i}", op) for i, op in enumerate(spec.operators)]
    for section, obj in named:
        if obj is None or not attrs.has(type(obj)):
            continue
        for f in attrs.fields(type(obj)):
            value = getattr(obj, f.name)
            if value is None or not f.metadata.get("map"):
                continue
            if single_images and section == "inputs" and f.name == "observation":
                continue  # an image stack, read by the operator
            for p in value if isinstance(value, (list, tuple)) else [value]:
                found.append((section, f.name, Path(p)))
    for i, (op, path) in enumerate(zip(spec.operators, spec.observations)):
        if path is not None and getattr(op, "observes", "volume") == "volume":
            found.append(("operator" if len(spec.operators) == 1 else f"operators.{i}", "observation", Path(path)))
    return found


MIN_EDGE = 8  # voxels: fewer leave too few Fourier shells to estimate a spectrum, a noise model or an FSC


def validate_files(spec: TaskSpec, geometry_given: bool = False) -> list[tuple[str, str, "object"]]:
    """Every map exists, is readable, and all agree in shape and voxel size; returns headers.

    Maps may have any shape (z, y, x) of at least MIN_EDGE voxels per edge; only a task whose
    operators observe images (projections of a cube) needs cubic maps.
    """
    where = _where(spec.source)
    problems: list[str] = []
    headers = []
    imaging = [op.name for op in spec.operators if getattr(op, "observes", "volume") != "volume"]
    for section, field, path in map_fields(spec):
        if not path.exists():
            problems.append(f"{where}[{section}] {field}: file not found: {path}")
            continue
        try:
            header = read_header(path, spec.inputs.voxel_size)
        except DataError as exc:
            problems.append(f"{where}[{section}] {field}: {exc}")
            continue
        if min(header.shape) < MIN_EDGE:
            shown = "x".join(str(n) for n in header.shape)
            problems.append(f"{where}[{section}] {field}: {path.name} is {shown} voxels; at least {MIN_EDGE} per edge are needed")
            continue
        if imaging and len(set(header.shape)) != 1:
            z, y, x = header.shape
            problems.append(
                f"{where}[{section}] {field}: {path.name} is {z}x{y}x{x} voxels; operator {imaging[0]!r} observes "
                "projection images of a cubic map, so a cubic box is needed"
            )
            continue
        headers.append((section, field, header))
    if headers:
        s0, f0, h0 = headers[0]
        for section, field, h in headers[1:]:
            if h.shape != h0.shape:
                problems.append(
                    f"{where}[{section}] {field}: box {box_text(h.shape)} does not match [{s0}] {f0} ({box_text(h0.shape)})"
                )
            elif abs(h.voxel_size - h0.voxel_size) > 1e-3 * h0.voxel_size:
                problems.append(
                    f"{where}[{section}] {field}: voxel size {h.voxel_size:g} A does not match "
                    f"[{s0}] {f0} ({h0.voxel_size:g} A)"
                )
    shape = headers[0][2].shape if headers else (grid_shape(spec.inputs.box) if spec.inputs.box is not None else None)
    if shape is not None and not problems:
        problems += memory_problems(spec, shape)
    images = any(getattr(op, "observes", "volume") != "volume" for op in spec.operators)
    fixed_box = spec.prior.box if isinstance(spec.prior, FixedBox) else None
    if not map_fields(spec) and spec.inputs.box is None and fixed_box is None and not (images or geometry_given):
        problems.append(f"{where}[inputs] box: no map gives the box size; set inputs.box")
    if problems:
        raise SpecError(problems)
    return headers


WORKING_BYTES_PER_VOXEL = 32  # a sampler's buffers per map in a batch (velocity, estimate, complex spectra): a lower bound


def task_memory(spec: TaskSpec, shape: tuple[int, int, int]) -> tuple[int, int]:
    """Bytes a task on a map of `shape` needs at least: (for its samples, for its working batch).

    Every sample keeps its initial noise and its finished map in memory (float32: 8 bytes per
    voxel), and each sample of the running batch about WORKING_BYTES_PER_VOXEL more. A chunked
    task holds one chunk of each. Priors and operators add their own (a network, a particle stack),
    so this is a floor: a task above it cannot run, one below it still may not."""
    voxels = 1
    for edge in shape:
        voxels *= min(int(edge), spec.chunk) if spec.chunk is not None else int(edge)
    batch = min(spec.batch or spec.samples, spec.samples)
    return 8 * voxels * spec.samples, WORKING_BYTES_PER_VOXEL * voxels * batch


def memory_problems(spec: TaskSpec, shape: tuple[int, int, int]) -> list[str]:
    """Why the task cannot fit in this machine's memory, naming the field to change (empty when it may)."""
    from .resources import physical_memory, size_text

    total = physical_memory()
    if total is None:
        return []
    kept, working = task_memory(spec, shape)
    if kept + working <= total:
        return []
    where = _where(spec.source)
    box = box_text(shape) if spec.chunk is None else f"{box_text(shape)} in chunks of {spec.chunk}"
    need = f"need at least {size_text(kept + working)} of memory; this machine has {size_text(total)}"
    if kept > total / 2:
        return [f"{where}samples: {spec.samples} samples of a {box} map {need} (each sample's initial noise and map, float32); lower samples"]
    batch = min(spec.batch or spec.samples, spec.samples)
    if batch > 1:
        return [f"{where}batch: {batch} maps of {box} sampled at once {need}; lower batch"]
    if spec.chunk is not None:
        return [f"{where}chunk: one {box} map {need}; lower chunk"]
    return [f"{where}chunk: a {box} map restored whole {need}; restore it in chunks (chunk = 128, or run --chunk 128)"]


def spec_to_dict(spec: TaskSpec) -> dict:
    """The resolved spec as a JSON/TOML-ready dict (the report records this)."""

    def component(obj: Any) -> dict | None:
        if obj is None:
            return None
        fields = {f.name: _plain(getattr(obj, f.name)) for f in attrs.fields(type(obj)) if f.init and not f.name.startswith("_")}
        return {"kind": getattr(obj, "name", type(obj).__name__), **fields}

    return {
        "prior": component(spec.prior),
        "operators": [component(op) for op in spec.operators],
        "sampler": component(spec.sampler),
        "poser": component(spec.poser),
        "inputs": {f.name: _plain(getattr(spec.inputs, f.name)) for f in attrs.fields(Inputs)},
        "outputs": {f.name: _plain(getattr(spec.outputs, f.name)) for f in attrs.fields(Outputs)},
        "seed": spec.seed,
        "device": spec.device,
        "samples": spec.samples,
        "batch": spec.batch,
        "check_halves": spec.check_halves,
        "chunk": spec.chunk,
        "chunk_overlap": spec.chunk_overlap,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


