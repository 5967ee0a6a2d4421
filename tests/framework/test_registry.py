"""The registry and the plugin manager: lookups, clashes, misspelt hooks, entry points, meta-tests.

Plugins are registered on fresh managers (`new_plugin_manager(load_entrypoints=False)`) or, for
the CLI, on the live manager and unregistered afterwards. Entry points come from hand-written
`.dist-info` folders on sys.path, which `importlib.metadata` finds exactly as it finds
pip-installed ones (the real `pip install` is in test_plugin_example.py).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from typing import ClassVar

import attrs
import click
import pluggy
import pytest
from click.testing import CliRunner

from cryoinverse import hookspecs
from cryoinverse.cli import cli
from cryoinverse.errors import RegistryError
from cryoinverse.hookspecs import hookimpl
from cryoinverse.params import help_of, param
from cryoinverse.plugins import DEFAULT_PLUGINS, get_plugin_manager, new_plugin_manager, plugin_infos
from cryoinverse.registry import KINDS, Registry


@attrs.define
class Blur:
    """A test operator."""

    name: ClassVar[str] = "blur"

    width: float = param(1.0, help="blur width in voxels")


@attrs.define
class OtherBlur:
    """Another test operator claiming the same name."""

    name: ClassVar[str] = "blur"


class Registers:
    """A plugin object whose `register_operators` registers the given classes."""

    def __init__(self, *classes: type):
        self.classes = classes

    @hookimpl
    def register_operators(self, register):
        for cls in self.classes:
            register(cls)


@pytest.fixture
def pm() -> pluggy.PluginManager:
    """A fresh manager with the built-in plugins only."""
    return new_plugin_manager(load_entrypoints=False)


# --- lookups ------------------------------------------------------------------------------------


def test_unknown_name_lists_known_names_and_the_closest(pm):
    registry = Registry(pm)
    with pytest.raises(RegistryError) as err:
        registry.get("operator", "spectral-nose")
    message = str(err.value)
    assert message.startswith("unknown operator 'spectral-nose'. Did you mean 'spectral-noise'? Known operators: ")
    assert "spectral-noise" in message.split("Known operators: ")[1].split(", ")


def test_unknown_name_without_a_close_match_gives_no_suggestion(pm):
    with pytest.raises(RegistryError, match=r"^unknown sampler 'zzz'\. Known samplers: .*flow-posterior-euler") as err:
        Registry(pm).get("sampler", "zzz")
    assert "Did you mean" not in str(err.value)


def test_unknown_kind(pm):
    with pytest.raises(RegistryError, match=r"unknown component kind 'operators'; kinds are prior, operator, sampler, poser"):
        Registry(pm).names("operators")


def test_entries_record_the_registering_plugin(pm):
    pm.register(Registers(Blur), name="blur-plugin")
    registry = Registry(pm)
    assert registry.entry("operator", "blur").plugin == "blur-plugin"
    assert registry.entry("prior", "gaussian").plugin == "cryoinverse.priors.gaussian"
    assert registry.entry("operator", "blur").summary == "A test operator."
    assert registry.get("operator", "blur") is Blur


# --- bad plugins ----------------------------------------------------------------------------------


def test_two_plugins_registering_one_name_are_both_named(pm):
    pm.register(Registers(Blur), name="plugin-a")
    pm.register(Registers(OtherBlur), name="plugin-b")
    with pytest.raises(RegistryError) as err:
        Registry(pm)
    message = str(err.value)
    assert message.startswith("operator name 'blur' is registered twice: by plugin ")
    assert "'plugin-a'" in message and "'plugin-b'" in message
    assert f"{__name__}.Blur" in message and f"{__name__}.OtherBlur" in message
    assert "set CRYOINVERSE_LOAD_PLUGINS" in message


def test_a_plugin_clashing_with_a_builtin_name_is_an_error(pm):
    @attrs.define
    class MyGaussian:
        """Impostor."""

        name: ClassVar[str] = "gaussian"

    class Plugin:
        @hookimpl
        def register_priors(self, register):
            register(MyGaussian)

    pm.register(Plugin(), name="impostor")
    with pytest.raises(RegistryError, match=r"prior name 'gaussian' is registered twice.*'cryoinverse\.priors\.gaussian'.*'impostor'"):
        Registry(pm)


def test_the_same_class_from_two_plugins_is_not_a_clash(pm):
    pm.register(Registers(Blur), name="plugin-a")
    pm.register(Registers(Blur), name="plugin-b")
    assert Registry(pm).get("operator", "blur") is Blur


def test_the_same_name_in_two_kinds_is_not_a_clash(pm):
    @attrs.define
    class BlurPrior:
        """A prior that happens to share an operator's name."""

        name: ClassVar[str] = "blur"

    class Plugin:
        @hookimpl
        def register_priors(self, register):
            register(BlurPrior)

    pm.register(Registers(Blur), name="plugin-a")
    pm.register(Plugin(), name="plugin-b")
    assert [e.kind for e in Registry(pm).find("blur")] == ["prior", "operator"]


def test_a_class_without_a_name_is_an_error(pm):
    @attrs.define
    class Nameless:
        """No name ClassVar."""

    pm.register(Registers(Nameless), name="sloppy")
    with pytest.raises(RegistryError, match=r"^plugin 'sloppy' registered .*Nameless.* as an? operator without a `name` ClassVar$"):
        Registry(pm)


def test_a_class_that_is_not_attrs_is_an_error(pm):
    class Plain:
        name: ClassVar[str] = "plain"

    pm.register(Registers(Plain), name="sloppy")
    with pytest.raises(RegistryError, match=r"^plugin 'sloppy' registered operator 'plain': Plain is not an attrs class$"):
        Registry(pm)


def test_a_misspelt_hook_fails_at_check_time(pm):
    class Misspelt:
        @hookimpl
        def register_prior(self, register):  # the hook is register_priors
            register(Blur)

    pm.register(Misspelt(), name="misspelt")  # pluggy accepts it here, silently
    with pytest.raises(pluggy.PluginValidationError, match=r"unknown hook 'register_prior' in plugin"):
        pm.check_pending()


def test_a_hook_with_a_wrong_argument_fails_at_registration(pm):
    class WrongArgument:
        @hookimpl
        def register_priors(self, add):
            add(Blur)

    with pytest.raises(pluggy.PluginValidationError, match=r"hookimpl definition: register_priors\(add\)"):
        pm.register(WrongArgument(), name="wrong-argument")


# --- entry points, without pip ----------------------------------------------------------------------


PLUGIN_MODULE = '''\
from typing import ClassVar

import attrs

from cryoinverse.hookspecs import hookimpl


@attrs.define
class {cls}:
    """Operator of entry-point plugin {ep}."""

    name: ClassVar[str] = "{op}"


@hookimpl
def {hook}(register):
    register({cls})
'''


@pytest.fixture
def entry_points(tmp_path, monkeypatch):
    """add(entry point, body=None, hook=...) -> writes a distribution with that entry point on sys.path.

    Each distribution `ep-<name>` 1.0 has one module `ep_<name>` registering the operator
    `<name>-op`; `body` replaces the module's source. Modules are unloaded afterwards.
    """
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CRYOINVERSE_LOAD_PLUGINS", raising=False)
    modules = []

    def add(name: str, body: str | None = None, hook: str = "register_operators") -> None:
        module = f"ep_{name}_{tmp_path.name}".replace("-", "_")
        cls = f"{name.capitalize()}Op"
        source = body if body is not None else PLUGIN_MODULE.format(cls=cls, ep=name, op=f"{name}-op", hook=hook)
        (tmp_path / f"{module}.py").write_text(source)
        info = tmp_path / f"ep_{name}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: ep-{name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[cryoinverse]\n{name} = {module}\n")
        modules.append(module)

    yield add
    for module in modules:
        sys.modules.pop(module, None)


def _third_party(pm: pluggy.PluginManager) -> list[str]:
    return sorted(name for name, _ in pm.list_name_plugin() if name not in DEFAULT_PLUGINS)


def test_entry_point_plugins_load(entry_points):
    entry_points("alpha")
    entry_points("beta")
    pm = new_plugin_manager()
    assert {"alpha", "beta"} <= set(_third_party(pm))
    registry = Registry(pm)
    assert registry.entry("operator", "alpha-op").plugin == "alpha"
    assert registry.entry("operator", "beta-op").plugin == "beta"
    info = {i["name"]: i for i in plugin_infos(pm)}["alpha"]
    assert info == {"name": "alpha", "builtin": False, "distribution": "ep-alpha 1.0", "hooks": ["register_operators"]}


@pytest.mark.parametrize(
    ("wanted", "loaded"),
    [("", []), ("alpha", ["alpha"]), (" beta ", ["beta"]), ("alpha,beta", ["alpha", "beta"])],
)
def test_load_plugins_variable_chooses_entry_points(entry_points, monkeypatch, wanted, loaded):
    entry_points("alpha")
    entry_points("beta")
    monkeypatch.setenv("CRYOINVERSE_LOAD_PLUGINS", wanted)
    pm = new_plugin_manager()
    assert _third_party(pm) == loaded
    assert Registry(pm).get("prior", "gaussian")  # built-ins always load


def test_a_misspelt_entry_point_hook_fails_at_start_up(entry_points):
    entry_points("typo", hook="register_operator")
    with pytest.raises(RegistryError, match=r"plugin .*typo.* is invalid: unknown hook 'register_operator'"):
        new_plugin_manager()


def test_a_broken_plugin_is_named_and_skipped(entry_points, monkeypatch):
    """A plugin that fails to import is recorded with its entry point and distribution; the rest loads."""
    from cryoinverse.plugins import failed_plugins, failure_message

    entry_points("broken", body="raise ImportError('no module named torch_special')\n")
    entry_points("alpha")
    pm = new_plugin_manager()
    assert "alpha" in _third_party(pm) and "broken" not in _third_party(pm)
    (failure,) = failed_plugins(pm)
    assert failure == {"name": "broken", "distribution": "ep-broken 1.0", "error": "ImportError('no module named torch_special')"}
    message = failure_message(failure)
    assert "plugin 'broken' (distribution ep-broken 1.0) failed to load and is skipped" in message
    assert "set CRYOINVERSE_LOAD_PLUGINS to the plugins to load ('' for none)" in message
    monkeypatch.setenv("CRYOINVERSE_LOAD_PLUGINS", "")
    assert _third_party(new_plugin_manager()) == [] and failed_plugins(new_plugin_manager()) == []


def test_help_version_and_plugins_work_with_a_broken_plugin(entry_points, monkeypatch):
    import subprocess

    entry_points("broken", body="raise ImportError('no module named torch_special')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for args, expect in ((["--help"], "Usage"), (["--version"], "cryoinverse"), (["plugins"], "broken (ep-broken 1.0): FAILED to load")):
        out = subprocess.run([sys.executable, "-m", "cryoinverse", *args], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        assert expect in out.stdout
        assert "Warning: plugin 'broken' (distribution ep-broken 1.0) failed to load" in out.stderr


# --- the live manager and the CLI ---------------------------------------------------------------------


@pytest.fixture
def live_plugin():
    """`Registers(Blur)` registered on the live plugin manager as 'blur-plugin', removed afterwards."""
    pm = get_plugin_manager()
    plugin = Registers(Blur)
    pm.register(plugin, name="blur-plugin")
    yield plugin
    pm.unregister(plugin)


def test_cli_sees_a_plugin_registered_at_run_time(live_plugin):
    runner = CliRunner()
    listed = runner.invoke(cli, ["list", "operator"])
    assert listed.exit_code == 0, listed.output
    assert any(re.match(r"^\s+blur\s+A test operator\.\s+\[blur-plugin\]$", line) for line in listed.output.splitlines()), listed.output

    described = runner.invoke(cli, ["describe", "blur"])
    assert described.exit_code == 0, described.output
    assert "width (float, default 1.0): blur width in voxels" in described.output

    infos = json.loads(runner.invoke(cli, ["plugins", "--json"]).output)
    assert {"name": "blur-plugin", "builtin": False, "distribution": None, "hooks": ["register_operators"]} in infos


def test_cli_forgets_an_unregistered_plugin():
    pm = get_plugin_manager()
    plugin = Registers(Blur)
    pm.register(plugin, name="blur-plugin")
    pm.unregister(plugin)
    result = CliRunner().invoke(cli, ["describe", "blur"])
    assert result.exit_code == 1
    assert "Error: unknown component 'blur'." in result.output


def test_register_commands_adds_a_command(pm):
    class Commands:
        @hookimpl
        def register_commands(self, cli):
            @cli.command()
            def hello():
                """Say hello."""
                click.echo("hello from a plugin")

    pm.register(Commands(), name="commands")
    group = click.Group("test")
    pm.hook.register_commands(cli=group)
    result = CliRunner().invoke(group, ["hello"])
    assert result.output == "hello from a plugin\n"


# --- meta-tests -----------------------------------------------------------------------------------------


def _hookspecs() -> dict[str, object]:
    return {name: fn for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "cryoinverse_spec")}


def test_every_hook_has_a_docstring():
    specs = _hookspecs()
    assert set(specs) == {f"register_{kind}s" for kind in KINDS} | {"register_commands"}
    undocumented = [name for name, fn in specs.items() if not (fn.__doc__ or "").strip()]
    assert not undocumented


def test_every_builtin_component_is_documented(pm):
    problems = []
    for entry in Registry(pm).entries():
        where = f"{entry.kind} {entry.name!r} ({entry.cls.__qualname__})"
        if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", entry.name):
            problems.append(f"{where}: name is not kebab-case")
        if not entry.summary:
            problems.append(f"{where}: no class docstring")
        for field in attrs.fields(entry.cls):
            if field.init and not field.name.startswith("_") and not help_of(field).strip():
                problems.append(f"{where}: field {field.name!r} has no help text")
    assert not problems, "\n".join(problems)


def test_every_builtin_plugin_implements_a_hook(pm):
    idle = [name for name in DEFAULT_PLUGINS if not pm.get_hookcallers(pm.get_plugin(name))]
    assert not idle


def test_a_plugin_command_named_like_a_built_in_is_an_error():
    from cryoinverse.cli import build_cli
    from cryoinverse.errors import CryoinverseError

    class Clash:
        @hookimpl
        def register_commands(self, cli):
            @cli.command("run")
            def run():
                """A plugin's own run."""

    live = get_plugin_manager()
    live.register(Clash(), name="clash-plugin")
    try:
        with pytest.raises(CryoinverseError, match="plugin 'clash-plugin' adds a command 'run', which the built-in command already has"):
            build_cli()
    finally:
        live.unregister(name="clash-plugin")
    group = build_cli()
    assert group.commands["run"].help.startswith("Run a task spec")  # the built-in is kept
