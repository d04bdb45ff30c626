#!/usr/bin/env bash
# A/B of docs/pending/sm90-fewer-instructions.patch on the GPU machine (written 2026-12-07, not yet
# run: the session's device time ran out). Pack first, here: build main as is and copy its
# llmqs-dist and kernel_bench as base_llmqs-dist / base_kernel_bench, apply the patch, build again,
# and put those with the new llmqs-dist, kernels_cuda_test, core_cuda_backend_test, kernel_bench
# (stripped) in .devcarry/iter3/iter.tar.xz, plus ../shared/bench/pytorch_bert_baseline.py; then
# run `bash .devcarry/iter3/run.sh` with carry [".devcarry/iter3"]. The patch lands only if the
# attention and backend suites pass and kernel_bench / bench show the gain.
set -uo pipefail
B=/tmp/it3; mkdir -p $B; tar -xJf .devcarry/iter3/iter.tar.xz -C $B
O=${OUT:-/tmp/out}; mkdir -p $O
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source scripts/device_env.sh $B/llmqs-dist
S=$O/summary.txt; : > $S
row() { echo "$*" | tee -a $S; }
t0=$(date +%s); since() { echo "$(( $(date +%s) - t0 ))s"; }
field() { python3 -c 'import json,sys; d=json.loads(sys.stdin.readline()); print(" ".join(f"{k}={d.get(k)}" for k in sys.argv[1:]))' "$@"; }
timeout 200 $B/kernels_cuda_test --gtest_filter='*Flash*:*Attention*' > $O/kt.log 2>&1; rc=$?
row "kernels tests rc=$rc $(grep -E '^\[  PASSED|^\[  FAILED' $O/kt.log | tr '\n' ' ') ($(since))"
grep -E "attention \]|Failure|Which is|FAILED" $O/kt.log | head -12
timeout 150 $B/core_cuda_backend_test > $O/bt.log 2>&1
row "backend tests rc=$? $(grep -E '^\[  PASSED|^\[  FAILED' $O/bt.log | tr '\n' ' ') ($(since))"
[ $rc = 0 ] || { echo "kernel tests failed: no timings of the new build"; }
for shape in "--seq 512 --batch 64" "--seq 128 --batch 256" "--seq 512 --batch 64 --lengths yelp --padding grouped"; do
  for who in base new; do
    [ $who = new ] && [ $rc != 0 ] && continue
    bin=$B/llmqs-dist; [ $who = base ] && bin=$B/base_llmqs-dist
    r=$(timeout 120 $bin bench $shape --precision bf16 --steps 20 --warmup 5 2>>$O/bench.err | grep '^{')
    row "bench $who $shape: $(echo "$r" | field ms_per_step tok_per_s useful_tok_per_s yelp_epoch_s mfu peak_mem_gib final_loss) ($(since))"
  done
done
for who in base new; do
  [ $who = new ] && [ $rc != 0 ] && continue
  kb=$B/kernel_bench; [ $who = base ] && kb=$B/base_kernel_bench
  timeout 120 $kb --dtype bf16 --batch 64 --seq 512 --lengths yelp > $O/kb_$who.txt 2>&1
  grep -E "flash_attention|peak\." $O/kb_$who.txt | sed "s/^/kb $who /" | tee -a $S
done
P=.devcarry/iter3/pytorch_bert_baseline.py
tq() { timeout 200 python3 $P --peak-tflops 790 "$@" 2>>$O/torch.err | grep '^{' | while read -r l; do row "torch $*: $(echo "$l" | field system ms_per_step tok_per_s useful_tok_per_s yelp_epoch_s mfu peak_mem_gib)"; done; }
tq --seq 512 --batch 64 --dtype bf16 --compile both --steps 20 --warmup 5
tq --seq 128 --batch 256 --dtype bf16 --compile yes --steps 20 --warmup 5
row "done ($(since))"
echo ===; cat $S
