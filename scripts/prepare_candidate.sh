#!/usr/bin/env bash
# Builds what scripts/device_ab.sh compares, here (no GPU needed), and packs it for the `run` tool:
#   base  this checkout's HEAD, in build-release/
#   new   HEAD with the given patches applied (git apply, in order), in a git worktree at
#         .candidate/ with its own build-release/
# Both are release builds for sm_75 + sm_90a with static dependencies (the GPU machine has no
# Boost.Program_options), stripped, and packed as .devcarry/builds.tar.xz (folders base/ and new/),
# next to a copy of ../shared/bench/pytorch_bert_baseline.py. ccache, when installed, is shared by
# the two builds (CCACHE_BASEDIR: both trees see the same relative paths), so the candidate's
# build recompiles only what its patches touch.
# Usage: scripts/prepare_candidate.sh PATCH [PATCH ...]
# Then, through the run tool (carry [".devcarry"]):
#   cd .devcarry && xz -dc builds.tar.xz | tar -xf - && cd .. &&
#   bash scripts/device_ab.sh .devcarry/base .devcarry/new .devcarry/pytorch_bert_baseline.py
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 PATCH [PATCH ...]" >&2; exit 2; }
repo=$(pwd)
for patch in "$@"; do
  [ -f "$patch" ] || { echo "prepare_candidate.sh: $patch: no such file" >&2; exit 2; }
done
targets=(llmqs-dist kernel_bench kernels_cuda_test core_cuda_backend_test)
launcher=()
if command -v ccache >/dev/null 2>&1; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR=$repo
fi
build() {  # build SOURCE_DIR
  cmake -S "$1" -B "$1/build-release" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="75;90a" \
    -DLLMQS_STATIC_DEPS=ON "${launcher[@]}" >/dev/null
  cmake --build "$1/build-release" -j"$(nproc)" --target "${targets[@]}"
}
stage() {  # stage SOURCE_DIR NAME TARGET...: the stripped binaries under .devcarry/stage/NAME
  local source=$1 name=$2
  shift 2
  mkdir -p ".devcarry/stage/$name"
  for t in "$@"; do
    local binary
    binary=$(find "$source/build-release" -name "$t" -type f -perm -u+x | head -1)
    [ -n "$binary" ] || { echo "prepare_candidate.sh: $t was not built in $source/build-release" >&2; exit 1; }
    cp "$binary" ".devcarry/stage/$name/"
    strip ".devcarry/stage/$name/$t"
  done
}

rm -rf .devcarry/stage
build "$repo"
stage "$repo" base llmqs-dist kernel_bench  # device_ab.sh tests only the candidate (and 64 MiB carry)
if [ -e .candidate ]; then git worktree remove --force .candidate 2>/dev/null || rm -rf .candidate; fi
git worktree prune
git worktree add --detach .candidate HEAD >/dev/null
for patch in "$@"; do
  (cd .candidate && git apply "$repo/$patch") || { echo "prepare_candidate.sh: $patch does not apply to HEAD" >&2; exit 1; }
done
build "$repo/.candidate"
stage "$repo/.candidate" new "${targets[@]}"
(cd .devcarry/stage && tar -cf - base new | xz -T"$(nproc)" -6 >../builds.tar.xz)
rm -rf .devcarry/stage
cp ../shared/bench/pytorch_bert_baseline.py .devcarry/
echo "base: $(git rev-parse --short HEAD); new: + $*"
ls -l .devcarry
