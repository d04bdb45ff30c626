// The `cuda` backend: core/backend.h on one GPU. fp32 master weights, gradients and AdamW
// moments; activations and the weight copy the matmuls read in the run's precision:
//   fp32  exact fp32 (cuBLASLt COMPUTE_32F), the parity mode against the CPU reference
//   tf32  fp32 storage, TF32 tensor-core products (only when asked for)
//   bf16  sm_80+; fp16 sm_75+ (the T4): the trainer scales the loss (loss_weight) and unscales
//         through AdamWHyper::grad_scale; a non-finite gradient_sq_norm marks an overflow step.
// All device memory is one arena planned by core/device_memory.h for (max_rows, max_seq_len);
// batches up to that size run with no allocation. gradient_buffer() is DEVICE memory: reduce it
// with the NCCL communicator (comm/nccl_communicator.h), which also picks the GPU, so create the
// communicator first; the backend uses the current device.
// The forward mirrors core/bert_cpu_model.h kernel for kernel, with the same dropout sites.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "core/backend.h"
#include "core/model_config.h"

namespace llmqs::core {

// auto -> bf16 on sm_80+, fp16 below; bf16 refused below sm_80, fp16 below sm_70 (message names
// `precision` and the device). Returns fp32 | tf32 | bf16 | fp16. Needs a visible GPU.
std::string resolve_cuda_precision(const std::string& precision, int device);

// Throws std::runtime_error "no CUDA device: ..." when none is visible, and the estimate from
// check_device_memory_fits when the arena would not fit in free memory.
// shard: ZeRO-1's optimizer shard (OptimizerShard::of_rank; the moments then take 1/world of the
// memory); the default (numel 0) is the whole model.
std::unique_ptr<Backend> make_cuda_backend(const BertConfig& config, const std::string& precision, int max_rows,
                                           int max_seq_len, const OptimizerShard& shard = {});

// How many training micro-batches `backend` (a make_cuda_backend one; 0 for any other) ran by
// replaying captured CUDA graphs instead of launching kernel by kernel: a shape's first
// micro-batch is eager, later ones replay unless LLMQS_CUDA_GRAPHS=0, LLMQS_CUDA_PROFILE or a
// gradient-ready hook is set.
int64_t cuda_graph_replays(const Backend& backend);

// Whether the backend's cuBLASLt products are tuned (kernels/matmul_cublaslt.h): yes unless
// LLMQS_MATMUL_TUNING=0. Tools that build a MatmulContext "as the backend does" ask here.
bool matmul_tuning_planned();
// True when at least one CUDA device is usable; `why` receives the reason when not.
bool cuda_device_available(std::string* why = nullptr);

}  // namespace llmqs::core
