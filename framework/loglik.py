"""Log-density of a map under a prior: the probability-flow ODE with its divergence (CryoFM app. B.2).

A prior is a velocity field v(x, t) on the path x_t = t x1 + (1 - t) x0, x0 ~ N(0, I) at t = 0,
data at t = 1 (this project's direction, `cryoinverse.flow`). Along a trajectory of dx/dt = v the
continuity equation dp_t/dt + div(p_t v) = 0 gives d/dt log p_t(x_t) = -div v(x_t, t), hence

    log p1(x1) = log N(x0; 0, I) - integral_0^1 div v(x_t, t) dt,

where x0 is found by integrating dx/dt = v backwards from x1 at t = 1 to t = 0. We integrate the
augmented state (x, l) with dl/dt = div v(x_t, t) and l(1) = 0 from t = 1 down to t = 0, so
l(0) = -integral_0^1 div v dt and log p1(x1) = log N(x0; 0, I) + l(0) (FFJORD, Grathwohl et al.
2019, in this project's time direction).

Divergence: exact (the trace of the full Jacobian, one vector-Jacobian product per voxel: tiny
maps and tests only) or Hutchinson's estimator div v = E[e^T (dv/dx) e] with Rademacher or
Gaussian probes e, drawn once per map and kept fixed along the path, so that the result is an
unbiased estimate of log p (its expectation over probes is the exact value up to solver error)
and the right-hand side is a smooth function the adaptive solver can integrate.

Units: a prior's `normalize` maps a density map x to the prior's units z. By the change of
variables log p_x(x) = log p_z(z) + log|det dz/dx|. A prior supplies the second term through an
optional method `log_det_normalize(x) -> (B,)` (a tensor, or a float for every map); without it
the term is 0, which is right for an identity normalisation (the `gaussian` prior). For a per-map
affine normalisation z = (x - a) / b it is -N log b, N the number of voxels (a and b, such as the
CryoFM percentile scale, are treated as constants of the map: the density is that of the map
given its scale). Results are in nats and in bits per voxel, bpv = -log p / (N ln 2); for a
continuous density either may be negative.

`dopri5` is a plain Dormand-Prince 5(4) solver with the step-size control of Hairer, Norsett and
Wanner, Solving ODEs I, sec. II.4 (and their initial-step heuristic); it integrates forwards or
backwards and raises `ODESolverError` with what went wrong and what to change.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import attrs
import torch

from .components import DensityJacobian, FixedBox
from .errors import CryoinverseError, DataError

__all__ = [
    "ODESolverError",
    "OdeSolution",
    "dopri5",
    "divergence_exact",
    "divergence_hutchinson",
    "draw_probes",
    "LogDensity",
    "flow_log_density",
    "log_density",
    "standard_normal_log_density",
]

State = tuple[torch.Tensor, ...]
Rhs = Callable[[float, State], State]

EXACT_MAX_VOXELS = 32**3
"""Largest map for the exact divergence: it costs one backward pass per voxel per evaluation."""


class ODESolverError(CryoinverseError):
    """The adaptive ODE solver could not reach the end time (too many steps, step underflow, NaN)."""


# ---------------------------------------------------------------------------------------------
# Dormand-Prince 5(4)

# Butcher tableau (Dormand & Prince 1980). The 7th stage is evaluated at the new point and is the
# first stage of the next step (FSAL).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4))  # 5th- minus 4th-order weights: the error estimate

_SAFETY, _FAC_MIN, _FAC_MAX = 0.9, 0.2, 10.0


@attrs.frozen
class OdeSolution:
    """The state at the end time and the solver's counts."""

    y: State
    t: float
    nfe: int  # right-hand-side evaluations
    steps: int  # accepted steps
    rejected: int  # rejected steps


def _axpy(y: State, h: float, ks: Sequence[State], coeffs: Sequence[float]) -> State:
    """y + h * sum_j coeffs[j] * ks[j], tensor by tensor (zero coefficients skipped)."""
    out = []
    for i, yi in enumerate(y):
        acc = yi
        for c, k in zip(coeffs, ks):
            if c != 0.0:
                acc = acc + (h * c) * k[i]
        out.append(acc)
    return tuple(out)


def _error_norm(values: State, y0: State, y1: State, rtol: float, atol: float) -> float:
    """max over the state's tensors of the RMS of values / (atol + rtol max(|y0|, |y1|)).

    Per-tensor RMS, then the max, so that a small part of the state (the log-density, B numbers
    beside B N voxels) is controlled as tightly as the large one.
    """
    norms = []
    for v, a, b in zip(values, y0, y1):
        scale = (atol + rtol * torch.maximum(a.abs(), b.abs())).clamp(min=torch.finfo(torch.float64).tiny)  # atol = 0 at y = 0
        norms.append(float((v / scale).to(torch.float64).square().mean().sqrt()))
    return max(norms)


def dopri_step(f: Rhs, t: float, y: State, h: float, k1: State) -> tuple[State, State, State]:
    """One Dormand-Prince step from (t, y) with f(t, y) = k1: (y_new 5th order, error estimate, f(t + h, y_new))."""
    ks = [k1]
    for stage in range(1, 7):
        ks.append(f(t + _C[stage] * h, _axpy(y, h, ks, _A[stage])))
    y_new = _axpy(y, h, ks[:6], _B5[:6])  # equals the 7th stage's argument
    err = tuple(sum((h * e) * k[i] for e, k in zip(_E, ks) if e != 0.0) for i in range(len(y)))
    return y_new, err, ks[6]


def _initial_step(f: Rhs, t0: float, y0: State, f0: State, direction: float, rtol: float, atol: float, span: float) -> tuple[float, int]:
    """Hairer, Norsett & Wanner's starting step (Solving ODEs I, II.4): (|h|, evaluations used)."""
    d0 = _error_norm(y0, y0, y0, rtol, atol)
    d1 = _error_norm(f0, y0, y0, rtol, atol)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(max(h0, 1e-10 * span), span)  # atol = 0 with a zero component makes d1 huge
    y1 = _axpy(y0, direction * h0, [f0], [1.0])
    f1 = f(t0 + direction * h0, y1)
    d2 = _error_norm(tuple(a - b for a, b in zip(f1, f0)), y0, y0, rtol, atol) / h0
    if not math.isfinite(d2):
        return h0, 1
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    return max(min(100 * h0, h1, span), 1e-10 * span), 1  # too small a start costs a few steps of growth


def dopri5(
    f: Rhs,
    y0: State | torch.Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 1000,
    first_step: float | None = None,
) -> OdeSolution:
    """Integrate dy/dt = f(t, y) from t0 to t1 (either direction) with adaptive Dormand-Prince 5(4).

    `y0` is a tensor or a tuple of tensors; `f(t, y)` gets t as a float and y as a tuple and
    returns a tuple of the same shapes. A step is accepted when the RMS of its error estimate,
    scaled by atol + rtol |y|, is at most 1 (per tensor, the max over tensors); the next step is
    h * clip(0.9 err^(-1/5), 0.2, 10), never growing right after a rejection. The result is the
    5th-order solution (local extrapolation). `max_steps` counts accepted and rejected steps.
    """
    if not (rtol > 0 or atol > 0) or rtol < 0 or atol < 0:
        raise ValueError(f"dopri5: rtol and atol must be >= 0 and not both 0; got rtol={rtol}, atol={atol}")
    if max_steps < 1:
        raise ValueError(f"dopri5: max_steps must be >= 1; got {max_steps}")
    y: State = (y0,) if isinstance(y0, torch.Tensor) else tuple(y0)
    if t1 == t0:
        return OdeSolution(y=y, t=t0, nfe=0, steps=0, rejected=0)
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    k1 = f(t0, y)
    nfe = 1
    if not all(bool(torch.isfinite(k).all()) for k in k1):
        raise ODESolverError(f"the right-hand side is not finite at the start t = {t0:g}")
    if first_step is None:
        h_abs, used = _initial_step(f, t0, y, k1, direction, rtol, atol, span)
        nfe += used
    else:
        h_abs = min(abs(first_step), span)
    t = t0
    steps = rejected = 0
    just_rejected = False
    while direction * (t1 - t) > 0:
        if steps + rejected >= max_steps:
            raise ODESolverError(
                f"DOPRI5 did not reach t = {t1:g} within max_steps = {max_steps} steps "
                f"(stopped at t = {t:.6g}, step {h_abs:.3g}; {steps} accepted, {rejected} rejected); "
                "loosen rtol/atol or raise max_steps"
            )
        if h_abs < 16 * math.ulp(max(abs(t), 1.0)):
            raise ODESolverError(
                f"DOPRI5 step size underflow at t = {t:.6g} (step {h_abs:.3g}) with rtol = {rtol:g}, atol = {atol:g}: "
                "the velocity is stiff, singular or not finite there; loosen the tolerances or check the prior"
            )
        last = h_abs >= abs(t1 - t)
        h = (t1 - t) if last else direction * h_abs
        y_new, err, k_new = dopri_step(f, t, y, h, k1)
        nfe += 6
        err_norm = _error_norm(err, y, y_new, rtol, atol)
        if not math.isfinite(err_norm):
            rejected += 1
            just_rejected = True
            h_abs = abs(h) * _FAC_MIN
            continue
        if err_norm <= 1.0:
            t = t1 if last else t + h
            y, k1 = y_new, k_new
            steps += 1
            grow = _FAC_MAX if not just_rejected else 1.0
            just_rejected = False
        else:
            rejected += 1
            just_rejected = True
            grow = 1.0
        factor = _SAFETY * err_norm ** (-1 / 5) if err_norm > 0 else _FAC_MAX
        h_abs = abs(h) * min(grow, max(_FAC_MIN, factor))
    return OdeSolution(y=y, t=t, nfe=nfe, steps=steps, rejected=rejected)


# ---------------------------------------------------------------------------------------------
# Divergence of a velocity field on batches (B, z, y, x)

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


def _not_differentiable(v: torch.Tensor) -> None:
    if not v.requires_grad:
        raise CryoinverseError(
            "the prior's velocity is not differentiable with respect to x_t (does it run under "
            "torch.no_grad or torch.inference_mode?); the divergence needs vector-Jacobian products"
        )


def draw_probes(
    shape: tuple[int, ...], n_probes: int, kind: str = "rademacher", generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Hutchinson probes (n_probes, *shape) on the CPU: Rademacher (+-1) or standard Gaussian."""
    if n_probes < 1:
        raise ValueError(f"n_probes must be >= 1; got {n_probes}")
    if kind == "rademacher":
        bits = torch.randint(0, 2, (n_probes, *shape), generator=generator)
        return (2 * bits - 1).to(dtype)
    if kind == "gaussian":
        return torch.randn((n_probes, *shape), generator=generator, dtype=torch.float64).to(dtype)
    raise ValueError(f"probe kind must be 'rademacher' or 'gaussian'; got {kind!r}")


def divergence_hutchinson(velocity: Velocity, x: torch.Tensor, t: float, probes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, div) with div_b = mean_k e_kb . (e_kb^T dv/dx) (vector-Jacobian products), one value per map.

    `probes` is (n_probes, B, z, y, x); one velocity evaluation, n_probes backward passes.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        v = velocity(xg, t)
        _not_differentiable(v)
        div = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for k, e in enumerate(probes):
            (g,) = torch.autograd.grad(v, xg, e.to(v.dtype), retain_graph=k < len(probes) - 1, allow_unused=True)
            if g is not None:
                div = div + (g * e).reshape(x.shape[0], -1).sum(dim=1).to(torch.float64)
    return v.detach(), div / len(probes)


def divergence_exact(velocity: Velocity, x: torch.Tensor, t: float, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, div) with the exact trace of dv/dx of every map: N vector-Jacobian products per map.

    Each map is replicated `batch` times in one batch and basis vector i is pulled back through
    copy i, so this assumes (as every prior's velocity does) that batch elements do not interact.
    Costs N / batch velocity evaluations of batch `batch` per map; tiny maps only.
    """
    n_voxels = x[0].numel()
    if n_voxels > EXACT_MAX_VOXELS:
        raise CryoinverseError(
            f"the exact divergence needs one backward pass per voxel; {tuple(x.shape[1:])} has {n_voxels} voxels "
            f"(at most {EXACT_MAX_VOXELS}); use the Hutchinson estimator (n_probes)"
        )
    divs, vs = [], []
    for b in range(x.shape[0]):
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for i0 in range(0, n_voxels, batch):
            c = min(batch, n_voxels - i0)
            rows = torch.arange(c, device=x.device)
            with torch.enable_grad():
                xr = x[b : b + 1].detach().expand(c, *x.shape[1:]).clone().requires_grad_(True)
                vr = velocity(xr, t)
                _not_differentiable(vr)
                basis = torch.zeros(c, n_voxels, dtype=vr.dtype, device=x.device)
                basis[rows, i0 + rows] = 1
                (g,) = torch.autograd.grad(vr, xr, basis.reshape(vr.shape), allow_unused=True)
            if g is not None:
                total = total + g.reshape(c, n_voxels)[rows, i0 + rows].sum().to(torch.float64)
            if i0 == 0:
                vs.append(vr[0].detach())
        divs.append(total)
    return torch.stack(vs), torch.stack(divs)


# ---------------------------------------------------------------------------------------------
# Log-density


def standard_normal_log_density(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) of each map of a batch (B, ...), float64."""
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    return -0.5 * flat.square().sum(dim=1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


@attrs.frozen
class LogDensity:
    """log p of each map of a batch (tensors shaped (B,), float64, nats) and how it was obtained.

    log_p = log_p_model + log_det_normalize; log_p_model = log_p_noise - divergence_integral.
    """

    log_p: torch.Tensor  # density units, nats
    log_p_model: torch.Tensor  # the prior's units (after normalize), nats
    log_det_normalize: torch.Tensor  # log|det dz/dx|
    log_p_noise: torch.Tensor  # log N(x0; 0, I) at the end of the backward flow
    divergence_integral: torch.Tensor  # integral_0^1 div v(x_t, t) dt
    noise: torch.Tensor  # x0, the map's image at t = 0 (prior units)
    n_voxels: int
    nfe: int
    steps: int
    rejected: int
    estimator: str  # "exact", "hutchinson-rademacher" or "hutchinson-gaussian"
    n_probes: int | None

    @property
    def bits_per_voxel(self) -> torch.Tensor:
        """-log p / (N ln 2): the negative log-density in bits per voxel."""
        return -self.log_p / (self.n_voxels * math.log(2))

    def summary(self, index: int = 0) -> dict:
        """Plain numbers of map `index` (what `cryoinverse loglik --json` prints)."""
        return {
            "log_p_nats": float(self.log_p[index]),
            "bits_per_voxel": float(self.bits_per_voxel[index]),
            "log_p_prior_units": float(self.log_p_model[index]),
            "log_det_normalize": float(self.log_det_normalize[index]),
            "log_p_noise": float(self.log_p_noise[index]),
            "divergence_integral": float(self.divergence_integral[index]),
            "n_voxels": self.n_voxels,
            "nfe": self.nfe,
            "steps": self.steps,
            "rejected": self.rejected,
            "estimator": self.estimator,
            "n_probes": self.n_probes,
        }


def flow_log_density(
    velocity: Velocity,
    z: torch.Tensor,
    *,
    exact: bool = False,
    n_probes: int = 1,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 1000,
    exact_batch: int = 512,
) -> LogDensity:
    """log p1(z) of a batch (B, z, y, x) under the flow of `velocity`, in the velocity's units.

    Integrates (x, l) from t = 1 (x = z, l = 0) to t = 0 with dx/dt = v(x, t), dl/dt = div v,
    so that log p1(z) = log N(x0; 0, I) + l(0). The state keeps z's dtype (use float64 for
    accuracy); the divergence accumulates in float64.
    """
    if z.ndim < 2:
        raise ValueError(f"z must be a batch (B, ...); got shape {tuple(z.shape)}")
    batch = z.shape[0]
    if exact:
        estimator, k = "exact", None

        def divergence(x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
            return divergence_exact(velocity, x, t, exact_batch)

    else:
        probes = draw_probes(tuple(z.shape), n_probes, probe, generator, z.dtype).to(z.device)
        estimator, k = f"hutchinson-{probe}", n_probes

        def divergence(x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
            return divergence_hutchinson(velocity, x, t, probes)

    def rhs(t: float, state: State) -> State:
        v, div = divergence(state[0], t)
        return v.to(state[0].dtype), div

    ell0 = torch.zeros(batch, dtype=torch.float64, device=z.device)
    with torch.no_grad():
        sol = dopri5(rhs, (z.detach(), ell0), 1.0, 0.0, rtol=rtol, atol=atol, max_steps=max_steps)
    x0, ell = sol.y
    log_noise = standard_normal_log_density(x0)
    log_model = log_noise + ell
    zeros = torch.zeros_like(log_model)
    return LogDensity(
        log_p=log_model,
        log_p_model=log_model,
        log_det_normalize=zeros,
        log_p_noise=log_noise,
        divergence_integral=-ell,
        noise=x0,
        n_voxels=z[0].numel(),
        nfe=sol.nfe,
        steps=sol.steps,
        rejected=sol.rejected,
        estimator=estimator,
        n_probes=k,
    )


MIN_LOGLIK_EDGE = 4  # voxels: a spectrum and a flow need a few shells (a 1^3 map has one coefficient)


def _log_det_normalize(prior, x: torch.Tensor) -> torch.Tensor:
    value = prior.log_det_normalize(x) if isinstance(prior, DensityJacobian) else 0.0
    value = torch.as_tensor(value, dtype=torch.float64, device=x.device)
    return value.reshape(-1).expand(x.shape[0]).clone() if value.numel() == 1 else value.reshape(x.shape[0])


def log_density(
    prior,
    x: torch.Tensor,
    *,
    exact: bool = False,
    n_probes: int = 1,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 1000,
    dtype: torch.dtype = torch.float64,
    exact_batch: int = 512,
) -> LogDensity:
    """log p(x) of density maps x, (z, y, x) or (B, z, y, x), under a prepared prior (nats, per map).

    The maps go through `prior.normalize`, the flow runs in the prior's units in `dtype`, and
    `prior.log_det_normalize(x)` (0 when the prior has none) converts back to density units.
    """
    batch = x if x.ndim == 4 else x.unsqueeze(0)
    if batch.ndim != 4:
        raise DataError(f"log_density needs maps (z, y, x) or batches (B, z, y, x); got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(batch).all()):
        raise DataError("the map holds NaN or infinite values")
    box = prior.box if isinstance(prior, FixedBox) else None
    if box is not None and tuple(batch.shape[1:]) != (box,) * 3:
        raise DataError(
            f"prior {getattr(prior, 'name', type(prior).__name__)!r} works on {box}^3 boxes; the map is "
            f"{tuple(batch.shape[1:])}: crop, pad or resample it first"
        )
    with torch.no_grad():
        z = prior.normalize(batch).to(dtype)
        log_det = _log_det_normalize(prior, batch)
    flow = flow_log_density(
        prior.velocity,
        z,
        exact=exact,
        n_probes=n_probes,
        probe=probe,
        generator=generator,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        exact_batch=exact_batch,
    )
    return attrs.evolve(flow, log_p=flow.log_p_model + log_det, log_det_normalize=log_det)
