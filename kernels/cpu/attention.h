// Multi-head self-attention core with a key padding mask, the fp32 reference; CUDA twin:
// kernels/attention.cu. The Q/K/V and output projections are matmul.h calls around it.
//
// For row r (length L_r), head h, query i, key j (d = head_dim, heads * d = C):
//   scores[i, j] = q_i . k_j / sqrt(d)            q_i = q[r, i, h*d : (h+1)*d], likewise k, v
//   probs[i, j]  = softmax_j(scores[i, j]) over keys j < L_r; exactly 0 for j >= L_r
//                  (HF adds the most negative float to padded keys: exp underflows to 0)
//   dropped      = probs * keep(site, ((r*heads + h)*seq + i)*seq + j) / (1 - p)
//                  (keep = dropout_keep in philox.h: 16-bit uniforms, 8 per Philox call, as at every site)
//   ctx[r, i, h*d + e] = sum_j dropped[i, j] * v_j[e]
// Every query position is computed, padded ones too (HF does; they never reach the logits).
// Backward, with dropped recomputed from probs and the same site:
//   dv_j += sum_i dropped[i, j] dctx_i;  dP[i, j] = (dctx_i . v_j) * keep / (1 - p)
//   dS[i, j] = probs[i, j] * (dP[i, j] - sum_j' probs[i, j'] dP[i, j'])
//   dq_i = sum_j dS[i, j] k_j / sqrt(d);  dk_j = sum_i dS[i, j] q_i / sqrt(d)
// Shapes: q, k, v, ctx, dq, dk, dv, dctx [rows x seq x C] row-major (heads interleaved by
// column as HF's view(rows, seq, heads, d)); lengths [rows] (1 <= L_r <= seq);
// probs [rows x heads x seq x seq] (pre-dropout, saved for the backward).
// dq/dk/dv are overwritten. OpenMP over (row, head); the products go through gemm_strided.
#pragma once
#include <cstdint>

#include "kernels/philox.h"

namespace llmqs::kernels::cpu {

template <typename T>
void attention_forward(T* ctx, T* probs, const T* q, const T* k, const T* v, const int32_t* lengths,
                       int rows, int seq, int C, int heads, const DropoutSite& dropout);

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dctx, const T* q, const T* k, const T* v,
                        const T* probs, const int32_t* lengths, int rows, int seq, int C, int heads,
                        const DropoutSite& dropout);

}  // namespace llmqs::kernels::cpu
