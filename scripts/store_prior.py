"""Copy a trained prior (`cryoinverse train prior` output) to DEST with float16 tensors.

The JSON config travels with it, with `training.stored_dtype` and the source's SHA-256 added.
Usage: python scripts/store_prior.py SRC.safetensors DEST.safetensors
"""

import hashlib
import sys
from pathlib import Path

import attrs
import torch

from cryoinverse.priors.cryofm import load_prior, save_prior


def main(src: Path, dest: Path) -> None:
    model, meta = load_prior(src)
    training = dict(meta.training, stored_dtype="float16", source_sha256=hashlib.sha256(src.read_bytes()).hexdigest())
    info = {
        "normalization": attrs.asdict(meta.normalization),
        "voxel_size": meta.voxel_size, "box": meta.box, "time_convention": meta.time_convention, "training": training,
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_prior(dest, model, meta.architecture, info, dtype=torch.float16)
    print(f"wrote {dest} ({dest.stat().st_size / 1e6:.1f} MB) and {dest.with_suffix('.json')}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
