"""`cryoinverse loglik`: the log-density of a map under a prior (probability-flow ODE)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import torch

from ..errors import DataError
from ..loglik import EXACT_MAX_VOXELS, MIN_LOGLIK_EDGE, log_density


@click.command("loglik")
@click.argument("map_path", metavar="MAP", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--prior", "-k", "kind", required=True, help="registered prior name, e.g. gaussian")
@click.option("--param", "-p", "params", multiple=True, metavar="FIELD=VALUE", help="prior field (repeatable), e.g. -p power_from=ref.mrc")
@click.option("--probes", "n_probes", type=click.IntRange(min=1), default=1, show_default=True, help="Hutchinson probes per map")
@click.option("--probe-kind", type=click.Choice(["rademacher", "gaussian"]), default="rademacher", show_default=True, help="distribution of the Hutchinson probes")
@click.option("--exact", is_flag=True, help=f"exact divergence (full Jacobian trace; maps of at most {EXACT_MAX_VOXELS} voxels)")
@click.option("--rtol", type=click.FloatRange(min=0), default=1e-5, show_default=True, help="relative tolerance of the ODE solver")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-5, show_default=True, help="absolute tolerance of the ODE solver")
@click.option("--max-steps", type=click.IntRange(min=1), default=1000, show_default=True, help="most solver steps (accepted + rejected)")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed of the probes")
@click.option("--voxel-size", type=float, help="voxel size in Angstrom, overriding the header")
@click.option("--dtype", "dtype_name", type=click.Choice(["float64", "float32"]), default="float64", show_default=True, help="precision of the flow")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def loglik_command(
    map_path: Path,
    kind: str,
    params: tuple[str, ...],
    n_probes: int,
    probe_kind: str,
    exact: bool,
    rtol: float,
    atol: float,
    max_steps: int,
    seed: int,
    voxel_size: float | None,
    dtype_name: str,
    device: str,
    as_json: bool,
) -> None:
    """Log-density of a map under a prior (probability-flow ODE): nats, bits per voxel, NFE.

    The prior is built like a task spec's [prior] section (kind and -p fields) and prepared
    for the map's box and voxel size, without the map as an observation (a prior fitted to the
    map it scores would flatter it).
    """
    from ..components import PrepareContext, call_prepare
    from ..mrc import read_volume
    from ..devices import resolve_device
    from ..specs import component_from_params

    if rtol == 0 and atol == 0:
        raise click.BadParameter("rtol and atol cannot both be 0", param_hint="--rtol/--atol")
    prior = component_from_params("prior", kind, params)
    dev = resolve_device(device)
    volume = read_volume(map_path, voxel_size)
    if min(volume.shape) < MIN_LOGLIK_EDGE:
        raise DataError(f"{map_path}: {'x'.join(map(str, volume.shape))} voxels; at least {MIN_LOGLIK_EDGE} per edge are needed")
    call_prepare(prior, PrepareContext(shape=volume.shape, voxel_size=volume.voxel_size, device=dev, observation=None, operators=[]))
    start = time.perf_counter()
    result = log_density(
        prior,
        volume.data.to(dev),
        exact=exact,
        n_probes=n_probes,
        probe=probe_kind,
        generator=torch.Generator().manual_seed(seed),
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        dtype=getattr(torch, dtype_name),
    )
    summary = result.summary(0)
    if as_json:
        summary.update(
            map=str(map_path), prior=kind, rtol=rtol, atol=atol, dtype=dtype_name, seed=seed, wall_s=time.perf_counter() - start
        )
        click.echo(json.dumps(summary))
        return
    click.echo(f"log p            {summary['log_p_nats']:.6f} nats")
    click.echo(f"bits per voxel   {summary['bits_per_voxel']:.6f}")
    click.echo(f"NFE              {summary['nfe']} ({summary['steps']} steps, {summary['rejected']} rejected)")
    click.echo(
        f"  = log N(x0; 0, I) {summary['log_p_noise']:.6f} - divergence integral {summary['divergence_integral']:.6f}"
        f" + log|det dz/dx| {summary['log_det_normalize']:.6f}; divergence {summary['estimator']}"
        + (f" ({n_probes} probes)" if not exact else "")
    )


command = loglik_command
