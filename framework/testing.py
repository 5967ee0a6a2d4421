"""A conformance kit for components: the checks cryoinverse runs on its own, for plugin authors too.

In the spirit of scikit-learn's `check_estimator`: each check is a small named function that
states the law it tests and raises `AssertionError` when the law is broken. Which checks a
component gets follows from its kind and its capabilities (`cryoinverse.components`:
`isinstance(op, FourierDiagonal)` adds `check_fourier_diagonal_agrees_with_forward`, and so on),
never from flags. Sizes are small (16^3-24^3 unless a prior fixes its box), so the kit runs in
seconds for analytic components.

One test per check, with pytest (scikit-learn's `parametrize_with_checks`):

    from cryoinverse.testing import parametrize_with_checks

    @parametrize_with_checks([MyOperator(noise_variance=0.1), MyPoser()])
    def test_conforms(component, check):
        check(component)

gives tests such as `test_conforms[MyPoser-check_poses_have_the_right_shapes]`. Or every check of
one component in one call: `check_operator(op)`, `check_prior(prior)`, `check_sampler(sampler)`,
`check_poser(poser)`, which raise `AssertionError` naming the component and the first check it
fails. `operator_checks(op)` (and `prior_checks`, `sampler_checks`, `poser_checks`) list the
(name, check) pairs a component gets.

A check that cannot hold for a component is listed with the reason, as scikit-learn's
`expected_failed_checks`:

    NOT_LINEAR = {"check_operator_is_linear": "y = |x| + n"}

    @parametrize_with_checks([AbsNoise(noise_variance=0.1)], expected_failures=NOT_LINEAR)
    def test_conforms(component, check):
        check(component)

    def test_conforms_in_one_call():
        check_operator(AbsNoise(noise_variance=0.1), expected_failures=NOT_LINEAR)

A listed check still runs: its failure is passed over (reported as xfail with the reason under
pytest), and a listed check that passes is an error ("check_operator_is_linear passed; remove it
from expected_failures"), as is a name that is not one of the component's checks. With several
components, `expected_failures` is a mapping used for every component it names checks of, or a
function of the component that returns one.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import math
import re
from typing import Any, Callable, Iterable, Mapping

import attrs
import torch

from . import components
from .components import GaussianConditional, Likelihood, Observation, PrepareContext, call_prepare
from .fourier import compact_shape, fftn, nyquist, shell_average
from .rotations import geodesic_distance, random_rotations

__all__ = [
    "check_prior", "check_operator", "check_sampler", "check_poser",
    "prior_checks", "operator_checks", "sampler_checks", "poser_checks",
    "parametrize_with_checks", "sample_density",
]

Check = Callable[[Any], None]
ExpectedFailures = Mapping[str, str]
"""Check name -> why the check cannot hold for the component."""
NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
KINDS = {"prior": components.Prior, "operator": components.Operator, "sampler": components.Sampler, "poser": components.Poser}


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

    voxel_size = (component.voxel_size if isinstance(component, components.FixedVoxelSize) else None) or 1.5
    vol = None if observation is None else Volume(observation, voxel_size)
    return PrepareContext((n, n, n), voxel_size, torch.device("cpu"), vol, operators or [])


def _kind(component: Any) -> str:
    """The component's kind: the first protocol of `KINDS` it meets."""
    for kind, protocol in KINDS.items():
        if isinstance(component, protocol):
            return kind
    raise TypeError(
        f"{type(component).__name__} is not a prior, operator, sampler or poser: it lacks the members of every protocol in "
        "cryoinverse.components (Prior: name, velocity, normalize, denormalize; Operator: name, forward, log_likelihood, simulate; "
        "Sampler: name, run; Poser: name, estimate)"
    )


def _checks(component: Any) -> list[tuple[str, Check]]:
    return {"prior": prior_checks, "operator": operator_checks, "sampler": sampler_checks, "poser": poser_checks}[_kind(component)](component)


def _chosen(component: Any, checks: Iterable[Check], by_capability: Mapping[type, Iterable[Check]]) -> list[tuple[str, Check]]:
    """(name, check) pairs: those of every component, `checks`, then those of each capability in `by_capability` that `component` has."""
    chosen = [check_name_and_fields, check_capabilities, *checks]
    for capability, extra in by_capability.items():
        if isinstance(component, capability):
            chosen.extend(extra)
    return [(check.__name__, check) for check in chosen]


def _expected(component: Any, checks: list[tuple[str, Check]], expected_failures: ExpectedFailures | None) -> dict[str, str]:
    """`expected_failures`, each name checked to be one of `checks`."""
    expected = dict(expected_failures or {})
    names = [name for name, _ in checks]
    unknown = [name for name in expected if name not in names]
    if unknown:
        raise ValueError(
            f"expected_failures names {', '.join(unknown)}, not a check of {type(component).__name__} "
            f"(its checks, chosen by its kind and capabilities: {', '.join(names)})"
        )
    return expected


def _passed(name: str, reason: str) -> str:
    return f"{name} passed; remove it from expected_failures (it says: {reason})"


def _run(checks: list[tuple[str, Check]], component: Any, expected_failures: ExpectedFailures | None = None) -> None:
    expected = _expected(component, checks, expected_failures)
    who = type(component).__name__
    for name, check in checks:
        try:
            check(component)
        except AssertionError as exc:
            if name in expected:
                continue
            raise AssertionError(f"{who} fails {name}: {exc}") from None
        except Exception as exc:
            if name in expected:
                continue
            raise AssertionError(f"{who} fails {name}: {type(exc).__name__}: {exc}") from exc
        else:
            if name in expected:
                raise AssertionError(f"{who}: {_passed(name, expected[name])}")


def _expected_to_fail(check: Check, name: str, reason: str) -> Check:
    """`check` as a pytest test of a listed check: its failure is an xfail with `reason`; passing is an error."""

    @functools.wraps(check)
    def run(component: Any) -> None:
        import pytest

        try:
            check(component)
        except Exception:
            pytest.xfail(reason)
        raise AssertionError(_passed(name, reason))

    return run


def parametrize_with_checks(
    instances: Iterable[Any], expected_failures: ExpectedFailures | Callable[[Any], ExpectedFailures] | None = None
):
    """A `pytest.mark.parametrize` over (component, check) pairs: every check of every component, one test each.

    The test takes arguments `component` and `check` and calls `check(component)`; ids read
    `<class>-<check>` (`Search-check_poses_have_the_right_shapes`). `expected_failures` is one
    mapping (check name -> reason) used for every component it names checks of, or a function of
    the component returning its mapping; a listed check that fails is reported as xfail with the
    reason, one that passes fails its test. Checks are chosen when the decorator is built, from
    each component's kind and capabilities.
    """
    import pytest

    params, listed = [], set()
    for component in instances:
        checks = _checks(component)
        if callable(expected_failures):
            expected = _expected(component, checks, expected_failures(component))
        else:
            names = {name for name, _ in checks}
            expected = {name: why for name, why in (expected_failures or {}).items() if name in names}
        listed |= set(expected)
        for name, check in checks:
            if name in expected:
                check = _expected_to_fail(check, name, expected[name])
            params.append(pytest.param(component, check, id=f"{type(component).__name__}-{name}"))
    if not callable(expected_failures):
        unknown = [name for name in expected_failures or {} if name not in listed]
        if unknown:
            raise ValueError(f"expected_failures names {', '.join(unknown)}, not a check of any of the components")
    return pytest.mark.parametrize("component, check", params)


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


def _members(capability: type) -> tuple[list[str], list[str]]:
    """(methods and properties, other annotated members) of a capability protocol."""
    behaviour = [n for n in vars(capability) if not n.startswith("_") and _is_method(capability, n)]
    data = [n for n in inspect.get_annotations(capability) if not n.startswith("_") and n not in behaviour]
    return behaviour, data


def _is_method(cls: type, name: str) -> bool:
    """Whether `name` is a method or property of `cls` (looked up without running it)."""
    member = inspect.getattr_static(cls, name, None)
    return inspect.isfunction(member) or isinstance(member, (property, classmethod, staticmethod))


def check_capabilities(component: Any) -> None:
    """Each optional capability of the component's kind (`cryoinverse.components.CAPABILITIES`) is there
    whole or not at all: with one of its methods the component has every member, and no public method
    is a near miss of a capability's (`fourier_diagonals` for `fourier_diagonal`), which the runner
    would never call."""
    kind = _kind(component)
    capabilities = components.CAPABILITIES[kind]
    methods = sorted({m for c in capabilities for m in _members(c)[0]})
    known = set(methods) | {m for c in capabilities for m in _members(c)[1]} | {m for m in dir(KINDS[kind]) if not m.startswith("_")}
    problems = []
    for capability in capabilities:
        behaviour, data = _members(capability)
        # getattr_static: a property is not run, and a method set to None (opted out) counts as absent
        present = [m for m in behaviour if inspect.getattr_static(component, m, None) is not None]
        if present and not isinstance(component, capability):
            missing = [m for m in behaviour if m not in present] + [m for m in data if not hasattr(component, m)]
            problems.append(f"{capability.__name__} needs {', '.join(behaviour + data)}: has {', '.join(present)} but not {', '.join(missing)}")
    for name in sorted(n for n in dir(type(component)) if not n.startswith("_") and n not in known and _is_method(type(component), n)):
        close = difflib.get_close_matches(name, methods, n=1, cutoff=0.85)
        if close:
            owner = next(c.__name__ for c in capabilities if close[0] in _members(c)[0])
            problems.append(f"{name} looks like {owner}'s {close[0]}, the name cryoinverse looks up")
    assert not problems, "; ".join(problems)


# -- operators ------------------------------------------------------------------------------------


def _op_setup(op: Any, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    call_prepare(op, _context(op, n, operators=[op]))
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
    if not isinstance(op, components.FourierDiagonal):
        return
    shape = tuple(x.shape[-3:])
    a, noise = op.fourier_diagonal(compact_shape(shape))
    observed = (a != 0) & (noise > 0)
    whitened = torch.where(observed, fftn(residuals).abs().square().mean(0) / noise.clamp(min=1e-300), torch.zeros_like(noise))
    ratio = shell_average(whitened) / shell_average(observed.to(noise.dtype)).clamp(min=1e-12)
    top = nyquist(shape) + 1
    ratio = ratio[2:top][shell_average(observed.to(noise.dtype))[2:top] > 0]  # shells 2..Nyquist
    assert float((ratio - 1).abs().max()) < 0.3, f"|F(y - A x)|^2 / N per shell (should be 1): {float(ratio.min()):.2f}..{float(ratio.max()):.2f}"


def check_fourier_diagonal_agrees_with_forward(op: Any) -> None:
    """A `FourierDiagonal` operator: F(A x) = a F(x) for (a, N) = fourier_diagonal(n), with N >= 0."""
    assert isinstance(op, components.FourierDiagonal), "not a FourierDiagonal operator (no fourier_diagonal(shape))"
    x, ax = _op_setup(op)
    a, noise = op.fourier_diagonal(compact_shape(x.shape[-3:]))
    assert bool((noise >= 0).all()), "noise power must be >= 0"
    want = a.to(torch.complex128) * fftn(x.double())
    err = float((fftn(ax.double()) - want).abs().max()) / float(want.abs().max())
    assert err < 1e-4, f"F(A x) differs from a F(x) by {err:.2e} (relative)"


def check_pseudo_inverse(op: Any) -> None:
    """A `PseudoInverse` operator: A pseudo_inverse(x, y) = y for an observation y = A x' (the observed part is replaced by y's)."""
    assert isinstance(op, components.PseudoInverse), "not a PseudoInverse operator (no pseudo_inverse(x, y))"
    x, ax = _op_setup(op)
    out = op.forward(op.pseudo_inverse(x[:1], ax[1:]))
    err = float((out - ax[1:]).abs().max()) / max(float(ax[1:].abs().max()), 1e-30)
    assert err < 1e-4, f"A P(x, y) differs from y by {err:.2e} (relative)"


NON_CUBIC = (12, 16, 9)
"""(z, y, x) of the non-cubic maps `check_non_cubic_maps` uses: unequal edges, one of them odd."""


def check_non_cubic_maps(op: Any) -> None:
    """An operator that observes maps works on non-cubic boxes (z, y, x), as tomogram crops are: forward,
    simulate and log_likelihood keep the shape, and fourier_diagonal((z, y, x)) agrees with forward."""
    assert _observes_maps(op), f"observes {op.observes}, not maps: the maps it sees are cubic"
    call_prepare(op, PrepareContext(NON_CUBIC, getattr(op, "voxel_size", None) or 1.5, torch.device("cpu"), None, [op]))
    nz, ny, nx = NON_CUBIC
    x = sample_density(max(NON_CUBIC), batch=2, seed=1)[:, :nz, :ny, :nx].contiguous()
    ax = op.forward(x)
    assert ax.shape == x.shape and torch.isfinite(ax).all(), f"forward of a {tuple(x.shape)} batch gave {tuple(ax.shape)}"
    y = op.simulate(x[:1], torch.Generator().manual_seed(0))
    assert y.shape == x[:1].shape, f"simulate of a {tuple(x[:1].shape)} map gave {tuple(y.shape)}"
    ll = op.log_likelihood(x, y.expand_as(x))
    assert ll.shape == (2,) and torch.isfinite(ll).all(), f"log_likelihood of non-cubic maps: shape {tuple(ll.shape)}"
    if not isinstance(op, components.FourierDiagonal):
        return
    a, noise = op.fourier_diagonal(NON_CUBIC)
    assert tuple(a.shape) == tuple(noise.shape) == NON_CUBIC, f"fourier_diagonal({NON_CUBIC}) gave shapes {tuple(a.shape)}, {tuple(noise.shape)}"
    want = a.to(torch.complex128) * fftn(x.double())
    err = float((fftn(ax.double()) - want).abs().max()) / float(want.abs().max())
    assert err < 1e-4, f"on a {NON_CUBIC} box F(A x) differs from a F(x) by {err:.2e} (relative)"


def _observes_maps(op: Any) -> bool:
    """Whether the operator observes maps (its `observes` ClassVar: "volume", the default) rather than images."""
    return getattr(op, "observes", "volume") == "volume"


def check_takes_poses(op: Any) -> None:
    """A `TakesPoses` operator follows the poses it is given: set_poses(None) leaves it needing a poser;
    set_poses(R, shifts) gives it poses, one image per rotation, and forward changes with R (no stale cache)."""
    assert isinstance(op, components.TakesPoses), "not a TakesPoses operator"
    op = copy.deepcopy(op)  # the check sets poses; the component under test keeps its own
    assert op.image_pixel_size > 0, f"image_pixel_size is {op.image_pixel_size}"
    x, ax = _op_setup(op)
    count, n = ax.shape[-3], x.shape[-1]
    op.set_poses(None)
    assert not op.has_poses and op.needs_poser(), f"after set_poses(None): has_poses {op.has_poses}, needs_poser() {op.needs_poser()}"
    images = []
    for seed in (16, 17, 16):
        op.set_poses(random_rotations(count, torch.Generator().manual_seed(seed)), torch.zeros(count, 2, dtype=torch.float64))
        assert op.has_poses and not op.needs_poser(), f"after set_poses(R): has_poses {op.has_poses}, needs_poser() {op.needs_poser()}"
        images.append(op.forward(x[:1]))
    assert images[0].shape == ax[:1].shape and torch.isfinite(images[0]).all(), f"forward with {count} poses gave {tuple(images[0].shape)}"
    assert not torch.equal(images[0], images[1]), "forward gives the same images for other poses"
    assert torch.equal(images[0], images[2]), "forward of the same poses set again differs (a stale cache?)"
    filters = op.filters(n)
    assert filters is None or tuple(filters.shape) == (count, n, n), f"filters({n}) gave {tuple(filters.shape)}; ({count}, {n}, {n}) or None"


OPERATOR_CAPABILITY_CHECKS: dict[type, tuple[Check, ...]] = {
    components.FourierDiagonal: (check_fourier_diagonal_agrees_with_forward,),
    components.PseudoInverse: (check_pseudo_inverse,),
    components.TakesPoses: (check_takes_poses,),
}
"""The checks an operator's capabilities add."""


def operator_checks(op: Any) -> list[tuple[str, Check]]:
    """The (name, check) pairs for an operator: every operator's, those of its capabilities, and for an operator that observes maps `check_non_cubic_maps`."""
    checks = _chosen(
        op, (check_operator_shapes, check_log_likelihood_gradient, check_operator_is_linear, check_simulate_noise_matches_likelihood), OPERATOR_CAPABILITY_CHECKS
    )
    if _observes_maps(op):
        checks.append(("check_non_cubic_maps", check_non_cubic_maps))
    return checks


def check_operator(op: Any, expected_failures: ExpectedFailures | None = None) -> None:
    """Run every check of `op` (an instance configured as a task would configure it); `expected_failures`:
    check name -> why it cannot hold (an operator that is not linear, one that only works on cubes)."""
    _run(operator_checks(op), op, expected_failures)


# -- priors ---------------------------------------------------------------------------------------


def _prior_box(prior: Any) -> int:
    return (prior.box if isinstance(prior, components.FixedBox) else None) or 16


def _prior_setup(prior: Any) -> torch.Tensor:
    n = _prior_box(prior)
    clean = sample_density(n, batch=1, seed=5)
    call_prepare(prior, _context(prior, n, observation=clean[0]))
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
    """A `ClosedFormConditional` prior: conditional's mean has the batch's shape and its variance is finite and >= 0."""
    assert isinstance(prior, components.ClosedFormConditional), "not a ClosedFormConditional prior (no conditional(x_t, t))"
    clean = _prior_setup(prior)
    x = torch.randn((2, *clean.shape[1:]), generator=torch.Generator().manual_seed(11))
    c = prior.conditional(x, 0.5)
    assert isinstance(c, GaussianConditional), "conditional returns a GaussianConditional"
    assert c.mean.shape == x.shape, f"conditional mean shape {tuple(c.mean.shape)}"
    assert torch.isfinite(c.var).all() and bool((c.var >= 0).all()), "conditional variance must be finite and >= 0"


PRIOR_CAPABILITY_CHECKS: dict[type, tuple[Check, ...]] = {components.ClosedFormConditional: (check_conditional,)}
"""The checks a prior's capabilities add."""


def prior_checks(prior: Any) -> list[tuple[str, Check]]:
    """The (name, check) pairs for a prior: every prior's, and those of its capabilities."""
    return _chosen(prior, (check_velocity, check_velocity_is_differentiable, check_normalization, check_data_stays_data), PRIOR_CAPABILITY_CHECKS)


def check_prior(prior: Any, expected_failures: ExpectedFailures | None = None) -> None:
    """Run every check of `prior`; `expected_failures`: check name -> why it cannot hold."""
    _run(prior_checks(prior), prior, expected_failures)


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
    steps = getattr(sampler.resolved(likelihood) if isinstance(sampler, components.Resolvable) else sampler, "steps", None)
    if steps is not None:
        assert sum(calls) == steps, f"progress reported {sum(calls)} steps of {steps}"
    again = sampler.run(prior, likelihood, init.clone(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again), "two runs from the same init and seed differ"


def _settings(sampler: Any) -> dict[str, Any]:
    return {f.name: getattr(sampler, f.name) for f in attrs.fields(type(sampler)) if f.init} if attrs.has(type(sampler)) else {}


def check_resolved(sampler: Any) -> None:
    """A `Resolvable` sampler: resolved(likelihood) is a sampler of the same name with no "auto" setting
    left (what the report records), and resolving that one again changes no setting."""
    assert isinstance(sampler, components.Resolvable), "not a Resolvable sampler (no resolved(likelihood))"
    _, likelihood, _ = _pose_problem() if getattr(sampler, "searches_poses", False) else _sampler_problem()
    out = sampler.resolved(likelihood)
    assert isinstance(out, components.Sampler) and out.name == sampler.name, f"resolved gave {out!r}, not a {sampler.name!r} sampler"
    settings = _settings(out)
    auto = [name for name, value in settings.items() if isinstance(value, str) and value == "auto"]
    assert not auto, f"resolved leaves {', '.join(auto)} = \"auto\""
    assert _settings(out.resolved(likelihood)) == settings, "resolving a resolved sampler changes its settings"


SAMPLER_CAPABILITY_CHECKS: dict[type, tuple[Check, ...]] = {components.Resolvable: (check_resolved,)}
"""The checks a sampler's capabilities add."""


def sampler_checks(sampler: Any) -> list[tuple[str, Check]]:
    """The (name, check) pairs for a sampler: every sampler's, and those of its capabilities."""
    return _chosen(sampler, (check_sampler_run,), SAMPLER_CAPABILITY_CHECKS)


def check_sampler(sampler: Any, expected_failures: ExpectedFailures | None = None) -> None:
    """Run every check of `sampler` (gaussian prior; a noisy missing wedge on 12^3 maps, or particle images
    for a sampler that searches poses); `expected_failures`: check name -> why it cannot hold."""
    _run(sampler_checks(sampler), sampler, expected_failures)


# -- posers ---------------------------------------------------------------------------------------

POSER_PIXEL = 3.0
"""Pixel size (Å) of the poser checks' images, and voxel size of their map."""


@functools.lru_cache(maxsize=4)
def _projections(n: int, count: int, seed: int, shifted: bool) -> tuple[torch.Tensor, ...]:
    from .projection import project_fourier

    volume = sample_density(n, seed=seed)[0].double()
    rotations = random_rotations(count, torch.Generator().manual_seed(seed + 1))
    shifts = torch.zeros(count, 2, dtype=torch.float64)
    if shifted:  # whole pixels, up to 2 each way
        shifts = torch.randint(-2, 3, (count, 2), generator=torch.Generator().manual_seed(seed + 2)).double() * POSER_PIXEL
    images = project_fourier(volume, rotations, shifts, voxel_size=POSER_PIXEL)
    return volume.float(), rotations, shifts, images.float()  # maps and images in float32, as read from files


def _poser_problem(n: int, count: int, seed: int = 20, shifted: bool = False) -> tuple[torch.Tensor, ...]:
    """(map (n, n, n), rotations (count, 3, 3), shifts (count, 2) in Å, noiseless projections (count, n, n)) at `POSER_PIXEL`:
    the map and images float32, the poses float64."""
    return tuple(t.clone() for t in _projections(n, count, seed, shifted))


def _assert_poses(poses: Any, count: int, what: str) -> None:
    """`poses` has rotations (count, 3, 3), shifts (count, 2) and scores (count,), finite rotations and shifts."""
    shapes = {name: tuple(getattr(poses, name).shape) for name in ("rotations", "shifts", "scores")}
    assert shapes == {"rotations": (count, 3, 3), "shifts": (count, 2), "scores": (count,)}, (
        f"{what} of {count} images: rotations {shapes['rotations']}, shifts {shapes['shifts']}, scores {shapes['scores']}; "
        f"expected ({count}, 3, 3), ({count}, 2), ({count},)"
    )
    assert torch.isfinite(poses.rotations).all() and torch.isfinite(poses.shifts).all(), f"{what}: rotations or shifts are not finite"


def _assert_proper(rotations: torch.Tensor, what: str) -> None:
    """Every rotation is orthonormal with determinant +1 (float32 round-off allowed)."""
    r = rotations.to(torch.float64)
    off = float((r @ r.transpose(-1, -2) - torch.eye(3, dtype=torch.float64)).abs().max())
    det = torch.linalg.det(r)
    assert off < 1e-4, f"{what}: R R^T differs from the identity by {off:.2e}"
    assert float((det - 1).abs().max()) < 1e-4, f"{what}: determinants {float(det.min()):.4f}..{float(det.max()):.4f}, not +1 (a reflection?)"


def check_poses_have_the_right_shapes(poser: Any) -> None:
    """estimate(images, volume, pixel_size) of N images gives rotations (N, 3, 3), shifts (N, 2) in Å and scores (N,)."""
    volume, _, _, images = _poser_problem(16, 3)
    _assert_poses(poser.estimate(images, volume, POSER_PIXEL), 3, "estimate")


def check_rotations_are_proper(poser: Any) -> None:
    """estimate's rotations are orthonormal with determinant +1."""
    volume, _, _, images = _poser_problem(16, 3)
    _assert_proper(poser.estimate(images, volume, POSER_PIXEL).rotations, "estimate")


def check_recovers_poses_of_noiseless_projections(poser: Any) -> None:
    """Noiseless projections of a 24^3 map at random rotations, shifted by whole pixels (up to 2): estimate
    against that map finds the rotations (median error <= 3 degrees, every one <= 8) and the shifts (within half a pixel).

    Poses against a map are absolute: they are compared directly, with no global rotation."""
    volume, rotations, shifts, images = _poser_problem(24, 6, shifted=True)
    est = poser.estimate(images, volume, POSER_PIXEL)
    _assert_poses(est, 6, "estimate")
    errors = geodesic_distance(est.rotations.to(torch.float64), rotations)
    assert float(errors.median()) <= 3.0 and float(errors.max()) <= 8.0, f"rotation errors (degrees): {', '.join(f'{e:.1f}' for e in errors.tolist())}"
    shift_errors = (est.shifts.to(torch.float64) - shifts).norm(dim=-1) / POSER_PIXEL
    assert float(shift_errors.max()) <= 0.5, f"shift errors (pixels): {', '.join(f'{e:.2f}' for e in shift_errors.tolist())}"


def check_stack_statistics(poser: Any) -> None:
    """A `StackPoser`: with the statistics of a stack's parts added (`+`), the poses of a part are those of its
    images in the whole stack (rotations within 0.01 degrees, shifts within 0.01 Å), however small the part.

    On noiseless projections of a 24^3 map: 6 images, statistics of parts of 4 and 2, the part of 2 estimated alone."""
    assert isinstance(poser, components.StackPoser), "not a StackPoser (no stack_statistics and with_stack_statistics)"
    volume, _, _, images = _poser_problem(24, 6, shifted=True)
    whole = poser.with_stack_statistics(poser.stack_statistics(images[:4]) + poser.stack_statistics(images[4:]))
    est = whole.estimate(images, volume, POSER_PIXEL)
    part = whole.estimate(images[4:], volume, POSER_PIXEL)
    angle = float(geodesic_distance(part.rotations.to(torch.float64), est.rotations[4:].to(torch.float64)).max())
    moved = float((part.shifts.to(torch.float64) - est.shifts[4:].to(torch.float64)).abs().max())
    assert angle <= 0.01 and moved <= 0.01, f"poses of the last 2 of 6 images estimated alone differ from those in the whole stack by up to {angle:.3g} degrees and {moved:.3g} Å"


def check_resolutions(poser: Any) -> None:
    """A `StagedPoser`: resolutions(n, pixel_size) are frequency limits in Å, coarse to fine (non-increasing), none finer than Nyquist."""
    assert isinstance(poser, components.StagedPoser), "not a StagedPoser (no resolutions(n, pixel_size))"
    limits = [float(r) for r in poser.resolutions(24, POSER_PIXEL)]
    assert limits and all(math.isfinite(r) and r > 0 for r in limits), f"resolutions(24, {POSER_PIXEL}) gave {limits}"
    assert all(a >= b for a, b in zip(limits, limits[1:])), f"resolutions(24, {POSER_PIXEL}) are not coarse to fine: {limits}"
    assert min(limits) >= 2 * POSER_PIXEL * (1 - 1e-9), f"resolutions(24, {POSER_PIXEL}) reach {min(limits):.3g} Å, finer than Nyquist ({2 * POSER_PIXEL:g} Å)"


def check_relative_poses(poser: Any) -> None:
    """A `MapFreePoser`: relative_poses(images, pixel_size) gives poses of the right shapes, proper rotations,
    and the first image's rotation is the identity (the poses are in its frame)."""
    assert isinstance(poser, components.MapFreePoser), "not a MapFreePoser (no relative_poses(images, pixel_size))"
    _, _, _, images = _poser_problem(16, 3)
    rel = poser.relative_poses(images, POSER_PIXEL)
    _assert_poses(rel, 3, "relative_poses")
    _assert_proper(rel.rotations, "relative_poses")
    first = float(geodesic_distance(rel.rotations[:1].to(torch.float64), torch.eye(3, dtype=torch.float64)[None])[0])
    assert first <= 0.01, f"the first image's relative rotation is {first:.3g} degrees from the identity"


def check_relative_poses_recover_noiseless_projections(poser: Any) -> None:
    """A `MapFreePoser` on noiseless projections of a 24^3 map: after the one global rotation they are free by,
    the relative rotations are within the reach of a local refinement (median error <= 10 degrees; random ones: a median of 132)."""
    from .poses import rotation_errors

    assert isinstance(poser, components.MapFreePoser), "not a MapFreePoser (no relative_poses(images, pixel_size))"
    _, rotations, _, images = _poser_problem(24, 6)
    errors = rotation_errors(poser.relative_poses(images, POSER_PIXEL).rotations.to(torch.float64), rotations, align=True)
    assert float(errors.median()) <= 10.0, f"relative rotation errors after the best global rotation (degrees): {', '.join(f'{e:.0f}' for e in errors.tolist())}"


POSER_CAPABILITY_CHECKS: dict[type, tuple[Check, ...]] = {
    components.StackPoser: (check_stack_statistics,),
    components.StagedPoser: (check_resolutions,),
    components.MapFreePoser: (check_relative_poses, check_relative_poses_recover_noiseless_projections),
}
"""The checks a poser's capabilities add."""


def poser_checks(poser: Any) -> list[tuple[str, Check]]:
    """The (name, check) pairs for a poser: every poser's, and those of its capabilities."""
    return _chosen(
        poser, (check_poses_have_the_right_shapes, check_rotations_are_proper, check_recovers_poses_of_noiseless_projections), POSER_CAPABILITY_CHECKS
    )


def check_poser(poser: Any, expected_failures: ExpectedFailures | None = None) -> None:
    """Run every check of `poser` (noiseless projections of 16^3 and 24^3 maps at 3 Å); `expected_failures`:
    check name -> why it cannot hold."""
    _run(poser_checks(poser), poser, expected_failures)
