"""`cryoinverse bench SPEC.toml`: the CryoFM evaluation protocol as one command.

For every clean map x every degradation x every method: degrade the map (seeded), restore it
with the method (a prior and a sampler; `none` = the degraded input as is), and measure AUC-FSC,
FSC-0.5 resolution, fail (worse than 30 A), correlation, RMSE against the clean map, wall time
and peak memory. Rows go to `runs.csv` as they finish, so an interrupted bench resumes where it
stopped; the table of mean +- std per degradation and method (failed runs excluded from the
means, fail rate shown) is printed and written to `summary.csv`, the mean FSC curves to
`fsc.png`. Under `torchrun`, rank r takes maps r, r + W, ...; each rank writes its own part
file and rank 0 merges them.

Spec:
    maps = ["clean/*.mrc"]          # globs, relative to the spec file
    out_dir = "bench-out"
    seed = 0
    samples = 1
    [[degradations]]                # kind + operator fields, or target_resolution for noise kinds
    name = "spectral-6A"
    kind = "spectral-noise"
    target_resolution = 6.0         # FSC-0.5 of the degraded map (A)
    noise_shape = "logistic"        # or "white"; fsc_width = 0.1, fsc_curve = "real_fsc.csv"
    half_maps = true                # noise estimated from two half maps, as with real data
    [[methods]]
    name = "degraded"
    [[methods]]
    name = "gaussian"
    samples = 4                     # this method's posterior samples (default: the top-level samples)
    prior = { kind = "gaussian" }
    sampler = { kind = "flow-posterior-euler", guidance = "exact", steps = 50 }
"""

from __future__ import annotations

import csv
import glob
import math
import os
import resource
import time
import tomllib
from typing import Any
from pathlib import Path


import attrs
import numpy as np
import torch

from .components import NoiseFromHalfMaps, PrepareContext, call_prepare
from .errors import CryoinverseError, SpecError
from .levels import DEFAULT_WIDTH, NOISE_SHAPES, noise_power_for_resolution, read_fsc_curve
from .metrics import compare
from .mrc import atomic_path, read_volume
from .registry import Registry, get_registry
from .engine import execute
from .specs import Inputs, TaskSpec, build_component
from .volume import Volume

COLUMNS = ["map", "degradation", "method", "auc", "resolution_0.5", "resolution_0.143", "failed", "correlation", "rmse", "wall_s", "peak_mem_mb"]
NOISE_KINDS = ("spectral-noise", "anisotropic-noise")


@attrs.frozen
class Degradation:
    """One degradation: an operator table, and for noise kinds a noise level set by a target FSC-0.5.

    With `target_resolution`, the noise power per shell makes the expected FSC(degraded, clean)
    cross 0.5 there (`cryoinverse.levels`): shaped like a real FSC (`noise_shape = "logistic"`,
    relative width `fsc_width`, or the curve of `fsc_curve`) or white. With `half_maps`, two half
    maps get twice the noise each, the degraded map is their average, and the restoring operator
    is estimated from them (the operator's `estimate(h1, h2)`), as with real data.
    """

    name: str
    table: dict
    target_resolution: float | None = None
    noise_shape: str = "logistic"
    fsc_width: float = DEFAULT_WIDTH
    fsc_curve: Path | None = None
    half_maps: bool = False
    section: str | None = None
    """Where errors in `table` are reported (default `[degradations.<name>]`)."""

    def noise_power(self, clean: Volume) -> torch.Tensor:
        """Per-shell noise power of the degraded (full) map for this clean map."""
        curve = read_fsc_curve(self.fsc_curve) if self.fsc_curve is not None else None
        return noise_power_for_resolution(clean, self.target_resolution, self.noise_shape, self.fsc_width, curve)

    def infeasible(self, clean: Volume) -> str | None:
        """Why this degradation cannot be applied to `clean` (a target beyond Nyquist), or None."""
        if self.target_resolution is None:
            return None
        try:
            self.noise_power(clean)
        except ValueError as exc:
            return str(exc)
        return None

    def operator(self, clean: Volume, registry: Registry, noise_factor: float = 1.0):
        """The operator for this clean map (noise level set from the map when a target is given)."""
        table = dict(self.table)
        if self.target_resolution is not None:
            table.pop("noise_variance", None)
            table["noise_power"] = (noise_factor * self.noise_power(clean)).tolist()
        op, problems = build_component("operator", table, self.section or f"degradations.{self.name}", None, registry)
        if problems:
            raise SpecError(problems)
        call_prepare(op, PrepareContext(shape=clean.shape, voxel_size=clean.voxel_size, device=torch.device("cpu"), observation=None, operators=[op]))
        return op

    def simulate(self, clean: Volume, registry: Registry, generator: torch.Generator) -> tuple[Volume, Any, list[Volume] | None]:
        """(degraded map, the operator that made it, half maps or None). With `half_maps` the
        operator has twice the noise, makes each half, and the degraded map is their average."""
        if not self.half_maps:
            op = self.operator(clean, registry)
            return clean.with_data(op.simulate(clean.data, generator)), op, None
        half_op = self.operator(clean, registry, noise_factor=2.0)
        halves = [clean.with_data(half_op.simulate(clean.data, generator)) for _ in range(2)]
        return clean.with_data(0.5 * (halves[0].data + halves[1].data)), half_op, halves

    def degrade(self, clean: Volume, registry: Registry, generator: torch.Generator):
        """(degraded map, operator to restore it with, half maps or None): with half maps, the
        restoring operator's noise is estimated from them, as with real data."""
        degraded, op, halves = self.simulate(clean, registry, generator)
        if halves is None:
            return degraded, op, None
        if not isinstance(op, NoiseFromHalfMaps):
            raise SpecError(f"[{self.section or f'degradations.{self.name}'}] half_maps: operator {op.name!r} cannot estimate its noise from half maps")
        return degraded, type(op).estimate(halves[0], halves[1]), halves


@attrs.frozen
class Method:
    """One restoration method: a prior and a sampler table, or none (the degraded map as is)."""

    name: str
    prior: dict | None = None
    sampler: dict | None = None
    samples: int | None = None  # posterior samples averaged (default: the bench's `samples`)


@attrs.frozen
class BenchSpec:
    """A whole benchmark: clean maps, degradations, methods, output folder."""

    maps: list[Path]
    degradations: list[Degradation]
    methods: list[Method]
    out_dir: Path
    seed: int = 0
    samples: int = 1
    device: str = "auto"


def load_bench(path: Path, registry: Registry | None = None) -> BenchSpec:
    """Read and check a bench spec; every problem is reported with the file and the entry."""
    registry = registry or get_registry()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{path}: {exc}") from None
    base = path.parent
    problems = []
    maps: list[Path] = []
    for pattern in raw.get("maps", []):
        found = sorted(Path(p) for p in glob.glob(str(base / pattern)))
        if not found:
            problems.append(f"{path}: maps: no file matches {pattern!r}")
        maps += found
    if not raw.get("maps"):
        problems.append(f"{path}: maps: missing (a list of globs of clean maps)")
    degradations = []
    for i, table in enumerate(raw.get("degradations", [])):
        table = dict(table)
        name = table.pop("name", f"degradation-{i}")
        target = table.pop("target_resolution", None)
        shaping = {k: table.pop(k) for k in ("noise_shape", "fsc_width", "fsc_curve", "half_maps") if k in table}
        where = f"{path}: [degradations.{i}]"
        if target is not None and table.get("kind") not in NOISE_KINDS:
            problems.append(f"{where} target_resolution: only for {', '.join(NOISE_KINDS)}")
        if target is None and set(shaping) - {"half_maps"}:
            problems.append(f"{where} {', '.join(sorted(set(shaping) - {'half_maps'}))}: need target_resolution")
        if shaping.get("noise_shape", "logistic") not in NOISE_SHAPES:
            problems.append(f"{where} noise_shape: must be one of {', '.join(NOISE_SHAPES)}; got {shaping['noise_shape']!r}")
        if "fsc_curve" in shaping:
            shaping["fsc_curve"] = base / shaping["fsc_curve"]
            try:
                read_fsc_curve(shaping["fsc_curve"])
            except CryoinverseError as exc:
                problems.append(f"{where} fsc_curve: {exc}")
        if not (isinstance(shaping.get("fsc_width", 0.1), (int, float)) and shaping.get("fsc_width", 0.1) > 0):
            problems.append(f"{where} fsc_width: must be a positive number (a fraction of the crossing frequency)")
        if not isinstance(shaping.get("half_maps", False), bool):
            problems.append(f"{where} half_maps: must be true or false")
        check = dict(table, noise_variance=1.0) if target is not None else table
        _, errs = build_component("operator", check, f"degradations.{i}", path, registry)
        problems += errs
        degradations.append(Degradation(name, table, target, **shaping))
    methods = []
    for i, table in enumerate(raw.get("methods", [])):
        name = table.get("name", f"method-{i}")
        for part in ("prior", "sampler"):
            if part in table:
                _, errs = build_component(part, table[part], f"methods.{i}.{part}", path, registry)
                problems += errs
        if ("prior" in table) != ("sampler" in table):
            problems.append(f"{path}: [methods.{i}] give both prior and sampler, or neither (the degraded input)")
        count = table.get("samples")
        if count is not None and not (isinstance(count, int) and not isinstance(count, bool) and count > 0):
            problems.append(f"{path}: [methods.{i}] samples: must be a positive integer")
        methods.append(Method(name, table.get("prior"), table.get("sampler"), count))
    if not degradations:
        problems.append(f"{path}: [[degradations]]: none given")
    if not methods:
        problems.append(f"{path}: [[methods]]: none given")
    if problems:
        raise SpecError(problems)
    return BenchSpec(
        maps=maps,
        degradations=degradations,
        methods=methods,
        out_dir=base / raw.get("out_dir", "bench-out"),
        seed=int(raw.get("seed", 0)),
        samples=int(raw.get("samples", 1)),
        device=str(raw.get("device", "auto")),
    )


def _key(row: dict) -> tuple[str, str, str]:
    return (row["map"], row["degradation"], row["method"])


def read_rows(path: Path) -> list[dict]:
    """Rows of a runs CSV (empty if the file does not exist)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _append(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:  # one row at a time: a crash loses at most the run in flight
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def run_one(clean: Volume, degradation: Degradation, method: Method, bench: BenchSpec, registry: Registry, map_index: int) -> tuple[dict, list]:
    """Degrade, restore and measure one (map, degradation, method); returns the CSV row and the FSC curve."""
    generator = torch.Generator().manual_seed(bench.seed * 1000003 + map_index)
    degraded, op, _ = degradation.degrade(clean, registry, generator)
    t0 = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if method.prior is None:
        restored = degraded
    else:
        prior, p1 = build_component("prior", method.prior, f"methods.{method.name}.prior", None, registry)
        sampler, p2 = build_component("sampler", method.sampler, f"methods.{method.name}.sampler", None, registry)
        if p1 or p2:
            raise SpecError(p1 + p2)
        spec = TaskSpec(
            prior=prior, sampler=sampler, operators=[op], inputs=Inputs(box=clean.shape[-1]),
            seed=bench.seed, samples=method.samples or bench.samples, device=bench.device, check_halves=False,
        )
        restored = execute(spec, observation=degraded).volume
    wall = time.perf_counter() - t0
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process high-water mark (Linux: kB)
    c = compare(restored, clean)
    row = {
        "map": "", "degradation": degradation.name, "method": method.name, "auc": c.auc,
        "resolution_0.5": c.resolution_05, "resolution_0.143": c.resolution_0143, "failed": int(c.failed),
        "correlation": c.correlation, "rmse": c.rmse, "wall_s": wall, "peak_mem_mb": peak,
    }
    return row, c.curve


def run_bench(bench: BenchSpec, rank: int = 0, world: int = 1, echo=lambda s: None) -> Path:
    """Run this rank's share of the bench; returns its runs CSV path (rows already there are kept)."""
    registry = get_registry()
    bench.out_dir.mkdir(parents=True, exist_ok=True)
    part = bench.out_dir / ("runs.csv" if world == 1 else f"runs.rank{rank}.csv")
    done = {_key(r) for r in read_rows(part)}
    curves_dir = bench.out_dir / "curves"
    curves_dir.mkdir(exist_ok=True)
    for index, path in enumerate(bench.maps):
        if index % world != rank:
            continue
        clean = read_volume(path)
        for degradation in bench.degradations:
            problem = degradation.infeasible(clean)
            if problem:
                echo(f"{path.name} {degradation.name}: skipped ({problem})")
                continue
            for method in bench.methods:
                key = (path.name, degradation.name, method.name)
                if key in done:
                    continue
                row, curve = run_one(clean, degradation, method, bench, registry, index)
                row["map"] = path.name
                np.savetxt(curves_dir / f"{path.stem}__{degradation.name}__{method.name}.txt", np.array(curve))
                _append(part, row)
                echo(f"{path.name} {degradation.name} {method.name}: AUC {row['auc']:.3f}, FSC-0.5 {row['resolution_0.5']:.2f} A, {row['wall_s']:.1f} s")
    return part


def merge_parts(out_dir: Path, world: int) -> Path:
    """Merge rank part files into runs.csv (rows de-duplicated by map, degradation, method)."""
    target = out_dir / "runs.csv"
    rows = {_key(r): r for r in read_rows(target)}
    for rank in range(world):
        for r in read_rows(out_dir / f"runs.rank{rank}.csv"):
            rows[_key(r)] = r
    with atomic_path(target) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(sorted(rows.values(), key=_key))
    return target


def summarize(rows: list[dict]) -> list[dict]:
    """Mean +- std per (degradation, method) over non-failed runs, with the fail rate."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["degradation"], r["method"]), []).append(r)
    out = []
    for (deg, method), rs in groups.items():
        ok = [r for r in rs if int(r["failed"]) == 0]

        def stat(col: str) -> tuple[float, float]:
            values = np.array([float(r[col]) for r in ok])
            return (float(values.mean()), float(values.std())) if len(values) else (math.nan, math.nan)

        out.append({
            "degradation": deg, "method": method, "n": len(rs), "fail_rate": 1 - len(ok) / len(rs),
            **{f"{c}_mean": stat(c)[0] for c in ("auc", "resolution_0.5", "correlation", "rmse", "wall_s")},
            **{f"{c}_std": stat(c)[1] for c in ("auc", "resolution_0.5", "correlation", "rmse", "wall_s")},
        })
    return sorted(out, key=lambda r: (r["degradation"], r["method"]))


def format_table(summary: list[dict]) -> str:
    """The summary as a fixed-width text table like CryoFM's Tables 1-3."""
    lines = [f"{'degradation':16s} {'method':18s} {'n':>3s} {'AUC-FSC':>15s} {'FSC-0.5 (A)':>15s} {'CC':>15s} {'fail':>5s} {'time (s)':>9s}"]
    for s in summary:
        lines.append(
            f"{s['degradation']:16s} {s['method']:18s} {s['n']:3d} {s['auc_mean']:7.3f}+-{s['auc_std']:.3f} "
            f"{s['resolution_0.5_mean']:7.2f}+-{s['resolution_0.5_std']:5.2f} {s['correlation_mean']:7.3f}+-{s['correlation_std']:.3f} "
            f"{s['fail_rate']:5.0%} {s['wall_s_mean']:9.2f}"
        )
    return "\n".join(lines)


def write_summary(out_dir: Path, summary: list[dict]) -> Path:
    """summary.csv beside runs.csv."""
    path = out_dir / "summary.csv"
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(summary[0]))
            writer.writeheader()
            writer.writerows(summary)
    return path


def plot_curves(out_dir: Path, rows: list[dict]) -> Path:
    """fsc.png: mean FSC curve per method, one panel per degradation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    degradations = sorted({r["degradation"] for r in rows})
    fig, axes = plt.subplots(1, len(degradations), figsize=(5 * len(degradations), 4), squeeze=False)
    for ax, deg in zip(axes[0], degradations):
        for method in sorted({r["method"] for r in rows if r["degradation"] == deg}):
            curves = [np.loadtxt(out_dir / "curves" / f"{Path(r['map']).stem}__{deg}__{method}.txt", ndmin=2) for r in rows if r["degradation"] == deg and r["method"] == method]
            if not curves or len({c.shape for c in curves}) != 1:
                continue
            mean = np.mean(curves, axis=0)
            ax.plot(1.0 / mean[:, 0], mean[:, 1], label=method)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_title(deg)
        ax.set_xlabel("spatial frequency (1/Å)")
        ax.set_ylabel("mean FSC")
        ax.legend()
    fig.tight_layout()
    path = out_dir / "fsc.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
