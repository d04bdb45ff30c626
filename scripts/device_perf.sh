#!/usr/bin/env bash
# One GPU-machine call that checks and measures a build (the `run` tool; carry: [".devcarry/perf"]):
#   1. the CUDA test suites (kernels vs CPU twins, whole steps vs the cpu backend);
#   2. a per-phase GPU time profile (LLMQS_CUDA_PROFILE=1) of bert-base bf16 64x512, fused and
#      unfused attention;
#   3. benchmarks/compare_pytorch.sh (ours vs PyTorch eager/compile), with LLMQS_ATTENTION=fused
#      only if its tests passed (else unfused, so every number is of checked code);
#   4. the unfused baseline at the two headline shapes.
# Binaries come prebuilt in .devcarry/perf/ (llmqs-dist, kernels_cuda_test, core_cuda_backend_test),
# built here with -DCMAKE_CUDA_ARCHITECTURES="75;90" -DLLMQS_STATIC_DEPS=ON.
# Usage: scripts/device_perf.sh [quick]   (quick: no PyTorch runs)
set -uo pipefail
bin=.devcarry/perf
out=${OUT:-/tmp/llmqs-out}
mkdir -p "$out"
source scripts/device_env.sh "$bin/llmqs-dist"

status=0
fused_ok=1
for t in kernels_cuda_test core_cuda_backend_test; do
  "$bin/$t" >"$out/$t.log" 2>&1
  rc=$?
  grep -E "^\[ (cuda-vs-cpu|memory) \]|Failure|FAILED|error" "$out/$t.log" | head -40
  echo "$t exit $rc: $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]' "$out/$t.log" | tr '\n' ' ')"
  [ "$rc" = 0 ] || status=1
  grep -qE "FAILED.*(Flash|FusedAttention)" "$out/$t.log" && fused_ok=0
done
[ "$status" = 0 ] || fused_ok=0
echo "fused attention checked: $fused_ok"

for attention in fused unfused; do
  [ "$attention" = fused ] && [ "$fused_ok" = 0 ] && continue
  LLMQS_ATTENTION=$attention LLMQS_CUDA_PROFILE=1 "$bin/llmqs-dist" bench --seq 512 --batch 64 --precision bf16 \
    --steps 6 --warmup 2 --peak-tflops 790 2>&1 | sed "s/^/[$attention] /"
done

if [ "$fused_ok" = 1 ]; then export LLMQS_ATTENTION=fused; else export LLMQS_ATTENTION=unfused; fi
benchmarks/compare_pytorch.sh "$bin/llmqs-dist" "$bin/bench/pytorch_bert_baseline.py" "$out" "${1:-full}"
if [ "$fused_ok" = 1 ]; then
  for shape in "--seq 512 --batch 64" "--seq 128 --batch 256"; do
    # shellcheck disable=SC2086
    LLMQS_ATTENTION=unfused "$bin/llmqs-dist" bench $shape --precision bf16 --steps 20 --warmup 5 | sed "s/^/[unfused] /"
  done
fi
exit $status
