#!/usr/bin/env bash
# Sourced by the scripts that run on the GPU machine: if BINARY (argument 1) misses a CUDA library
# (cuBLASLt, NCCL, cudart of the build's CUDA version), put the pip wheels' copies (nvidia-cublas,
# nvidia-nccl-cu13, ...) that PyTorch brings on the loader path. Prints the GPU line.
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
if ldd "$1" | grep -q "not found"; then
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
ldd "$1" | grep -E "not found" && echo "device_env.sh: $1 still misses libraries" >&2
true
