#!/usr/bin/env bash
# Builds the tomogram-scale prior, priors/data/tomo.safetensors + tomo.json: 32^3 boxes at 10 A/voxel.
#
# Data: 64^3 maps at 10 A/voxel (640 A) simulated from every model in MODELS except those listed in
# bench/default_prior_heldout.txt, B-factors 200-1500 A^2 (one per map):
# - COUNT crowded boxes (scripts/make_complex_maps.py --seed 1): ring stacks, cages and irregular
#   clusters of chains, 100-300 A across, among free chains, at protein volume fractions 0.1-0.3;
# - COUNT filament boxes (scripts/make_filament_maps.py --seed 2): 1-4 microtubule- or actin-like
#   helical lattices crossing the box, parallel in 30 % of the boxes, among complexes and free
#   chains (fill 0.05-0.25) in 60 % of them.
# - COUNT / 2 nucleoprotein boxes (stage 2 only; scripts/make_complex_maps.py --seed 3 drawing from
#   the protein chains and the nucleic-acid models of NUCLEIC, the latter three times as often):
#   ribosomes and other nucleoprotein complexes are among the commonest particles in tomograms.
# Training: `cryoinverse train prior` with the `compact` architecture on 32^3 crops (320 A) with
# random SO(3) rotations and density-scale jitter (+-0.3 in log scale: a tomogram's density scale
# is never known), from random weights (stage 1, STEPS); then stage 2, STEPS2 steps from stage 1
# on the stage-1 maps plus the nucleoprotein boxes (lr 2e-4, warm-up 100, EMA 0.998). The EMA
# weights are stored as float16.
#
# Usage: bash scripts/train_tomo_prior.sh [MODELS] [WORK] [STEPS] [COUNT] [STEPS2] [NUCLEIC]
#   MODELS  folder of PDB/mmCIF models   (default ../shared/data/models)
#   WORK    scratch folder               (default tomo-prior-work)
#   STEPS   optimiser steps              (default 10000; about 32 minutes on 2 CPU cores: the network and
#                                        crops are those of train_default_prior.sh stage 1, ~5 steps/s)
#   COUNT   maps of each kind            (default 24; making them takes about 15 minutes on 1 core)
#   STEPS2  stage-2 optimiser steps      (default 4000)
#   NUCLEIC folder of nucleic-acid models (default WORK/nucleic, fetched there with pip)
# Running it again keeps the maps already written and resumes training from WORK/train/checkpoint.pt;
# with a larger STEPS it trains on, its cosine schedule stretched to the new end (the learning rate
# rises again). The shipped prior was trained so, in three runs: STEPS 4000, then 12000, then 24000.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
models="${1:-$here/../shared/data/models}"
work="${2:-tomo-prior-work}"
steps="${3:-10000}"
count="${4:-24}"
steps2="${5:-4000}"
nucleic="${6:-$work/nucleic}"
if [ ! -e "$nucleic/heldout.txt" ]; then
    python "$here/scripts/fetch_nucleic_acid_models.py" --out "$nucleic"
fi

# shellcheck source=training_models.sh
source "$here/scripts/training_models.sh"

mkdir -p "$work/maps"
for spec in complex:1 filament:2; do
    name="${spec%%:*}"; seed="${spec##*:}"; d="$work/$name-maps"
    if [ ! -e "$d/done" ]; then
        # --keep-existing: an interrupted run redraws the same boxes and simulates only the missing maps
        python "$here/scripts/make_${name}_maps.py" "${train_models[@]}" --out-dir "$d" --count "$count" \
            --box 64 --voxel-size 10 --seed "$seed" --keep-existing
        touch "$d/done"
    fi
    for m in "$d"/*.mrc; do
        ln -sf "$(cd "$(dirname "$m")" && pwd)/$(basename "$m")" "$work/maps/$(basename "$m")"
    done
done

cryoinverse train prior --data "$work/maps" --out "$work/train" --arch compact --box 32 --voxel-size 10 \
    --steps "$steps" --batch-size 4 --lr 4e-4 --warmup 200 --schedule cosine --ema-decay 0.999 \
    --scale-jitter 0.3 --checkpoint-every 250 --seed 0

mkdir -p "$work/maps2"
d="$work/nucleoprotein-maps"
if [ ! -e "$d/done" ]; then
    python "$here/scripts/make_complex_maps.py" "${train_models[@]}" "${nucleic_models[@]}" "${nucleic_models[@]}" "${nucleic_models[@]}" \
        --out-dir "$d" --count $((count / 2)) --box 64 --voxel-size 10 --seed 3 --keep-existing
    touch "$d/done"
fi
for m in "$work/maps"/*.mrc; do ln -sf "$(readlink -f "$m")" "$work/maps2/$(basename "$m")"; done
for m in "$d"/*.mrc; do ln -sf "$(readlink -f "$m")" "$work/maps2/nucleoprotein_$(basename "$m")"; done

cryoinverse train prior --data "$work/maps2" --out "$work/train2" --arch compact --box 32 --voxel-size 10 \
    --steps "$steps2" --batch-size 4 --lr 2e-4 --warmup 100 --schedule cosine --ema-decay 0.998 \
    --scale-jitter 0.3 --checkpoint-every 250 --seed 1 --init "$work/train/prior.safetensors"

python "$here/scripts/store_prior.py" "$work/train2/prior.safetensors" "$here/priors/data/tomo.safetensors"
