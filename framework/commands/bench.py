"""`cryoinverse bench`: maps x degradations x methods, a CSV of every run, a table and an FSC plot."""

from __future__ import annotations

from pathlib import Path

import click

from ..bench import format_table, load_bench, merge_parts, plot_curves, read_rows, run_bench, summarize, write_summary
from ..distributed import barrier, world


@click.command("bench")
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="no per-run lines")
def bench(spec_path: Path, quiet: bool) -> None:
    """Benchmark restoration methods: maps x degradations x methods -> runs.csv, summary table, fsc.png."""
    spec = load_bench(spec_path)
    rank, size = world()
    echo = (lambda s: None) if quiet else (lambda s: click.echo(f"[rank {rank}] {s}" if size > 1 else s, err=True))
    run_bench(spec, rank, size, echo)
    if size > 1:
        barrier()
        if rank != 0:
            return
        merge_parts(spec.out_dir, size)
    rows = read_rows(spec.out_dir / "runs.csv")
    summary = summarize(rows)
    write_summary(spec.out_dir, summary)
    plot_curves(spec.out_dir, rows)
    click.echo(format_table(summary))
    click.echo(f"wrote {spec.out_dir / 'runs.csv'}, {spec.out_dir / 'summary.csv'}, {spec.out_dir / 'fsc.png'}")


command = bench
