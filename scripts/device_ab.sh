#!/usr/bin/env bash
# One GPU-machine call (the `run` tool) that checks a candidate build and times it against a base
# build in the same job, with PyTorch's numbers for the ratios:
#   1. the candidate's attention and column-sum tests and the backend suite (a failure stops the
#      timings: numbers of unchecked code are not worth reporting);
#   2. kernel_bench's attention, LayerNorm, dropout and bias-sum rows of both builds at 64x512, full and Yelp lengths;
#   3. `llmqs-dist bench` alternating base / new, ROUNDS rounds, at 64x512, Yelp grouped, 256x128;
#   4. pytorch_bert_baseline.py (torch.compile) at 64x512 and 256x128 unless TORCH=0.
# Each build is a folder with llmqs-dist and kernel_bench (the candidate also kernels_cuda_test and
# core_cuda_backend_test), built with -DCMAKE_CUDA_ARCHITECTURES="75;90a" -DLLMQS_STATIC_DEPS=ON,
# stripped, and carried (e.g. xz-packed under .devcarry/, which .gitignore keeps out of git).
# Usage: scripts/device_ab.sh BASE_DIR NEW_DIR [PYTORCH_SCRIPT]
#   env: ROUNDS (2), TORCH (1), KERNEL_TESTS (the candidate's kernels_cuda_test filter, default
#   '*FlashAttention*:*ColumnSums*'; '*' runs the whole suite, as a change to dropout or any
#   kernel other than attention needs). Writes $OUT/summary.txt (one line per measurement) and logs.tgz.
# scripts/prepare_candidate.sh builds and packs both folders from HEAD and a list of patches.
set -uo pipefail
base=${1:?base build folder}
new=${2:?candidate build folder}
torch_script=${3:-.devcarry/pytorch_bert_baseline.py}
rounds=${ROUNDS:-2}
out=${OUT:-/tmp/llmqs-out}
logs=$out/logs
summary=$out/summary.txt
mkdir -p "$logs"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
start=$(date +%s)
elapsed() { echo "($(($(date +%s) - start))s)"; }
note() { echo "$*" | tee -a "$summary"; }
pack_logs() { (cd "$out" && tar -czf logs.tgz logs && rm -rf logs); }

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "device_ab.sh: no GPU on this machine (nvidia-smi not found): run it through the run tool" >&2
  exit 2
fi
note "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
source scripts/device_env.sh "$new/llmqs-dist" >/dev/null  # CUDA libraries from PyTorch's wheels if missing
"$new/kernels_cuda_test" --gtest_filter="${KERNEL_TESTS:-*FlashAttention*:*ColumnSums*}" >"$logs/kernels_test.txt" 2>&1
kernels_rc=$?
"$new/core_cuda_backend_test" >"$logs/backend_test.txt" 2>&1
backend_rc=$?
note "new: kernels tests (${KERNEL_TESTS:-*FlashAttention*:*ColumnSums*}) rc=$kernels_rc, backend suite rc=$backend_rc" \
  "$(grep -hE '^\[  (PASSED|FAILED)  \]' "$logs/kernels_test.txt" "$logs/backend_test.txt" | tr '\n' ' ') $(elapsed)"
if [ "$kernels_rc" != 0 ] || [ "$backend_rc" != 0 ]; then
  note "tests failed: no timings"
  pack_logs
  exit 1
fi

for build in "$base" "$new"; do
  for lengths in full yelp; do
    log="$logs/kernel_bench_$(basename "$build")_$lengths.txt"
    "$build/kernel_bench" --batch 64 --seq 512 $([ "$lengths" = yelp ] && echo --lengths yelp) >"$log" 2>&1
    grep -E "^  (flash_attention|attention_dropout_mask|layernorm_|dropout_fwd|linear_bwd_bias)" "$log" |
      awk -v b="$(basename "$build")" '{print "kernel_bench", b, $1, "median_ms=" $(NF-6), $(NF-2), $(NF-1)}' |
      sort -u | tee -a "$summary"
  done
done

bench() {  # bench TAG BUILD ARGS...
  local tag=$1 build=$2
  shift 2
  "$build/llmqs-dist" bench --precision bf16 --steps 20 --warmup 5 "$@" >"$logs/bench_$tag.json" 2>"$logs/bench_$tag.err"
  python3 - "$logs/bench_$tag.json" "$tag" "$logs/bench_$tag.err" <<'EOF' | tee -a "$summary"
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("{")]
if not lines:
    errors = open(sys.argv[3]).read().strip().splitlines()
    print(sys.argv[2], "no result:", errors[-1] if errors else "no output")
    sys.exit()
d = json.loads(lines[-1])
print(sys.argv[2], "ms/step=%s tok/s=%s useful=%s epoch_s=%s loss=%s mem=%s" % (
    d["ms_per_step"], d["tok_per_s"], d["useful_tok_per_s"], d["yelp_epoch_s"], d["final_loss"], d["peak_mem_gib"]))
EOF
}
for round in $(seq "$rounds"); do
  for build in "$base" "$new"; do
    b=$(basename "$build")
    bench "$b-64x512-$round" "$build" --seq 512 --batch 64
    bench "$b-yelp-$round" "$build" --seq 512 --batch 64 --lengths yelp --padding grouped
    bench "$b-256x128-$round" "$build" --seq 128 --batch 256
  done
done
note "benches done $(elapsed)"

if [ "${TORCH:-1}" != 0 ]; then
  for shape in "512 64" "128 256"; do
    set -- $shape
    python3 "$torch_script" --dtype bf16 --steps 20 --warmup 5 --seq "$1" --batch "$2" --compile yes \
      >"$logs/torch_$1.json" 2>"$logs/torch_$1.err"
    python3 - "$logs/torch_$1.json" <<'EOF' | tee -a "$summary"
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{"):
        d = json.loads(line)
        print("torch", d.get("system"), "%sx%s" % (d.get("batch"), d.get("seq")),
              "ms/step=%s tok/s=%s mem=%s" % (d.get("ms_per_step"), d.get("tok_per_s"), d.get("peak_mem_gib")))
EOF
  done
  note "torch done $(elapsed)"
fi
pack_logs
