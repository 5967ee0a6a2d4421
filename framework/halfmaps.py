"""What an operator whose noise came from two half maps offers the runner: the observation when none
is given (their average), the halves for the report's checks, and the operator of one half.

`HalfMapNoise` is a mixin for operators that keep `_halves` (the two half maps as `Volume`s, or
None) and `_spectrum` (the per-shell noise power of the average, or None) once they have
estimated their noise from half maps; `spectral-noise` and `missing-wedge` use it.
"""

from __future__ import annotations

import copy

from .errors import SpecError
from .volume import Volume

__all__ = ["HalfMapNoise"]


class HalfMapNoise:
    """`default_observation`, `halves` and `for_half_map` from `_halves` and `_spectrum`."""

    def default_observation(self) -> Volume | None:
        """The average of the half maps, when the noise came from them."""
        if self._halves is None:
            return None
        h1, h2 = self._halves
        return h1.with_data(0.5 * (h1.data + h2.data))

    def halves(self) -> tuple[Volume, Volume] | None:
        """The two half maps (odd, even), when the noise came from them."""
        return self._halves

    def for_half_map(self):
        """The operator of one half map: the same operator with twice the noise power of their average."""
        if self._halves is None or self._spectrum is None:
            raise SpecError(f"[operator] {self.name}: only noise estimated from half maps has a half-map model")
        half = copy.copy(self)
        half._spectrum, half._halves = 2.0 * self._spectrum, None
        return half
