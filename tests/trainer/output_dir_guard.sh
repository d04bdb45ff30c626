#!/usr/bin/env bash
# A fresh run into an output_dir that holds an earlier run's checkpoints is refused (naming the
# newest checkpoint and the ways out) and leaves it untouched; --overwrite_output_dir true and
# --resume_from_checkpoint auto proceed. `eval` prints a confusion matrix whose cells add up to
# the examples evaluated, and writes it to --output.
#   output_dir_guard.sh LLMQS_DIST WORK_DIR
set -euo pipefail
bin=$1 work=$2
rm -rf "$work" && mkdir -p "$work" && cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
"$bin" sample --output_dir s --train_size 64 --test_size 16 >/dev/null
train() {
  "$bin" train --train_file s/train.csv --vocab s/vocab.txt --max_length 32 --hidden_size 16 \
    --num_hidden_layers 1 --num_attention_heads 2 --intermediate_size 20 --max_position_embeddings 32 \
    --per_device_train_batch_size 8 --max_steps 2 --output_dir out "$@"
}
train >/dev/null 2>&1 || fail "first run"
before=$(sha256sum out/checkpoint-2.h5)
if train >log 2>&1; then fail "a fresh run into out/ with checkpoints was accepted"; fi
grep -q "checkpoint-2.h5" log || fail "the refusal does not name the newest checkpoint: $(cat log)"
grep -q -- "--resume_from_checkpoint auto" log || fail "the refusal does not say how to resume: $(cat log)"
[ "$(grep -c error log)" = 1 ] || fail "expected one error line: $(cat log)"
[ "$(sha256sum out/checkpoint-2.h5)" = "$before" ] || fail "the refused run changed out/checkpoint-2.h5"
train --resume_from_checkpoint auto >/dev/null 2>&1 || fail "resume auto into the same output_dir"
train --overwrite_output_dir true >/dev/null 2>&1 || fail "--overwrite_output_dir true"

"$bin" eval --checkpoint out/checkpoint-2.h5 --validation_file s/test.csv --output eval.json >eval.txt
grep -q "^confusion matrix" eval.txt || fail "eval prints no confusion matrix: $(cat eval.txt)"
python3 - <<'PY' || fail "eval.json's confusion matrix is inconsistent"
import json
d = json.load(open("eval.json"))
m = d["confusion_matrix"]
assert len(m) == 5 and all(len(r) == 5 for r in m), m
assert sum(map(sum, m)) == d["eval_samples"] == 16, (m, d["eval_samples"])
assert abs(sum(m[i][i] for i in range(5)) / 16 - d["eval_accuracy"]) < 1e-12, d
PY
echo "PASS: output_dir guard, resume/overwrite, eval confusion matrix"
