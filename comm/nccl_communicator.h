// Communicator over NCCL for device buffers (the CUDA backend's gradients and parameters);
// host-side scalars go through MPI as in every Communicator (comm/communicator.h).
// Construction picks this rank's GPU: local_rank (ranks sharing a host, MPI_Comm_split_type)
// modulo the visible device count, then cudaSetDevice, so create it before the CUDA backend.
// Rank 0 creates the ncclUniqueId and MPI broadcasts it. MPI must be initialised (MpiSession).
#pragma once
#include <cuda_runtime.h>

#include <memory>

#include "comm/communicator.h"

namespace llmqs::comm {

// `stream`: the stream the collectives are enqueued on. nullptr (the legacy default stream)
// orders them after, and before, all work on the CUDA backend's blocking stream, so the
// trainer needs no extra synchronisation. Throws std::runtime_error naming the call, rank and
// host when no GPU is visible or NCCL fails.
std::unique_ptr<Communicator> make_nccl_communicator(cudaStream_t stream = nullptr);

}  // namespace llmqs::comm
