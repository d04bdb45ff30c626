#!/usr/bin/env bash
# README command 1: install what is missing, build, and run the main job on the bundled sample:
# generate the Yelp-like sample, tokenize it into HDF5 token caches, train the tiny model with
# 2 data-parallel MPI ranks (GPU if present, else CPU), evaluate it and classify two reviews.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install_deps.sh

# Users' default is every architecture (75;80;86;89;90); with a GPU present, build just for it
# (its compute capability, e.g. 90 on an H100, which CMakeLists.txt turns into sm_90a code).
archs="75;80;86;89;90"
if command -v nvidia-smi >/dev/null && cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null); then
  cap=$(echo "$cap" | head -n 1 | tr -d ' .')
  [[ "$cap" =~ ^[0-9]+$ ]] && archs=$cap
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${LLMQS_CUDA_ARCHS:-$archs}" >/dev/null
cmake --build build -j"$(nproc)" --target llmqs-dist
bin=$PWD/build/launch/llmqs-dist
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
ranks=${LLMQS_RANKS:-2}
mpirun_cmd=(mpirun --oversubscribe -np "$ranks" -x OMP_NUM_THREADS=1)

echo "== 1. the bundled sample (no download)"
"$bin" sample --output_dir data/sample
echo "== 2. tokenize into HDF5 token caches (max_length 128, as configs/tiny.ini trains)"
"$bin" prepare --input data/sample/train.csv --vocab data/sample/vocab.txt --do_lower_case true --max_length 128 --output data/sample/train.h5
"$bin" prepare --input data/sample/test.csv --vocab data/sample/vocab.txt --do_lower_case true --max_length 128 --output data/sample/test.h5
echo "== 3. train the tiny model, $ranks data-parallel ranks"
rm -rf runs/quickstart
"${mpirun_cmd[@]}" "$bin" train --config configs/tiny.ini --train_file data/sample/train.h5 \
    --validation_file data/sample/test.h5 --output_dir runs/quickstart
checkpoint=$(ls -v runs/quickstart/checkpoint-*.h5 | tail -n 1)
echo "== 4. evaluate $checkpoint"
"${mpirun_cmd[@]}" "$bin" eval --checkpoint "$checkpoint" --validation_file data/sample/test.csv
echo "== 5. classify two reviews"
"$bin" predict --checkpoint "$checkpoint" --text "The food was amazing and the staff were so friendly, five stars!"
"$bin" predict --checkpoint "$checkpoint" --text "Terrible service, cold food, we will never come back."
