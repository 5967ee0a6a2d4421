"""`cryoinverse run`: run a task spec (TOML): restore, write the outputs and a JSON report."""

from __future__ import annotations

from pathlib import Path

import click

from ..progress import bar, silent
from .shared import SET_HELP, echo_half_maps, echo_metrics


@click.command("run")
@click.argument("task", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="SECTION.FIELD=VALUE", help=SET_HELP)
@click.option("--overwrite", is_flag=True, help="replace existing output files")
@click.option("--quiet", "-q", is_flag=True, help="no progress bar")
@click.option("--chunk", type=click.IntRange(min=8), metavar="VOXELS", help="restore chunk by chunk, cubes of VOXELS per edge, memory-mapped (same as --set chunk=VOXELS)")
def run(task: Path, overrides: tuple[str, ...], overwrite: bool, quiet: bool, chunk: int | None) -> None:
    """Run a task spec (TOML): restore, write the outputs and a JSON report."""
    from ..runner import run_task
    from ..specs import load_spec

    spec = load_spec(task, overrides, settings={"chunk": chunk})
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
    echo_metrics(result.report.get("metrics", {}))
    echo_half_maps(result.report)


command = run
