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

# With `nucleic` set (a folder written by scripts/fetch_nucleic_acid_models.py), also fills
# `nucleic_models` with its RNA/DNA-containing models except those in its heldout.txt.
nucleic_models=()
if [ -n "${nucleic:-}" ]; then
    nucleic_heldout="$(cat "$nucleic/heldout.txt" | tr '\n' ' ')"
    for f in "$nucleic"/*.pdb "$nucleic"/*.cif; do
        [ -e "$f" ] || continue
        id="$(basename "${f%.*}")"
        case " $nucleic_heldout " in *" $id "*) continue ;; esac
        nucleic_models+=("$f")
    done
    echo "and on ${#nucleic_models[@]} nucleic-acid models; held out: $nucleic_heldout" >&2
fi
