#!/bin/sh
# The checkpoint subcommands through the real binary, on a tiny model trained for a few steps:
#   - exact resume: 6 steps straight == 3 steps, resume_from_checkpoint auto, 3 more (bit for bit,
#     dropout on, so the sampler position, dropout keys and schedule must all be restored);
#   - inspect shows the step, metrics and optimizer state; export-hf -> import-hf round trip;
#   - refusals: a garbage checkpoint, a non-empty export folder, a non-BERT config.json.
#   run_cli_checks.sh LLMQS_DIST CHECKPOINT_HF_PARITY WORK_DIR
set -eu
bin=$1 tool=$2 work=$3
rm -rf "$work"
mkdir -p "$work"
cd "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

"$bin" sample --output_dir data --train_size 96 --test_size 16 >/dev/null
train() {
  "$bin" train --train_file data/train.csv --validation_file data/test.csv --vocab data/vocab.txt \
    --max_length 32 --num_labels 5 --hidden_size 16 --num_hidden_layers 1 --num_attention_heads 2 \
    --intermediate_size 20 --max_position_embeddings 32 --per_device_train_batch_size 8 \
    --learning_rate 1e-3 --max_steps 6 --save_steps 3 --logging_steps 1 --seed 7 "$@"
}
train --output_dir straight >/dev/null 2>&1 || fail "training 6 steps"
mkdir -p resumed
cp straight/checkpoint-3.h5 resumed/
train --output_dir resumed --resume_from_checkpoint auto >resumed.log 2>&1 || { cat resumed.log; fail "resume"; }
grep -q "resumed from" resumed.log || fail "resume_from_checkpoint auto did not pick resumed/checkpoint-3.h5"
"$tool" same straight/checkpoint-6.h5 resumed/checkpoint-6.h5 || fail "resumed run differs from the straight run"

"$bin" inspect straight/checkpoint-6.h5 >inspect.txt || fail "inspect"
grep -q "^step  *6 of 6" inspect.txt || fail "inspect: step line: $(cat inspect.txt)"
grep -q "AdamW moments present" inspect.txt || fail "inspect: optimizer line"
grep -q "^last train .*loss" inspect.txt || fail "inspect: last train metrics"
# Strings read from a crafted checkpoint reach the terminal with their control characters escaped.
if python3 -c "import h5py" 2>/dev/null; then
  cp straight/checkpoint-6.h5 crafted.h5
  python3 - crafted.h5 <<'PY' || fail "could not edit crafted.h5"
import sys
import h5py
with h5py.File(sys.argv[1], "r+") as f:
    f["/trainer"].attrs["best_checkpoint"] = "checkpoint-3.h5\x1b[2J\x07"
PY
  "$bin" inspect crafted.h5 >crafted.txt || fail "inspect crafted.h5"
  if grep -q "$(printf '\033')" crafted.txt; then fail "inspect printed an escape character"; fi
  grep -qF 'checkpoint-3.h5\x1b[2J\x07' crafted.txt || fail "inspect: escaped best line: $(cat crafted.txt)"
else
  echo "skipped the crafted-string inspect check: no h5py"
fi

"$bin" export-hf straight/checkpoint-6.h5 hf >/dev/null || fail "export-hf"
if "$bin" export-hf straight/checkpoint-6.h5 hf >/dev/null 2>err.txt; then fail "export-hf overwrote a non-empty folder"; fi
grep -q -- "--overwrite" err.txt || fail "export-hf refusal does not mention --overwrite: $(cat err.txt)"
"$bin" import-hf hf --output reimported.h5 >/dev/null || fail "import-hf of the export"
"$bin" inspect reimported.h5 | grep -q "optimizer  *none" || fail "an imported checkpoint must have no optimizer state"

head -c 5000 straight/checkpoint-6.h5 >broken.h5
if "$bin" inspect broken.h5 2>err.txt; then fail "inspect accepted a truncated checkpoint"; fi
grep -q "broken.h5" err.txt || fail "the truncated-file error does not name the file: $(cat err.txt)"

mkdir -p roberta && cp hf/* roberta/
echo '{"model_type": "roberta"}' >roberta/config.json
if "$bin" import-hf roberta --output roberta.h5 2>err.txt; then fail "import-hf accepted a RoBERTa config"; fi
grep -q "roberta" err.txt || fail "the model_type refusal does not say roberta: $(cat err.txt)"
[ ! -e roberta.h5 ] || fail "a refused import left roberta.h5 behind"
echo "PASS: exact resume, inspect, export-hf/import-hf and refusals"
cd / && rm -rf "$work"
