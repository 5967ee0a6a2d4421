#!/usr/bin/env bash
# Rebuilds the shipped default prior, priors/data/default.safetensors + default.json, in two stages.
#
# Models: every protein model in MODELS except those listed in bench/default_prior_heldout.txt, and
# every RNA/DNA-containing model in NUCLEIC except those in its heldout.txt (NUCLEIC is fetched with
# scripts/fetch_nucleic_acid_models.py when it is not there: ribosomes and other nucleoproteins are
# common specimens, and nucleic acid is denser and shaped unlike protein).
# Stage 1: clean maps simulated by `cryoinverse simulate` (5-Gaussian form factors, 1.5 A voxels,
# 64^3; models wider than its 96 A are clipped) from every model, each at two global B-factors (40 and
# 100 A^2); `cryoinverse train prior`
# with the `compact` architecture on 32^3 crops with random SO(3) rotations, 10000 steps from random
# weights.
# Stage 2 (fine-tuning from stage 1, 4000 steps): broader data, closer to maps the prior meets:
# both simulator forms (5-Gaussian at B = 25, 60, 120 A^2; one Gaussian per atom at B = 40, 90),
# 24 crowded boxes of 8 protein chains each and 12 nucleoprotein boxes of 8 models each, the
# nucleic-acid models drawn three times as often as protein chains (about 60% nucleic acid, as in a
# ribosome) (scripts/make_crowded_maps.py, B 30-150), and density-scale jitter (+-0.3 in log
# scale: the scale of a noisy map is never exactly known).
# The EMA weights are stored as float16 (the loader computes in float32).
#
# Usage: bash scripts/train_default_prior.sh [MODELS] [WORK] [STEPS] [STEPS2] [NUCLEIC]
#   MODELS  folder of PDB/mmCIF models   (default ../shared/data/models)
#   WORK    scratch folder               (default default-prior-work)
#   STEPS   stage-1 optimiser steps      (default 10000; about 35 minutes on 2 CPU cores)
#   STEPS2  stage-2 optimiser steps      (default 4000; about 10 minutes)
#   NUCLEIC folder of nucleic-acid models (default WORK/nucleic, fetched there with pip)
# Running it again resumes training from WORK/train*/checkpoint.pt.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
models="${1:-$here/../shared/data/models}"
work="${2:-default-prior-work}"
steps="${3:-10000}"
steps2="${4:-4000}"
nucleic="${5:-$work/nucleic}"
if [ ! -e "$nucleic/heldout.txt" ]; then
    python "$here/scripts/fetch_nucleic_acid_models.py" --out "$nucleic"
fi

# shellcheck source=training_models.sh
source "$here/scripts/training_models.sh"
all_models=("${train_models[@]}" "${nucleic_models[@]}")

mkdir -p "$work/maps"
for b in 40 100; do
    if [ ! -d "$work/sim-b$b" ]; then
        cryoinverse simulate "${all_models[@]}" --out-dir "$work/sim-b$b.tmp" --voxel-size 1.5 --box 64 --bfactor "$b" --allow-clip
        mv "$work/sim-b$b.tmp" "$work/sim-b$b"
    fi
    for m in "$work/sim-b$b"/*.mrc; do
        ln -sf "$(cd "$(dirname "$m")" && pwd)/$(basename "$m")" "$work/maps/$(basename "${m%.mrc}")_b$b.mrc"
    done
done

cryoinverse train prior --data "$work/maps" --out "$work/train" --arch compact --box 32 --voxel-size 1.5 \
    --steps "$steps" --batch-size 4 --lr 4e-4 --warmup 200 --schedule cosine --ema-decay 0.999 \
    --checkpoint-every 250 --seed 0

mkdir -p "$work/maps2"
for spec in 5gaussian:25 5gaussian:60 5gaussian:120 gaussian:40 gaussian:90; do
    form="${spec%%:*}"; b="${spec##*:}"; d="$work/sim2-$form-b$b"
    if [ ! -d "$d" ]; then
        cryoinverse simulate "${all_models[@]}" --out-dir "$d.tmp" --voxel-size 1.5 --box 64 --bfactor "$b" --form "$form" --allow-clip
        mv "$d.tmp" "$d"
    fi
    for m in "$d"/*.mrc; do
        ln -sf "$(cd "$(dirname "$m")" && pwd)/$(basename "$m")" "$work/maps2/$(basename "${m%.mrc}")_${form}_b$b.mrc"
    done
done
if [ ! -d "$work/crowded" ]; then
    python "$here/scripts/make_crowded_maps.py" "${train_models[@]}" --out-dir "$work/crowded.tmp" --count 24 --seed 1
    mv "$work/crowded.tmp" "$work/crowded"
fi
if [ ! -d "$work/nucleoprotein" ]; then
    python "$here/scripts/make_crowded_maps.py" "${train_models[@]}" "${nucleic_models[@]}" "${nucleic_models[@]}" "${nucleic_models[@]}" \
        --out-dir "$work/nucleoprotein.tmp" --count 12 --seed 2 --prefix nucleoprotein
    mv "$work/nucleoprotein.tmp" "$work/nucleoprotein"
fi
for m in "$work/crowded"/*.mrc "$work/nucleoprotein"/*.mrc; do
    ln -sf "$(cd "$(dirname "$m")" && pwd)/$(basename "$m")" "$work/maps2/$(basename "$m")"
done

cryoinverse train prior --data "$work/maps2" --out "$work/train2" --arch compact --box 32 --voxel-size 1.5 \
    --steps "$steps2" --batch-size 4 --lr 2e-4 --warmup 100 --schedule cosine --ema-decay 0.998 \
    --checkpoint-every 250 --seed 1 --scale-jitter 0.3 --init "$work/train/prior.safetensors"

python "$here/scripts/store_prior.py" "$work/train2/prior.safetensors" "$here/priors/data/default.safetensors"
