// The CUDA backend's device memory, planned up front: one arena (a single cudaMalloc) holds the
// fp32 master weights, gradients, AdamW moments, the low-precision weight copy, every activation
// the backward needs for the largest batch (max_rows x max_seq_len), the backward and attention
// scratch, and the cuBLASLt workspace. Nothing is allocated inside the step loop.
//
// This file is the one owner of that plan: the backend carves its buffers from the offsets here,
// and estimate_device_bytes (what the trainer checks against free memory before training) adds
// the same arena to a fixed allowance for the CUDA context, cuBLASLt and NCCL. Host-only code:
// no CUDA headers, so the trainer and tests can ask for an estimate on any machine.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/optimizer_shard.h"
#include "core/parameters.h"

namespace llmqs::core {

// Byte offsets into the arena of one encoder layer's saved activations.
struct LayerDeviceBuffers {
  size_t qkv;                                  // [tokens x 3 hidden]: q, k, v are its column blocks
  size_t ctx, probs;                           // probs: [rows x heads x seq x seq] (fused: lse)
  size_t attn_mask;                            // fused: the attention dropout keep bits (else 0 bytes)
  size_t attn_sum, attn_mean, attn_rstd, attn_out;
  size_t ffn_pre, ffn_act;                     // [tokens x intermediate]
  size_t ffn_sum, ffn_mean, ffn_rstd, out;     // out = this layer's output (next layer's input)
  size_t attn_keep, ffn_keep;                  // the two residual LayerNorms' dropout keep bits
};

struct DeviceMemoryPlan {
  int rows = 0, seq = 0;
  size_t activation_bytes = 4;       // 4 (fp32/tf32) or 2 (bf16/fp16)
  size_t num_params = 0;
  // parameters and optimizer (fp32), the low-precision copy (absent in fp32: == params), and
  // AdamW's weight-decay bitmask (build_adamw_decay_mask, uploaded once). params, grads and
  // params_low hold shard.padded_numel elements, adam_m and adam_v shard.count (ZeRO-1: 1/world).
  size_t params, grads, adam_m, adam_v, params_low, grad_norm_partial, adamw_decay_mask;
  OptimizerShard shard;
  // batch inputs: ids, lengths, labels, and the word-embedding backward's token groups; the
  // micro-batch's dropout key (kernels::kDropoutKeyWords words, DropoutSite::key_words)
  size_t ids, lengths, labels, group_token, group_offset, group_position, dropout_key;
  // embeddings and encoder
  size_t emb_sum, emb_mean, emb_rstd, h0;
  std::vector<LayerDeviceBuffers> layers;
  // pooler, classifier, loss
  size_t pooled_pre, pooled, pooled_dropped, logits, row_loss, prediction, dlogits;
  // backward
  size_t d_h, d_sum, d_tmp, d_ffn, d_qkv, d_ctx, d_pooled;  // d_qkv: [tokens x 3 hidden], like qkv
  // scratch: attention (head-major copies, fp32 scores, dropped probs), reductions, cuBLASLt
  size_t att_q, att_k, att_v, att_ctx, att_dq, att_dk, att_dv, att_scores, att_dropped;
  size_t att_ds;  // fused: dS^T for the dQ product (attn_ds_bytes; 0 bytes when recomputed)
  size_t att_bias_partials;  // fused with dS^T: the QKV bias partials, [B ceil(S/64) x 3C] fp32
  size_t reduce_scratch, matmul_workspace;
  size_t matmul_workspace_bytes = 0;

  // bf16/fp16 with head_dim 32 or 64: kernels/flash_attention.cu (no seq x seq buffers);
  // otherwise the unfused kernels/attention.cu with its materialised scores.
  bool fused_attention = false;
  size_t attn_mask_bytes = 0;  // per layer (LayerDeviceBuffers::attn_mask)
  size_t layernorm_keep_bytes = 0;  // per residual LayerNorm (attn_keep, ffn_keep); 0: the scalar kernels draw again
  // One buffer shared by the layers: kernels::cuda::flash_attention_ds_elements x activation bytes,
  // or 0 with LLMQS_ATTENTION_DQ=recompute (dQ by a kernel that recomputes S and P instead).
  size_t attn_ds_bytes = 0;
  size_t att_bias_partials_bytes = 0;

  size_t arena_bytes = 0;     // one cudaMalloc of this size
  size_t overhead_bytes = 0;  // CUDA context, cuBLASLt handle, NCCL buffers (an allowance)
  size_t total_bytes() const { return arena_bytes + overhead_bytes; }
};

// Whether the fused attention's backward stores dS for the dQ product (the default) rather than
// recomputing it in a third kernel (LLMQS_ATTENTION_DQ=recompute: less memory, slower).
bool attention_ds_planned();

// Whether the plan uses fused (flash) attention: bf16/fp16, head_dim 32 or 64, unless
// LLMQS_ATTENTION=unfused (the A/B switch; docs/performance.md).
bool fused_attention_planned(const BertConfig& config, const std::string& precision);

// precision: fp32 | tf32 | bf16 | fp16 (already resolved; "auto" is not accepted here).
// fused_kernels_available: false when the running code lacks the fused kernels for this precision
// (bf16 in a compute_75-only build, kernels::cuda::flash_attention_supported); the plan then uses
// the unfused attention and its larger buffers.
// shard: the optimizer's share (core/optimizer_shard.h); the default (numel 0) is the whole model,
// no ZeRO; otherwise it must be for this model's parameter count (std::invalid_argument).
DeviceMemoryPlan plan_device_memory(const BertConfig& config, int max_rows, int max_seq_len,
                                    const std::string& precision, bool fused_kernels_available = true,
                                    const OptimizerShard& shard = {});

// The contents of the arena's adamw_decay_mask: bit (i % 32) of word i / 32 is set when element i
// of the flat parameter buffer belongs to a tensor with ParameterInfo::weight_decay (the format
// kernels::cuda::adamw_update reads); (total_numel + 31) / 32 words, the bits past the end clear.
std::vector<uint32_t> build_adamw_decay_mask(const ParameterLayout& layout);

size_t estimate_device_bytes(const BertConfig& config, int max_rows, int max_seq_len, const std::string& precision,
                             bool fused_kernels_available = true, const OptimizerShard& shard = {});

// Throws std::runtime_error when the estimate exceeds free_bytes, with the numbers and what to
// change (smaller per-device batch, shorter max_length, bf16/fp16).
void check_device_memory_fits(const BertConfig& config, int max_rows, int max_seq_len, const std::string& precision,
                              size_t free_bytes, bool fused_kernels_available = true, const OptimizerShard& shard = {});

}  // namespace llmqs::core
