#!/usr/bin/env bash
# llmqs-dist vs PyTorch (HF BertForSequenceClassification, eager and torch.compile), side by side
# in one job on one GPU, so the ratios are measured under the same clocks and driver.
#
# Usage (on the GPU machine, from the repository root):
#   benchmarks/compare_pytorch.sh LLMQS_BINARY PYTORCH_SCRIPT [OUT_DIR] [quick]
# e.g. with `run`, carry: [".devcarry/perf"] holding the binary and a copy of
# shared/bench/pytorch_bert_baseline.py:
#   benchmarks/compare_pytorch.sh .devcarry/perf/llmqs-dist .devcarry/perf/bench/pytorch_bert_baseline.py $OUT
# `quick` skips the PyTorch runs (ours only). Every result is one JSON line in OUT_DIR/results.jsonl;
# the table (ours tok/s, eager, compile, ratios, MFU, peak memory) is printed last.
# Shapes: bert-base bf16 64x512 and 256x128 (eager + compile), fp16 16x512 (the T4 shape, eager),
# and YelpReviewFull-like lengths at 64 x up to 512 (ours: max_length, longest, grouped; PyTorch
# eager grouped, its best eager setting). About 5 minutes on an H200, most of it torch.compile.
set -uo pipefail
ours=${1:?usage: compare_pytorch.sh LLMQS_BINARY PYTORCH_SCRIPT [OUT_DIR] [quick]}
torch_script=${2:?usage: compare_pytorch.sh LLMQS_BINARY PYTORCH_SCRIPT [OUT_DIR] [quick]}
out=${3:-${OUT:-/tmp/llmqs-compare}}
mode=${4:-full}
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"
export PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/device_env.sh
source "$here/../scripts/device_env.sh" "$ours"

run_ours() {  # args: bench options
  echo "+ llmqs-dist bench $*" >&2
  "$ours" bench --peak-tflops "$peak" "$@" 2>>"$out/ours.err" | grep '^{' | tee -a "$results"
}
run_torch() {
  [ "$mode" = quick ] && return 0
  echo "+ pytorch_bert_baseline.py $*" >&2
  python3 "$torch_script" --peak-tflops "$peak" "$@" 2>>"$out/torch.err" | grep '^{' | tee -a "$results"
}

# One measured peak for every row, so MFU columns share a denominator.
peak=$("$ours" bench --layers 1 --seq 8 --batch 1 --steps 1 --warmup 1 --vocab 64 | python3 -c \
  'import json,sys; print(json.loads(sys.stdin.readline())["peak_tflops"])')
echo "dense bf16 8192^3 cuBLASLt peak: $peak TFLOP/s" >&2

run_ours --seq 512 --batch 64 --precision bf16 --steps 20 --warmup 5
run_ours --seq 128 --batch 256 --precision bf16 --steps 20 --warmup 5
run_ours --seq 512 --batch 16 --precision fp16 --steps 20 --warmup 5
for padding in max_length longest grouped; do
  run_ours --seq 512 --batch 64 --precision bf16 --lengths yelp --padding "$padding" --steps 20 --warmup 5
done
run_torch --seq 512 --batch 64 --dtype bf16 --compile both --steps 20 --warmup 5
run_torch --seq 128 --batch 256 --dtype bf16 --compile both --steps 20 --warmup 5
run_torch --seq 512 --batch 16 --dtype fp16 --steps 20 --warmup 5
run_torch --seq 512 --batch 64 --dtype bf16 --lengths yelp --padding grouped --steps 20 --warmup 5

python3 "$here/compare_table.py" "$results"
