"""A conformance kit for components: the checks cryoinverse runs on its own, for plugin authors too.

In the spirit of scikit-learn's `check_estimator`: `check_prior(prior)`, `check_operator(op)`,
`check_sampler(sampler)` and `check_poser(poser)` take an instance (configured as a task spec
would configure it) and run every check of its kind; each check is a small named function that
states the law it tests, and a failure raises `AssertionError` naming the check. In a plugin's
tests:

    from cryoinverse.testing import check_operator
    def test_my_operator_conforms():
        check_operator(MyOperator(noise_variance=0.1))

`operator_checks(op)` (and `prior_checks`, `sampler_checks`) list (name, check) pairs for
parametrising a test suite check by check. Sizes are small (16^3 unless a prior fixes its box),
so the kit runs in seconds for analytic components.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable

import attrs
import torch

from .components import GaussianConditional, Likelihood, Observation, PrepareContext
from .fourier import compact_shape, fftn, nyquist, shell_average

__all__ = ["check_prior", "check_operator", "check_sampler", "check_poser", "prior_checks", "operator_checks", "sampler_checks", "sample_density"]

Check = Callable[[Any], None]
NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def sample_density(n: int = 16, batch: int = 1, seed: int = 0, voxel_size: float = 1.5) -> torch.Tensor:
    """A protein-like test density (B, n, n, n): smooth positive blobs near the centre, float32."""
    return _sample_density(n, batch, seed).clone()  # the kit asks for the same maps many times; callers may edit theirs


@functools.lru_cache(maxsize=8)
def _sample_density(n: int, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64)] * 3, indexing="ij"))
    out = torch.zeros(batch, n, n, n, dtype=torch.float64)
    for b in range(batch):
        for _ in range(6 * n):
            centre = n / 2 + torch.randn(3, 1, 1, 1, generator=g, dtype=torch.float64) * n / 8
            out[b] += torch.exp(-((grid - centre) ** 2).sum(0) / (2 * 1.3**2))
    return (out / out.amax(dim=(1, 2, 3), keepdim=True)).to(torch.float32)


def _context(component: Any, n: int, observation: torch.Tensor | None = None, operators: list | None = None) -> PrepareContext:
    from .volume import Volume

    vol = None if observation is None else Volume(observation, getattr(component, "voxel_size", None) or 1.5)
    return PrepareContext((n, n, n), getattr(component, "voxel_size", None) or 1.5, torch.device("cpu"), vol, operators or [])


def _prepare(component: Any, ctx: PrepareContext) -> None:
    prepare = getattr(component, "prepare", None)
    if prepare is not None:
        prepare(ctx)


def _run(checks: list[tuple[str, Check]], component: Any) -> None:
    for name, check in checks:
        try:
            check(component)
        except AssertionError as exc:
            raise AssertionError(f"{type(component).__name__} fails {name}: {exc}") from None


# -- every component ------------------------------------------------------------------------------


def check_name_and_fields(component: Any) -> None:
    """A kebab-case `name` ClassVar; an attrs class whose every init field has help text and round-trips through its table."""
    cls = type(component)
    name = getattr(cls, "name", None)
    assert isinstance(name, str) and NAME.match(name), f"name must be a kebab-case string ClassVar; got {name!r}"
    assert attrs.has(cls), "components are attrs classes (their fields are the spec's fields)"
    fields = [f for f in attrs.fields(cls) if f.init and not f.name.startswith("_")]
    undocumented = [f.name for f in fields if not f.metadata.get("help")]
    assert not undocumented, f"fields without help (use cryoinverse.params.param): {', '.join(undocumented)}"
    table = {f.name: getattr(component, f.name) for f in fields}
    again = cls(**table)
    for f in fields:
        assert getattr(again, f.name) == table[f.name] or not _comparable(table[f.name]), f"field {f.name} does not round-trip"


def _comparable(value: Any) -> bool:
    return not isinstance(value, torch.Tensor)


# -- operators ------------------------------------------------------------------------------------


def _op_setup(op: Any, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    _prepare(op, _context(op, n, operators=[op]))
    x = sample_density(n, batch=2, seed=1)
    return x, op.forward(x)


def check_operator_shapes(op: Any) -> None:
    """forward, simulate and log_likelihood work on a batch: A x keeps the batch, y looks like A x, one log p per map."""
    x, ax = _op_setup(op)
    assert ax.shape[0] == 2 and torch.isfinite(ax).all(), f"forward of a batch of 2 gave shape {tuple(ax.shape)} (finite: {bool(torch.isfinite(ax).all())})"
    y = op.simulate(x[:1], torch.Generator().manual_seed(0))
    assert y.shape == ax[:1].shape, f"simulate gave {tuple(y.shape)}, forward {tuple(ax[:1].shape)}"
    ll = op.log_likelihood(x, y.expand_as(ax) if y.shape[0] == 1 else y)
    assert ll.shape == (2,) and torch.isfinite(ll).all(), f"log_likelihood must give one finite value per map; got shape {tuple(ll.shape)}"


def check_log_likelihood_gradient(op: Any) -> None:
    """log_likelihood is differentiable in x and its gradient matches central finite differences."""
    x, _ = _op_setup(op)
    x = x[:1].double()
    y = op.simulate(x.float(), torch.Generator().manual_seed(2)).double()
    x = x.requires_grad_(True)
    (grad,) = torch.autograd.grad(op.log_likelihood(x, y).sum(), x)
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps = 1e-4 * float(x.detach().abs().max())
    with torch.no_grad():
        plus = op.log_likelihood(x + eps * direction, y).sum()
        minus = op.log_likelihood(x - eps * direction, y).sum()
    numeric = float((plus - minus) / (2 * eps))
    analytic = float((grad * direction).sum())
    assert math.isclose(analytic, numeric, rel_tol=2e-3, abs_tol=1e-6 * max(1.0, abs(numeric))), f"gradient {analytic:.6g} vs finite differences {numeric:.6g}"


def check_operator_is_linear(op: Any) -> None:
    """A (a x1 + b x2) = a A x1 + b A x2."""
    x, ax = _op_setup(op)
    mixed = op.forward(0.7 * x[:1] - 1.3 * x[1:])
    want = 0.7 * ax[:1] - 1.3 * ax[1:]
    err = float((mixed - want).abs().max()) / max(float(want.abs().max()), 1e-30)
    assert err < 1e-4, f"not linear: relative error {err:.2e}"


def check_simulate_noise_matches_likelihood(op: Any) -> None:
    """y - A x from `simulate` has mean 0 and, for Fourier-diagonal operators, power N per coefficient as `fourier_diagonal` says."""
    x, ax = _op_setup(op)
    g = torch.Generator().manual_seed(4)
    residuals = torch.stack([op.simulate(x[:1], g)[0] - ax[0] for _ in range(8)]).double()
    spread = float(residuals.std())
    if spread == 0:
        return  # a noise-free operator
    mean = float(residuals.mean())
    assert abs(mean) < 6 * spread / math.sqrt(residuals.numel()), f"noise mean {mean:.3g} is not 0 (std {spread:.3g})"
    diag = getattr(op, "fourier_diagonal", None)
    if diag is None:
        return
    shape = tuple(x.shape[-3:])
    a, noise = diag(compact_shape(shape))
    observed = (a != 0) & (noise > 0)
    whitened = torch.where(observed, fftn(residuals).abs().square().mean(0) / noise.clamp(min=1e-300), torch.zeros_like(noise))
    ratio = shell_average(whitened) / shell_average(observed.to(noise.dtype)).clamp(min=1e-12)
    top = nyquist(shape) + 1
    ratio = ratio[2:top][shell_average(observed.to(noise.dtype))[2:top] > 0]  # shells 2..Nyquist
    assert float((ratio - 1).abs().max()) < 0.3, f"|F(y - A x)|^2 / N per shell (should be 1): {float(ratio.min()):.2f}..{float(ratio.max()):.2f}"


def check_fourier_diagonal_agrees_with_forward(op: Any) -> None:
    """F(A x) = a F(x) for (a, N) = fourier_diagonal(n), with N >= 0."""
    diag = getattr(op, "fourier_diagonal", None)
    if diag is None:
        return
    x, ax = _op_setup(op)
    a, noise = diag(compact_shape(x.shape[-3:]))
    assert bool((noise >= 0).all()), "noise power must be >= 0"
    want = a.to(torch.complex128) * fftn(x.double())
    err = float((fftn(ax.double()) - want).abs().max()) / float(want.abs().max())
    assert err < 1e-4, f"F(A x) differs from a F(x) by {err:.2e} (relative)"


def check_pseudo_inverse(op: Any) -> None:
    """A pseudo_inverse(x, y) = y for an observation y = A x' (the observed part is replaced by y's)."""
    pinv = getattr(op, "pseudo_inverse", None)
    if pinv is None:
        return
    x, ax = _op_setup(op)
    out = op.forward(pinv(x[:1], ax[1:]))
    err = float((out - ax[1:]).abs().max()) / max(float(ax[1:].abs().max()), 1e-30)
    assert err < 1e-4, f"A P(x, y) differs from y by {err:.2e} (relative)"


NON_CUBIC = (12, 16, 9)
"""(z, y, x) of the non-cubic maps `check_non_cubic_maps` uses: unequal edges, one of them odd."""


def check_non_cubic_maps(op: Any) -> None:
    """An operator that observes maps works on non-cubic boxes (z, y, x), as tomogram crops are: forward,
    simulate and log_likelihood keep the shape, and fourier_diagonal((z, y, x)) agrees with forward."""
    if getattr(op, "observes", "volume") != "volume":
        return  # it observes images of a cubic map (projection)
    _prepare(op, PrepareContext(NON_CUBIC, getattr(op, "voxel_size", None) or 1.5, torch.device("cpu"), None, [op]))
    nz, ny, nx = NON_CUBIC
    x = sample_density(max(NON_CUBIC), batch=2, seed=1)[:, :nz, :ny, :nx].contiguous()
    ax = op.forward(x)
    assert ax.shape == x.shape and torch.isfinite(ax).all(), f"forward of a {tuple(x.shape)} batch gave {tuple(ax.shape)}"
    y = op.simulate(x[:1], torch.Generator().manual_seed(0))
    assert y.shape == x[:1].shape, f"simulate of a {tuple(x[:1].shape)} map gave {tuple(y.shape)}"
    ll = op.log_likelihood(x, y.expand_as(x))
    assert ll.shape == (2,) and torch.isfinite(ll).all(), f"log_likelihood of non-cubic maps: shape {tuple(ll.shape)}"
    diag = getattr(op, "fourier_diagonal", None)
    if diag is None:
        return
    a, noise = diag(NON_CUBIC)
    assert tuple(a.shape) == tuple(noise.shape) == NON_CUBIC, f"fourier_diagonal({NON_CUBIC}) gave shapes {tuple(a.shape)}, {tuple(noise.shape)}"
    want = a.to(torch.complex128) * fftn(x.double())
    err = float((fftn(ax.double()) - want).abs().max()) / float(want.abs().max())
    assert err < 1e-4, f"on a {NON_CUBIC} box F(A x) differs from a F(x) by {err:.2e} (relative)"


def operator_checks(op: Any, linear: bool = True, non_cubic: bool = True) -> list[tuple[str, Check]]:
    """The (name, check) pairs for an operator; `linear = False` skips the linearity law, `non_cubic = False`
    the check on non-cubic maps (for an operator that only works on cubes)."""
    checks = [
        ("check_name_and_fields", check_name_and_fields),
        ("check_operator_shapes", check_operator_shapes),
        ("check_log_likelihood_gradient", check_log_likelihood_gradient),
        ("check_simulate_noise_matches_likelihood", check_simulate_noise_matches_likelihood),
        ("check_fourier_diagonal_agrees_with_forward", check_fourier_diagonal_agrees_with_forward),
        ("check_pseudo_inverse", check_pseudo_inverse),
    ]
    if linear:
        checks.insert(3, ("check_operator_is_linear", check_operator_is_linear))
    if non_cubic:
        checks.append(("check_non_cubic_maps", check_non_cubic_maps))
    return checks


def check_operator(op: Any, linear: bool = True, non_cubic: bool = True) -> None:
    """Run every operator check on `op` (an instance configured as a task would configure it)."""
    _run(operator_checks(op, linear, non_cubic), op)


# -- priors ---------------------------------------------------------------------------------------


def _prior_box(prior: Any) -> int:
    return getattr(prior, "box", None) or 16


def _prior_setup(prior: Any) -> torch.Tensor:
    n = _prior_box(prior)
    clean = sample_density(n, batch=1, seed=5)
    _prepare(prior, _context(prior, n, observation=clean[0]))
    return clean


def check_velocity(prior: Any) -> None:
    """velocity on a batch (B, n, n, n) keeps shape and dtype and is finite for t in [0, 1)."""
    clean = _prior_setup(prior)
    x = torch.randn((2, *clean.shape[1:]), generator=torch.Generator().manual_seed(6))
    for t in (0.0, 0.5, 0.95):
        v = prior.velocity(x, t)
        assert v.shape == x.shape and v.dtype == x.dtype, f"velocity at t = {t}: shape {tuple(v.shape)} dtype {v.dtype}"
        assert torch.isfinite(v).all(), f"velocity at t = {t} is not finite"


def check_velocity_is_differentiable(prior: Any) -> None:
    """Gradients flow through velocity to x_t (CryoFM guidance needs them)."""
    clean = _prior_setup(prior)
    x = torch.randn((1, *clean.shape[1:]), generator=torch.Generator().manual_seed(7)).requires_grad_(True)
    (g,) = torch.autograd.grad(prior.velocity(x, 0.5).square().sum(), x)
    assert torch.isfinite(g).all() and float(g.abs().sum()) > 0, "no finite, non-zero gradient through velocity"


def check_normalization(prior: Any) -> None:
    """denormalize inverts normalize on non-negative densities, and denormalize is affine."""
    clean = _prior_setup(prior)
    back = prior.denormalize(prior.normalize(clean))
    err = float((back - clean).abs().max()) / float(clean.abs().max())
    assert err < 1e-4, f"denormalize(normalize(x)) differs from x by {err:.2e} (relative)"
    z1, z2 = torch.randn((2, 1, *clean.shape[1:]), generator=torch.Generator().manual_seed(8))
    mixed = prior.denormalize(0.3 * z1 + 0.7 * z2)
    want = 0.3 * prior.denormalize(z1) + 0.7 * prior.denormalize(z2)
    err = float((mixed - want).abs().max()) / max(float(want.abs().max()), 1e-30)
    assert err < 1e-4, f"denormalize is not affine (relative error {err:.2e}); Wiener guidance needs it affine"


def check_data_stays_data(prior: Any) -> None:
    """Near t = 1 the data estimate x_t + (1 - t) v of a prior sample is that sample (the flow ends at data)."""
    from .flow import data_estimate, euler_times

    clean = _prior_setup(prior)
    steps = 20
    x = torch.randn((1, *clean.shape[1:]), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        for t in euler_times(steps):
            x = x + prior.velocity(x, t) / steps
        t = 0.98
        x_t = t * x + (1 - t) * torch.randn(x.shape, generator=torch.Generator().manual_seed(10))
        x1_hat = data_estimate(x_t, prior.velocity(x_t, t), t)
    err = float((x1_hat - x).square().mean().sqrt()) / float(x.square().mean().sqrt())
    assert err < 0.25, f"at t = 0.98 the data estimate of a prior sample is {err:.2f} (relative RMS) from it"


def check_conditional(prior: Any) -> None:
    """Where a prior has `conditional`, its mean has the batch's shape and its variance is finite and >= 0."""
    conditional = getattr(prior, "conditional", None)
    if conditional is None:
        return
    clean = _prior_setup(prior)
    x = torch.randn((2, *clean.shape[1:]), generator=torch.Generator().manual_seed(11))
    c = conditional(x, 0.5)
    assert isinstance(c, GaussianConditional), "conditional returns a GaussianConditional"
    assert c.mean.shape == x.shape, f"conditional mean shape {tuple(c.mean.shape)}"
    assert torch.isfinite(c.var).all() and bool((c.var >= 0).all()), "conditional variance must be finite and >= 0"


def prior_checks(prior: Any) -> list[tuple[str, Check]]:
    """The (name, check) pairs for a prior."""
    return [
        ("check_name_and_fields", check_name_and_fields),
        ("check_velocity", check_velocity),
        ("check_velocity_is_differentiable", check_velocity_is_differentiable),
        ("check_normalization", check_normalization),
        ("check_data_stays_data", check_data_stays_data),
        ("check_conditional", check_conditional),
    ]


def check_prior(prior: Any) -> None:
    """Run every prior check on `prior`."""
    _run(prior_checks(prior), prior)


# -- samplers -------------------------------------------------------------------------------------


def _sampler_problem(n: int = 12):
    """A gaussian prior, a noisy missing-wedge observation of a map, and initial noise (2 samples)."""
    from cryoinverse.operators.missing_wedge import MissingWedge
    from cryoinverse.priors.gaussian import GaussianPrior

    from .spectra import radial_power

    clean = sample_density(n, batch=1, seed=12)[0]
    prior = GaussianPrior(power=radial_power(clean).clamp(min=1e-8).tolist())
    op = MissingWedge(tilt_min=-60.0, tilt_max=60.0, noise_variance=1e-3)
    y = op.simulate(clean[None], torch.Generator().manual_seed(13))[0]
    init = torch.randn((2, n, n, n), generator=torch.Generator().manual_seed(14))
    return prior, Likelihood([Observation(op, y)]), init


def _pose_problem(n: int = 12, count: int = 8):
    """A gaussian prior, `count` projections of a map at random poses (held by the operator) and initial noise."""
    from cryoinverse.operators.projection import Projection
    from cryoinverse.priors.gaussian import GaussianPrior
    from cryoinverse.rotations import random_rotations

    from .spectra import radial_power

    clean = sample_density(n, batch=1, seed=12)[0]
    prior = GaussianPrior(power=radial_power(clean).clamp(min=1e-8).tolist())
    op = Projection.from_poses(random_rotations(count, torch.Generator().manual_seed(15)), noise_variance=1e-3)
    y = op.simulate(clean, torch.Generator().manual_seed(13))
    op = Projection.from_poses(op.rotations, noise_variance=1e-3, images=y)
    init = torch.randn((2, n, n, n), generator=torch.Generator().manual_seed(14))
    return prior, Likelihood([Observation(op, y)]), init


def check_sampler_run(sampler: Any) -> None:
    """run returns density maps of the init's shape, finite, calls progress once per step, and is deterministic.

    A sampler with `searches_poses` runs on particle images (`projection`), others on a missing-wedge map.
    """
    prior, likelihood, init = _pose_problem() if getattr(sampler, "searches_poses", False) else _sampler_problem()
    calls = []
    out = sampler.run(prior, likelihood, init.clone(), generator=torch.Generator().manual_seed(0), progress=calls.append)
    assert out.shape == init.shape and torch.isfinite(out).all(), f"run gave shape {tuple(out.shape)} (finite: {bool(torch.isfinite(out).all())})"
    steps = getattr(sampler, "steps", None)
    if steps is not None:
        assert sum(calls) == steps, f"progress reported {sum(calls)} steps of {steps}"
    again = sampler.run(prior, likelihood, init.clone(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again), "two runs from the same init and seed differ"


def sampler_checks(sampler: Any) -> list[tuple[str, Check]]:
    """The (name, check) pairs for a sampler."""
    return [("check_name_and_fields", check_name_and_fields), ("check_sampler_run", check_sampler_run)]


def check_sampler(sampler: Any) -> None:
    """Run every sampler check on `sampler` (with the gaussian prior and spectral noise on 12^3 maps)."""
    _run(sampler_checks(sampler), sampler)


def check_estimate_exists(poser: Any) -> None:
    """A pose model has estimate(images, volume, pixel_size, ctf=None, init=None)."""
    assert callable(getattr(poser, "estimate", None)), "posers need estimate(images, volume, pixel_size, ctf=None, init=None) -> Poses"


def check_poser(poser: Any) -> None:
    """A pose model: a kebab-case name, documented fields, and `estimate`."""
    _run([("check_name_and_fields", check_name_and_fields), ("check_estimate_exists", check_estimate_exists)], poser)
