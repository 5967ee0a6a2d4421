"""The `cryoinverse` command line: thin wrappers over the library functions.

Every user error (`CryoinverseError`) is printed as `Error: ...` without a traceback, exit 1.
Plugins add commands through the `register_commands(cli)` hook.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

import attrs
import click

from . import __version__
from .errors import CryoinverseError, DataError
from .levels import DEFAULT_WIDTH, NOISE_SHAPES
from .params import help_of
from .plugins import failed_plugins, failure_message, get_plugin_manager, plugin_infos
from .progress import bar, silent
from .registry import KINDS, get_registry
from .typecheck import type_name


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CryoinverseError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; no partial output was left under a final name") from None


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cryoinverse")
def cli() -> None:
    """Cryo-EM / cryo-ET inverse problems with learned priors."""


SET_HELP = "override a spec field, e.g. --set sampler.steps=50 (repeatable)"


@cli.command()
@click.argument("task", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE", help=SET_HELP)
@click.option("--overwrite", is_flag=True, help="replace existing output files")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
@click.option("--chunk", type=click.IntRange(min=8), metavar="VOXELS", help="restore chunk by chunk, cubes of VOXELS per edge, memory-mapped (same as --set chunk=VOXELS)")
def run(task: Path, overrides: tuple[str, ...], overwrite: bool, quiet: bool, chunk: int | None) -> None:
    """Run a task spec (TOML): restore, write the outputs and a JSON report."""
    from .runner import run_task
    from .specs import load_spec

    if chunk is not None:
        overrides = (*overrides, f"chunk={chunk}")
    spec = load_spec(task, overrides)
    result = run_task(spec, overwrite=overwrite, progress=silent if quiet else bar)
    for path in result.written:
        click.echo(f"wrote {path}")
    chunks = result.report.get("chunks")
    if chunks:
        click.echo(
            f"restored in {chunks['count']} chunks of {'x'.join(map(str, chunks['size']))} voxels (overlap {chunks['overlap']}) "
            f"in {chunks['seconds']:.1f} s; peak memory {chunks['peak_rss_MiB']:.0f} MiB"
        )
    for entry in result.report.get("poses", []):
        click.echo(
            f"poses of {entry['images']} images ([{entry['section']}]) estimated by {entry['estimated_by']}; "
            f"median score {entry['score_median']:.4g}"
        )
    _echo_metrics(result.report.get("metrics", {}))
    _echo_half_maps(result.report)


def _echo_half_maps(report: dict) -> None:
    """The half-map checks of a report, and its warnings (on stderr)."""
    halves = report.get("half_maps")
    if halves:
        click.echo(
            f"half maps: input FSC-0.143 {halves['input']['resolution_0.143']:.2f} A (AUC {halves['input']['auc']:.3f}); "
            f"restored separately {halves['restored']['resolution_0.143']:.2f} A (AUC {halves['restored']['auc']:.3f})"
        )
    for line in report.get("warnings", []):
        click.echo(f"Warning: {line}", err=True)


@cli.command()
@click.argument("task", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE", help=SET_HELP)
def validate(task: Path, overrides: tuple[str, ...]) -> None:
    """Check a task spec (fields, files, boxes, voxel sizes) without running it."""
    from .specs import load_spec

    spec = load_spec(task, overrides)
    ops = ", ".join(op.name for op in spec.operators) or "none"
    click.echo(f"{task}: valid (prior {spec.prior.name}, operators {ops}, sampler {spec.sampler.name})")


@cli.command("list")
@click.argument("kind", required=False, type=click.Choice(KINDS))
def list_(kind: str | None) -> None:
    """List registered components (all kinds, or one KIND)."""
    registry = get_registry()
    for k in [kind] if kind else KINDS:
        click.echo(f"{k}s:")
        entries = registry.entries(k)
        for e in entries:
            click.echo(f"  {e.name:28s} {e.summary}  [{e.plugin}]")
        if not entries:
            click.echo("  (none)")


@cli.command()
@click.argument("name")
def describe(name: str) -> None:
    """Show a component's description and its spec fields (type, default, help)."""
    registry = get_registry()
    entries = registry.find(name)
    if not entries:
        known = ", ".join(e.name for e in registry.entries())
        close = difflib.get_close_matches(name, [e.name for e in registry.entries()], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise click.ClickException(f"unknown component {name!r}.{hint} Known: {known}")
    for e in entries:
        click.echo(f"{e.kind} {e.name!r} ({e.cls.__module__}.{e.cls.__qualname__}, plugin {e.plugin})")
        click.echo(f"  {(e.cls.__doc__ or '').strip()}")
        click.echo("  fields:")
        for f in attrs.fields(e.cls):
            if not f.init or f.name.startswith("_"):
                continue
            default = "required" if f.default is attrs.NOTHING else f"default {_show_default(f.default)}"
            click.echo(f"    {f.name} ({type_name(f.type)}, {default}): {help_of(f)}")
        notes = getattr(e.cls, "describe_notes", None)
        for line in notes() if notes is not None else []:
            click.echo(f"  {line}")


def _show_default(value) -> str:
    if isinstance(value, attrs.Factory):
        value = value.factory()
    return repr(str(value)) if isinstance(value, Path) else repr(value)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def plugins(as_json: bool) -> None:
    """List loaded plugins, their distributions and the hooks they implement."""
    infos = plugin_infos(get_plugin_manager())
    if as_json:
        failed = [dict(f, failed=True, builtin=False, hooks=[]) for f in failed_plugins()]
        click.echo(json.dumps(infos + failed, indent=2))
        return
    for info in infos:
        origin = "built-in" if info["builtin"] else (info["distribution"] or "registered at run time")
        click.echo(f"{info['name']} ({origin}): {', '.join(info['hooks'])}")
    for info in failed_plugins():
        click.echo(f"{info['name']} ({info['distribution'] or 'unknown distribution'}): FAILED to load: {info['error']}")


@cli.command()
@click.argument("map_a", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("map_b", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--mask", type=click.Path(dir_okay=False, path_type=Path), help="mask map (0..1) applied to both")
@click.option("--voxel-size", type=float, help="voxel size in Angstrom, overriding the headers")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="write the curve as CSV")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="write a PNG plot")
def fsc(map_a: Path, map_b: Path, mask: Path | None, voxel_size: float | None, as_json: bool, csv_path: Path | None, plot_path: Path | None) -> None:
    """FSC between two maps: AUC-FSC, resolution at 0.5 and 0.143 (Angstrom), fail flag."""
    from .metrics import compare
    from .mrc import read_volume
    from .outputs import check_outputs, write_fsc_csv, write_fsc_plot

    check_outputs([p for p in (csv_path, plot_path) if p], overwrite=True)
    a, b = _matching_maps(map_a, map_b, voxel_size, "FSC", cubic=False)
    m = read_volume(mask, voxel_size) if mask else None
    if m is not None and m.shape != a.shape:
        raise DataError(f"{mask}: shape {m.shape} differs from {map_a} {a.shape}")
    result = compare(a, b, m).as_dict()
    if csv_path:
        write_fsc_csv(csv_path, {"ab": result})
    if plot_path:
        write_fsc_plot(plot_path, {f"{map_a.name} vs {map_b.name}": result})
    if as_json:
        from .outputs import finite

        click.echo(json.dumps(finite(result)))
        return
    _echo_metrics({f"{map_a.name} vs {map_b.name}": result})


def _matching_maps(map_a: Path, map_b: Path, voxel_size: float | None, what: str, cubic: bool = True):
    """Two maps read for `what` (a comparison): one shape (cubic where `cubic`, as rotations need) and one voxel size, else a DataError."""
    from .mrc import read_volume

    a, b = read_volume(map_a, voxel_size), read_volume(map_b, voxel_size)
    if b.shape != a.shape:
        raise DataError(f"{map_b}: shape {b.shape} differs from {map_a} {a.shape}")
    if cubic and not a.is_cubic:
        raise DataError(f"{map_a}: shape {a.shape} is not cubic; {what} needs cubic boxes")
    if abs(a.voxel_size - b.voxel_size) > 1e-3 * a.voxel_size:
        raise DataError(f"voxel sizes differ: {a.voxel_size:g} A ({map_a}) vs {b.voxel_size:g} A ({map_b}); pass --voxel-size")
    return a, b


def _echo_metrics(metrics: dict) -> None:
    if not metrics:
        return
    click.echo(f"{'map':32s} {'AUC-FSC':>8s} {'FSC0.5 A':>9s} {'FSC0.143 A':>10s} {'CC':>7s} {'RMSE':>9s} failed")
    for name, m in metrics.items():
        click.echo(
            f"{name:32s} {m['auc']:8.4f} {m['resolution_0.5']:9.2f} {m['resolution_0.143']:10.2f} "
            f"{m['correlation']:7.4f} {m['rmse']:9.4g} {'yes' if m['failed'] else 'no'}"
        )


@cli.command()
@click.argument("clean", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--operator", "-k", "kind", required=True, help="registered operator name, e.g. spectral-noise")
@click.option("--param", "-p", "params", multiple=True, metavar="FIELD=VALUE", help="operator field (repeatable), e.g. -p noise_variance=0.01")
@click.option("--target-resolution", type=float, help="noise kinds: set the noise so the degraded map's expected FSC-0.5 is here (A)")
@click.option("--noise-shape", type=click.Choice(NOISE_SHAPES), default="logistic", show_default=True, help="with --target-resolution: expected FSC shaped like a real one (logistic fall-off), or white noise")
@click.option("--fsc-width", type=float, default=DEFAULT_WIDTH, show_default=True, help="logistic width as a fraction of the crossing frequency")
@click.option("--fsc-curve", type=click.Path(dir_okay=False, path_type=Path), help="CSV FSC curve (fsc, resolution_A) to shape the noise instead of the logistic")
@click.option("--half-maps", is_flag=True, help="write two half maps (twice the noise each) beside OUTPUT, which is their average")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed of the noise")
@click.option("--voxel-size", type=float, help="voxel size in Angstrom, overriding the header")
@click.option("--overwrite", is_flag=True, help="replace an existing output")
def degrade(
    clean: Path, output: Path, kind: str, params: tuple[str, ...], target_resolution: float | None, noise_shape: str,
    fsc_width: float, fsc_curve: Path | None, half_maps: bool, seed: int, voxel_size: float | None, overwrite: bool,
) -> None:
    """Apply an operator's simulate() to a clean map: how benchmark inputs are made."""
    import torch

    from .components import PrepareContext
    from .engine import call_prepare
    from .levels import noise_power_for_resolution, read_fsc_curve
    from .mrc import read_volume, write_volume
    from .outputs import check_outputs
    from .specs import component_from_params

    if target_resolution is None and (half_maps or fsc_curve is not None):
        hint, why = ("--half-maps", " (the noise of each half map is twice the full map's)") if half_maps else ("--fsc-curve", "")
        raise click.BadParameter(f"needs --target-resolution{why}", param_hint=hint)
    halves = [output.with_name(f"{output.stem}_half{i}{output.suffix}") for i in (1, 2)] if half_maps else []
    check_outputs([output, *halves], overwrite)
    volume = read_volume(clean, voxel_size)
    power = None
    if target_resolution is not None:
        curve = read_fsc_curve(fsc_curve) if fsc_curve is not None else None
        try:
            power = noise_power_for_resolution(volume, target_resolution, noise_shape, fsc_width, curve)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--target-resolution") from None

    def build(factor: float):
        """The operator, its noise set from the target (times `factor`) when one is given."""
        extra = () if power is None else (f"noise_power={(factor * power).tolist()}",)
        op = component_from_params("operator", kind, (*params, *extra))
        call_prepare(op, PrepareContext(shape=volume.shape, voxel_size=volume.voxel_size, device=torch.device("cpu"), observation=None, operators=[op]))
        return op

    generator = torch.Generator().manual_seed(seed)
    if half_maps:
        op = build(2.0)
        maps = [op.simulate(volume.data, generator) for _ in range(2)]
        for path, data in zip(halves, maps):
            write_volume(path, volume.with_data(data), overwrite=overwrite)
            click.echo(f"wrote {path}")
        degraded = 0.5 * (maps[0] + maps[1])
    else:
        degraded = build(1.0).simulate(volume.data, generator)
    write_volume(output, volume.with_data(degraded), overwrite=overwrite)
    click.echo(f"wrote {output}")


@cli.command()
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), show_default=True, help="folder for reference, degraded, restored maps and report.json")
@click.option("--resolution", type=float, default=6.0, show_default=True, help="FSC-0.5 resolution (A) of the degraded map")
@click.option("--steps", type=int, default=None, help="sampler steps  [default: 10 learned, 100 gaussian]")
@click.option("--samples", type=int, default=None, help="posterior samples averaged into the restored map  [default: 4]")
@click.option("--prior", "prior", type=click.Choice(["learned", "gaussian"]), default="learned", show_default=True, help="the shipped learned prior, or the analytic gaussian prior")
@click.option("--noise", type=click.Choice(NOISE_SHAPES), default="logistic", show_default=True, help="noise shaped like a real map's (FSC falling off as a logistic), or white")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@click.option("--overwrite", is_flag=True, help="replace existing files in --out-dir")
def demo(out_dir: Path, resolution: float, steps: int | None, samples: int | None, prior: str, noise: str, seed: int, device: str, overwrite: bool) -> None:
    """Degrade the bundled map like real data (two half maps), restore it with the shipped learned prior (or the gaussian prior), compare."""
    from .demo import run_demo

    try:
        report = run_demo(out_dir, resolution, steps, samples, seed, device, overwrite, progress=bar, prior=prior, noise=noise)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--resolution") from None
    for name in ("reference", "half1", "half2", "degraded", "restored"):
        click.echo(f"wrote {out_dir / (name + '.mrc')}")
    click.echo(f"wrote {out_dir / 'report.json'}")
    click.echo(f"wrote {out_dir / 'restored_slices.png'}")
    metrics = report["metrics"]
    _echo_metrics({"degraded vs reference": metrics["observation"], "restored vs reference": metrics["restored"]})
    _echo_half_maps(report)
    if prior == "gaussian":
        click.echo(
            "FSC is blind to per-shell filtering: the gaussian prior's posterior mean is a Wiener filter,\n"
            "so it improves correlation and RMSE while FSC stays (a finite sample mean lowers it slightly)."
        )


_PLUGIN_COMMANDS: dict[str, str] = {}  # command name -> the plugin that added it in the last build


@cli.command()
@click.argument("reference", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("moving", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="the moving map rotated and shifted onto the reference (MRC)")
@click.option("--allow-mirror", is_flag=True, help="also try the mirror image (an ab initio map may have either hand)")
@click.option("--voxel-size", type=float, help="voxel size in Angstrom, overriding the headers")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--overwrite", is_flag=True, help="replace an existing output")
def align(reference: Path, moving: Path, out: Path, allow_mirror: bool, voxel_size: float | None, as_json: bool, overwrite: bool) -> None:
    """Rigidly align MOVING onto REFERENCE (rotation, shift, optional mirror); print them and the FSC after."""
    from .align import align_maps, rotation_angle
    from .metrics import compare
    from .mrc import write_volume
    from .rotations import matrix_to_euler_zyz
    from .outputs import check_outputs

    from .align import constant_map_problem

    check_outputs([out], overwrite)
    a, b = _matching_maps(reference, moving, voxel_size, "alignment")
    for path, volume in ((reference, a), (moving, b)):
        problem = constant_map_problem(volume.data)
        if problem:
            raise DataError(f"{path}: {problem}")
    alignment, moved = align_maps(a.data, b.data, a.voxel_size, allow_mirror=allow_mirror)
    result = a.with_data(moved)
    write_volume(out, result, overwrite=overwrite)
    metrics = compare(result, a).as_dict()
    rot, tilt, psi = (float(v) for v in matrix_to_euler_zyz(alignment.rotation))
    summary = {
        "rotation": alignment.rotation.tolist(), "euler_rot_tilt_psi_deg": [rot, tilt, psi], "angle_deg": rotation_angle(alignment.rotation),
        "shift_zyx_A": list(alignment.shift_A), "mirror": alignment.mirror, "correlation": alignment.correlation,
        "auc": metrics["auc"], "resolution_0.5": metrics["resolution_0.5"], "resolution_0.143": metrics["resolution_0.143"],
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"wrote {out}")
    click.echo(
        f"rotation {summary['angle_deg']:.1f} deg (RELION rot/tilt/psi {rot:.1f}/{tilt:.1f}/{psi:.1f}), shift (z, y, x) "
        f"{', '.join(f'{v:.2f}' for v in alignment.shift_A)} A, mirror {'yes' if alignment.mirror else 'no'}"
    )
    _echo_metrics({f"{moving.name} on {reference.name}": metrics})


@cli.command()
@click.argument("particles", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--map", "map_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="reference map the images are matched against (MRC); its voxel size and box are the images' grid")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="STAR file to write: PARTICLES with new angles, origins and a cryoinverseScore column")
@click.option("--poser", "poser_name", default="search", show_default=True, help="registered pose model (cryoinverse list poser)")
@click.option("--param", "-p", "params", multiple=True, metavar="FIELD=VALUE", help="poser field (repeatable), e.g. -p level=1")
@click.option("--truth", type=click.Path(dir_okay=False, path_type=Path), help="STAR file with the known poses of the same rows: print rotation and shift errors")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), help="write the viewing directions as a PNG sky map (Mollweide, equal-area)")
@click.option("--chunk", type=click.IntRange(min=1), default=1000, show_default=True, help="images per poser call; a checkpoint OUT.partial.npz is saved after each")
@click.option("--resume", is_flag=True, help="continue from the checkpoint of a stopped run (refused when inputs or settings changed)")
@click.option(
    "--resample/--no-resample", default=None,
    help="--resample: resample every image to the map's voxel size and box (also optics groups of different pixel sizes); "
    "--no-resample: refuse images whose grid differs from the map's  [default: resample images of one pixel size, refuse mixed ones]",
)
@click.option("--ctf/--no-ctf", default=True, help="apply each image's CTF when the STAR file has CTF columns  [default: --ctf]")
@click.option("--pixel-size", type=click.FloatRange(min=0, min_open=True), help="image pixel size in Å, overriding the STAR file and the stack headers")
@click.option("--datadir", type=click.Path(file_okay=False, path_type=Path), help="folder to look for the image stacks of rlnImageName in first (as RELION's --datadir); then beside the STAR file, then the working folder")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object: the summary and, with --truth, the errors")
@click.option("--overwrite", is_flag=True, help="replace existing outputs, and start again over an old checkpoint")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
def poses(
    particles: Path, map_path: Path, out: Path, poser_name: str, params: tuple[str, ...], truth: Path | None, plot_path: Path | None,
    chunk: int, resume: bool, resample: bool | None, ctf: bool, pixel_size: float | None, datadir: Path | None, device: str, as_json: bool,
    overwrite: bool, quiet: bool,
) -> None:
    """Estimate the poses of the particle images of a STAR file against a map; write them as STAR."""
    from .mrc import read_volume
    from .poses import pose_metrics
    from .poses_io import checkpoint_path, estimate_star_poses, median_score, read_poses_star, write_sky_map
    from .devices import resolve_device
    from .outputs import check_outputs
    from .specs import component_from_params
    from .star import particle_block, read_star

    partial = checkpoint_path(out)
    check_outputs([p for p in (out, plot_path) if p], overwrite)
    check_outputs([partial], overwrite=True)  # writable; it is replaced as the run goes
    if partial.exists() and not (resume or overwrite):
        raise DataError(f"{partial}: a checkpoint of a stopped run is there; --resume continues it, --overwrite starts again")
    if datadir is not None and not datadir.is_dir():
        raise DataError(f"--datadir {datadir}: folder not found")
    poser = component_from_params("poser", poser_name, params)
    torch_device = resolve_device(device)
    volume = read_volume(map_path)
    known = None
    if truth is not None:  # checked before the long work: the same rows
        known = read_poses_star(truth, pixel_size)
        blocks = read_star(particles)
        rows = len(blocks[particle_block(blocks, particles)])
        if len(known) != rows:
            raise DataError(f"{truth}: has {len(known)} particle rows but {particles} has {rows}; the truth needs the same rows in order")
    try:
        done = estimate_star_poses(
            particles, volume, out, poser, chunk, resume, resample, ctf, pixel_size, torch_device, progress=silent if quiet or as_json else bar,
            datadir=datadir,
        )
    except DataError as exc:
        if resample is None and "resample=True" in str(exc):
            raise DataError(f"{exc}. Here: pass --resample to resample every image to the map's grid ({volume.shape[-1]} px of {volume.voxel_size:g} Å)") from None
        raise
    except KeyboardInterrupt:
        where = f"; --resume continues from {partial}" if partial.exists() else ""
        raise click.ClickException(f"interrupted{where}") from None
    found, stack = done.poses, done.stack
    written = [done.path]
    if plot_path is not None:
        written.append(write_sky_map(plot_path, found.rotations, title=f"viewing directions of {len(found)} images ({particles.name})"))
    summary = {
        "images": len(found), "resumed": done.resumed, "time_s": done.seconds, "score_median": median_score(found),
        "poser": poser.name, "pixel_size": stack.pixel_size, "box": stack.box, "ctf": stack.ctf is not None, "outputs": [str(p) for p in written],
    }
    if known is not None:
        summary["metrics"] = pose_metrics(found, known)
    if as_json:
        from .outputs import finite

        click.echo(json.dumps(finite(summary)))
        return
    if done.note:
        click.echo(done.note)
    for path in written:
        click.echo(f"wrote {path}")
    again = f" ({done.resumed} from the checkpoint)" if done.resumed else ""
    click.echo(
        f"poses of {len(found)} images{again} in {done.seconds:.1f} s ({poser.name}, {stack.box} px of {stack.pixel_size:g} Å, "
        f"{'CTF' if stack.ctf is not None else 'no CTF'}); median score {summary['score_median']:.4g}"
    )
    if known is not None:
        m = summary["metrics"]
        click.echo(
            f"against {truth.name}: rotation error median {m['rotation_error_median_deg']:.2f} deg, mean {m['rotation_error_mean_deg']:.2f} deg; "
            f"within 5 deg {100 * m['within_5_deg']:.1f}%, within 10 deg {100 * m['within_10_deg']:.1f}%; shift error {m['shift_error_mean_A']:.2f} A"
        )


def build_cli() -> click.Group:
    """The CLI group with the commands of every plugin added.

    Each plugin's `register_commands` runs in turn; a command whose name is already taken (by a
    built-in command or another plugin's) is an error naming both, never a silent replacement.
    """
    for name in _PLUGIN_COMMANDS:
        cli.commands.pop(name, None)
    _PLUGIN_COMMANDS.clear()
    for impl in get_plugin_manager().hook.register_commands.get_hookimpls():
        before = dict(cli.commands)
        try:
            impl.function(cli=cli)
        except CryoinverseError:
            raise
        except Exception as exc:
            raise CryoinverseError(f"plugin {impl.plugin_name!r} failed in register_commands: {exc!r}") from exc
        for name, command in list(cli.commands.items()):
            if name in before and before[name] is not command:
                cli.commands[name] = before[name]
                owner = f"plugin {_PLUGIN_COMMANDS[name]!r}" if name in _PLUGIN_COMMANDS else "the built-in command"
                raise CryoinverseError(f"plugin {impl.plugin_name!r} adds a command {name!r}, which {owner} already has; rename one of them")
            if name not in before:
                _PLUGIN_COMMANDS[name] = impl.plugin_name
    return cli


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"Warning: {message}", err=True)


def main() -> None:
    """Console-script entry point."""
    import warnings

    warnings.showwarning = _one_line_warning
    try:
        group = build_cli()
    except CryoinverseError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    for info in failed_plugins():
        click.echo(f"Warning: {failure_message(info)}", err=True)
    group()
