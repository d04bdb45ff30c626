#!/usr/bin/env bash
# Our code opens no sockets and starts no programs (docs/security.md): the only listeners in a
# run are MPI's and NCCL's own. Fails when a socket call (socket, bind, listen, accept, connect,
# getaddrinfo) or a way to run code (system, popen, exec*, fork, dlopen) appears in the product
# sources (core data launch comm kernels). std::bind and member calls like x.connect() are not
# matched; comment lines are skipped. Tests and benchmarks may use std::system to drive the binary.
#   no_sockets_no_exec.sh SOURCE_DIR
set -euo pipefail
cd "$1"
pattern='(?<![\w.>]|std::)\b(socket|bind|listen|accept4?|connect|getaddrinfo|gethostbyname)\s*\(|(?<![\w.>])\b(system|popen|execl|execlp|execle|execv|execvp|execve|fork|vfork|posix_spawnp?|dlopen)\s*\('
found=$(grep -rnP --include='*.cpp' --include='*.h' --include='*.cu' --include='*.cuh' "$pattern" \
          core data launch comm kernels | grep -vP '^[^:]+:\d+:\s*(//|\*)' || true)
if [ -n "$found" ]; then
  echo "FAIL: product code opens sockets or runs programs (see docs/security.md):" >&2
  echo "$found" >&2
  exit 1
fi
echo "PASS: no socket or exec calls in core data launch comm kernels"
