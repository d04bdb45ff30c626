// The Hopper (sm_90a) kernels of the fused attention, called by kernels/flash_attention.cu when the
// binary runs sm_90a code and head_dim is 64 (flash_attention_uses_wgmma in cuda_kernels.h says
// which path a call takes). Same function, same buffers and layouts as the mma.sync kernels:
// the dropout bitmask and lse [rows x heads x seq] fp32. The dS^T scratch (same size) is in an
// order of its own: flash_dq_from_ds reads only what this file's flash_backward_kv stored.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/philox.h"

namespace llmqs::kernels::cuda::sm90 {

// ctx [rows x seq x C], lse; q, k, v with row stride ld (head h in columns h*64 ..). bf16 = true
// for bfloat16, else fp16. Rows up to 128 tokens take a persistent kernel that holds the whole row.
void flash_forward(bool bf16, void* ctx, float* lse, const uint32_t* mask, const void* q, const void* k,
                   const void* v, const int32_t* lengths, int rows, int seq, int C, int ld, int heads,
                   const DropoutSite& site, cudaStream_t stream);

// dK, dV and dS^T (the dQ product's input, ds_pad(seq)^2 per row x head) from delta = dO . O.
// With bias_partials, also the column sums of each 64-key tile's stored dK and dV there (the K and V
// columns of flash_attention_backward's qkv_bias_partials).
void flash_backward_kv(bool bf16, void* dk, void* dv, void* ds_t, float* bias_partials, const void* q, const void* k,
                       const void* v, const void* dctx, const float* lse, const float* delta, const uint32_t* mask,
                       const int32_t* lengths, int rows, int seq, int seq_pad, int C, int ld, int heads,
                       const DropoutSite& site, cudaStream_t stream);

// dQ = c dS K from the dS^T blocks flash_backward_kv stored (ds_pad(seq)^2 per row x head); with
// bias_partials, also each 64-query tile's column sums of the stored dQ (the Q columns).
void flash_dq_from_ds(bool bf16, void* dq, float* bias_partials, const void* ds_t, const void* k,
                      const int32_t* lengths, int rows, int seq, int seq_pad, int C, int ld, int heads,
                      cudaStream_t stream);

// The whole backward (dQ, dK, dV) of rows up to kShortBackwardMaxSeq tokens in one persistent
// kernel, a row x head per block at a time: dS stays in shared memory, so neither dS^T nor a dQ
// kernel is needed, and delta = dO . O is formed from ctx (the forward's output) in the kernel.
constexpr int kShortBackwardMaxSeq = 128;
void flash_backward_short(bool bf16, void* dq, void* dk, void* dv, const void* q, const void* k, const void* v,
                          const void* dctx, const void* ctx, const float* lse, const uint32_t* mask,
                          const int32_t* lengths, int rows, int seq, int C, int ld, int heads, const DropoutSite& site,
                          cudaStream_t stream);

}  // namespace llmqs::kernels::cuda::sm90
