#!/usr/bin/env bash
# Step benchmark on one GPU: ResNet-50 in bfloat16 with a batch that fills the device.
#
# COMMAND (from the repository root; needs JAX with CUDA, flax, optax, orbax; no TensorFlow)
#   bash benchmarks/gpu.sh OUT_DIR            # one H100/H200: about 3 min, compiles included
#   bash benchmarks/gpu.sh OUT_DIR --smoke    # the same path on the CPU with a tiny model
#   bash benchmarks/gpu.sh OUT_DIR [--smoke] --test_res=224,288   # more steps.py flags
#
# Runs benchmarks/steps.py for train@224, train@128, eval@288 and finetune@288 on the first
# device, and writes OUT_DIR/gpu.json (images/s, compile times, XLA's FLOPs and MFU against
# the card's dense bf16 peak) and OUT_DIR/gpu.log. BATCH (default 1024: 41 GiB on an H200)
# is tried first; when the device runs out of memory, steps.py exits with 75 and the batch
# is halved. The whole script stops after BUDGET_S seconds (default 540), leaving whatever
# JSON was written so far. PYTHON picks the interpreter (default: python).
# Copy gpu.json to docs/benchmarks/gpu_<card>.json and run `python -m benchmarks.report`.
set -euo pipefail

out_dir=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [--smoke] [steps.py flags]}
shift
mode=""
if [[ "${1:-}" == "--smoke" ]]; then
  mode=smoke
  shift
fi
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
cd "$(dirname "$0")/.."

# Let XLA take most of the GPU (default 75%); the steps hold few buffers besides activations.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
budget_s=${BUDGET_S:-540}
python=${PYTHON:-python}
if [[ "$mode" == smoke ]]; then
  export JAX_PLATFORMS=cpu
  batch=${BATCH:-4}
  name=smoke
  args=(--model=tiny --dtype=float32 --train_res=48,32 --test_res=40 --warmup=1 --iters=2)
else
  # Fail at once, rather than benchmark the CPU, if JAX cannot see a CUDA device.
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}
  batch=${BATCH:-1024}
  name=gpu
  # The largest step first, so that running out of memory shows before other compiles.
  args=(--model=resnet50 --dtype=bfloat16 --train_res=224,128 --test_res=288 --warmup=3
        --iters=20)
fi

log="$out_dir/$name.log"
: > "$log"
if [[ "$mode" != smoke ]] && ! "$python" -c 'import jax; print(jax.devices())' >> "$log" 2>&1; then
  echo "JAX sees no CUDA device (JAX_PLATFORMS=$JAX_PLATFORMS): check nvidia-smi and that" \
    "jax[cuda12] or jax[cuda13] is installed; details in $log." >&2
  exit 1
fi
while true; do
  left=$((budget_s - SECONDS))
  if ((left < 30)); then
    echo "Out of time (BUDGET_S=$budget_s) before batch $batch could run." | tee -a "$log" >&2
    exit 1
  fi
  echo "== batch $batch, $left s left" | tee -a "$log" >&2
  status=0
  timeout "$left" "$python" -m benchmarks.steps "${args[@]}" --batch="$batch" --num_devices=1 \
    --out="$out_dir/$name.json" "$@" > "$out_dir/$name.stdout" 2> "$out_dir/attempt.log" \
    || status=$?
  cat "$out_dir/attempt.log" >> "$log"
  # 75: steps.py caught the error; a crash that reports exhausted memory counts too.
  if ((status == 75)) || { ((status != 0 && status != 124)) &&
      grep -qE 'RESOURCE_EXHAUSTED|[Oo]ut of memory' "$out_dir/attempt.log"; }; then
    if ((batch == 1)); then
      echo "Out of memory even at batch 1; see $log." >&2
      exit 1
    fi
    echo "== out of memory at batch $batch: halving it" | tee -a "$log" >&2
    batch=$((batch / 2))
    continue
  fi
  rm -f "$out_dir/attempt.log"
  if ((status != 0)); then
    tail -n 20 "$log" >&2
    echo "benchmarks.steps exited with $status; see $log (partial JSON: $out_dir/$name.json)." >&2
    exit "$status"
  fi
  break
done

"$python" - "$out_dir/$name.json" <<'EOF'
import json
import sys

result = json.load(open(sys.argv[1]))
machine, config = result['machine'], result['config']
print(f"{machine['device_kind']}: {config['model']} {config['dtype']}, batch {config['batch']}")
for r in result['records']:
  mfu = f"{100 * r['mfu']:.1f}%" if r.get('mfu') else 'n/a'
  print(f"  {r['step']:>8}@{r['resolution']}: {r['images_per_s']:9.1f} images/s, "
        f"{r['tflops_per_s']:7.2f} TFLOP/s, MFU {mfu}, compile {r['compile_s']:.1f} s")
for d in result['derived']['train_cost_ratio']:
  print(f"  train {d['resolution']}/{d['base']}: {d['measured']:.2f}x (theory {d['theory']:.2f})")
for d in result['derived']['finetune_over_eval']:
  print(f"  finetune/eval @{d['resolution']}: {d['measured']:.3f} (target <= {d['target']})")
EOF
echo "Wrote $out_dir/$name.json in ${SECONDS} s." >&2
