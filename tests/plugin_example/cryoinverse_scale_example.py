"""`scaled-noise`: y = s x + n with white Gaussian noise n of variance `noise_variance`.

An example of a third-party cryoinverse plugin, installed separately and found through the
entry point group `cryoinverse`. Because both the scale and the noise are the same at every
Fourier coefficient (orthonormal FFT, see `cryoinverse.fourier`), the operator is
Fourier-diagonal with a = s and N = noise_variance, so the `exact` guidance of
`flow-posterior-euler` applies to it.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import click
import torch

from cryoinverse.fourier import grid_shape
from cryoinverse.hookspecs import hookimpl
from cryoinverse.params import param, positive


@attrs.define
class ScaledNoise:
    """Scaled map plus white Gaussian noise: y = scale * x + n, n ~ N(0, noise_variance)."""

    name: ClassVar[str] = "scaled-noise"

    noise_variance: float = param(help="variance of the white Gaussian noise per voxel (density units^2)", validator=positive)
    scale: float = param(1.0, help="factor s multiplying the map before the noise is added")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """s x (noise-free)."""
        return self.scale * x

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-1/2 sum (s x - y)^2 / noise_variance over the last three axes, one value per batch element."""
        return -0.5 * (self.scale * x - y).square().sum(dim=(-3, -2, -1)) / self.noise_variance

    def simulate(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """s x + n, with n drawn (float64) from N(0, noise_variance) per voxel."""
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        return (self.scale * x.to(torch.float64) + noise * self.noise_variance**0.5).to(x.dtype)

    def fourier_diagonal(self, shape: int | tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, N) per coefficient of a box, an edge n (n^3) or (z, y, x): a = scale and N = noise_variance everywhere (float64)."""
        box = grid_shape(shape)
        return torch.full(box, float(self.scale), dtype=torch.float64), torch.full(box, float(self.noise_variance), dtype=torch.float64)


@hookimpl
def register_operators(register):
    register(ScaledNoise)


@click.command("scale-example-info")
def info() -> None:
    """Say which operator this plugin adds."""
    click.echo(f"cryoinverse-scale-example: operator {ScaledNoise.name!r} (y = s x + n, white noise)")


@hookimpl
def register_commands(cli):
    cli.add_command(info)
