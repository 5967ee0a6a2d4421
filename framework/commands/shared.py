"""What several commands share: the `--set` help, the metrics table and half-map lines they print,
two maps read for a comparison, and the checks and reading of commands on particle stacks."""

from __future__ import annotations

from pathlib import Path

import attrs
import click

from ..errors import DataError


SET_HELP = "override a spec field, e.g. --set sampler.steps=50 (repeatable)"


def echo_half_maps(report: dict) -> None:
    """The half-map checks of a report, and its warnings (on stderr)."""
    halves = report.get("half_maps")
    if halves:
        click.echo(
            f"half maps: input FSC-0.143 {halves['input']['resolution_0.143']:.2f} A (AUC {halves['input']['auc']:.3f}); "
            f"restored separately {halves['restored']['resolution_0.143']:.2f} A (AUC {halves['restored']['auc']:.3f})"
        )
        cones = halves.get("directional")
        if cones:
            def axes(which: dict) -> str:
                return " / ".join(f"{k} {v['resolution_0.143']:.2f}" for k, v in which.items() if k != "cone_angle")

            click.echo(f"  FSC-0.143 about x / y / z (cones of {cones['input']['cone_angle']:g} deg): input {axes(cones['input'])} A; "
                       f"restored separately {axes(cones['restored'])} A")
    for line in report.get("warnings", []):
        click.echo(f"Warning: {line}", err=True)


def show_default(value) -> str:
    """A field's default as `describe` prints it (factories called, paths quoted)."""
    if isinstance(value, attrs.Factory):
        value = value.factory()
    return repr(str(value)) if isinstance(value, Path) else repr(value)


def matching_maps(map_a: Path, map_b: Path, voxel_size: float | None, what: str, cubic: bool = True):
    """Two maps read for `what` (a comparison): one shape (cubic where `cubic`, as rotations need) and one voxel size, else a DataError."""
    from ..mrc import read_volume

    a, b = read_volume(map_a, voxel_size), read_volume(map_b, voxel_size)
    if b.shape != a.shape:
        raise DataError(f"{map_b}: shape {b.shape} differs from {map_a} {a.shape}")
    if cubic and not a.is_cubic:
        raise DataError(f"{map_a}: shape {a.shape} is not cubic; {what} needs cubic boxes")
    if abs(a.voxel_size - b.voxel_size) > 1e-3 * a.voxel_size:
        raise DataError(f"voxel sizes differ: {a.voxel_size:g} A ({map_a}) vs {b.voxel_size:g} A ({map_b}); pass --voxel-size")
    return a, b


def echo_metrics(metrics: dict) -> None:
    """One table line per compared map: AUC-FSC, FSC-0.5 and 0.143 resolutions, correlation, RMSE, fail flag."""
    if not metrics:
        return
    click.echo(f"{'map':32s} {'AUC-FSC':>8s} {'FSC0.5 A':>9s} {'FSC0.143 A':>10s} {'CC':>7s} {'RMSE':>9s} failed")
    for name, m in metrics.items():
        click.echo(
            f"{name:32s} {m['auc']:8.4f} {m['resolution_0.5']:9.2f} {m['resolution_0.143']:10.2f} "
            f"{m['correlation']:7.4f} {m['rmse']:9.4g} {'yes' if m['failed'] else 'no'}"
        )


def echo_directional(cones: dict, cone_angle: float) -> None:
    """One table line per direction of a directional FSC: AUC-FSC and the FSC-0.5 and 0.143 resolutions."""
    click.echo(f"{'cone (half-angle ' + format(cone_angle, 'g') + ' deg)':32s} {'AUC-FSC':>8s} {'FSC0.5 A':>9s} {'FSC0.143 A':>10s}")
    for name, m in cones.items():
        click.echo(f"{'about ' + name:32s} {m['auc']:8.4f} {m['resolution_0.5']:9.2f} {m['resolution_0.143']:10.2f}")


def check_outputs_and_checkpoint(outputs: list[Path], partial: Path, resume: bool, overwrite: bool) -> None:
    """Before any work: `outputs` can be written (and do not exist, unless `overwrite`), and a checkpoint
    `partial` of a stopped run is either continued (`resume`) or replaced (`overwrite`), never ignored."""
    from ..outputs import check_outputs

    check_outputs(outputs, overwrite)
    check_outputs([partial], overwrite=True)  # writable; it is replaced as the run goes
    if partial.exists() and not (resume or overwrite):
        raise DataError(f"{partial}: a checkpoint of a stopped run is there; --resume continues it, --overwrite starts again")


def check_datadir(datadir: Path | None) -> None:
    """A `--datadir` that is given must be a folder."""
    if datadir is not None and not datadir.is_dir():
        raise DataError(f"--datadir {datadir}: folder not found")


def particle_stack(star: Path, pixel_size: float | None, ctf: bool, datadir: Path | None):
    """The images of STAR file `star` with their CTFs where `ctf` and the file has CTF columns (images
    without them are used as they are)."""
    import attrs

    from ..ctf import CTFParams
    from ..particles import read_particle_stack

    check_datadir(datadir)
    stack = read_particle_stack(star, pixel_size=pixel_size, ctf=False, datadir=datadir)
    if ctf and "rlnDefocusU" in stack.table:
        stack = attrs.evolve(stack, ctf=CTFParams.from_star(stack.table, where=str(star)))
    return stack


def save_checkpoint(path: Path, key: str, state: dict) -> None:
    """`state` (tensors, numbers, strings, lists and dicts of them) saved atomically with `key`, the fingerprint of its run."""
    import torch

    from ..mrc import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"key": key, **state}, tmp)


def load_checkpoint(path: Path, key: str) -> dict:
    """The state saved in checkpoint `path` by `save_checkpoint` (without its key); DataError when it is
    unreadable or was made by a run with other inputs or settings (another `key`). Loads no pickled code."""
    import pickle

    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0]}); delete it or pass --overwrite to start again") from None
    if saved.get("key") != key:
        raise DataError(f"{path}: the checkpoint was made with other inputs or settings; rerun with the same ones, or with --overwrite to start again")
    saved.pop("key")
    return saved
