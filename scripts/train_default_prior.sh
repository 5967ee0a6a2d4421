#!/usr/bin/env bash
# Rebuilds the shipped default prior, priors/data/default.safetensors + default.json.
#
# Training data: clean maps simulated by `cryoinverse simulate` (5-Gaussian form factors, 1.5 A
# voxels, 64^3) from every model in MODELS except those listed in bench/default_prior_heldout.txt,
# each at two global B-factors (40 and 100 A^2), so the prior sees sharper and softer maps.
# Training: `cryoinverse train prior` with the `compact` architecture on 32^3 crops with random
# SO(3) rotations; the EMA weights are stored as float16 (the loader computes in float32).
#
# Usage: bash scripts/train_default_prior.sh [MODELS] [WORK] [STEPS]
#   MODELS  folder of PDB/mmCIF models   (default ../shared/data/models)
#   WORK    scratch folder               (default default-prior-work)
#   STEPS   optimiser steps              (default 10000; about 40 minutes on 2 CPU cores)
# Running it again resumes training from WORK/train/checkpoint.pt.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
models="${1:-$here/../shared/data/models}"
work="${2:-default-prior-work}"
steps="${3:-10000}"

heldout="$(grep -v '^#' "$here/bench/default_prior_heldout.txt" | tr '\n' ' ')"
train_models=()
for f in "$models"/*.pdb "$models"/*.cif; do
    [ -e "$f" ] || continue
    id="$(basename "${f%.*}")"
    case " $heldout " in *" $id "*) continue ;; esac
    train_models+=("$f")
done
echo "training on ${#train_models[@]} models; held out: $heldout" >&2

mkdir -p "$work/maps"
for b in 40 100; do
    if [ ! -d "$work/sim-b$b" ]; then
        cryoinverse simulate "${train_models[@]}" --out-dir "$work/sim-b$b.tmp" --voxel-size 1.5 --box 64 --bfactor "$b"
        mv "$work/sim-b$b.tmp" "$work/sim-b$b"
    fi
    for m in "$work/sim-b$b"/*.mrc; do
        ln -sf "$(cd "$(dirname "$m")" && pwd)/$(basename "$m")" "$work/maps/$(basename "${m%.mrc}")_b$b.mrc"
    done
done

cryoinverse train prior --data "$work/maps" --out "$work/train" --arch compact --box 32 --voxel-size 1.5 \
    --steps "$steps" --batch-size 4 --lr 4e-4 --warmup 200 --schedule cosine --ema-decay 0.999 \
    --checkpoint-every 250 --seed 0

python "$here/scripts/store_prior.py" "$work/train/prior.safetensors" "$here/priors/data/default.safetensors"
