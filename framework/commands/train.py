"""`cryoinverse train prior` and `cryoinverse train poser`: learned components from folders of maps.

The options are the fields of each trainer's config (`TrainConfig`, `PoserTrainConfig`), with
their help: a field added to a config is an option without more code here.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import click

from ..posers.fastar_train import PoserTrainConfig
from ..priors.training import TrainConfig


def options_from(cls):
    """click options from the attrs fields of `cls` (name, type, default, help); a boolean that defaults
    to true becomes a --name/--no-name switch, one that defaults to false a flag."""

    def decorate(fn):
        for f in reversed(attrs.fields(cls)):
            name = "--" + f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            if f.type in (bool, "bool") and f.default:
                switch = f"{name}/--no-{f.name.replace('_', '-')}"
                fn = click.option(switch, f.name, default=True, show_default=True, help=help_text)(fn)
            elif f.type in (bool, "bool"):
                fn = click.option(name, f.name, is_flag=True, default=f.default, help=help_text)(fn)
            elif f.default is attrs.NOTHING:
                fn = click.option(name, f.name, required=True, type=click.Path(path_type=Path), help=help_text)(fn)
            else:
                kind = {int: int, float: float, str: str}.get(type(f.default), str)
                fn = click.option(name, f.name, type=kind, default=f.default, show_default=True, help=help_text)(fn)
        return fn

    return decorate


def _echo(line: str) -> None:
    click.echo(line, err=True)


@click.group("train")
def train() -> None:
    """Train learned components (priors, pose networks)."""


@train.command("prior")
@options_from(TrainConfig)
def train_prior_command(**options) -> None:
    """Train a flow-matching prior on a folder of maps; writes prior.safetensors + prior.json."""
    from cryoinverse.priors.cryofm import save_prior
    from cryoinverse.priors.hdit import build_model
    from cryoinverse.priors.training import train_prior
    from cryoinverse.progress import bar

    cfg = TrainConfig(**options)
    with bar(cfg.steps, "train") as update:
        weights = train_prior(cfg, build_model, save_prior, echo=_echo, progress=update)
    click.echo(f"wrote {weights} and {weights.with_suffix('.json')}")


@train.command("poser")
@options_from(PoserTrainConfig)
def train_poser_command(**options) -> None:
    """Train a FastAR poser on projections of a folder of maps; writes poser.safetensors + poser.json."""
    from cryoinverse.posers.fastar_train import train_poser
    from cryoinverse.progress import bar

    cfg = PoserTrainConfig(**options)
    with bar(cfg.steps, "train poser") as update:
        weights = train_poser(cfg, echo=_echo, progress=update)
    click.echo(f"wrote {weights} and {weights.with_suffix('.json')}")


command = train
