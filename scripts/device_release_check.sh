#!/usr/bin/env bash
# The CUDA backend's acceptance job, in ONE call on the GPU machine (the `run` tool), with
# carry [".devcarry/release"] holding bins.tar.xz (made by scripts/pack_release_check.sh here):
#   1. the CUDA test suites (every kernel vs its CPU twin; whole steps vs the cpu backend);
#   2. `train --device cuda` on the bundled sample (configs/tiny.ini), accuracy vs the CPU run;
#   3. a GPU run SIGKILLed after checkpoint-10 and resumed == the uninterrupted run (h5diff);
#   4. the T4 proof: a build holding only compute_75 PTX (JIT-compiled here), fp16, with the
#      GPU's free memory capped at 15 GiB by a ballast allocation: bench peak memory next to
#      PyTorch fp16 at the same shape, and bert-base fp16 vs bf16 training on the sample;
#   5. bert-base bf16 seq 512 batch 64 tokens/s next to pytorch_bert_baseline.py (eager; torch.compile
#      is in benchmarks/compare_pytorch.sh, too slow to start for this call), and benchmarks/kernel_bench
#      (each kernel's TFLOP/s or GB/s against the measured peaks) at 64x512 and 256x128;
#   6. benchmarks/scaling at -np 1 (the only count one GPU allows), with the all-reduce microbenchmark.
# A short table comes last; $OUT gets summary.txt and logs.tgz (every log).
# SECTIONS="2 4" runs only those sections (default: all).
set -uo pipefail
final=${OUT:-/tmp/llmqs-release}
out=/tmp/llmqs/logs
mkdir -p "$out" "$final" /tmp/llmqs
sections=" ${SECTIONS:-1 2 3 4 5 6} "
want() { [[ "$sections" == *" $1 "* ]]; }
field() {  # field KEY... < one JSON line: "KEY=value ..."
  python3 -c 'import json,sys; d=json.loads(sys.stdin.readline()); print(" ".join(f"{k}={d[k]}" for k in sys.argv[1:]))' "$@" 2>&1
}
tar -xJf .devcarry/release/bins.tar.xz -C /tmp/llmqs
bin=/tmp/llmqs/llmqs-dist
t4bin=/tmp/llmqs/llmqs-dist-sm75ptx
torch_script=.devcarry/release/pytorch_bert_baseline.py
source scripts/device_env.sh "$bin"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
summary=$out/summary.txt
: >"$summary"
row() { echo "$*" | tee -a "$summary"; }
t0=$(date +%s)
since() { echo "$(( $(date +%s) - t0 ))s"; }

fused_ok=1
if want 1; then
echo "== 1. CUDA test suites"
# *-sm75ptx: the same suites built with only compute_75 PTX: the T4's kernels, JIT-compiled here.
for t in kernels_cuda_test core_cuda_backend_test kernels_cuda_test-sm75ptx core_cuda_backend_test-sm75ptx; do
  [ -x /tmp/llmqs/$t ] || continue
  /tmp/llmqs/$t >"$out/$t.log" 2>&1
  rc=$?
  grep -E "Failure|FAILED" "$out/$t.log" | head -20
  row "tests   $t: exit $rc, $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]' "$out/$t.log" | tr '\n' ' ') ($(since))"
done
grep -qE "FAILED.*(Flash|FusedAttention)" "$out"/*_test*.log && fused_ok=0
row "tests   fused attention tests passed: $fused_ok"
# A failing newer kernel family falls back to its older, tested twin for the rest of the job,
# so every number below comes from code whose tests passed here.
[ $fused_ok = 1 ] || export LLMQS_ATTENTION=unfused
grep -qE "FAILED.*LayerNorm" "$out"/*_test*.log && export LLMQS_LAYERNORM=scalar
grep -qE "FAILED.*(Gelu|ColumnSum|PackedFfn)" "$out"/*_test*.log && export LLMQS_GELU=scalar LLMQS_COLUMN_SUM=scalar
grep -qE "FAILED.*Pageable" "$out"/*_test*.log && export LLMQS_UPLOAD=pageable
row "tests   kernel variants used below: $(env | grep -E '^LLMQS_(ATTENTION|LAYERNORM|GELU|COLUMN_SUM|UPLOAD)=' | tr '\n' ' ')(none = all new)"
fi

work=/tmp/llmqs/work
mkdir -p "$work"
"$bin" sample --output_dir "$work/sample" >/dev/null
for split in train test; do
  "$bin" prepare --input "$work/sample/$split.csv" --vocab "$work/sample/vocab.txt" --do_lower_case true \
    --max_length 128 --output "$work/sample/$split.h5" >/dev/null 2>&1
done
if want 2; then
echo "== 2. train on the sample with --device cuda (configs/tiny.ini, as the CPU run)"
for precision in bf16 fp32; do
  mpirun -np 1 "$bin" train --config configs/tiny.ini --device cuda --precision $precision \
    --train_file "$work/sample/train.h5" --validation_file "$work/sample/test.h5" --vocab "$work/sample/vocab.txt" \
    --output_dir "$work/tiny-cuda-$precision" >"$out/train_tiny_cuda_$precision.log" 2>&1
  row "train   tiny on sample, cuda $precision: $(grep -E '^done:' "$out/train_tiny_cuda_$precision.log" | sed 's/|.*final/final/') ($(since))"
  grep -E "^device|error" "$out/train_tiny_cuda_$precision.log" | head -3
done
fi

if want 3; then
echo "== 3. SIGKILL + resume on the GPU"
KR_MODEL_ARGS="--hidden_size 768 --num_hidden_layers 12 --num_attention_heads 12 --intermediate_size 3072" \
  bash tests/resume/kill_and_resume.sh "$bin" 1 cuda "$work/kill" >"$out/kill_resume.log" 2>&1
row "resume  cuda: $(tail -n 1 "$out/kill_resume.log") ($(since))"
fi

if want 4; then
echo "== 4. T4 proof: compute_75 PTX only, fp16, 15 GiB cap"
cuobjdump --list-ptx "$t4bin" 2>/dev/null | head -3 >"$out/t4_ptx.txt"
cuobjdump --list-elf "$t4bin" 2>/dev/null | head -3 >>"$out/t4_ptx.txt"
row "t4      binary holds: $(tr '\n' ' ' <"$out/t4_ptx.txt")"
python3 - <<'PY' &
import time, torch
free, total = torch.cuda.mem_get_info()
ballast = torch.empty(free - 15 * 2**30, dtype=torch.uint8, device="cuda")
open("/tmp/llmqs/ballast_ready", "w").write(str(ballast.numel()))
time.sleep(900)
PY
ballast=$!
for _ in $(seq 1 600); do [ -e /tmp/llmqs/ballast_ready ] && break; sleep 0.1; done
nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader | sed 's/^/ballast in place: used,total = /'
"$t4bin" bench --seq 512 --batch 16 --precision fp16 --steps 10 --warmup 3 --peak-tflops 790 \
  >"$out/t4_bench.json" 2>"$out/t4_bench.err"
row "t4      bench fp16 16x512 (PTX JIT, 15 GiB cap): $(grep '^{' "$out/t4_bench.json" | field tok_per_s peak_mem_gib device_used_gib warmup_s launch_to_first_step_s) ($(since))"
for precision in fp16 bf16; do
  b=$bin; [ $precision = fp16 ] && b=$t4bin
  mpirun -np 1 "$b" train --config configs/bert-base-yelp-t4.ini --precision $precision \
    --train_file "$work/sample/train.csv" --validation_file "$work/sample/test.csv" --vocab "$work/sample/vocab.txt" \
    --do_lower_case true --init_from "" --learning_rate "${T4_LR:-3e-5}" --warmup_ratio 0.1 --max_steps 626 --logging_steps 50 \
    --save_steps 0 --save_total_limit 0 --output_dir "$work/bert-$precision" >"$out/train_bert_$precision.log" 2>&1
  row "t4      bert-base $precision 626 steps (2 epochs) on sample: losses $(python3 -c "
import json; print(' '.join(f'{r[\"loss\"]:.3f}' for r in map(json.loads, open('$work/bert-$precision/metrics.jsonl')) if 'loss' in r))" 2>&1) | $(grep -oE 'eval_accuracy [0-9.]+' "$out/train_bert_$precision.log" | tr '\n' ' ') ($(since))"
done
kill $ballast 2>/dev/null; wait $ballast 2>/dev/null
python3 "$torch_script" --seq 512 --batch 16 --dtype fp16 --steps 10 --warmup 3 --peak-tflops 790 \
  >"$out/torch_fp16.json" 2>"$out/torch_fp16.err"
row "t4      pytorch eager fp16 16x512 (no cap): $(grep '^{' "$out/torch_fp16.json" | field tok_per_s peak_mem_gib)"
fi

if want 5; then
echo "== 5. bert-base bf16 512x64: ours vs PyTorch, same job"
for attention in unfused fused; do
  [ $attention = fused ] && [ $fused_ok = 0 ] && continue
  [ $attention = unfused ] && [ $fused_ok = 1 ] && [ -n "${QUICK:-}" ] && continue
  LLMQS_ATTENTION=$attention "$bin" bench --seq 512 --batch 64 --precision bf16 --steps 20 --warmup 5 \
    --peak-tflops 790 2>>"$out/bench.err" | grep '^{' | sed "s/^{/{\"attention\":\"$attention\",/" >>"$out/ours.jsonl"
done
python3 "$torch_script" --seq 512 --batch 64 --dtype bf16 --compile no --steps 20 --warmup 5 --peak-tflops 790 \
  2>"$out/torch.err" | grep '^{' >"$out/torch.jsonl"
python3 - "$out/ours.jsonl" "$out/torch.jsonl" <<'PY' | tee -a "$summary"
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1])]
torch = {d["system"]: d for d in map(json.loads, open(sys.argv[2]))}
eager, comp = torch.get("pytorch-eager", {}), torch.get("pytorch-compile", {})
print("bench   system                     tok/s     MFU    peak GiB  vs eager  vs compile")
for d in ours:
    r = lambda o: f"{d['tok_per_s'] / o['tok_per_s']:.2f}x" if o else "-"
    print(f"bench   llmqs-dist ({d['attention']:8s})   {d['tok_per_s']:>8} {d['mfu']:6.3f} {d['peak_mem_gib']:8.2f}  {r(eager):>8}  {r(comp):>9}")
for name, o in (("pytorch-eager", eager), ("pytorch-compile", comp)):
    if o: print(f"bench   {name:26s} {o['tok_per_s']:>8} {o['mfu']:6.3f} {o['peak_mem_gib']:8.2f}")
PY
# Each kernel alone (same calls as the backend) vs the peaks measured in the same run; the tables are in logs.tgz.
for shape in 64x512 256x128; do
  [ -x /tmp/llmqs/kernel_bench ] || break
  k=$out/kernel_bench_bf16_$shape.txt
  /tmp/llmqs/kernel_bench --dtype bf16 --batch ${shape%x*} --seq ${shape#*x} --lengths yelp --json >"$k" 2>&1
  rc=$?
  row "kernels bf16 $shape: exit $rc, $(grep '"peak.matmul"' "$k" | field tflops) $(grep '"peak.copy"' "$k" | field gbps) $(grep '"step_estimate"' "$k" | field ms_per_step errors) ($(since))"
done
fi
if want 6; then
echo "== 6. weak-scaling table at -np 1"
benchmarks/scaling --device cuda --ranks "1" --seq 512 --batch-per-rank 64 --precision bf16 \
  --steps 10 --warmup 3 --peak-tflops 790 --binary "$bin" --allreduce-bench /tmp/llmqs/allreduce_bench \
  --results "$out/scaling.jsonl" >"$out/scaling.txt" 2>&1
sed 's/^/scaling /' "$out/scaling.txt" | tail -n 8 | tee -a "$summary"
fi
echo "== summary ($(since))"
cat "$summary"
cp "$summary" "$final/summary.txt"
tar -czf "$final/logs.tgz" -C /tmp/llmqs logs
