"""The `Volume` value object: a density map with its voxel size and origin.

Conventions: data is a float32 tensor shaped (z, y, x); voxel size is isotropic, in Angstrom;
origin is the position in Angstrom of voxel (0, 0, 0), also ordered (z, y, x).
"""

from __future__ import annotations

import attrs
import torch

from .errors import DataError


def _as_tensor(data) -> torch.Tensor:
    t = torch.as_tensor(data)
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    return t


def _check_data(instance, attribute, value: torch.Tensor) -> None:
    if value.ndim != 3:
        raise DataError(f"a volume must be 3D (z, y, x); got shape {tuple(value.shape)}")


def _check_voxel(instance, attribute, value: float) -> None:
    if not value > 0:
        raise DataError(f"voxel size must be positive (Angstrom); got {value}")


@attrs.define(eq=False)
class Volume:
    """A 3D density map: `data` (z, y, x) float tensor, `voxel_size` in Angstrom, `origin` (z, y, x) in Angstrom."""

    data: torch.Tensor = attrs.field(converter=_as_tensor, validator=_check_data)
    voxel_size: float = attrs.field(default=1.0, converter=float, validator=_check_voxel)
    origin: tuple[float, float, float] = attrs.field(
        default=(0.0, 0.0, 0.0), converter=lambda o: tuple(float(v) for v in o)
    )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (z, y, x) in voxels."""
        return tuple(self.data.shape)

    @property
    def is_cubic(self) -> bool:
        """True when all three edges are equal."""
        return len(set(self.shape)) == 1

    def with_data(self, data: torch.Tensor) -> "Volume":
        """The same geometry (voxel size, origin) around new data."""
        return Volume(data, self.voxel_size, self.origin)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Volume":
        """A copy on another device and/or dtype."""
        return self.with_data(self.data.to(device=device, dtype=dtype))
