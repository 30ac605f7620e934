#!/usr/bin/env bash
# The GPU machine check, end to end in one command (about 5 minutes on one recent NVIDIA GPU):
#   1. train the default model under torchrun (nccl) in bf16, stop half way and resume once;
#   2. train it again in fp16 (GradScaler);
#   3. export the bf16 run's generator as fp32, fp16 and int8 (each verified by the exporter);
#   4. sample every model with each provider (cpu, cuda, tensorrt) and check the GPU providers
#      really ran and gave the CPU's images to within a few grey levels;
#   5. time the same generator in PyTorch on the GPU (fp32 and bf16 autocast) as a baseline,
#   and print images/s of every run against the CPU run and against that baseline;
#   6. run ganaug augment (5 labels per class of the digits, the rest unlabelled) twice on the GPU,
#      check that its classifiers trained there and that the two runs wrote the same training set,
#      and time it against the same run on the CPU (CUDA_VISIBLE_DEVICES=).
#   Any error stops it with a non-zero exit status and says where.
#
#   scripts/gpu_check.sh                          # ganaug installed with [train,gpu]
#   STEPS=100 N=5000 PROVIDERS="cpu cuda" scripts/gpu_check.sh
#
# Without a GPU it runs the CPU parts (training in the automatic precision with gloo, the resume,
# the three exports, CPU sampling, the PyTorch baseline on the CPU) and says which GPU parts it
# skipped, so that CI keeps it working (tests/test_gpu_check.py runs it with a tiny model).
# REQUIRE_GPU=1 turns a missing GPU into an error instead.
set -euo pipefail

OUT=${OUT:-runs/gpu_check}          # everything this writes; emptied first
STEPS=${STEPS:-300}                 # training steps of each run; the bf16 run stops at STEPS/2 and resumes
N=${N:-20000}                       # images per sampling run (and per baseline run)
BATCH=${BATCH:-256}                 # batch size of the sampler and of the baseline
PROVIDERS=${PROVIDERS:-cpu cuda tensorrt}
PRECISIONS=${PRECISIONS:-fp32 fp16 int8}  # exported models
OVERRIDES=${OVERRIDES:-}            # more config overrides for every training run (CI: a tiny model)
# ganaug augment's run: no generator (GAN training is checked above), so the classifiers are what it times
AUGMENT_ARGS=${AUGMENT_ARGS:---folds 3 --policy elastic --synthetic never --classifier-steps 100 --teacher-steps 200 data.resolution=16}
REQUIRE_GPU=${REQUIRE_GPU:-0}
MAX_DIFF=${MAX_DIFF:-16}            # grey levels a GPU provider's image may differ from the CPU's
PYTHON=${PYTHON:-python}
GANAUG=${GANAUG:-ganaug}

say() { printf '\n== %s\n' "$*" >&2; }
fail() {
    echo "gpu_check.sh: error: $*" >&2
    exit 1
}
trap 'echo "gpu_check.sh: error: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

# ------------------------------------------------------------------------------ the machine
gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --list-gpus >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2
    # A GPU that torch cannot use is a broken machine, not a CPU one.
    "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'nvidia-smi lists a GPU but torch ' + torch.__version__ + ' cannot use it (CPU build? driver too old?)')"
    gpu=1
elif [[ $REQUIRE_GPU == 1 ]]; then
    fail "REQUIRE_GPU=1 but nvidia-smi lists no GPU"
else
    say "no NVIDIA GPU: skipping nccl, bf16/fp16 GPU training, the cuda and tensorrt providers and the GPU baseline; running the CPU parts"
fi
"$PYTHON" -c "import torch, onnxruntime as ort; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| onnxruntime', ort.__version__, ort.get_available_providers())" >&2

rm -rf "$OUT"
mkdir -p "$OUT"
results="$OUT/results.tsv"   # what,images,seconds,images/s
: >"$results"

# ------------------------------------------------------------------------------ training
# $1 run directory, $2 precision, $3 steps; the rest: more overrides. Logs to $1.log.
train() {
    local run_dir=$1 precision=$2 steps=$3
    shift 3
    local started=$SECONDS
    # shellcheck disable=SC2086  # OVERRIDES is a list of key=value words
    "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 \
        -m ganaug train --run-dir "$run_dir" "train.precision=$precision" "train.steps=$steps" \
        "ckpt.every=$(( steps > 2 ? steps / 2 : 1 ))" "log.every=$(( steps > 10 ? steps / 10 : 1 ))" \
        log.progress=false log.image_every=0 $OVERRIDES "$@" >>"$run_dir.log" 2>&1 \
        || { tail -n 30 "$run_dir.log" >&2; fail "training $run_dir ($precision) failed; log: $run_dir.log"; }
    grep -q "training .* on $device" "$run_dir.log" \
        || fail "$run_dir did not train on $device; log: $run_dir.log"
    echo "trained $run_dir ($precision) to step $steps in $((SECONDS - started)) s" >&2
}

if [[ $gpu == 1 ]]; then
    device=cuda
    train_precisions=(bf16 fp16)
else
    device=cpu
    train_precisions=(auto)   # bf16 where this CPU runs it natively, else fp32
fi
half=$(( STEPS > 1 ? STEPS / 2 : 1 ))
first=${train_precisions[0]}
run="$OUT/train_$first"
say "training ($first) to step $half, then resuming to step $STEPS"
mkdir -p "$run"
train "$run" "$first" "$half"
train "$run" "$first" "$STEPS"
grep -q "resumed at step $half" "$run.log" || fail "the second run did not resume at step $half; log: $run.log"
for precision in "${train_precisions[@]:1}"; do
    say "training ($precision)"
    mkdir -p "$OUT/train_$precision"
    train "$OUT/train_$precision" "$precision" "$STEPS"
done

# ------------------------------------------------------------------------------ export
models=()
for precision in $PRECISIONS; do
    say "export $precision"
    model="$OUT/generator_$precision.onnx"
    "$GANAUG" export "$run" --out "$model" --precision "$precision" --force
    models+=("$model")
done
# The exported model carries the training step of its weights as its ONNX model_version.
"$PYTHON" -c "import onnx, sys; v = onnx.load(sys.argv[1]).model_version; sys.exit(0 if v == int(sys.argv[2]) else f'model_version {v}, expected {sys.argv[2]}')" \
    "${models[0]}" "$STEPS"

# ------------------------------------------------------------------------------ sampling
providers=()
for provider in $PROVIDERS; do
    if [[ $provider != cpu && $gpu == 0 ]]; then
        echo "no GPU: skipping the $provider provider" >&2
    else
        providers+=("$provider")
    fi
done
[[ " ${providers[*]} " == *" cpu "* ]] || fail "PROVIDERS must include cpu: the GPU providers are compared with it"
for model in "${models[@]}"; do
    name=$(basename "$model" .onnx)
    for provider in "${providers[@]}"; do
        say "sample $name on $provider"
        out="$OUT/samples/${name}_$provider"
        log="$out.log"
        mkdir -p "$(dirname "$out")"
        "$GANAUG" sample "$model" --n "$N" --out "$out" --format npz --seed 0 --batch-size "$BATCH" \
            --provider "$provider" --no-progress 2>"$log" \
            || { cat "$log" >&2; fail "sampling $name on $provider failed"; }
        cat "$log" >&2
        # A provider that does not start falls back (tensorrt to cuda, cuda to cpu) with a warning:
        # here that is an error.
        used=$(sed -n 's/.*sampling [0-9]* images on \([a-z]*\) into.*/\1/p' "$log" | tail -n 1)
        if [[ $used != "$provider" ]]; then
            fail "asked for the $provider provider, ganaug sample ran $name on ${used:-an unknown provider} (see the warning above); for tensorrt, install TensorRT's libraries or leave it out of PROVIDERS"
        fi
        rate=$(sed -n 's/.*wrote \([0-9]*\) images.* in \([0-9.]*\) s (\([0-9.]*\) images\/s).*/\1\t\2\t\3/p' "$log" | tail -n 1)
        [[ -n $rate ]] || fail "no 'wrote N images in S s (R images/s)' line from ganaug sample; log: $log"
        printf 'sample %s %s\t%s\n' "$name" "$provider" "$rate" >>"$results"
        if [[ $provider != cpu ]]; then   # same model, same seed: the same images up to kernel rounding
            "$PYTHON" - "$OUT/samples/${name}_cpu" "$out" "$MAX_DIFF" <<'PY'
import glob, os, sys
import numpy as np
cpu_dir, gpu_dir, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
shards = sorted(os.path.basename(p) for p in glob.glob(os.path.join(cpu_dir, "shard_*.npz")))
assert shards, f"no shards in {cpu_dir}"
worst, differing, total = 0, 0, 0
for shard in shards:
    with np.load(os.path.join(cpu_dir, shard)) as a, np.load(os.path.join(gpu_dir, shard)) as b:
        assert np.array_equal(a["labels"], b["labels"]), f"{shard}: labels differ"
        diff = np.abs(a["images"].astype(np.int16) - b["images"].astype(np.int16))
        worst, differing, total = max(worst, int(diff.max())), differing + int((diff > 0).sum()), total + diff.size
print(f"  against the CPU: max difference {worst} grey levels, {100 * differing / total:.3f}% of pixels differ",
      file=sys.stderr)
sys.exit(0 if worst <= limit else f"{gpu_dir}: images differ from the CPU's by up to {worst} grey levels (> {limit})")
PY
        fi
    done
done

# ------------------------------------------------------------------------------ PyTorch baseline
say "PyTorch generator baseline on $device"
"$PYTHON" - "$run" "$device" "$N" "$BATCH" >>"$results" <<'PY'
"""The exported generator (G_ema of the run, with the same uint8 post-processing) in PyTorch:
images/s for N images in batches, on the device, copied back to the host as the sampler's are."""
import sys, time
import torch
from ganaug.export.source import load_generator
from ganaug.export.wrapper import ImageGenerator

run_dir, device, n, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
loaded = load_generator(run_dir)
module = ImageGenerator(loaded.generator).to(device).eval()
spec = loaded.spec
generator = torch.Generator(device).manual_seed(0)

def run(autocast_dtype):
    done = 0
    while done < n:
        size = min(batch, n - done)
        z = torch.randn(size, spec.z_dim, device=device, generator=generator)
        labels = (torch.arange(done, done + size, device=device) % spec.num_classes) if spec.num_classes else None
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            images, _ = module(z, labels)
        images.cpu()  # to the host, as the sampler's images are (a sync point on the GPU)
        done += size

variants = [("fp32", None)] + ([("bf16", torch.bfloat16)] if device == "cuda" else [])
with torch.inference_mode():
    for name, dtype in variants:
        run(dtype)  # warm-up: kernel selection, memory pools
        start = time.perf_counter()
        run(dtype)
        seconds = time.perf_counter() - start
        print(f"torch {device} {name}\t{n}\t{seconds:.3f}\t{n / seconds:.0f}")
PY

# ------------------------------------------------------------------------------ augment
# $1 output directory; the rest: environment for the run. Prints its wall seconds; logs to $1.log.
augment() {
    local out=$1 started=$SECONDS
    shift
    # shellcheck disable=SC2086  # AUGMENT_ARGS is a list of words
    env "$@" "$GANAUG" augment --labelled "$OUT/augment/data/labelled.npz" \
        --unlabelled "$OUT/augment/data/unlabelled.npz" --out "$out" --no-progress $AUGMENT_ARGS >"$out.log" 2>&1 \
        || { tail -n 30 "$out.log" >&2; fail "ganaug augment into $out failed; log: $out.log"; }
    echo $((SECONDS - started))
}
say "ganaug augment on $device, twice: the same training set"
"$PYTHON" "$(dirname "$0")/few_labels.py" --source digits --k 5 --out "$OUT/augment/data" >&2
first_s=$(augment "$OUT/augment/${device}_a")
augment "$OUT/augment/${device}_b" >/dev/null
grep -q "the estimate's classifiers train on $device" "$OUT/augment/${device}_a.log" \
    || fail "augment's classifiers did not train on $device; log: $OUT/augment/${device}_a.log"
for file in manifest.csv report.json; do
    cmp -s "$OUT/augment/${device}_a/$file" "$OUT/augment/${device}_b/$file" \
        || fail "two ganaug augment runs with the same seed on $device wrote different $file ($OUT/augment)"
done
printf 'augment %s\t%s s\n' "$device" "$first_s" >>"$OUT/augment.tsv"
echo "augment on $device: ${first_s} s; the two runs wrote the same manifest.csv and report.json" >&2
if [[ $gpu == 1 ]]; then
    say "ganaug augment on the CPU (CUDA_VISIBLE_DEVICES=), for the time"
    cpu_s=$(augment "$OUT/augment/cpu" CUDA_VISIBLE_DEVICES=)
    grep -q "the estimate's classifiers train on cpu" "$OUT/augment/cpu.log" \
        || fail "with CUDA_VISIBLE_DEVICES= augment's classifiers did not train on the CPU; log: $OUT/augment/cpu.log"
    printf 'augment cpu\t%s s\n' "$cpu_s" >>"$OUT/augment.tsv"
    echo "augment on the CPU: ${cpu_s} s, $(awk -v c="$cpu_s" -v g="$first_s" 'BEGIN { printf "%.1f", c / (g > 0 ? g : 1) }')x the GPU's time" >&2
fi

# ------------------------------------------------------------------------------ the table
say "images/s ($N images, batch $BATCH; samplers write .npz, the baseline only copies to the host)"
awk -F'\t' -v device="$device" '
    { what[NR] = $1; rate[NR] = $4
      split($1, w, " ")
      if (w[1] == "sample" && w[3] == "cpu") cpu[w[2]] = $4
      if ($1 == "torch " device " fp32") torch_rate = $4 }
    END {
      printf "%-32s %12s %12s %14s\n", "run", "images/s", "vs cpu", "vs torch " device
      for (i = 1; i <= NR; i++) {
        split(what[i], w, " ")
        vs_cpu = (w[1] == "sample" && cpu[w[2]] > 0) ? sprintf("%.2fx", rate[i] / cpu[w[2]]) : "-"
        vs_torch = torch_rate > 0 ? sprintf("%.2fx", rate[i] / torch_rate) : "-"
        printf "%-32s %12.0f %12s %14s\n", what[i], rate[i], vs_cpu, vs_torch
      } }' "$results"
if [[ $gpu == 1 ]]; then
    say "gpu_check.sh: all checks passed"
else
    say "gpu_check.sh: the CPU parts passed; the GPU parts were skipped (no GPU)"
fi
