// A Backend owns one replica of the model on one device: fp32 master parameters, gradients,
// AdamW moments and whatever activations a step needs. The trainer drives it through this
// interface and never asks which one it has (ggml-style): `cpu` is the fp32 reference and
// test oracle, `cuda` is the product.
//
// Parameter order and offsets come from ParameterLayout (core/parameters.h): the flat
// buffers exchanged here (parameters, moments) follow that layout exactly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/optimizer_shard.h"
#include "core/parameters.h"
#include "data/batch.h"

namespace llmqs::core {

// Keys the counter-based dropout generator, so that the CPU and CUDA backends draw identical
// masks: (seed, step, rank, micro_step) + the tensor id and element index inside the kernels.
struct DropoutKey {
  uint64_t seed = 0;
  uint64_t step = 0;        // optimizer step (0-based) the micro-batch belongs to
  uint32_t rank = 0;
  uint32_t micro_step = 0;  // index inside gradient accumulation
  bool enabled = true;      // false: evaluation / dropout-free parity runs
};

// Sums over the rows of one batch (divide by rows for means).
struct BatchStats {
  double loss_sum = 0.0;  // sum of per-row cross-entropy
  int64_t correct = 0;    // rows whose argmax equals the label
  int64_t rows = 0;
};

struct AdamWHyper {
  float lr = 5e-5f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // applied only to parameters with ParameterInfo::weight_decay
  float grad_scale = 1.0f;    // gradients are multiplied by this first (clipping, unscaling)
  int64_t step = 1;           // 1-based AdamW step for bias correction
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual const BertConfig& config() const = 0;
  virtual const ParameterLayout& layout() const = 0;

  // The elements this backend's optimizer owns (core/optimizer_shard.h): whole unless it was
  // made for ZeRO-1 (make_*_backend's shard).
  virtual const OptimizerShard& optimizer_shard() const = 0;

  // Flat fp32 buffers in layout order (numel floats), always host memory on this side.
  virtual void set_parameters(const float* host) = 0;
  virtual void get_parameters(float* host) const = 0;
  // The moments of the owned elements [shard.begin, shard.owned_end()) only: set reads them from
  // full numel-float arrays, get writes them there and leaves the other elements untouched.
  virtual void set_optimizer_state(const float* m_host, const float* v_host) = 0;
  virtual void get_optimizer_state(float* m_host, float* v_host) const = 0;
  // The same owned moments packed: optimizer_shard().owned_numel() floats each, element
  // shard.begin first (what a rank sends when a ZeRO-1 checkpoint gathers the moments).
  virtual void get_owned_optimizer_state(float* m_owned, float* v_owned) const = 0;
  virtual void get_gradients(float* host) const = 0;

  virtual void zero_gradients() = 0;
  // Forward and backward of one micro-batch. Adds d(loss_weight * sum_rows CE)/d(params) into
  // the gradient buffer (so accumulation and rank averaging are just a choice of weight).
  virtual BatchStats forward_backward(const data::Batch& batch, float loss_weight,
                                      const DropoutKey& dropout) = 0;
  // Forward only, dropout off. logits_host (rows x num_labels) may be null.
  virtual BatchStats forward(const data::Batch& batch, float* logits_host) = 0;

  // The buffer the Communicator reduces (host for cpu, device for cuda), layout order,
  // optimizer_shard().padded_numel floats (zero_gradients clears them all).
  virtual float* gradient_buffer() = 0;
  // sum of squares of the owned elements of the gradient buffer (all of them unless sharded), in
  // double on the host.
  virtual double gradient_sq_norm() = 0;
  // One AdamW update of the owned parameters (every parameter unless sharded; torch.optim.AdamW
  // semantics, decoupled decay); the other elements of the parameter buffer are left as they are.
  virtual void adamw_step(const AdamWHyper& hyper) = 0;
  // ZeRO-1: the fp32 parameters (padded_numel floats, where gradient_buffer() lives) that the
  // communicator all-gathers after adamw_step, and the call that tells the backend it did, so
  // that it refreshes whatever it derives from them (the CUDA backend's bf16/fp16 copy).
  virtual float* parameter_buffer() = 0;
  virtual void parameters_gathered() = 0;

  // Called on the host while forward_backward issues the backward, once per range of
  // layout().backward_ranges() in that order, as soon as the work that finishes the range's
  // gradients has been issued (on the CUDA backend it may still be running: device_stream()
  // orders after it). The trainer starts reducing the range there, overlapped with the rest of
  // the backward. An empty hook (the default) is never called.
  using GradientReadyHook = std::function<void(const ParameterLayout::Range& range)>;
  void set_gradient_ready_hook(GradientReadyHook hook) { gradient_ready_ = std::move(hook); }
  // The cudaStream_t the backend issues its work on (nullptr: host memory, no stream).
  virtual void* device_stream() { return nullptr; }

 protected:
  // Backends call this after issuing the backward of encoder layer l (from the last down to 0)
  // and after the embeddings' (l = -1).
  bool has_gradient_ready_hook() const { return static_cast<bool>(gradient_ready_); }
  void backward_finished_layer(int l) {
    if (!gradient_ready_) return;
    const auto& ranges = layout().backward_ranges();
    gradient_ready_(ranges[static_cast<size_t>(l < 0 ? ranges.size() - 1 : ranges.size() - 2 - l)]);
  }

 private:
  GradientReadyHook gradient_ready_;
};

}  // namespace llmqs::core
