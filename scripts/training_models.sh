# Sourced by the train_*.sh scripts after they set `here` (the repository root) and `models` (a
# folder of PDB/mmCIF models): fills the array `train_models` with every model there except the
# chains listed in bench/default_prior_heldout.txt, which the benchmarks keep unseen, and sets
# `heldout` to that list.
heldout="$(grep -v '^#' "$here/bench/default_prior_heldout.txt" | tr '\n' ' ')"
train_models=()
for f in "$models"/*.pdb "$models"/*.cif; do
    [ -e "$f" ] || continue
    id="$(basename "${f%.*}")"
    case " $heldout " in *" $id "*) continue ;; esac
    train_models+=("$f")
done
if [ "${#train_models[@]}" -eq 0 ]; then
    echo "no PDB or mmCIF models to train on in $models (held out: $heldout)" >&2
    exit 2
fi
echo "training on ${#train_models[@]} models; held out: $heldout" >&2
