#!/usr/bin/env bash
# Export-and-verify recipe: a deployable bundle of one run's generator.
#
#   export/bundle.sh RUN_DIR OUT_DIR
#
# Writes OUT_DIR/generator_{fp32,fp16,int8}.onnx (each verified against PyTorch by `ganaug export`),
# checks each one end to end with the real sampler (`ganaug sample`, a few images into
# OUT_DIR/samples/<model>/), and writes OUT_DIR/model_card.json (metadata, parity and sample
# figures, CPU speed, sizes, sha256, the commands, and which file to ship where: docs/export.md).
#
# Knobs (environment variables):
#   GANAUG=ganaug        the ganaug command (with the [train] extra installed)
#   PYTHON=<next to GANAUG, else python3>   the Python that has ganaug installed (for the card)
#   SAMPLE_N=16          images sampled from each variant
#   WEIGHTS=ema          ema | raw
#   OPSET=               ONNX opset (empty: the exporter's tested default)
#   FORCE=0              1 replaces existing files in OUT_DIR
set -euo pipefail

die() {
    echo "bundle.sh: error: $*" >&2
    exit 1
}

[[ $# -eq 2 ]] || { echo "usage: $0 RUN_DIR OUT_DIR" >&2; exit 2; }
run_dir=$1
out_dir=$2
GANAUG=${GANAUG:-ganaug}
SAMPLE_N=${SAMPLE_N:-16}
WEIGHTS=${WEIGHTS:-ema}
OPSET=${OPSET:-}
FORCE=${FORCE:-0}

ganaug_path=$(command -v "$GANAUG") || die "'$GANAUG' not found; install ganaug with its [train] extra or set GANAUG"
default_python=$(dirname "$ganaug_path")/python
[[ -x $default_python ]] || default_python=python3
PYTHON=${PYTHON:-$default_python}

[[ -e $run_dir ]] || die "$run_dir does not exist (expected a run directory or a checkpoint)"
# Fail before exporting anything if the sampler, which verifies the bundle, is missing.
"$GANAUG" sample --help >/dev/null 2>&1 \
    || die "'$GANAUG sample' does not work here; the bundle cannot be verified without the sampler"

export_flags=(--weights "$WEIGHTS")
sample_flags=(--n "$SAMPLE_N" --format npz --seed 0 --no-progress --provider cpu)
if [[ -n $OPSET ]]; then
    export_flags+=(--opset "$OPSET")
fi
if [[ $FORCE == 1 ]]; then
    export_flags+=(--force)
    sample_flags+=(--overwrite)
fi

mkdir -p "$out_dir/samples"
models=()
for precision in fp32 fp16 int8; do
    model=$out_dir/generator_$precision.onnx
    echo "bundle.sh: $precision: export" >&2
    "$GANAUG" export "$run_dir" --out "$model" --precision "$precision" "${export_flags[@]}"
    echo "bundle.sh: $precision: sample $SAMPLE_N images" >&2
    # The same seed for every variant: same latents and labels, so the card can compare the images.
    "$GANAUG" sample "$model" --out "$out_dir/samples/generator_$precision" "${sample_flags[@]}" \
        || die "ganaug sample failed on $model"
    models+=("$model")
done

"$PYTHON" -m ganaug.export.card --out "$out_dir/model_card.json" --source "$run_dir" \
    --samples-dir "$out_dir/samples" --command "$0 $*" "${models[@]}"
echo "bundle.sh: done: $out_dir/model_card.json" >&2
