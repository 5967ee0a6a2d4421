"""The front door of a task: validate it once, run it (whole or chunk by chunk), write what it made.

`run_task(spec)` refuses outputs that exist (without `overwrite`) or cannot be created before any
work, validates the spec (structure, files, memory), runs `cryoinverse.engine.execute` (or
`cryoinverse.chunked.run_chunked` with `spec.chunk`), and writes the map, the std map, estimated
poses, FSC curves, slices and the JSON report, each atomically, so an interrupted run leaves no
partial file under a final name.

The engine and the output helpers live in `cryoinverse.engine`, `cryoinverse.outputs` and
`cryoinverse.devices`; the names Python users and plugins import from here stay importable here.
"""

from __future__ import annotations

from pathlib import Path

from .chunked import run_chunked
from .components import TakesPoses
from .devices import resolve_device
from .engine import RunResult, _section, call_prepare, check_half_maps, execute, for_voxel_size, report_header, resolve_sampler
from .errors import DataError
from .mrc import write_volume
from .outputs import check_outputs, write_fsc_csv, write_fsc_plot, write_json
from .poses import Poses
from .progress import ProgressFactory, silent
from .previews import write_slices_png
from .specs import TaskSpec, check_structure, unknown_poses, validate_files

__all__ = [
    "run_task", "write_estimated_poses", "execute", "RunResult", "check_outputs", "write_json", "write_fsc_csv", "write_fsc_plot",
    "resolve_device", "report_header", "for_voxel_size", "resolve_sampler", "call_prepare", "check_half_maps",
]


def run_task(spec: TaskSpec, overwrite: bool = False, progress: ProgressFactory = silent) -> RunResult:
    """Run `spec` and write what `[outputs]` names plus the JSON report.

    With `spec.chunk` set, the map is restored chunk by chunk (`cryoinverse.chunked.run_chunked`).
    """
    if spec.chunk is not None:
        return run_chunked(spec, overwrite, progress)
    outputs = spec.outputs
    check_outputs(outputs.paths(poses=len(unknown_poses(spec))), overwrite)
    check_structure(spec)
    validate_files(spec)
    result = execute(spec, progress, validated=True)
    written = [write_volume(outputs.map, result.volume)]
    for k, ((i, poses), path) in enumerate(zip(result.poses.items(), outputs.poses_paths(len(result.poses)))):
        written.append(write_estimated_poses(spec, i, poses, path))
        result.report["poses"][k]["star"] = str(path)
    if outputs.std is not None and result.std is not None:
        written.append(write_volume(outputs.std, result.std))
    metrics = result.report.get("metrics", {}).get("restored")
    if metrics is not None and outputs.fsc_csv is not None:
        written.append(write_fsc_csv(outputs.fsc_csv, {"restored": metrics, **_others(result.report)}))
    if metrics is not None and outputs.fsc_plot is not None:
        written.append(write_fsc_plot(outputs.fsc_plot, {"restored": metrics, **_others(result.report)}))
    panels = {"input": result.observation if result.observation is not None and result.observation.shape == result.volume.shape else None,
              "restored": result.volume, "std": result.std}
    written.append(write_slices_png(outputs.slices_path, panels, title=f"central slices: {outputs.map.name}"))
    result.report["outputs"] = [str(p) for p in written] + [str(outputs.report_path)]
    written.append(write_json(outputs.report_path, result.report))
    result.written = written
    return result


def write_estimated_poses(spec: TaskSpec, i: int, poses: Poses, path: Path) -> Path:
    """Write the poses estimated for operator `i` as a RELION STAR file.

    An operator read from a STAR file (its `star` field) gets that file back with the new angles,
    origins and a score column (`cryoinverse.particles.write_poses_star`); one read from a stack
    alone (`particles`, or the task's observation) gets a new RELION 3.1 file whose rlnImageName
    points at that stack (`cryoinverse.poses_io.write_new_poses_star`).
    """
    from .particles import stack_header, write_poses_star
    from .poses_io import rebase_image_names, write_new_poses_star
    from .star import read_star

    op = spec.operators[i]
    pixel = float((op.image_pixel_size if isinstance(op, TakesPoses) else None) or 1.0)
    star = getattr(op, "star", None)
    if star is not None:
        blocks = rebase_image_names(read_star(star, keep_text=True), star, path)
        return write_poses_star(blocks, path, poses.rotations, poses.shifts, poses.scores, pixel_size=pixel)
    stack = getattr(op, "particles", None) or spec.observation_paths()[i]
    if stack is None:
        raise DataError(f"[{_section(spec, i)}] {op.name}: no STAR file or image stack to name in {path}")
    return write_new_poses_star(path, Path(stack), poses, pixel, stack_header(stack)[1])


def _others(report: dict) -> dict:
    return {k: v for k, v in report.get("metrics", {}).items() if k != "restored"}
