"""`cryoinverse demo`: degrade the bundled map like real data, restore it, compare.

The bundled map (`data/demo_3nbk.mrc`, see `data/README.md`) is degraded into two half maps
whose average (the degraded map) has noise shaped like a real map's (`cryoinverse.levels`): its
variance rises with frequency so that the expected FSC against the clean map falls off like a
logistic and crosses 0.5 at `resolution` Angstrom (`noise = "white"`: the same power in every
shell instead, N = 3 S at that shell). As with real data, the noise model is estimated from the
two half maps. It is restored with one of two priors:

- `learned` (default): the learned prior shipped with the package (`cryofm` without weights)
  and flow posterior sampling with Wiener guidance, the mean of 4 samples of 10 steps;
- `gaussian`: the gaussian prior (signal spectrum estimated from the observation) and its exact
  posterior, the mean of 4 samples of 100 steps (a Wiener-type filter).

Each half map is also restored alone (the report's `half_maps`: what can be checked without a
reference), and `restored_slices.png` shows central slices of the input, restored and std maps.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from .mrc import read_volume, write_volume
from .progress import ProgressFactory, silent
from .registry import get_registry
from .outputs import check_outputs
from .runner import run_task
from .specs import Inputs, Outputs, TaskSpec, component_from_table
from .bench import Degradation
from .levels import NOISE_SHAPES
from .volume import Volume

DEMO_MAP = "demo_3nbk.mrc"
# prior, sampler table and default (steps, samples) of each demo method
_METHODS = {
    "learned": ({"kind": "cryofm"}, {"kind": "flow-posterior-euler", "guidance": "wiener"}, (10, 4)),
    "gaussian": ({"kind": "gaussian"}, {"kind": "flow-posterior-euler", "guidance": "exact"}, (100, 4)),
}
DEMO_PRIORS = tuple(_METHODS)


def demo_map() -> Volume:
    """The bundled clean density map (64^3, 1.5 A/voxel)."""
    with resources.as_file(resources.files("cryoinverse") / "data" / DEMO_MAP) as path:
        return read_volume(path)


def run_demo(
    out_dir: Path,
    resolution: float = 6.0,
    steps: int | None = None,
    samples: int | None = None,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    progress: ProgressFactory = silent,
    prior: str = "learned",
    noise: str = "logistic",
) -> dict:
    """Write reference, half1, half2, degraded (their average), restored maps, report.json and
    restored_slices.png into `out_dir`.

    `prior` is "learned" or "gaussian"; `steps` and `samples` default to that method's (10, 4 or
    100, 4); `noise` is "logistic" (FSC-shaped) or "white".
    """
    if prior not in _METHODS:
        raise ValueError(f"prior must be one of {', '.join(DEMO_PRIORS)}; got {prior!r}")
    if noise not in NOISE_SHAPES:
        raise ValueError(f"noise must be one of {', '.join(NOISE_SHAPES)}; got {noise!r}")
    prior_table, sampler_table, (default_steps, default_samples) = _METHODS[prior]
    steps = default_steps if steps is None else steps
    samples = default_samples if samples is None else samples
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.mrc" for name in ("reference", "degraded", "restored", "half1", "half2")}
    report_path = out_dir / "report.json"
    slices_path = out_dir / "restored_slices.png"
    check_outputs([*paths.values(), report_path, slices_path], overwrite)
    registry = get_registry()
    reference = demo_map()
    # Two half maps with twice the noise power; their average is the degraded (full) map.
    level = Degradation("demo", {"kind": "spectral-noise"}, target_resolution=resolution, noise_shape=noise, half_maps=True)
    degraded, _, halves = level.degrade(reference, registry, torch.Generator().manual_seed(seed))
    write_volume(paths["reference"], reference, overwrite=True)
    write_volume(paths["half1"], halves[0], overwrite=True)
    write_volume(paths["half2"], halves[1], overwrite=True)
    write_volume(paths["degraded"], degraded, overwrite=True)
    operator = registry.get("operator", "spectral-noise")(half_maps=[paths["half1"], paths["half2"]])
    spec = TaskSpec(
        prior=component_from_table("prior", prior_table, registry),
        operators=[operator],
        sampler=component_from_table("sampler", dict(sampler_table, steps=steps), registry),
        inputs=Inputs(observation=paths["degraded"], reference=paths["reference"]),
        outputs=Outputs(map=paths["restored"], report=report_path, slices=slices_path),
        seed=seed,
        device=device,
        samples=samples,
    )
    result = run_task(spec, overwrite=True, progress=progress)
    result.report["demo"] = {"target_resolution_A": resolution, "noise": noise, "map": DEMO_MAP, "prior": prior}
    from .outputs import write_json

    write_json(report_path, result.report)
    return result.report
