#!/usr/bin/env bash
# Exact resume after a hard kill: an uninterrupted 20-step run against a run SIGKILLed once
# checkpoint-10.h5 exists and then resumed with `resume_from_checkpoint auto`. /model and
# /optimizer of the two checkpoint-20.h5 must be bit-identical (h5diff, no tolerance), dropout on.
#   kill_and_resume.sh LLMQS_DIST RANKS DEVICE WORK_DIR [extra train options...]
set -euo pipefail
bin=$1 ranks=$2 device=$3 work=$4
shift 4
rm -rf "$work"
mkdir -p "$work"
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1

"$bin" sample --output_dir data --train_size 640 --test_size 32 >/dev/null
# Slow enough per step (hidden 128 on the CPU; on a GPU pass a wider model in KR_MODEL_ARGS) that
# the kill lands between checkpoint-10 and the end; the script checks that it did.
model_args=${KR_MODEL_ARGS:---hidden_size 128 --num_hidden_layers 2 --num_attention_heads 2 --intermediate_size 512}
train() {
  mpirun --oversubscribe -np "$ranks" "$bin" train --train_file data/train.csv --vocab data/vocab.txt \
    --max_length 128 --num_labels 5 $model_args --max_position_embeddings 128 --per_device_train_batch_size $((16 / ranks)) \
    --learning_rate 1e-3 --warmup_ratio 0.1 --max_steps 20 --save_steps 10 --logging_steps 1 --seed 11 \
    --device "$device" "$@"
}
train --output_dir straight "$@" >straight.log 2>&1 || { cat straight.log; fail "uninterrupted run"; }

# The interrupted run gets its own process group so that SIGKILL reaches mpirun and every rank.
setsid bash -c "$(declare -f train); bin='$bin' ranks='$ranks' device='$device' model_args='$model_args'; train --output_dir killed $*" \
  >killed.log 2>&1 &
leader=$!
for _ in $(seq 1 6000); do
  [ -e killed/checkpoint-10.h5 ] && break
  kill -0 "$leader" 2>/dev/null || break
  sleep 0.01
done
[ -e killed/checkpoint-10.h5 ] || { cat killed.log; fail "the run to kill never wrote checkpoint-10.h5"; }
# Every process of the session: mpirun starts the ranks in process groups of their own, so killing
# mpirun's group alone leaves them running (they may even write checkpoint-20.h5 later).
for _ in $(seq 1 100); do
  pids=$(ps -o pid=,stat= -s "$leader" | awk '$2 !~ /^Z/ {print $1}')
  [ -z "$pids" ] && break
  kill -KILL $pids 2>/dev/null || true
  sleep 0.05
done
[ -z "$pids" ] || fail "processes of the killed run still alive: $pids"
wait "$leader" 2>/dev/null || true
[ ! -e killed/checkpoint-20.h5 ] || fail "the run finished before the kill landed (make steps slower)"
echo "killed after $(ls killed | grep -c '^checkpoint-') checkpoint(s): $(ls killed | tr '\n' ' ')"

train --output_dir killed --resume_from_checkpoint auto "$@" >resumed.log 2>&1 || { cat resumed.log; fail "resume"; }
grep -q "resum" resumed.log || fail "the resumed run does not say it resumed: $(head -5 resumed.log)"
same_group() {  # h5diff where hdf5-tools exist (CI installs them), else h5py, both exact
  if command -v h5diff >/dev/null; then
    h5diff straight/checkpoint-20.h5 killed/checkpoint-20.h5 "$1" "$1"
  else
    python3 - "$1" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File("straight/checkpoint-20.h5"), h5py.File("killed/checkpoint-20.h5")
names = []
a[sys.argv[1]].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
bad = [n for n in names if not np.array_equal(a[sys.argv[1]][n][()], b[sys.argv[1]][n][()])]
assert names and not bad, f"{len(bad)} of {len(names)} datasets differ: {bad[:5]}"
PY
  fi
}
for group in /model /optimizer; do
  same_group "$group" || fail "$group differs between the uninterrupted and the killed+resumed run"
done
# The logged losses of steps 11..20 match too (the same numbers, printed the same way).
python3 - <<'PY' || fail "logged losses differ"
import json
def losses(path):
    return {r["step"]: r["loss"] for r in map(json.loads, open(path)) if "loss" in r}
a, b = losses("straight/metrics.jsonl"), losses("killed/metrics.jsonl")
bad = [s for s in range(11, 21) if a.get(s) != b.get(s)]
assert not bad, f"steps {bad}: {[(a.get(s), b.get(s)) for s in bad]}"
PY
echo "PASS: $ranks rank(s) on $device: killed after checkpoint-10 and resumed == uninterrupted (h5diff /model /optimizer)"
