#!/usr/bin/env bash
# Rebuilds the shipped default poser, posers/data/default.safetensors + default.json.
#
# Maps: `cryoinverse simulate` (5-Gaussian form factors, 4 A voxels, 32^3, global B-factor
# 60 A^2) of every model in MODELS except those listed in bench/default_prior_heldout.txt (the
# held-out models of the default prior, which bench/poses.py measures on).
# Training: `cryoinverse train poser` with the `tiny` network (32 px images at 4 A), sets of up
# to 4 views, shifts up to 2 px, the progressive schedule: 2 clean views of one molecule (the
# first training model) until 45% of the steps, then all molecules, 4 views from 60%, noise from
# 60% (SNR floor 0.3 from 90%), the CTF from 70%.
#
# Usage: bash scripts/train_default_poser.sh [MODELS] [WORK] [STEPS]
#   MODELS  folder of PDB/mmCIF models   (default ../shared/data/models)
#   WORK    scratch folder               (default default-poser-work)
#   STEPS   optimiser steps              (default 30000; about 70 minutes on 1 CPU core)
# Running it again resumes training from WORK/train/checkpoint.pt.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
models="${1:-$here/../shared/data/models}"
work="${2:-default-poser-work}"
steps="${3:-30000}"

# shellcheck source=training_models.sh
source "$here/scripts/training_models.sh"

if [ ! -d "$work/maps" ]; then
    cryoinverse simulate "${train_models[@]}" --out-dir "$work/maps.tmp" --voxel-size 4 --box 32 --bfactor 60
    mv "$work/maps.tmp" "$work/maps"
fi

cryoinverse train poser --maps "$work/maps" --out "$work/train" --arch tiny --voxel-size 4 \
    --steps "$steps" --views 4 --batch-size 8 --lr 5e-4 --warmup 300 --schedule cosine --shift-max 2 \
    --stage1-maps 1 --clean-until 0.45 --views-full 0.6 --noise-from 0.6 --noise-full 0.9 --ctf-from 0.7 --snr-min 0.3 \
    --checkpoint-every 500 --log-every 50 --seed 0

mkdir -p "$here/posers/data"
cp "$work/train/poser.safetensors" "$here/posers/data/default.safetensors"
cp "$work/train/poser.json" "$here/posers/data/default.json"
echo "wrote $here/posers/data/default.safetensors and default.json" >&2
