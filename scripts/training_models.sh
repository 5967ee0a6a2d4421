# Sourced by the train_*.sh scripts after they set `here` (the repository root) and `models` (a
# folder of PDB/mmCIF models): fills the array `train_models` with every model there except the
# chains listed in bench/default_prior_heldout.txt, which the benchmarks keep unseen, and sets
# `heldout` to that list. With `nucleic` set (a folder written by
# scripts/fetch_nucleic_acid_models.py), also fills `nucleic_models` with its RNA/DNA-containing
# models except those in its heldout.txt.

# models_except FOLDER "ID ID ...": prints the PDB/mmCIF files of FOLDER whose stem is not listed
models_except() {
    local f id
    for f in "$1"/*.pdb "$1"/*.cif; do
        [ -e "$f" ] || continue
        id="$(basename "${f%.*}")"
        case " $2 " in *" $id "*) continue ;; esac
        printf '%s\n' "$f"
    done
}

heldout="$(grep -v '^#' "$here/bench/default_prior_heldout.txt" | tr '\n' ' ')"
mapfile -t train_models < <(models_except "$models" "$heldout")
if [ "${#train_models[@]}" -eq 0 ]; then
    echo "no PDB or mmCIF models to train on in $models (held out: $heldout)" >&2
    exit 2
fi
echo "training on ${#train_models[@]} models; held out: $heldout" >&2

nucleic_models=()
if [ -n "${nucleic:-}" ]; then
    nucleic_heldout="$(tr '\n' ' ' < "$nucleic/heldout.txt")"
    mapfile -t nucleic_models < <(models_except "$nucleic" "$nucleic_heldout")
    echo "and on ${#nucleic_models[@]} nucleic-acid models; held out: $nucleic_heldout" >&2
fi
