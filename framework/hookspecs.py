"""The hooks a cryoinverse plugin may implement. Built-in components use exactly these."""

import pluggy

hookspec = pluggy.HookspecMarker("cryoinverse")
hookimpl = pluggy.HookimplMarker("cryoinverse")


@hookspec
def register_priors(register):
    """Register prior classes: call `register(PriorClass)` for each."""


@hookspec
def register_operators(register):
    """Register degradation-operator classes: call `register(OperatorClass)` for each."""


@hookspec
def register_samplers(register):
    """Register sampler classes: call `register(SamplerClass)` for each."""


@hookspec
def register_posers(register):
    """Register pose-model classes: call `register(PoserClass)` for each."""


@hookspec
def register_commands(cli):
    """Add click commands to the `cryoinverse` command group `cli`."""
