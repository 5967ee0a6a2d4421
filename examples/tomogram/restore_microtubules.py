"""Restore the two real microtubule tomogram crops: missing-wedge in-painting and denoising.

Data: `../shared/data/tomograms/13pf_MT.mrc` (36x206x94) and `14pf_MT.mrc` (44x136x84), SIRT
bin-4 crops at 10.52 Å (hanjinliu/cylindra tests). z is the beam direction and y the tilt axis:
their power spectra lack a wedge of about ±30° around kz in the kz-kx plane, i.e. tilts of about
±60°, which is the operator used here (`tilt_min`/`tilt_max`; give `tilt_file` for real series).

Noise: no odd/even tomograms exist for these crops (they are single SIRT reconstructions, and
their tilt series are not public), so the noise power per shell is estimated from the crops
themselves: `background_noise = true` takes the quietest cubes (ice without microtubules) and
averages their power over the measured coefficients. This assumes the noise is stationary across
the crop; with odd/even tomograms give `half_maps = [odd, even]` instead.

For each crop the script writes `<name>_restored.mrc`, `<name>_slices.png` (central slices along
the three axes, before and after) and prints three self-consistency measures, none of which
needs a ground truth:
- **measured agreement**: the correlation of restoration and input over the measured Fourier
  coefficients (the data the restoration must keep), by resolution band;
- **power in the wedge**: the fraction of the map's power (above the lowest shells) that lies in
  the missing wedge: ~0 for the input, what the prior filled in for the restoration;
- **lattice periodicities**: along the microtubule axis (found from the input's z-projected
  power spectrum: the equator is the strongest line through the origin), the power at 1/40 Å⁻¹
  (tubulin monomers) and 1/80 Å⁻¹ (dimers) relative to the power beside them; a restoration that
  keeps the lattice keeps these peaks.

  python examples/tomogram/restore_microtubules.py --out tomo-out            # learned prior if shipped, else gaussian
  python examples/tomogram/restore_microtubules.py --prior gaussian --steps 50
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent.parent / "shared" / "data" / "tomograms"
TILT = 60.0


def task_text(observation: Path, out: Path, prior: str, steps: int, samples: int = 1, background: str = "0") -> str:
    """The task file of one crop. The crops were rescaled to 0-255 by their source (ice near 105), so
    the learned prior warns that their solvent is not at zero; `background` is the level it takes out."""
    if prior == "gaussian":
        prior_table, sampler = 'kind = "gaussian"', f'kind = "flow-posterior-pseudoinverse"\nsteps = {steps}'
    else:
        level = '"mean"' if background == "mean" else background
        prior_table = f'kind = "cryofm"\nweights = "tomo"\ntile_overlap = 8\nbackground = {level}'
        sampler = f'kind = "flow-posterior-euler"\nsteps = {steps}'
    return f"""seed = 0
samples = {samples}

[prior]
{prior_table}

[operator]
kind = "missing-wedge"
tilt_min = {-TILT}
tilt_max = {TILT}
tilt_axis = "y"
background_noise = true

[sampler]
{sampler}

[inputs]
observation = "{observation}"

[outputs]
map = "{out}"
"""


def wedge_measured(shape: tuple[int, int, int]) -> np.ndarray:
    """Measured coefficients (tilt axis y, ±TILT): the angle of (kz, kx) in physical frequency."""
    kz, ky, kx = np.meshgrid(*(np.fft.fftfreq(n) for n in shape), indexing="ij")
    theta = np.degrees(np.arctan2(-kz, kx))
    theta = np.where(theta > 90, theta - 180, np.where(theta <= -90, theta + 180, theta))
    return (np.abs(theta) <= TILT) | ((kz == 0) & (kx == 0))


def radius(shape: tuple[int, int, int]) -> np.ndarray:
    """|k| in cycles per voxel."""
    kz, ky, kx = np.meshgrid(*(np.fft.fftfreq(n) for n in shape), indexing="ij")
    return np.sqrt(kz**2 + ky**2 + kx**2)


def measured_agreement(a: np.ndarray, b: np.ndarray, voxel: float) -> list[tuple[str, float]]:
    """Correlation of a and b over the measured coefficients, in resolution bands."""
    fa, fb = np.fft.fftn(a - a.mean()), np.fft.fftn(b - b.mean())
    m, r = wedge_measured(a.shape), radius(a.shape)
    rows = []
    for lo, hi in ((200.0, 60.0), (60.0, 35.0), (35.0, 2 * voxel)):
        band = m & (r >= voxel / lo) & (r < voxel / hi if hi > 2 * voxel else r <= 0.5)
        c = np.real(np.vdot(fa[band], fb[band])) / math.sqrt(np.vdot(fa[band], fa[band]).real * np.vdot(fb[band], fb[band]).real)
        rows.append((f"{lo:.0f}-{hi:.0f} Å", float(c)))
    return rows


def wedge_power(x: np.ndarray, voxel: float) -> float:
    """Fraction of the power beyond 200 Å that lies in the missing wedge."""
    f = np.abs(np.fft.fftn(x - x.mean())) ** 2
    keep = radius(x.shape) >= voxel / 200.0
    return float(f[keep & ~wedge_measured(x.shape)].sum() / f[keep].sum())


def axis_angle(x: np.ndarray) -> float:
    """In-plane (y, x) angle of the filament axis, degrees: perpendicular to the strongest line through the origin of the z-projection's power."""
    p = x.sum(axis=0)
    f = np.fft.fftshift(np.abs(np.fft.fft2(p - p.mean())) ** 2)
    ny, nx = p.shape
    cy, cx = ny // 2, nx // 2
    best, best_angle = -1.0, 0.0
    for angle in np.arange(0.0, 180.0, 0.5):
        t = np.radians(angle)
        s = np.arange(2, min(cy, cx) - 1)
        yy = np.round(cy + s * np.sin(t)).astype(int)
        xx = np.round(cx + s * np.cos(t)).astype(int)
        total = f[yy, xx].sum() + f[2 * cy - yy, 2 * cx - xx].sum() if ny % 2 == 0 and nx % 2 == 0 else f[yy, xx].sum()
        if total > best:
            best, best_angle = total, angle
    return (best_angle + 90.0) % 180.0


def lattice_peaks(x: np.ndarray, voxel: float, angle: float) -> dict[str, float]:
    """Power at 1/40 and 1/80 Å⁻¹ along the axis (z-projection, physical frequencies), over the median power of nearby frequencies."""
    p = x.sum(axis=0)
    ny, nx = p.shape
    f = np.abs(np.fft.fft2(p - p.mean())) ** 2
    ky, kx = np.meshgrid(np.fft.fftfreq(ny) / voxel, np.fft.fftfreq(nx) / voxel, indexing="ij")
    t = np.radians(angle)
    along = ky * np.sin(t) + kx * np.cos(t)
    across = -ky * np.cos(t) + kx * np.sin(t)
    out = {}
    for label, period in (("40 Å", 40.0), ("80 Å", 80.0)):
        k0 = 1.0 / period
        near_axis = np.abs(across) <= 1.5 / (max(ny, nx) * voxel)
        peak = near_axis & (np.abs(np.abs(along) - k0) <= 0.75 / (max(ny, nx) * voxel))
        ring = near_axis & (np.abs(np.abs(along) - k0) > 1.5 / (max(ny, nx) * voxel)) & (np.abs(np.abs(along) - k0) <= 0.25 * k0)
        out[label] = float(f[peak].max() / np.median(f[ring])) if peak.any() and ring.any() else float("nan")
    return out


def slices_png(before: np.ndarray, after: np.ndarray, path: Path, title: str) -> None:
    """Central slices along z, y and x, before (top) and after (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), gridspec_kw={"width_ratios": [before.shape[2], before.shape[2], before.shape[1]]})
    for row, (label, x) in enumerate((("input", before), ("restored", after))):
        nz, ny, nx = x.shape
        for col, (plane, name) in enumerate(((x[nz // 2], "z (y, x)"), (x[:, ny // 2], "y (z, x)"), (x[:, :, nx // 2], "x (z, y)"))):
            lo, hi = np.percentile(plane, [1, 99])
            axes[row, col].imshow(plane, cmap="gray", vmin=lo, vmax=hi, aspect="equal")
            axes[row, col].set_title(f"{label}: central {name}", fontsize=9)
            axes[row, col].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    from cryoinverse.mrc import read_volume
    from cryoinverse.priors.cryofm import TOMO_WEIGHTS
    from cryoinverse.runner import run_task
    from cryoinverse.specs import load_spec

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("tomo-out"), help="output folder")
    parser.add_argument("--prior", choices=["auto", "cryofm", "gaussian"], default="auto", help="auto: the tomogram prior if shipped, else gaussian")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: 20 learned, 50 gaussian)")
    parser.add_argument("--samples", type=int, default=None, help="posterior samples averaged into the map (default: 4 learned, 1 gaussian)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding 13pf_MT.mrc and 14pf_MT.mrc")
    parser.add_argument("--background", default="0", help="learned prior: the solvent level taken out: a density (0: the crops as they are) or mean")
    args = parser.parse_args()
    prior = ("cryofm" if TOMO_WEIGHTS.exists() else "gaussian") if args.prior == "auto" else args.prior
    steps = args.steps or (20 if prior == "cryofm" else 50)
    samples = args.samples or (4 if prior == "cryofm" else 1)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"prior {prior}, {steps} steps, mean of {samples} samples, missing wedge ±{TILT:g}° about y, noise from background cubes"
          + (f", background {args.background}" if prior == "cryofm" else ""))
    for name in ("13pf_MT", "14pf_MT"):
        source = args.data / f"{name}.mrc"
        task = args.out / f"{name}.toml"
        restored = args.out / f"{name}_restored.mrc"
        task.write_text(task_text(source.resolve(), restored.resolve(), prior, steps, samples, args.background))
        run_task(load_spec(task), overwrite=True)
        before = read_volume(source).data.double().numpy()
        after = read_volume(restored).data.double().numpy()
        voxel = read_volume(source).voxel_size
        slices_png(before, after, args.out / f"{name}_slices.png", f"{name}: {before.shape} voxels at {voxel:g} Å; prior {prior}, {steps} steps, {samples} samples")
        angle = axis_angle(before)
        peaks_in, peaks_out = lattice_peaks(before, voxel, angle), lattice_peaks(after, voxel, angle)
        agreement = ", ".join(f"{band} {c:.2f}" for band, c in measured_agreement(before, after, voxel))
        print(f"{name}: measured agreement {agreement}; power in the wedge {wedge_power(before, voxel):.3f} -> {wedge_power(after, voxel):.3f}; "
              f"axis {angle:.0f}° in (y, x); lattice peaks (power / nearby median) " +
              ", ".join(f"{k} {peaks_in[k]:.1f} -> {peaks_out[k]:.1f}" for k in peaks_in))


if __name__ == "__main__":
    main()
