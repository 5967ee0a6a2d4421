#!/usr/bin/env bash
# Make benchmark inputs from a clean map with the operators' noise models (CryoFM's tasks).
# Usage: bash examples/degrade_recipe.sh [DIR]   (DIR holds reference.mrc; default demo-out)
set -euo pipefail
dir=${1:-demo-out}
ci=${CRYOINVERSE:-cryoinverse}
# anisotropic noise: white base noise, 10x stronger inside a 40-degree cone about z
$ci degrade "$dir/reference.mrc" "$dir/anisotropic.mrc" --overwrite --seed 1 \
    -k anisotropic-noise -p noise_variance=0.00116 -p factor=10 -p cone_half_angle=40
# missing wedge of a +-60 and a +-45 degree tilt series about y, noise-free
$ci degrade "$dir/reference.mrc" "$dir/wedge60.mrc" --overwrite -k missing-wedge -p tilt_min=-60 -p tilt_max=60 -p noise_variance=0
$ci degrade "$dir/reference.mrc" "$dir/wedge45.mrc" --overwrite -k missing-wedge -p tilt_min=-45 -p tilt_max=45 -p noise_variance=0
