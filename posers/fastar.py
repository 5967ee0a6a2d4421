"""`fastar`: poses of a whole stack from a learned multi-view network (CryoFastAR-style), then local `search`.

The network (`posers/fastar_model.py`) takes sets of views that share one reference image (the
stack's first) and predicts every view's Fourier planar map in the reference's frame; weighted
Kabsch turns each map into the relative rotation Q_i = R_i R_0^T (`cryoinverse.planar`). The
reference's own pose R_0 ties that frame to the map: the first `anchors` images are searched
globally with `search`, each gives a candidate R_0 = Q_j^T R_j, and the candidate nearest to the
others (the smallest sum of geodesic distances) wins, so one badly searched image cannot spoil
it. Then R_i = Q_i R_0 for all images and, with `refine`, `search` refines them locally
(`init`), from the translation head's shifts.

The anchors also check the network: were its relative rotations right, every candidate R_0 would
be the same. When the candidates lie a median of more than `agreement` degrees from the chosen
one, the network does not know these images (another kind of particle, another pixel size, more
noise than it was trained on), and with `fallback` the poser warns and searches every image
globally instead, so a network that fails costs time, never accuracy.

The network sees images resampled to its voxel size and cut or padded to its image size (from
the weights' JSON). Weights: `weights` (a .safetensors with its .json, from `cryoinverse train
poser`); without them, the network shipped with the package (`DEFAULT_WEIGHTS`, described in
posers/data/README.md).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch

from cryoinverse.errors import SpecError
from cryoinverse.hookspecs import hookimpl
from cryoinverse.params import non_negative, param, positive
from cryoinverse.particles import resample_images
from cryoinverse.planar import rotations_from_planar_maps
from cryoinverse.poses import Poses
from cryoinverse.rotations import geodesic_distance

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "data" / "default.safetensors"


@attrs.define
class FastARPoser:
    """Poses from a learned multi-view network, tied to the map by a few global searches, refined locally."""

    name: ClassVar[str] = "fastar"

    weights: Path | None = param(None, help=".safetensors of a trained fastar network (its .json beside it), from cryoinverse train poser; default: the shipped network")
    views: int = param(16, help="views per forward pass, the reference image included", validator=positive)
    anchors: int = param(8, help="images searched globally to place the reference view's frame on the map", validator=positive)
    refine: bool = param(True, help="refine the predicted poses locally with search (which also finds the shifts)")
    refinements: int = param(4, help="local refinement rounds of search when refine is true (from about 7.5 degrees, halving)", validator=non_negative)
    shift_range: float = param(10.0, help="largest in-plane shift searched, Å (each axis)", validator=non_negative)
    agreement: float = param(10.0, help="largest median spread (degrees) of the anchors' reference poses for the network's poses to be trusted", validator=positive)
    fallback: bool = param(True, help="when the anchors disagree by more than `agreement`, warn and search every image globally")

    _model: Any = attrs.field(default=None, init=False, repr=False)
    _meta: dict | None = attrs.field(default=None, init=False, repr=False)
    _stack: object = attrs.field(default=None, init=False, repr=False)

    @classmethod
    def from_model(cls, model: torch.nn.Module, meta: dict, **fields) -> "FastARPoser":
        """A poser around an in-memory network; `meta` holds at least image_size and voxel_size."""
        poser = cls(**fields)
        poser._model, poser._meta = model, dict(meta)
        return poser

    def _network(self):
        if self._model is None:
            weights = DEFAULT_WEIGHTS if self.weights is None else self.weights
            if self.weights is None and not DEFAULT_WEIGHTS.exists():
                raise SpecError(f"[poser] fastar: the shipped network {DEFAULT_WEIGHTS} is missing; give weights = \"poser.safetensors\" (train one with `cryoinverse train poser`)")
            from cryoinverse.posers.fastar_train import load_poser

            model, meta = load_poser(weights)
            self._model, self._meta = model.eval(), {"image_size": model.config.image_size, **meta}
        return self._model, self._meta

    def predict(self, images: torch.Tensor, pixel_size: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Relative rotations Q_i = R_i R_0^T (N, 3, 3) of all images, their shifts (N, 2) in Å and the mean confidence of each (N,)."""
        model, meta = self._network()
        size = int(meta["image_size"])
        voxel = float(meta.get("voxel_size", pixel_size))
        x = resample_images(images.to(torch.float64), pixel_size, voxel, box=size).to(torch.float32)
        ref = x[:1]
        rotations, shifts, confidences = [torch.eye(3, dtype=torch.float64)[None]], [], [torch.ones(1, dtype=torch.float64)]
        step = max(1, self.views - 1)
        with torch.no_grad():
            if x.shape[0] == 1:
                shifts.append(model(ref[None]).shifts[0].to(torch.float64))
            for start in range(1, x.shape[0], step):
                out = model(torch.cat([ref, x[start : start + step]])[None])
                q = rotations_from_planar_maps(out.maps[0].to(torch.float64), out.confidence[0].to(torch.float64))
                if start == 1:
                    shifts.append(out.shifts[0, :1].to(torch.float64))
                rotations.append(q[1:])
                shifts.append(out.shifts[0, 1:].to(torch.float64))
                confidences.append(out.confidence[0, 1:].mean(dim=(-2, -1)).to(torch.float64))
        return torch.cat(rotations), torch.cat(shifts) * voxel, torch.cat(confidences)

    def relative_poses(self, images: torch.Tensor, pixel_size: float) -> Poses:
        """Poses of `images` (N, n, n) without a map, up to one global rotation (the first image's frame); scores are the network's mean confidences."""
        q, shifts, confidence = self.predict(images, pixel_size)
        return Poses(q, shifts=shifts, scores=confidence)

    def _search(self, **fields):
        """The `search` poser this one refines and anchors with (the whole stack's statistics, when given)."""
        from cryoinverse.posers.search import Search

        search = Search(shift_range=self.shift_range, **fields)
        return search if self._stack is None else search.with_stack_statistics(self._stack)

    def stack_statistics(self, images: torch.Tensor, ctf: torch.Tensor | None = None):
        """The statistics of `search`, which places and refines this poser's poses."""
        from cryoinverse.posers.search import ImageSpectrum

        return ImageSpectrum.of(images, ctf)

    def with_stack_statistics(self, statistics) -> "FastARPoser":
        """This poser with its searches matched to the whole stack (the network and its anchors still see each call's images)."""
        poser = attrs.evolve(self)
        poser._model, poser._meta, poser._stack = self._model, self._meta, statistics
        return poser

    def estimate(self, images: torch.Tensor, volume: torch.Tensor, pixel_size: float, ctf: torch.Tensor | None = None, init: Poses | None = None) -> Poses:
        """Poses of `images` (N, n, n) against `volume` (n, n, n): network, anchor searches, optional local refinement."""
        if init is not None:  # poses given: the network adds nothing to a local refinement
            return self._search(refinements=self.refinements).estimate(images, volume, pixel_size, ctf, init=init)
        q, shifts, _ = self.predict(images, pixel_size)
        k = min(self.anchors, images.shape[0])
        anchors = self._search().estimate(images[:k], volume, pixel_size, None if ctf is None else ctf[:k])
        candidates = q[:k].transpose(-1, -2) @ anchors.rotations  # R_0 = Q_j^T R_j
        spread = geodesic_distance(candidates[:, None].expand(k, k, 3, 3).reshape(-1, 3, 3), candidates[None].expand(k, k, 3, 3).reshape(-1, 3, 3)).reshape(k, k)
        best = int(spread.sum(dim=1).argmin())
        r0 = candidates[best]
        if k == 1:  # one image: its global search is its pose, and there is nothing to check the network against
            return anchors
        # the chosen candidate's distance to itself (0) is no evidence: with 2 anchors it would be the median
        disagreement = float(spread[best][torch.arange(k) != best].median())
        if disagreement > self.agreement and self.fallback:
            warnings.warn(
                f"[poser] fastar: the network's poses disagree with {k} global searches (median {disagreement:.0f} degrees > agreement {self.agreement:g}); "
                "searching every image globally instead",
                stacklevel=2,
            )
            return self._search().estimate(images, volume, pixel_size, ctf)
        predicted = Poses(q @ r0, shifts=shifts)
        if not self.refine:
            return predicted
        return self._search(refinements=self.refinements).estimate(images, volume, pixel_size, ctf, init=predicted)


@hookimpl
def register_posers(register):
    register(FastARPoser)
