#!/usr/bin/env bash
# README command 2 (and what .ci/run calls): install what is missing, build everything (CUDA
# included, for the architectures in LLMQS_CUDA_ARCHS, default "75;90" to keep CI fast), run the
# whole CTest suite. GPU tests skip with a message on a machine without a GPU.
# In CI (CI=true), or with LLMQS_SANITIZER_TESTS=1, the CPU suites then run a second time built
# with AddressSanitizer + UndefinedBehaviorSanitizer (scripts/sanitizer_tests.sh, ~15 minutes).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install_deps.sh
build=${LLMQS_BUILD_DIR:-build-tests}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${LLMQS_CUDA_ARCHS:-75;90}" \
      ${LLMQS_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
(cd "$build" && ctest --output-on-failure -j"${LLMQS_TEST_JOBS:-1}" --timeout 1200)
if [ "${CI:-}" = true ] || [ "${LLMQS_SANITIZER_TESTS:-0}" = 1 ]; then
  echo "run_tests: the CPU suites again under AddressSanitizer + UndefinedBehaviorSanitizer"
  LLMQS_ASAN_JOBS="$(nproc)" ./scripts/sanitizer_tests.sh
fi
