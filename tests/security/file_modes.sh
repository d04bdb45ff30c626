#!/usr/bin/env bash
# Files are created with the user's umask (docs/security.md): every file and folder that a
# subcommand creates gets 0666 / 0777 minus the umask, nothing more open and nothing forced
# closed. Runs sample, prepare, train (checkpoints, metrics.jsonl, TensorBoard events, output
# folders), eval --output, predict --output, export-hf and import-hf on the CPU under umask
# 002 (expects 0664 files, 0775 folders: catches a writer that forces 0644), 027 (0640, 0750)
# and 077 (0600, 0700: catches one that forces 0644 or 0666 past the umask).
#   file_modes.sh LLMQS_DIST WORK_DIR
set -euo pipefail
bin=$1 work=$2
fail() { echo "FAIL: $*" >&2; exit 1; }

run_all() {  # in the current folder, under the current umask
  "$bin" sample --output_dir s --train_size 32 --test_size 8 >/dev/null
  "$bin" prepare --input s/train.csv --vocab s/vocab.txt --do_lower_case true --max_length 32 \
    --output train.h5 >/dev/null 2>&1
  "$bin" train --train_file train.h5 --validation_file s/test.csv --vocab s/vocab.txt --do_lower_case true \
    --max_length 32 --hidden_size 16 --num_hidden_layers 1 --num_attention_heads 2 --intermediate_size 20 \
    --max_position_embeddings 32 --per_device_train_batch_size 8 --max_steps 2 --eval_steps 1 --save_steps 1 \
    --output_dir runs/out >/dev/null 2>&1
  "$bin" eval --checkpoint runs/out/checkpoint-2.h5 --validation_file s/test.csv --output eval.json >/dev/null
  "$bin" predict --checkpoint runs/out/checkpoint-2.h5 --input s/test.csv --output predictions.jsonl 2>/dev/null
  "$bin" export-hf runs/out/checkpoint-2.h5 hf >/dev/null
  "$bin" import-hf hf --output imported/start.h5 >/dev/null
}

check_modes() {  # check_modes UMASK FILE_MODE DIR_MODE
  local mask=$1 file_mode=$2 dir_mode=$3 dir="$work/umask_$1"
  rm -rf "$dir" && mkdir -p "$dir"
  (cd "$dir" && umask "$mask" && run_all) || fail "a subcommand failed under umask $mask"
  # Everything the commands produced (the folder itself was made by this script).
  local expected=(s/train.csv s/test.csv s/vocab.txt train.h5 runs/out/checkpoint-1.h5 runs/out/checkpoint-2.h5
                  runs/out/metrics.jsonl eval.json predictions.jsonl hf/config.json hf/model.safetensors
                  hf/vocab.txt hf/tokenizer.json imported/start.h5)
  for f in "${expected[@]}"; do [ -f "$dir/$f" ] || fail "umask $mask: $f was not created"; done
  ls "$dir"/runs/out/runs/events.out.tfevents.* >/dev/null 2>&1 || fail "umask $mask: no TensorBoard event file"
  local count=0 line mode kind path
  while read -r mode kind path; do
    count=$((count + 1))
    if [ "$kind" = d ]; then
      [ "$mode" = "$dir_mode" ] || fail "umask $mask: folder $path has mode $mode, expected $dir_mode"
    else
      [ "$mode" = "$file_mode" ] || fail "umask $mask: file $path has mode $mode, expected $file_mode"
    fi
  done < <(cd "$dir" && find . -mindepth 1 -printf '%m %y %p\n')
  [ "$count" -ge 20 ] || fail "umask $mask: only $count entries checked"
  echo "umask $mask: $count files and folders, all $file_mode / $dir_mode"
}

check_modes 002 664 775
check_modes 027 640 750
check_modes 077 600 700
echo "PASS: created files follow the umask"
