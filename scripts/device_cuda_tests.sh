#!/usr/bin/env bash
# Runs the CUDA test suites on the GPU machine (the `run` tool), from binaries built here with
#   cmake -S . -B build-cuda -DCMAKE_CUDA_ARCHITECTURES=90 -DLLMQS_STATIC_DEPS=ON
#   cmake --build build-cuda -j2 --target kernels_cuda_test core_cuda_backend_test
#   mkdir -p build-cuda/device && cp build-cuda/tests/{kernels_cuda_test,core_cuda_backend_test} build-cuda/device/
# and carried there (carry: ["build-cuda/device"]). Usage: scripts/device_cuda_tests.sh [bench]
# Logs go to $OUT; the summary lines are printed last.
set -uo pipefail
bin=build-cuda/device
out=${OUT:-/tmp/llmqs-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader

# A CUDA library missing from the loader path: take the pip wheels' copies (nvidia-cublas etc.).
if ldd "$bin"/kernels_cuda_test | grep -q "not found"; then
  extra=$(python3 - <<'PY'
import glob, os, site
dirs = set()
for base in site.getsitepackages():
    for lib in glob.glob(os.path.join(base, "nvidia", "*", "lib")) + glob.glob(os.path.join(base, "nvidia", "cu13", "lib")):
        dirs.add(lib)
print(":".join(sorted(dirs)))
PY
)
  export LD_LIBRARY_PATH="${extra}:${LD_LIBRARY_PATH:-}"
fi
ldd "$bin"/kernels_cuda_test | grep -E "cuda|cublas|not found"

status=0
for t in kernels_cuda_test core_cuda_backend_test; do
  "$bin/$t" 2>&1 | tee "$out/$t.log" | grep -E "^\[ (cuda-vs-cpu|memory|bench) \]|FAILED|Failure|error|Skipped" | head -80
  rc=${PIPESTATUS[0]}
  echo "$t exit $rc: $(grep -E '^\[  PASSED  \]|^\[  FAILED  \]' "$out/$t.log" | tr '\n' ' ')"
  [ "$rc" = 0 ] || status=1
done
if [ "${1:-}" = bench ]; then
  LLMQS_CUDA_BENCH=1 "$bin"/core_cuda_backend_test --gtest_filter='*Throughput*' 2>&1 | tee "$out/bench.log" |
    grep -E "bench|FAILED|error|Failure"
fi
exit $status
