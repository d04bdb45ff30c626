// The `cuda` backend (see cuda_backend.h): BertForSequenceClassification on one GPU, composed
// from kernels/cuda_kernels.h and cuBLASLt products exactly as core/bert_cpu_model.h composes
// the CPU kernels, with the same dropout sites (kernels/philox.h), so both backends compute
// the same function and the tests can compare every gradient.
//
// Per micro-batch (N = rows x seq tokens, C hidden, I intermediate, all on one stream):
//   forward   embeddings -> LN (+dropout 0) -> L x [Q,K,V GEMMs, attention, O GEMM,
//             dropout+residual+LN, FFN1 GEMM (bias epilogue), GELU, FFN2 GEMM, dropout+residual+LN]
//             -> pooler GEMM on the [CLS] rows (lda = seq x C, no gather) -> tanh -> dropout 1
//             -> classifier GEMM (fp32 logits) -> fused softmax cross-entropy (+ dlogits)
//   backward  the same in reverse; weight gradients are GEMMs that accumulate (beta = 1) straight
//             into the fp32 gradient buffer, bias/LayerNorm gradients deterministic column sums,
//             the word-embedding gradient one block per vocabulary row (no atomics anywhere).
// The host synchronises once per micro-batch, to read the per-row losses and predictions.
// Batch upload: ids/lengths/labels go through pinned staging (async copies) before the forward;
// the token groups the word-embedding backward needs are built on the host AFTER the forward is
// enqueued, so that host work overlaps the GPU's forward instead of delaying it.
// Environment switches (read once per backend; for validation runs that must isolate a change):
//   LLMQS_LAYERNORM=scalar   the first, scalar LayerNorm kernels instead of the packed ones
//   LLMQS_GELU=scalar        the scalar GELU kernels instead of the packed ones (and the FFN1
//                            bias gradient as a separate column sum after dGELU)
//   LLMQS_COLUMN_SUM=scalar  bias-gradient column sums one element per thread
//   LLMQS_UPLOAD=pageable    copy batches from the vectors themselves (no pinned staging)
//   LLMQS_MATMUL_TUNING=0    cuBLASLt's first algorithm for every product, no timing on first use
//                            (kernels/matmul_cublaslt.h: tuning never changes the results)
//   LLMQS_CUDA_PROFILE=1     per-phase GPU times on stderr (PhaseProfile); LLMQS_CUDA_PROFILE_SKIP
//                            = steps left out at the start (default 1: the warm-up step)
//   LLMQS_ATTENTION_MASKS=main  draw each layer's attention dropout mask on the main stream right
//                            before its attention instead of all of them on the side stream (same
//                            bits; measured equal, docs/performance.md section 11)
//   LLMQS_CUDA_GRAPHS=0      launch every kernel of a training micro-batch from the host instead of
//                            replaying captured CUDA graphs (StepGraphs below)
#include "core/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "core/device_memory.h"
#include "core/parameters.h"
#include "kernels/cuda_check.h"
#include "kernels/cuda_kernels.h"
#include "kernels/matmul_cublaslt.h"
#include "kernels/philox.h"

namespace llmqs::core {

namespace cu = kernels::cuda;
using kernels::DType;
using kernels::DropoutSite;

bool cuda_device_available(std::string* why) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    if (why) *why = status != cudaSuccess ? cudaGetErrorString(status) : "cudaGetDeviceCount returned 0 devices";
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return false;
  }
  return true;
}

std::string resolve_cuda_precision(const std::string& precision, int device) {
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  const int sm = prop.major * 10 + prop.minor;
  const std::string where = std::string(prop.name) + " (sm_" + std::to_string(sm) + ")";
  if (precision == "auto") return sm >= 80 ? "bf16" : "fp16";
  if (precision == "fp32" || precision == "tf32") {
    if (precision == "tf32" && sm < 80) throw std::invalid_argument("precision: tf32 needs sm_80 or newer; " + where);
    return precision;
  }
  if (precision == "bf16") {
    if (sm < 80) throw std::invalid_argument("precision: bf16 needs sm_80 or newer, " + where + " has none; use fp16 or auto");
    return precision;
  }
  if (precision == "fp16") {
    if (sm < 70) throw std::invalid_argument("precision: fp16 tensor cores need sm_70 or newer; " + where);
    return precision;
  }
  throw std::invalid_argument("precision: unknown value '" + precision + "' (expected auto, bf16, fp16, fp32, tf32)");
}

namespace {

std::string env_value(const char* name) {
  const char* env = std::getenv(name);
  return env ? std::string(env) : std::string();
}

// Optional per-phase GPU time (LLMQS_CUDA_PROFILE=1): an event after each phase of the step,
// differences summed by phase name, printed to stderr when the backend is destroyed. Off by
// default: with it off `mark` is one branch. This is how docs/performance.md attributes time.
// The first LLMQS_CUDA_PROFILE_SKIP steps (default 1) are left out: the first step pays one-off
// host costs (cuBLASLt's first-call set-up and heuristic queries, lazy loading of every kernel
// module) while the GPU waits, and those gaps land in whichever phase first calls the new code
// (the QKV GEMMs, the step's first products), inflating it by the one-off cost / steps.
class PhaseProfile {
 public:
  explicit PhaseProfile(cudaStream_t stream) : stream_(stream) {
    const std::string env = env_value("LLMQS_CUDA_PROFILE");
    enabled_ = !env.empty() && env != "0";
    const std::string skip = env_value("LLMQS_CUDA_PROFILE_SKIP");
    skip_steps_ = skip.empty() ? 1 : std::max(0, std::atoi(skip.c_str()));
  }
  ~PhaseProfile() {
    if (!enabled_) return;
    collect();
    double total = 0.0;
    for (const auto& [name, ms] : total_ms_) total += ms;
    std::fprintf(stderr, "[ profile ] %d steps (%d warm-up steps left out), %.3f ms/step of GPU time in marked phases\n",
                 steps_, skipped_, total / std::max(1, steps_));
    std::vector<std::pair<double, std::string>> order;
    for (const auto& [name, ms] : total_ms_) order.emplace_back(-ms, name);
    std::sort(order.begin(), order.end());
    for (const auto& [neg_ms, name] : order)
      std::fprintf(stderr, "[ profile ] %-16s %9.3f ms/step %5.1f%%\n", name.c_str(), -neg_ms / std::max(1, steps_),
                   100.0 * -neg_ms / std::max(1e-9, total));
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
  }
  bool enabled() const { return enabled_; }
  // Ends the phase `name` (it began at the previous mark or begin()).
  void mark(const char* name) {
    if (!enabled_) return;
    cudaEvent_t e = next_event();
    CUDA_CHECK(cudaEventRecord(e, stream_));
    marks_.emplace_back(name, e);
  }
  void begin_step() {
    if (!enabled_) return;
    collect();
    if (skipped_ < skip_steps_ && steps_ > 0) {  // the step just collected was a warm-up step
      ++skipped_;
      steps_ = 0;
      total_ms_.clear();
    }
    ++steps_;
    mark("");  // the step's start (a host gap before it is not counted)
  }
  // Sums the marks recorded so far (synchronises on the last).
  void collect() {
    if (!enabled_ || marks_.empty()) return;
    CUDA_CHECK(cudaEventSynchronize(marks_.back().second));
    for (size_t i = 1; i < marks_.size(); ++i) {
      if (marks_[i].first[0] == 0) continue;
      float ms = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, marks_[i - 1].second, marks_[i].second));
      total_ms_[marks_[i].first] += ms;
    }
    marks_.clear();
    used_ = 0;
  }

 private:
  cudaEvent_t next_event() {
    if (used_ == pool_.size()) {
      cudaEvent_t e;
      CUDA_CHECK(cudaEventCreate(&e));
      pool_.push_back(e);
    }
    return pool_[used_++];
  }
  cudaStream_t stream_;
  bool enabled_ = false;
  int steps_ = 0, skip_steps_ = 1, skipped_ = 0;
  std::vector<cudaEvent_t> pool_;
  size_t used_ = 0;
  std::vector<std::pair<std::string, cudaEvent_t>> marks_;
  std::map<std::string, double> total_ms_;
};

// Element offsets of one layer's parameters in the flat buffer.
struct LayerParams {
  size_t q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_g, ln1_b, i_w, i_b, f_w, f_b, ln2_g, ln2_b;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(const BertConfig& config, const std::string& precision, int max_rows, int max_seq_len,
              const OptimizerShard& shard)
      : config_(config), layout_(ParameterLayout::for_bert(config)) {
    config_.validate();
    std::string why;
    if (!cuda_device_available(&why)) throw std::runtime_error("no CUDA device: " + why);
    CUDA_CHECK(cudaGetDevice(&device_));
    precision_ = resolve_cuda_precision(precision, device_);
    type_ = precision_ == "bf16" ? DType::kBF16 : precision_ == "fp16" ? DType::kF16 : DType::kF32;
    if (max_seq_len > config_.max_position_embeddings)
      throw std::invalid_argument("max_seq_len " + std::to_string(max_seq_len) + " exceeds max_position_embeddings " +
                                  std::to_string(config_.max_position_embeddings));
    const bool fused_available = cu::flash_attention_supported(type_, config_.hidden_size, config_.num_attention_heads);
    plan_ = plan_device_memory(config_, max_rows, max_seq_len, precision_, fused_available, shard);
    if (plan_.fused_attention &&
        plan_.attn_mask_bytes != cu::flash_attention_mask_words(max_rows, max_seq_len, config_.num_attention_heads) * 4)
      throw std::logic_error("device memory plan: the attention dropout mask size disagrees with the kernel's layout");
    if (plan_.attn_ds_bytes != 0 &&
        plan_.attn_ds_bytes !=
            cu::flash_attention_ds_elements(max_rows, max_seq_len, config_.num_attention_heads) * plan_.activation_bytes)
      throw std::logic_error("device memory plan: the attention dS buffer size disagrees with the kernel's layout");
    if (plan_.attn_ds_bytes != 0 &&
        plan_.att_bias_partials_bytes !=
            cu::flash_attention_qkv_bias_partial_rows(max_rows, max_seq_len) * 3 * config_.hidden_size * 4)
      throw std::logic_error("device memory plan: the QKV bias partials size disagrees with the kernel's layout");
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    check_device_memory_fits(config_, max_rows, max_seq_len, precision_, free_bytes, fused_available, plan_.shard);
    CUDA_CHECK(cudaMalloc(&arena_, plan_.arena_bytes));
    CUDA_CHECK(cudaStreamCreate(&stream_));
    if (plan_.fused_attention) {
      // The attention dropout masks are drawn on their own stream, overlapped with the matmuls.
      CUDA_CHECK(cudaStreamCreateWithFlags(&mask_stream_, cudaStreamNonBlocking));
      CUDA_CHECK(cudaEventCreateWithFlags(&forward_start_, cudaEventDisableTiming));
      mask_ready_.resize(config_.num_hidden_layers);
      for (cudaEvent_t& e : mask_ready_) CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    cu::KernelVariants variants;
    variants.packed_layernorm = env_value("LLMQS_LAYERNORM") != "scalar";
    variants.packed_gelu = env_value("LLMQS_GELU") != "scalar";
    variants.packed_column_sums = env_value("LLMQS_COLUMN_SUM") != "scalar";
    variants.wgmma_attention = env_value("LLMQS_ATTENTION_WGMMA") != "0";
    masks_on_side_stream_ = env_value("LLMQS_ATTENTION_MASKS") != "main";
    cu::set_kernel_variants(variants);
    // The residual LayerNorms record their dropout keep bits for the backward where the packed
    // kernels run (the plan's size and the kernels' layout must agree).
    const size_t keep_words = cu::layernorm_keep_bits_words(static_cast<int64_t>(plan_.rows) * plan_.seq,
                                                            config_.hidden_size, type_);
    if (keep_words != 0 && plan_.layernorm_keep_bytes != keep_words * 4)
      throw std::logic_error("device memory plan: the LayerNorm keep-bit buffers disagree with the kernels' layout");
    layernorm_keep_bits_ = keep_words != 0;
    keep_recorded_.assign(2 * static_cast<size_t>(config_.num_hidden_layers), 0);
    if (env_value("LLMQS_UPLOAD") != "pageable") {
      // ints: ids [N], lengths [rows], labels [rows], then group token [N], offset [N + 1] and
      // position [N] (the bounds of group_tokens_by_id's output); offsets in upload / upload_groups.
      const size_t N = static_cast<size_t>(plan_.rows) * plan_.seq;
      staging_ints_ = N + 2 * static_cast<size_t>(plan_.rows) + (3 * N + 1) + kernels::kDropoutKeyWords;
      CUDA_CHECK(cudaMallocHost(&staging_, staging_ints_ * sizeof(int32_t)));
      CUDA_CHECK(cudaEventCreateWithFlags(&staging_free_, cudaEventDisableTiming));
    }
    profile_ = std::make_unique<PhaseProfile>(stream_);
    graphs_enabled_ = env_value("LLMQS_CUDA_GRAPHS") != "0";
    matmul_ = std::make_unique<cu::MatmulContext>(arena_ + plan_.matmul_workspace, plan_.matmul_workspace_bytes,
                                                  precision_ == "tf32", matmul_tuning_planned());
    auto off = [&](const std::string& name) { return layout_.find(name).offset; };
    word_ = off("bert.embeddings.word_embeddings.weight");
    position_ = off("bert.embeddings.position_embeddings.weight");
    token_type_ = off("bert.embeddings.token_type_embeddings.weight");
    ln0_g_ = off("bert.embeddings.LayerNorm.weight");
    ln0_b_ = off("bert.embeddings.LayerNorm.bias");
    for (int l = 0; l < config_.num_hidden_layers; ++l) {
      const std::string p = "bert.encoder.layer." + std::to_string(l) + ".";
      LayerParams lp;
      lp.q_w = off(p + "attention.self.query.weight");
      lp.q_b = off(p + "attention.self.query.bias");
      lp.k_w = off(p + "attention.self.key.weight");
      lp.k_b = off(p + "attention.self.key.bias");
      lp.v_w = off(p + "attention.self.value.weight");
      lp.v_b = off(p + "attention.self.value.bias");
      lp.o_w = off(p + "attention.output.dense.weight");
      lp.o_b = off(p + "attention.output.dense.bias");
      lp.ln1_g = off(p + "attention.output.LayerNorm.weight");
      lp.ln1_b = off(p + "attention.output.LayerNorm.bias");
      lp.i_w = off(p + "intermediate.dense.weight");
      lp.i_b = off(p + "intermediate.dense.bias");
      lp.f_w = off(p + "output.dense.weight");
      lp.f_b = off(p + "output.dense.bias");
      lp.ln2_g = off(p + "output.LayerNorm.weight");
      lp.ln2_b = off(p + "output.LayerNorm.bias");
      // The fused QKV product reads [Wq; Wk; Wv] and [bq; bk; bv] as one matrix and one bias.
      const size_t C = static_cast<size_t>(config_.hidden_size);
      if (lp.k_w != lp.q_w + C * C || lp.v_w != lp.q_w + 2 * C * C || lp.k_b != lp.q_b + C || lp.v_b != lp.q_b + 2 * C)
        throw std::logic_error("parameter layout: layer " + std::to_string(l) +
                               "'s query/key/value weights or biases are not adjacent (the fused QKV product needs it)");
      layers_.push_back(lp);
    }
    pool_w_ = off("bert.pooler.dense.weight");
    pool_b_ = off("bert.pooler.dense.bias");
    cls_w_ = off("classifier.weight");
    cls_b_ = off("classifier.bias");

    // The padding past the parameters (ZeRO-1's shards, core/optimizer_shard.h) must hold zeros:
    // it is reduce-scattered, all-gathered and updated like the rest.
    const size_t padding = plan_.shard.padded_numel - layout_.total_numel();
    if (padding > 0) {
      CUDA_CHECK(cudaMemsetAsync(params() + layout_.total_numel(), 0, padding * sizeof(float), stream_));
      if (type_ != DType::kF32)
        CUDA_CHECK(cudaMemsetAsync(low_weight(layout_.total_numel()), 0, padding * kernels::dtype_bytes(type_), stream_));
    }
    std::vector<float> init(layout_.total_numel());
    init_bert_parameters(config_, layout_, 0, init.data());
    set_parameters(init.data());
    CUDA_CHECK(cudaMemsetAsync(arena_ + plan_.adam_m, 0, moment_bytes(), stream_));
    CUDA_CHECK(cudaMemsetAsync(arena_ + plan_.adam_v, 0, moment_bytes(), stream_));
    const std::vector<uint32_t> decay_mask = build_adamw_decay_mask(layout_);  // alive until the sync below
    CUDA_CHECK(cudaMemcpyAsync(u32(plan_.adamw_decay_mask), decay_mask.data(), decay_mask.size() * sizeof(uint32_t),
                               cudaMemcpyHostToDevice, stream_));
    zero_gradients();
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  ~CudaBackend() override {
    for (auto& [shape, g] : graphs_) {
      if (g.forward) cudaGraphExecDestroy(g.forward);
      if (g.backward) cudaGraphExecDestroy(g.backward);
    }
    matmul_.reset();
    profile_.reset();
    if (stream_) cudaStreamSynchronize(stream_);
    if (mask_stream_) cudaStreamSynchronize(mask_stream_);
    for (cudaEvent_t e : mask_ready_) cudaEventDestroy(e);
    if (forward_start_) cudaEventDestroy(forward_start_);
    if (mask_stream_) cudaStreamDestroy(mask_stream_);
    if (staging_free_) cudaEventDestroy(staging_free_);
    if (staging_) cudaFreeHost(staging_);
    if (stream_) cudaStreamDestroy(stream_);
    if (arena_) cudaFree(arena_);
  }

  std::string name() const override { return "cuda"; }
  int64_t graph_replays() const { return graph_replays_; }
  const BertConfig& config() const override { return config_; }
  const ParameterLayout& layout() const override { return layout_; }
  const OptimizerShard& optimizer_shard() const override { return plan_.shard; }

  void set_parameters(const float* host) override {
    CUDA_CHECK(cudaMemcpyAsync(params(), host, bytes(), cudaMemcpyHostToDevice, stream_));
    if (type_ != DType::kF32)
      cu::convert(arena_ + plan_.params_low, type_, params(), DType::kF32, layout_.total_numel(), stream_);
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void get_parameters(float* host) const override { download(host, plan_.params); }
  // The moments hold the owned elements [shard.begin, shard.owned_end()) from their start.
  void set_optimizer_state(const float* m_host, const float* v_host) override {
    const size_t owned = plan_.shard.owned_numel() * sizeof(float);
    CUDA_CHECK(cudaMemcpyAsync(arena_ + plan_.adam_m, m_host + plan_.shard.begin, owned, cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaMemcpyAsync(arena_ + plan_.adam_v, v_host + plan_.shard.begin, owned, cudaMemcpyHostToDevice, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void get_optimizer_state(float* m_host, float* v_host) const override {
    get_owned_optimizer_state(m_host + plan_.shard.begin, v_host + plan_.shard.begin);
  }
  void get_owned_optimizer_state(float* m_owned, float* v_owned) const override {
    const size_t owned = plan_.shard.owned_numel() * sizeof(float);
    CUDA_CHECK(cudaMemcpyAsync(m_owned, arena_ + plan_.adam_m, owned, cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaMemcpyAsync(v_owned, arena_ + plan_.adam_v, owned, cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void get_gradients(float* host) const override { download(host, plan_.grads); }
  void zero_gradients() override {
    CUDA_CHECK(cudaMemsetAsync(grads(), 0, plan_.shard.padded_numel * sizeof(float), stream_));
  }
  void* device_stream() override { return stream_; }

  BatchStats forward_backward(const data::Batch& batch, float loss_weight, const DropoutKey& dropout) override {
    if (batch.labels.size() != static_cast<size_t>(batch.rows))
      throw std::invalid_argument("forward_backward: the batch needs one label per row");
    profile_->begin_step();
    upload(batch);
    profile_->mark("upload");
    upload_dropout_key(dropout);
    // A shape's first micro-batch runs eagerly (cuBLASLt's first use of a product tunes it and
    // synchronises); later ones replay its graphs. The per-phase profile and the per-layer gradient
    // hook need the host between kernels, so they keep the eager path.
    const GraphKey shape{rows_, seq_, dropout.enabled};
    const bool replay = graphs_enabled_ && !profile_->enabled() && !has_gradient_ready_hook() &&
                        eager_shapes_.count(shape) != 0 &&
                        (graphs_.count(shape) != 0 || graphs_.size() < kMaxGraphShapes);
    StepGraphs* graphs = replay ? &graphs_[shape] : nullptr;
    if (graphs) launch_graph(graphs->forward, [&] { run_forward(dropout); });
    else run_forward(dropout);
    run_loss(true, loss_weight);
    upload_groups(batch);  // host work while the GPU runs the forward
    if (graphs) launch_graph(graphs->backward, [&] { run_backward(); });
    else run_backward();
    run_embeddings_backward();
    eager_shapes_.insert(shape);
    if (graphs) ++graph_replays_;
    return read_stats(batch, nullptr);
  }

  BatchStats forward(const data::Batch& batch, float* logits_host) override {
    upload(batch);
    DropoutKey off;
    off.enabled = false;
    run_forward(off);
    run_loss(false, 0.0f);
    return read_stats(batch, logits_host);
  }

  float* gradient_buffer() override { return grads(); }
  double gradient_sq_norm() override {
    const double sq = cu::sum_of_squares(grads() + plan_.shard.begin, plan_.shard.owned_numel(),
                                         reinterpret_cast<double*>(arena_ + plan_.grad_norm_partial), stream_);
    profile_->mark("grad_norm");
    return sq;
  }

  void adamw_step(const AdamWHyper& hyper) override {
    if (hyper.step < 1) throw std::invalid_argument("adamw_step: step is 1-based, got " + std::to_string(hyper.step));
    cu::AdamWScalars s;
    s.lr = hyper.lr;
    s.beta1 = hyper.beta1;
    s.beta2 = hyper.beta2;
    s.eps = hyper.eps;
    s.grad_scale = hyper.grad_scale;
    s.step = hyper.step;
    s.weight_decay = hyper.weight_decay;  // only where the tensor decays: the arena's bitmask says which
    // One launch over the owned part of the flat buffers (parameters, gradients, the decay mask
    // and the low copy share the element offsets of ParameterLayout; the moments start at the
    // shard's first element, a multiple of 32: a whole mask word), instead of one per tensor.
    const size_t first = plan_.shard.begin;
    cu::adamw_update(params() + first, grads() + first, f32(plan_.adam_m), f32(plan_.adam_v),
                     u32(plan_.adamw_decay_mask) + first / 32, plan_.shard.owned_numel(), s,
                     type_ != DType::kF32 ? low_weight(first) : nullptr, type_, stream_);
    profile_->mark("adamw");
  }
  float* parameter_buffer() override { return params(); }
  // After the all-gather wrote the other shards' fp32 parameters: their low copy, converted as
  // AdamW converts its own (round to nearest), before and after the owned range.
  void parameters_gathered() override {
    if (type_ == DType::kF32) return;
    const size_t first = plan_.shard.begin, end = plan_.shard.owned_end(), numel = layout_.total_numel();
    cu::convert(low_weight(0), type_, params(), DType::kF32, first, stream_);
    if (end < numel) cu::convert(low_weight(end), type_, params() + end, DType::kF32, numel - end, stream_);
    profile_->mark("gather_convert");
  }

 private:
  size_t bytes() const { return layout_.total_numel() * sizeof(float); }
  size_t moment_bytes() const { return plan_.shard.count * sizeof(float); }
  float* f32(size_t offset) const { return reinterpret_cast<float*>(arena_ + offset); }
  int32_t* i32(size_t offset) const { return reinterpret_cast<int32_t*>(arena_ + offset); }
  uint32_t* u32(size_t offset) const { return reinterpret_cast<uint32_t*>(arena_ + offset); }
  void* act(size_t offset) const { return arena_ + offset; }
  float* params() const { return f32(plan_.params); }
  float* grads() const { return f32(plan_.grads); }
  const float* P(size_t element) const { return params() + element; }
  float* G(size_t element) const { return grads() + element; }
  // The copy of a parameter the matmuls read (the fp32 master itself in fp32 runs).
  void* low_weight(size_t element) const {
    return arena_ + plan_.params_low + element * kernels::dtype_bytes(type_);
  }
  float* scratch() const { return f32(plan_.reduce_scratch); }
  // A residual LayerNorm's keep-bit buffer, or null where the kernels draw the mask again.
  uint32_t* keep_bits(size_t offset) const { return layernorm_keep_bits_ ? u32(offset) : nullptr; }

  // CUDA graphs of a training micro-batch, one pair per batch shape: the forward up to the logits,
  // and the backward from the logits' gradient through the embedding LayerNorm. Their kernels'
  // arguments are the same for every micro-batch of the shape: the dropout key is read from device
  // memory (DropoutSite::key_words, uploaded with the batch), and what else changes per
  // micro-batch stays outside the graphs, launched as before: the loss (its weight) and the
  // embeddings' backward (its token-group count). Each graph is captured once, on the shape's
  // second micro-batch, and replayed from then on as one launch: the GPU runs ~30 kernels per
  // layer back to back, without the per-launch gap of stream launches. Same kernels, same
  // arguments, same order: bit-identical to the eager path (a backend test checks it).
  // ~0.7 MB of device memory per shape at bert-base (measured: 64 Yelp shapes, +0.09 GiB); shapes
  // past the cap run eagerly.
  static constexpr size_t kMaxGraphShapes = 128;
  using GraphKey = std::tuple<int, int, bool>;  // rows, seq, dropout on
  struct StepGraphs {
    cudaGraphExec_t forward = nullptr, backward = nullptr;
  };
  template <typename Issue>
  void launch_graph(cudaGraphExec_t& exec, Issue&& issue) {
    if (!exec) {
      cudaGraph_t graph = nullptr;
      CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      try {
        issue();
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);  // leave the stream usable; the error goes on
        if (graph) cudaGraphDestroy(graph);
        cudaGetLastError();
        throw;
      }
      CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
      const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      if (status != cudaSuccess) exec = nullptr;
      CUDA_CHECK(status);
    }
    CUDA_CHECK(cudaGraphLaunch(exec, stream_));
  }

  // The micro-batch's dropout key into the arena (through the pinned staging after the batch).
  void upload_dropout_key(const DropoutKey& key) {
    DropoutSite s;
    s.seed = key.seed;
    s.step = key.step;
    s.rank = key.rank;
    s.micro_step = key.micro_step;
    uint32_t words[kernels::kDropoutKeyWords];
    kernels::dropout_key_words(s, words);
    int32_t ints[kernels::kDropoutKeyWords];
    std::memcpy(ints, words, sizeof(words));
    copy_ints(plan_.dropout_key, ints, kernels::kDropoutKeyWords, staging_ints_ - kernels::kDropoutKeyWords);
    staging_in_use();
  }

  void download(float* host, size_t offset) const {
    CUDA_CHECK(cudaMemcpyAsync(host, arena_ + offset, bytes(), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // Every kernel reads the key itself from the arena (upload_dropout_key): the same arguments for
  // every micro-batch of a shape, as its CUDA graphs need.
  DropoutSite site(uint32_t tensor_id, float p) const {
    DropoutSite s;
    s.key_words = u32(plan_.dropout_key);
    s.tensor_id = tensor_id;
    s.p = key_.enabled ? p : 0.0f;
    return s;
  }
  DropoutSite layer_site(int layer, kernels::LayerDropoutSite which, float p) const {
    return site(kernels::bert_dropout_tensor_id(layer, which), p);
  }

  // Copies `count` ints from host to the device at arena offset `device_offset`, through the pinned
  // staging buffer at int offset `stage` when there is one (then the copy is truly asynchronous;
  // from pageable memory the driver copies synchronously through its own bounce buffer).
  void copy_ints(size_t device_offset, const int32_t* host, size_t count, size_t stage) {
    if (count == 0) return;
    const int32_t* source = host;
    if (staging_) {
      std::memcpy(staging_ + stage, host, count * sizeof(int32_t));
      source = staging_ + stage;
    }
    CUDA_CHECK(cudaMemcpyAsync(i32(device_offset), source, count * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  }
  // Before the host rewrites the staging buffer, the copies that read it last must be done
  // (normally long done: read_stats synchronised the stream at the end of the previous batch).
  void wait_staging_free() {
    if (staging_ && staging_recorded_) CUDA_CHECK(cudaEventSynchronize(staging_free_));
  }
  void staging_in_use() {
    if (!staging_) return;
    CUDA_CHECK(cudaEventRecord(staging_free_, stream_));
    staging_recorded_ = true;
  }

  // The word-embedding backward's token groups (training only), staged after ids/lengths/labels.
  void upload_groups(const data::Batch& batch) {
    const size_t N = static_cast<size_t>(plan_.rows) * plan_.seq;
    const size_t base = N + 2 * static_cast<size_t>(plan_.rows);
    groups_ = cu::group_tokens_by_id(batch.input_ids.data(), static_cast<int64_t>(rows_) * seq_, config_.pad_token_id);
    copy_ints(plan_.group_token, groups_.token.data(), groups_.token.size(), base);
    copy_ints(plan_.group_offset, groups_.offset.data(), groups_.offset.size(), base + N);
    copy_ints(plan_.group_position, groups_.position.data(), groups_.position.size(), base + 2 * N + 1);
    staging_in_use();
  }

  // Checks the batch as the CPU model does (same messages) and copies it to the device.
  void upload(const data::Batch& batch) {
    const int rows = batch.rows, seq = batch.seq_len;
    if (rows <= 0 || seq <= 0) throw std::invalid_argument("batch: rows and seq_len must be positive");
    if (rows > plan_.rows || seq > plan_.seq)
      throw std::invalid_argument("batch: " + std::to_string(rows) + " rows x " + std::to_string(seq) +
                                  " tokens exceeds the CUDA backend's arena (" + std::to_string(plan_.rows) + " x " +
                                  std::to_string(plan_.seq) + "); create the backend with the largest batch");
    if (batch.input_ids.size() != static_cast<size_t>(rows) * seq || batch.lengths.size() != static_cast<size_t>(rows))
      throw std::invalid_argument("batch: input_ids must hold rows x seq_len ids and lengths one per row");
    if (!batch.labels.empty() && batch.labels.size() != static_cast<size_t>(rows))
      throw std::invalid_argument("batch: labels must hold one label per row (or none)");
    for (int r = 0; r < rows; ++r) {
      if (batch.lengths[r] < 1 || batch.lengths[r] > seq)
        throw std::invalid_argument("batch row " + std::to_string(r) + ": length " + std::to_string(batch.lengths[r]) +
                                    " outside [1, " + std::to_string(seq) + "]");
      if (!batch.labels.empty() && (batch.labels[r] < 0 || batch.labels[r] >= config_.num_labels))
        throw std::invalid_argument("batch row " + std::to_string(r) + ": label " + std::to_string(batch.labels[r]) +
                                    " outside [0, " + std::to_string(config_.num_labels) + ")");
      for (int s = 0; s < seq; ++s) {
        const int32_t id = batch.input_ids[static_cast<size_t>(r) * seq + s];
        if (id < 0 || id >= config_.vocab_size)
          throw std::invalid_argument("batch row " + std::to_string(r) + " position " + std::to_string(s) + ": token id " +
                                      std::to_string(id) + " outside the vocabulary of " +
                                      std::to_string(config_.vocab_size));
      }
    }
    rows_ = rows;
    seq_ = seq;
    has_labels_ = !batch.labels.empty();
    const size_t N = static_cast<size_t>(plan_.rows) * plan_.seq;
    wait_staging_free();
    copy_ints(plan_.ids, batch.input_ids.data(), batch.input_ids.size(), 0);
    copy_ints(plan_.lengths, batch.lengths.data(), rows, N);
    if (has_labels_) copy_ints(plan_.labels, batch.labels.data(), rows, N + plan_.rows);
    staging_in_use();
  }

  cu::AttentionScratch attention_scratch() const {
    cu::AttentionScratch s;
    s.q_heads = act(plan_.att_q);
    s.k_heads = act(plan_.att_k);
    s.v_heads = act(plan_.att_v);
    s.ctx_heads = act(plan_.att_ctx);
    s.dq_heads = act(plan_.att_dq);
    s.dk_heads = act(plan_.att_dk);
    s.dv_heads = act(plan_.att_dv);
    s.scores = f32(plan_.att_scores);
    s.dropped = act(plan_.att_dropped);
    return s;
  }

  // Column block `index` (0 = q, 1 = k, 2 = v) of a [tokens x 3C] buffer (row stride 3C).
  void* qkv_block(void* base, int index) const {
    return static_cast<char*>(base) + static_cast<size_t>(index) * config_.hidden_size * plan_.activation_bytes;
  }

  const void* layer_input(int l) const { return l == 0 ? act(plan_.h0) : act(plan_.layers[l - 1].out); }

  void linear(const void* x, size_t w, size_t b, void* y, int rows, int in, int out) {
    cu::linear_forward(*matmul_, stream_, type_, x, low_weight(w), low_weight(b), y, rows, in, out);
  }
  // Weight and bias gradients of y = x W^T + b, and dx (+)= dy W when dx is given; the bias
  // gradient is skipped when a fused pass already added it (bias_done).
  void linear_grad(const void* dy, const void* x, size_t w, size_t b, void* dx, float beta, int rows, int in, int out,
                   bool bias_done = false) {
    cu::linear_backward_weight(*matmul_, stream_, type_, dy, x, G(w), rows, in, out);
    if (!bias_done) cu::linear_backward_bias(G(b), dy, type_, rows, out, scratch(), stream_);
    if (dx) cu::linear_backward_input(*matmul_, stream_, type_, dy, low_weight(w), dx, rows, in, out, beta);
  }

  void run_forward(const DropoutKey& key) {
    key_ = key;
    const int B = rows_, S = seq_, N = B * S, C = config_.hidden_size, I = config_.intermediate_size;
    const int H = config_.num_attention_heads, L = config_.num_labels;
    const float hidden_p = config_.hidden_dropout_prob, attn_p = config_.attention_probs_dropout_prob;
    const float eps = config_.layer_norm_eps;
    const DropoutSite none;
    const int32_t* lengths = i32(plan_.lengths);
    const bool draw_masks = plan_.fused_attention && key_.enabled && attn_p > 0.0f;
    const bool side_masks = draw_masks && masks_on_side_stream_;
    if (side_masks) {
      // Every layer's attention keep bits, drawn on mask_stream_ while the main stream runs the
      // embeddings and the first matmuls; layer l's attention waits for mask_ready_[l]. The side
      // stream first waits for everything before this forward (the previous backward read the masks).
      CUDA_CHECK(cudaEventRecord(forward_start_, stream_));
      CUDA_CHECK(cudaStreamWaitEvent(mask_stream_, forward_start_, 0));
      for (int l = 0; l < config_.num_hidden_layers; ++l) {
        cu::flash_attention_dropout_mask(u32(plan_.layers[l].attn_mask), B, S, H,
                                         layer_site(l, kernels::LayerDropoutSite::kAttentionProbs, attn_p),
                                         mask_stream_);
        CUDA_CHECK(cudaEventRecord(mask_ready_[l], mask_stream_));
      }
    }

    cu::embeddings_forward(act(plan_.emb_sum), type_, i32(plan_.ids), P(word_), P(position_), P(token_type_), B, S, C,
                           stream_);
    cu::layernorm_forward(act(plan_.h0), nullptr, f32(plan_.emb_mean), f32(plan_.emb_rstd), act(plan_.emb_sum), nullptr,
                          P(ln0_g_), P(ln0_b_), type_, N, C, eps, none, site(kernels::kEmbeddingDropoutId, hidden_p),
                          stream_);
    profile_->mark("embed_fwd");
    const cu::AttentionScratch att = attention_scratch();
    void* dense_out = act(plan_.d_tmp);  // free during the forward
    for (int l = 0; l < config_.num_hidden_layers; ++l) {
      const LayerParams& lp = layers_[l];
      const LayerDeviceBuffers& a = plan_.layers[l];
      const void* x = layer_input(l);
      // One product for Q, K and V: the layout keeps the three weights (and biases) adjacent, so
      // [q | k | v] = x [Wq; Wk; Wv]^T + [bq; bk; bv], rows of 3C.
      linear(x, lp.q_w, lp.q_b, act(a.qkv), N, C, 3 * C);
      const void* q = qkv_block(act(a.qkv), 0);
      const void* k = qkv_block(act(a.qkv), 1);
      const void* v = qkv_block(act(a.qkv), 2);
      profile_->mark("qkv_fwd");
      if (side_masks) CUDA_CHECK(cudaStreamWaitEvent(stream_, mask_ready_[l], 0));
      if (draw_masks && !side_masks)
        cu::flash_attention_dropout_mask(u32(a.attn_mask), B, S, H,
                                         layer_site(l, kernels::LayerDropoutSite::kAttentionProbs, attn_p), stream_);
      if (plan_.fused_attention)
        cu::flash_attention_forward(act(a.ctx), f32(a.probs), u32(a.attn_mask), q, k, v, lengths, type_, B, S, C, H,
                                    3 * C,
                                    layer_site(l, kernels::LayerDropoutSite::kAttentionProbs, attn_p), stream_);
      else
        cu::attention_forward(act(a.ctx), act(a.probs), q, k, v, lengths, type_, B, S, C, H, 3 * C,
                              layer_site(l, kernels::LayerDropoutSite::kAttentionProbs, attn_p), att, *matmul_,
                              stream_);
      profile_->mark("attention_fwd");
      linear(act(a.ctx), lp.o_w, lp.o_b, dense_out, N, C, C);
      profile_->mark("o_fwd");
      keep_recorded_[2 * l] = cu::layernorm_forward(act(a.attn_out), act(a.attn_sum), f32(a.attn_mean), f32(a.attn_rstd), dense_out, x,
                            P(lp.ln1_g), P(lp.ln1_b), type_, N, C, eps,
                            layer_site(l, kernels::LayerDropoutSite::kAttentionOutput, hidden_p), none, stream_,
                            keep_bits(a.attn_keep));
      profile_->mark("ln_fwd");
      linear(act(a.attn_out), lp.i_w, lp.i_b, act(a.ffn_pre), N, C, I);
      profile_->mark("ffn1_fwd");
      cu::gelu_forward(act(a.ffn_act), act(a.ffn_pre), type_, static_cast<size_t>(N) * I, stream_);
      profile_->mark("gelu_fwd");
      linear(act(a.ffn_act), lp.f_w, lp.f_b, dense_out, N, I, C);
      profile_->mark("ffn2_fwd");
      keep_recorded_[2 * l + 1] = cu::layernorm_forward(act(a.out), act(a.ffn_sum), f32(a.ffn_mean), f32(a.ffn_rstd), dense_out, act(a.attn_out),
                            P(lp.ln2_g), P(lp.ln2_b), type_, N, C, eps,
                            layer_site(l, kernels::LayerDropoutSite::kFeedForwardOutput, hidden_p), none, stream_,
                            keep_bits(a.ffn_keep));
      profile_->mark("ln_fwd");
    }
    // Pooler on the [CLS] rows: row r of the product reads token r * S (lda = S * C).
    cu::GemmArgs pool;
    pool.trans_b = true;
    pool.m = B, pool.n = C, pool.k = C;
    pool.ab_type = pool.y_type = type_;
    pool.a = last_hidden(), pool.lda = static_cast<int64_t>(S) * C;
    pool.b = low_weight(pool_w_), pool.ldb = C;
    pool.y = act(plan_.pooled_pre), pool.ldy = C;
    pool.bias = low_weight(pool_b_);
    matmul_->gemm(pool, stream_);
    cu::tanh_forward(act(plan_.pooled), act(plan_.pooled_pre), type_, static_cast<size_t>(B) * C, stream_);
    cu::dropout_forward(act(plan_.pooled_dropped), act(plan_.pooled), type_, static_cast<size_t>(B) * C,
                        site(kernels::kPooledDropoutId, config_.classifier_dropout_prob()), stream_);
    // Classifier into fp32 logits (the fp32 master bias, as the output type).
    cu::GemmArgs cls;
    cls.trans_b = true;
    cls.m = B, cls.n = L, cls.k = C;
    cls.ab_type = type_;
    cls.y_type = DType::kF32;
    cls.a = act(plan_.pooled_dropped), cls.lda = C;
    cls.b = low_weight(cls_w_), cls.ldb = C;
    cls.y = f32(plan_.logits), cls.ldy = L;
    cls.bias = P(cls_b_);
    matmul_->gemm(cls, stream_);
  }

  // The per-row losses and predictions, and in training dlogits = loss_weight x d(CE)/d(logits).
  void run_loss(bool training, float loss_weight) {
    if (has_labels_)
      cu::softmax_cross_entropy(f32(plan_.row_loss), i32(plan_.prediction), training ? act(plan_.dlogits) : nullptr,
                                type_, f32(plan_.logits), i32(plan_.labels), rows_, config_.num_labels, loss_weight,
                                stream_);
    profile_->mark("head_fwd");
  }

  const void* last_hidden() const { return layer_input(config_.num_hidden_layers); }

  void run_backward() {
    const int B = rows_, S = seq_, N = B * S, C = config_.hidden_size, I = config_.intermediate_size;
    const int H = config_.num_attention_heads, L = config_.num_labels;
    const float hidden_p = config_.hidden_dropout_prob, attn_p = config_.attention_probs_dropout_prob;
    const DropoutSite none;
    void* d_h = act(plan_.d_h);
    void* d_sum = act(plan_.d_sum);
    void* d_tmp = act(plan_.d_tmp);
    void* d_ffn = act(plan_.d_ffn);
    void* d_pooled = act(plan_.d_pooled);
    const size_t es = kernels::dtype_bytes(type_);

    // Classifier and pooler.
    linear_grad(act(plan_.dlogits), act(plan_.pooled_dropped), cls_w_, cls_b_, d_pooled, 0.0f, B, C, L);
    cu::dropout_backward(d_pooled, d_pooled, type_, static_cast<size_t>(B) * C,
                         site(kernels::kPooledDropoutId, config_.classifier_dropout_prob()), stream_);
    cu::tanh_backward(d_pooled, act(plan_.pooled), d_pooled, type_, static_cast<size_t>(B) * C, stream_);
    cu::GemmArgs pool_w;  // dWp += dpooled^T cls
    pool_w.trans_a = true;
    pool_w.m = C, pool_w.n = C, pool_w.k = B;
    pool_w.ab_type = type_;
    pool_w.y_type = DType::kF32;
    pool_w.a = d_pooled, pool_w.lda = C;
    pool_w.b = last_hidden(), pool_w.ldb = static_cast<int64_t>(S) * C;
    pool_w.y = G(pool_w_), pool_w.ldy = C;
    pool_w.beta = 1.0f;
    matmul_->gemm(pool_w, stream_);
    cu::linear_backward_bias(G(pool_b_), d_pooled, type_, B, C, scratch(), stream_);
    CUDA_CHECK(cudaMemsetAsync(d_h, 0, static_cast<size_t>(N) * C * es, stream_));
    cu::GemmArgs pool_x;  // d(cls rows) = dpooled Wp, written at stride S * C
    pool_x.m = B, pool_x.n = C, pool_x.k = C;
    pool_x.ab_type = pool_x.y_type = type_;
    pool_x.a = d_pooled, pool_x.lda = C;
    pool_x.b = low_weight(pool_w_), pool_x.ldb = C;
    pool_x.y = d_h, pool_x.ldy = static_cast<int64_t>(S) * C;
    matmul_->gemm(pool_x, stream_);
    profile_->mark("head_bwd");

    const cu::AttentionScratch att = attention_scratch();
    for (int l = config_.num_hidden_layers - 1; l >= 0; --l) {
      const LayerParams& lp = layers_[l];
      const LayerDeviceBuffers& a = plan_.layers[l];
      const void* x = layer_input(l);
      // Output LayerNorm: d_sum = d(attn_out) via the residual, d_tmp = d(FFN2 output) through
      // dropout, whose column sums are the FFN2 bias gradient (summed in the same pass).
      cu::layernorm_backward(d_sum, d_tmp, G(lp.ln2_g), G(lp.ln2_b), G(lp.f_b), d_h, act(a.ffn_sum),
                             f32(a.ffn_mean), f32(a.ffn_rstd), P(lp.ln2_g), type_, N, C,
                             layer_site(l, kernels::LayerDropoutSite::kFeedForwardOutput, hidden_p), none, scratch(),
                             stream_, keep_recorded_[2 * l + 1] ? keep_bits(a.ffn_keep) : nullptr);
      profile_->mark("ln_bwd");
      linear_grad(d_tmp, act(a.ffn_act), lp.f_w, lp.f_b, d_ffn, 0.0f, N, I, C, true);
      profile_->mark("ffn2_bwd");
      // dGELU and the FFN1 bias gradient in one pass over N x I.
      cu::gelu_backward_bias_grad(d_ffn, G(lp.i_b), act(a.ffn_pre), d_ffn, type_, N, I, scratch(), stream_);
      profile_->mark("gelu_bwd");
      linear_grad(d_ffn, act(a.attn_out), lp.i_w, lp.i_b, d_sum, 1.0f, N, C, I, true);
      profile_->mark("ffn1_bwd");
      // Attention LayerNorm: d_h = d(layer input) via the residual, d_tmp = d(O projection output)
      // and its column sums, the O projection's bias gradient.
      cu::layernorm_backward(d_h, d_tmp, G(lp.ln1_g), G(lp.ln1_b), G(lp.o_b), d_sum, act(a.attn_sum),
                             f32(a.attn_mean), f32(a.attn_rstd), P(lp.ln1_g), type_, N, C,
                             layer_site(l, kernels::LayerDropoutSite::kAttentionOutput, hidden_p), none, scratch(),
                             stream_, keep_recorded_[2 * l] ? keep_bits(a.attn_keep) : nullptr);
      profile_->mark("ln_bwd");
      linear_grad(d_tmp, act(a.ctx), lp.o_w, lp.o_b, act(plan_.d_ctx), 0.0f, N, C, C, true);
      profile_->mark("o_bwd");
      void* d_qkv = act(plan_.d_qkv);
      // The Hopper long-row kernels also sum the QKV bias gradient per 64 positions (partials).
      const bool attention_bias =
          plan_.fused_attention && cu::flash_attention_backward_sums_qkv_bias(type_, C, H, S, plan_.attn_ds_bytes != 0);
      if (plan_.fused_attention)
        cu::flash_attention_backward(qkv_block(d_qkv, 0), qkv_block(d_qkv, 1), qkv_block(d_qkv, 2),
                                     act(plan_.d_ctx), act(a.ctx), qkv_block(act(a.qkv), 0),
                                     qkv_block(act(a.qkv), 1), qkv_block(act(a.qkv), 2), f32(a.probs),
                                     u32(a.attn_mask), f32(plan_.att_scores),
                                     plan_.attn_ds_bytes ? act(plan_.att_ds) : nullptr,
                                     attention_bias ? f32(plan_.att_bias_partials) : nullptr, i32(plan_.lengths),
                                     type_, B, S, C, H, 3 * C,
                                     layer_site(l, kernels::LayerDropoutSite::kAttentionProbs, attn_p), stream_);
      else
        cu::attention_backward(qkv_block(d_qkv, 0), qkv_block(d_qkv, 1), qkv_block(d_qkv, 2), act(plan_.d_ctx),
                               qkv_block(act(a.qkv), 0), qkv_block(act(a.qkv), 1), qkv_block(act(a.qkv), 2),
                               act(a.probs), i32(plan_.lengths), type_, B, S, C, H, 3 * C,
                               layer_site(l, kernels::LayerDropoutSite::kAttentionProbs, attn_p), att, *matmul_,
                               stream_);
      profile_->mark("attention_bwd");
      if (attention_bias)
        cu::linear_backward_bias(G(lp.q_b), f32(plan_.att_bias_partials), DType::kF32,
                                 static_cast<int64_t>(cu::flash_attention_qkv_bias_partial_rows(B, S)), 3 * C, scratch(),
                                 stream_);
      linear_grad(d_qkv, x, lp.q_w, lp.q_b, d_h, 1.0f, N, C, 3 * C, attention_bias);  // the fused product's three gradients
      profile_->mark("qkv_bwd");
      backward_finished_layer(l);
    }
    cu::layernorm_backward(d_sum, nullptr, G(ln0_g_), G(ln0_b_), nullptr, d_h, act(plan_.emb_sum),
                           f32(plan_.emb_mean), f32(plan_.emb_rstd), P(ln0_g_), type_, N, C, none,
                           site(kernels::kEmbeddingDropoutId, hidden_p), scratch(), stream_);
  }

  // The embeddings' gradients from d_sum (the embedding LayerNorm's input gradient); the word
  // embedding's part runs over the micro-batch's token groups (upload_groups).
  void run_embeddings_backward() {
    const int B = rows_, S = seq_, C = config_.hidden_size;
    void* d_sum = act(plan_.d_sum);
    cu::embeddings_backward(G(word_), G(position_), G(token_type_), d_sum, type_, i32(plan_.group_token),
                            i32(plan_.group_offset), i32(plan_.group_position),
                            static_cast<int>(groups_.token.size()), B, S, C, scratch(), stream_);
    profile_->mark("embed_bwd");
    backward_finished_layer(-1);
  }

  BatchStats read_stats(const data::Batch& batch, float* logits_host) {
    BatchStats stats;
    stats.rows = rows_;
    if (logits_host)
      CUDA_CHECK(cudaMemcpyAsync(logits_host, f32(plan_.logits), static_cast<size_t>(rows_) * config_.num_labels * 4,
                                 cudaMemcpyDeviceToHost, stream_));
    std::vector<float> loss(rows_);
    std::vector<int32_t> prediction(rows_);
    if (has_labels_) {
      CUDA_CHECK(cudaMemcpyAsync(loss.data(), f32(plan_.row_loss), rows_ * 4, cudaMemcpyDeviceToHost, stream_));
      CUDA_CHECK(cudaMemcpyAsync(prediction.data(), i32(plan_.prediction), rows_ * 4, cudaMemcpyDeviceToHost, stream_));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (!has_labels_) return stats;
    for (int r = 0; r < rows_; ++r) {
      stats.loss_sum += loss[r];
      stats.correct += prediction[r] == batch.labels[r] ? 1 : 0;
    }
    return stats;
  }

  BertConfig config_;
  ParameterLayout layout_;
  std::string precision_;
  DType type_ = DType::kF32;
  int device_ = 0;
  DeviceMemoryPlan plan_;
  char* arena_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaStream_t mask_stream_ = nullptr;       // fused attention: dropout masks (run_forward)
  cudaEvent_t forward_start_ = nullptr;
  std::vector<cudaEvent_t> mask_ready_;      // per layer
  bool masks_on_side_stream_ = true;         // LLMQS_ATTENTION_MASKS=main: each layer's, before its attention
  std::unique_ptr<cu::MatmulContext> matmul_;
  std::unique_ptr<PhaseProfile> profile_;
  size_t word_ = 0, position_ = 0, token_type_ = 0, ln0_g_ = 0, ln0_b_ = 0;
  size_t pool_w_ = 0, pool_b_ = 0, cls_w_ = 0, cls_b_ = 0;
  std::vector<LayerParams> layers_;
  int rows_ = 0, seq_ = 0;
  bool has_labels_ = false;
  DropoutKey key_;
  cu::TokenGroupsHost groups_;
  bool graphs_enabled_ = true;
  int64_t graph_replays_ = 0;
  std::map<GraphKey, StepGraphs> graphs_;
  std::set<GraphKey> eager_shapes_;  // shapes whose micro-batch ran eagerly once (products tuned)
  bool layernorm_keep_bits_ = false;  // LayerNorm forward records dropout keep bits for the backward
  std::vector<uint8_t> keep_recorded_;  // per residual LayerNorm (2 per layer): the last forward recorded its bits
  int32_t* staging_ = nullptr;  // pinned host ints (null with LLMQS_UPLOAD=pageable)
  size_t staging_ints_ = 0;
  cudaEvent_t staging_free_ = nullptr;
  bool staging_recorded_ = false;
};

}  // namespace

int64_t cuda_graph_replays(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackend*>(&backend);
  return cuda ? cuda->graph_replays() : 0;
}

bool matmul_tuning_planned() { return env_value("LLMQS_MATMUL_TUNING") != "0"; }

std::unique_ptr<Backend> make_cuda_backend(const BertConfig& config, const std::string& precision, int max_rows,
                                           int max_seq_len, const OptimizerShard& shard) {
  return std::make_unique<CudaBackend>(config, precision, max_rows, max_seq_len, shard);
}

}  // namespace llmqs::core
