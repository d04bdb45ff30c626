#!/usr/bin/env bash
# Builds what scripts/device_release_check.sh runs on the GPU machine and packs it into
# .devcarry/release/ (git-ignored; name `.devcarry/release` in the run call's carry):
#   build-release: sm_75 + sm_90 code, Boost.PO/utf8proc static (the GPU machine lacks Boost.PO)
#   build-t4ptx:   only compute_75 PTX, so the driver JIT-compiles it: the T4 path on any GPU
set -euo pipefail
cd "$(dirname "$0")/.."
common=(-DCMAKE_BUILD_TYPE=Release -DLLMQS_STATIC_DEPS=ON)
cmake -S . -B build-release "${common[@]}" -DCMAKE_CUDA_ARCHITECTURES="75;90" >/dev/null
cmake --build build-release -j"$(nproc)" --target llmqs-dist kernels_cuda_test core_cuda_backend_test allreduce_bench \
  kernel_bench
cmake -S . -B build-t4ptx "${common[@]}" -DCMAKE_CUDA_ARCHITECTURES="75-virtual" -DLLMQS_BUILD_TESTS=ON >/dev/null
cmake --build build-t4ptx -j"$(nproc)" --target llmqs-dist kernels_cuda_test core_cuda_backend_test
stage=$(mktemp -d)
cp build-release/launch/llmqs-dist build-release/tests/kernels_cuda_test build-release/tests/core_cuda_backend_test \
   build-release/benchmarks/allreduce_bench build-release/benchmarks/kernel_bench "$stage/"
cp build-t4ptx/launch/llmqs-dist "$stage/llmqs-dist-sm75ptx"
cp build-t4ptx/tests/kernels_cuda_test "$stage/kernels_cuda_test-sm75ptx"
cp build-t4ptx/tests/core_cuda_backend_test "$stage/core_cuda_backend_test-sm75ptx"
strip "$stage"/*
mkdir -p .devcarry/release
tar -cJf .devcarry/release/bins.tar.xz -C "$stage" .
cp "${LLMQS_SHARED:-../shared}/bench/pytorch_bert_baseline.py" .devcarry/release/
rm -rf "$stage"
du -sh .devcarry/release/*
