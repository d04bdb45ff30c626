// The arena plan of the CUDA backend (see device_memory.h). Buffers are laid out in the order
// below, each 256-byte aligned (cuBLASLt's preferred alignment for every matrix).
#include "core/device_memory.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include "core/parameters.h"
#include "kernels/philox.h"

namespace llmqs::core {

namespace {

constexpr size_t kAlignment = 256;
constexpr size_t kMatmulWorkspaceBytes = size_t(32) << 20;   // what Hopper's cuBLASLt kernels want
constexpr size_t kOverheadBytes = size_t(768) << 20;         // context + cuBLASLt + NCCL, measured loosely

// Must match kernels::cuda::kColumnReduceChunk, kLayerNormMaxPartials, kGradNormBlocks and adamw_decay_mask_words
// (kernels/cuda_kernels.h); duplicated so this file needs no CUDA headers.
constexpr size_t kColumnReduceChunk = 128;
constexpr size_t kLayerNormMaxPartials = 1024;  // kernels::cuda::kLayerNormMaxPartials
constexpr size_t kGradNormBlocks = 1024;
constexpr size_t adamw_decay_mask_words(size_t num_params) { return (num_params + 31) / 32; }

class Planner {
 public:
  size_t take(size_t bytes) {
    const size_t offset = next_;
    next_ += (bytes + kAlignment - 1) / kAlignment * kAlignment;
    return offset;
  }
  size_t used() const { return next_; }

 private:
  size_t next_ = 0;
};

std::string gib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return text;
}

}  // namespace

bool fused_attention_planned(const BertConfig& config, const std::string& precision) {
  // The default since its CUDA-vs-CPU tests (odd lengths, padding, dropout) passed on an H200 on
  // 2026-11-29 (benchmarks/RESULTS.md); LLMQS_ATTENTION=unfused keeps the A/B switch.
  const char* env = std::getenv("LLMQS_ATTENTION");
  if (env && std::string(env) == "unfused") return false;
  const int heads = config.num_attention_heads;
  if ((precision != "bf16" && precision != "fp16") || heads <= 0 || config.hidden_size % heads != 0) return false;
  const int d = config.hidden_size / heads;
  return d == 32 || d == 64;
}

bool attention_ds_planned() {
  const char* env = std::getenv("LLMQS_ATTENTION_DQ");
  return !(env && std::string(env) == "recompute");
}

DeviceMemoryPlan plan_device_memory(const BertConfig& config, int max_rows, int max_seq_len,
                                    const std::string& precision, bool fused_kernels_available,
                                    const OptimizerShard& shard) {
  if (precision != "fp32" && precision != "tf32" && precision != "bf16" && precision != "fp16")
    throw std::invalid_argument("precision: '" + precision + "' is not a resolved CUDA precision (fp32, tf32, bf16, fp16)");
  if (max_rows <= 0 || max_seq_len <= 0)
    throw std::invalid_argument("device memory plan: rows and sequence length must be positive");
  DeviceMemoryPlan plan;
  plan.rows = max_rows;
  plan.seq = max_seq_len;
  const bool low = precision == "bf16" || precision == "fp16";
  const size_t act = low ? 2 : 4;
  plan.activation_bytes = act;
  plan.num_params = ParameterLayout::for_bert(config).total_numel();
  plan.shard = shard.numel == 0 ? OptimizerShard::whole(plan.num_params) : shard;
  if (plan.shard.numel != plan.num_params)
    throw std::invalid_argument("device memory plan: the optimizer shard is for " + std::to_string(plan.shard.numel) +
                                " parameters, the model has " + std::to_string(plan.num_params));

  const size_t P = plan.shard.padded_numel, moments = plan.shard.count;
  const size_t B = static_cast<size_t>(max_rows), S = static_cast<size_t>(max_seq_len);
  const size_t N = B * S, C = static_cast<size_t>(config.hidden_size);
  const size_t I = static_cast<size_t>(config.intermediate_size), H = static_cast<size_t>(config.num_attention_heads);
  const size_t L = static_cast<size_t>(config.num_labels);
  const size_t scores = B * H * S * S;
  plan.fused_attention = fused_kernels_available && fused_attention_planned(config, precision);
  // Fused attention keeps only lse [B x H x S] per layer (in `probs`) and delta in `att_scores`.
  const size_t probs_bytes = plan.fused_attention ? B * H * S * 4 : scores * act;
  const size_t heads_copy = plan.fused_attention ? 0 : N * C * act;
  // The fused attention's dropout keep bits: 2 words per 64-key tile per (row, head, query), the
  // layout of kernels::cuda::flash_attention_mask_words (the backend checks the two agree).
  const size_t mask_bytes = plan.fused_attention ? B * H * S * 2 * ((S + 63) / 64) * 4 : 0;
  plan.attn_mask_bytes = mask_bytes;
  // The residual LayerNorms' dropout keep bits (kernels::cuda::layernorm_keep_bits_words: 32 words a
  // row where the packed kernels run, C a multiple of the 16-byte pack; the backend checks the two agree).
  const size_t keep_bytes = C % (16 / act) == 0 && C <= 1024 ? N * 32 * 4 : 0;
  plan.layernorm_keep_bytes = keep_bytes;
  // dS^T of every (row, head): [B x H x Sp x Sp] with Sp = S rounded up to 64, the layout of
  // kernels::cuda::flash_attention_ds_elements (checked by the backend), one buffer for all layers.
  const size_t padded = (S + 63) / 64 * 64;
  plan.attn_ds_bytes = plan.fused_attention && attention_ds_planned() ? B * H * padded * padded * act : 0;

  Planner p;
  plan.params = p.take(P * 4);
  plan.grads = p.take(P * 4);
  plan.adam_m = p.take(moments * 4);
  plan.adam_v = p.take(moments * 4);
  plan.params_low = low ? p.take(P * 2) : plan.params;
  plan.grad_norm_partial = p.take(kGradNormBlocks * 8);
  plan.adamw_decay_mask = p.take(adamw_decay_mask_words(P) * 4);

  plan.ids = p.take(N * 4);
  plan.lengths = p.take(B * 4);
  plan.labels = p.take(B * 4);
  plan.group_token = p.take(N * 4);
  plan.group_offset = p.take((N + 1) * 4);
  plan.group_position = p.take(N * 4);
  plan.dropout_key = p.take(kernels::kDropoutKeyWords * 4);

  plan.emb_sum = p.take(N * C * act);
  plan.emb_mean = p.take(N * 4);
  plan.emb_rstd = p.take(N * 4);
  plan.h0 = p.take(N * C * act);
  for (int l = 0; l < config.num_hidden_layers; ++l) {
    LayerDeviceBuffers b;
    b.qkv = p.take(N * 3 * C * act);
    b.ctx = p.take(N * C * act);
    b.probs = p.take(probs_bytes);
    b.attn_mask = p.take(mask_bytes);
    b.attn_sum = p.take(N * C * act);
    b.attn_mean = p.take(N * 4);
    b.attn_rstd = p.take(N * 4);
    b.attn_keep = p.take(keep_bytes);
    b.attn_out = p.take(N * C * act);
    b.ffn_pre = p.take(N * I * act);
    b.ffn_act = p.take(N * I * act);
    b.ffn_sum = p.take(N * C * act);
    b.ffn_mean = p.take(N * 4);
    b.ffn_rstd = p.take(N * 4);
    b.ffn_keep = p.take(keep_bytes);
    b.out = p.take(N * C * act);
    plan.layers.push_back(b);
  }

  plan.pooled_pre = p.take(B * C * act);
  plan.pooled = p.take(B * C * act);
  plan.pooled_dropped = p.take(B * C * act);
  plan.logits = p.take(B * L * 4);
  plan.row_loss = p.take(B * 4);
  plan.prediction = p.take(B * 4);
  plan.dlogits = p.take(B * L * act);

  plan.d_h = p.take(N * C * act);
  plan.d_sum = p.take(N * C * act);
  plan.d_tmp = p.take(N * C * act);
  plan.d_ffn = p.take(N * I * act);
  plan.d_qkv = p.take(N * 3 * C * act);
  plan.d_ctx = p.take(N * C * act);
  plan.d_pooled = p.take(B * C * act);

  plan.att_q = p.take(heads_copy);
  plan.att_k = p.take(heads_copy);
  plan.att_v = p.take(heads_copy);
  plan.att_ctx = p.take(heads_copy);
  plan.att_dq = p.take(heads_copy);
  plan.att_dk = p.take(heads_copy);
  plan.att_dv = p.take(heads_copy);
  plan.att_scores = p.take(plan.fused_attention ? B * H * S * 4 : scores * 4);
  plan.att_dropped = p.take(plan.fused_attention ? 0 : scores * act);
  plan.att_ds = p.take(plan.attn_ds_bytes);
  // Where the attention backward sums the QKV bias gradient's partials (the Hopper long-row kernels,
  // kernels::cuda::flash_attention_qkv_bias_partial_rows: one row per 64 positions of a batch row;
  // the backend checks the two agree).
  plan.att_bias_partials_bytes = plan.attn_ds_bytes ? B * ((S + 63) / 64) * 3 * C * 4 : 0;
  plan.att_bias_partials = p.take(plan.att_bias_partials_bytes);

  // Column reductions: the widest of LayerNorm's 3C (dgamma, dbeta and the dense layer's bias),
  // the fused QKV bias's 3C and the biases up to I.
  const size_t widest = std::max({3 * C, I, L});
  // ... and at least kLayerNormMaxPartials rows of them (layernorm_backward_scratch_floats).
  plan.reduce_scratch =
      p.take(std::max((N + kColumnReduceChunk - 1) / kColumnReduceChunk, kLayerNormMaxPartials) * widest * 4);
  plan.matmul_workspace_bytes = kMatmulWorkspaceBytes;
  plan.matmul_workspace = p.take(kMatmulWorkspaceBytes);

  plan.arena_bytes = p.used();
  plan.overhead_bytes = kOverheadBytes;
  return plan;
}

std::vector<uint32_t> build_adamw_decay_mask(const ParameterLayout& layout) {
  std::vector<uint32_t> mask(adamw_decay_mask_words(layout.total_numel()), 0u);
  for (const ParameterInfo& info : layout.parameters()) {
    if (!info.weight_decay) continue;
    size_t i = info.offset;
    const size_t end = info.offset + info.numel;
    for (; i < end && i % 32 != 0; ++i) mask[i / 32] |= 1u << (i % 32);  // head of a shared word
    for (; i + 32 <= end; i += 32) mask[i / 32] = 0xFFFFFFFFu;
    for (; i < end; ++i) mask[i / 32] |= 1u << (i % 32);  // tail
  }
  return mask;
}

size_t estimate_device_bytes(const BertConfig& config, int max_rows, int max_seq_len, const std::string& precision,
                             bool fused_kernels_available, const OptimizerShard& shard) {
  return plan_device_memory(config, max_rows, max_seq_len, precision, fused_kernels_available, shard).total_bytes();
}

void check_device_memory_fits(const BertConfig& config, int max_rows, int max_seq_len, const std::string& precision,
                              size_t free_bytes, bool fused_kernels_available, const OptimizerShard& shard) {
  const DeviceMemoryPlan plan =
      plan_device_memory(config, max_rows, max_seq_len, precision, fused_kernels_available, shard);
  if (plan.total_bytes() <= free_bytes) return;
  std::string advice = "lower per_device_train_batch_size (or per_device_eval_batch_size) and raise "
                       "gradient_accumulation_steps to keep the global batch, or lower max_length";
  if (plan.activation_bytes == 4) advice += ", or use precision bf16 (sm_80+) / fp16 (sm_75)";
  throw std::runtime_error("not enough GPU memory: training " + std::to_string(max_rows) + " rows x " +
                           std::to_string(max_seq_len) + " tokens in " + precision + " needs about " +
                           gib(plan.total_bytes()) + " (arena " + gib(plan.arena_bytes) + " + " +
                           gib(plan.overhead_bytes) + " runtime allowance), but only " + gib(free_bytes) +
                           " is free; " + advice);
}

}  // namespace llmqs::core
