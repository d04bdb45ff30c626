#!/usr/bin/env bash
# A bad option is refused before any work: the command exits non-zero, its message names the
# key, and the output directory is not created.
# usage: expect_refusal.sh KEY OUTPUT_DIR COMMAND...
set -u
key=$1; output_dir=$2; shift 2
rm -rf "$output_dir"
output=$("$@" 2>&1); status=$?
if [ $status -eq 0 ]; then
  echo "FAIL: exit status 0 (expected a refusal naming '$key'); output:"; echo "$output"; exit 1
fi
if ! grep -q -- "$key" <<<"$output"; then
  echo "FAIL: the message does not name '$key':"; echo "$output"; exit 1
fi
if [ -e "$output_dir" ]; then
  echo "FAIL: $output_dir was created although the options were refused"; exit 1
fi
count=$(grep -c "error" <<<"$output")
echo "PASS (exit $status, $count error line(s)): $output"
