#!/usr/bin/env bash
# Builds the libFuzzer targets with clang++ (-fsanitize=fuzzer,address,undefined) straight from the
# sources they need, into build-fuzz/ (no CMake, no CUDA): tests/fuzz/README.md says how to run them.
#   tests/fuzz/build.sh [target ...]     (default: all; LLMQS_FUZZ_BUILD_DIR overrides the folder)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${LLMQS_FUZZ_BUILD_DIR:-$root/build-fuzz}
cxx=${CXX_FUZZ:-clang++}
mkdir -p "$out"
flags=(-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -I"$root" -I/usr/include/hdf5/serial)
hdf5_lib=$(ls /usr/lib/x86_64-linux-gnu/hdf5/serial/libhdf5.so 2>/dev/null || echo -lhdf5)

declare -A sources libs
sources[fuzz_dataset_reader]="data/dataset_reader.cpp"
libs[fuzz_dataset_reader]="-lutf8proc"
sources[fuzz_wordpiece]="data/wordpiece_tokenizer.cpp"
libs[fuzz_wordpiece]="-lutf8proc"
sources[fuzz_vocab_file]="data/wordpiece_tokenizer.cpp"
libs[fuzz_vocab_file]="-lutf8proc"
sources[fuzz_safetensors]="core/safetensors.cpp core/checkpoint.cpp core/parameters.cpp core/model_config.cpp data/hdf5_guard.cpp"
libs[fuzz_safetensors]="$hdf5_lib -fopenmp"
sources[fuzz_checkpoint]="core/checkpoint.cpp core/parameters.cpp core/model_config.cpp data/hdf5_guard.cpp"
libs[fuzz_checkpoint]="$hdf5_lib -fopenmp"

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(fuzz_dataset_reader fuzz_wordpiece fuzz_vocab_file fuzz_safetensors fuzz_checkpoint)
for t in "${targets[@]}"; do
  srcs=()
  for s in ${sources[$t]}; do srcs+=("$root/$s"); done
  echo "build.sh: $t"
  # shellcheck disable=SC2086
  "$cxx" "${flags[@]}" -DLLMQS_FUZZ_VOCAB="\"$root/tests/fuzz/vocab.txt\"" \
         "$root/tests/fuzz/$t.cpp" "${srcs[@]}" ${libs[$t]} -o "$out/$t"
done
