// The `cpu` backend: flat fp32 parameter/gradient/moment buffers around BertCpuModel<float>.
#include "core/cpu_backend.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "core/bert_cpu_model.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/grad_norm.h"

namespace llmqs::core {

namespace {

class CpuBackend final : public Backend {
 public:
  CpuBackend(const BertConfig& config, const OptimizerShard& shard) : model_(config), shard_(shard) {
    const size_t n = model_.layout().total_numel();
    if (shard_.numel != n)
      throw std::invalid_argument("cpu backend: the optimizer shard is for " + std::to_string(shard_.numel) +
                                  " parameters, the model has " + std::to_string(n));
    params_.assign(shard_.padded_numel, 0.0f);
    grads_.assign(shard_.padded_numel, 0.0f);
    m_.assign(shard_.count, 0.0f);
    v_.assign(shard_.count, 0.0f);
    init_bert_parameters(config, model_.layout(), 0, params_.data());
  }

  std::string name() const override { return "cpu"; }
  const BertConfig& config() const override { return model_.config(); }
  const ParameterLayout& layout() const override { return model_.layout(); }
  const OptimizerShard& optimizer_shard() const override { return shard_; }

  void set_parameters(const float* host) override { std::memcpy(params_.data(), host, bytes()); }
  void get_parameters(float* host) const override { std::memcpy(host, params_.data(), bytes()); }
  void set_optimizer_state(const float* m_host, const float* v_host) override {
    std::copy(m_host + shard_.begin, m_host + shard_.owned_end(), m_.begin());
    std::copy(v_host + shard_.begin, v_host + shard_.owned_end(), v_.begin());
  }
  void get_optimizer_state(float* m_host, float* v_host) const override {
    get_owned_optimizer_state(m_host + shard_.begin, v_host + shard_.begin);
  }
  void get_owned_optimizer_state(float* m_owned, float* v_owned) const override {
    std::copy(m_.begin(), m_.begin() + static_cast<std::ptrdiff_t>(shard_.owned_numel()), m_owned);
    std::copy(v_.begin(), v_.begin() + static_cast<std::ptrdiff_t>(shard_.owned_numel()), v_owned);
  }
  void get_gradients(float* host) const override { std::memcpy(host, grads_.data(), bytes()); }
  void zero_gradients() override { std::fill(grads_.begin(), grads_.end(), 0.0f); }

  BatchStats forward_backward(const data::Batch& batch, float loss_weight, const DropoutKey& dropout) override {
    if (batch.labels.size() != static_cast<size_t>(batch.rows))
      throw std::invalid_argument("forward_backward: the batch needs one label per row");
    const BatchStats stats = model_.forward(params_.data(), batch, dropout);
    model_.backward(params_.data(), grads_.data(), loss_weight, [this](int l) { backward_finished_layer(l); });
    return stats;
  }

  BatchStats forward(const data::Batch& batch, float* logits_host) override {
    DropoutKey off;
    off.enabled = false;
    const BatchStats stats = model_.forward(params_.data(), batch, off);
    if (logits_host) std::copy(model_.logits().begin(), model_.logits().end(), logits_host);
    return stats;
  }

  float* gradient_buffer() override { return grads_.data(); }
  double gradient_sq_norm() override {
    return kernels::cpu::sum_of_squares(grads_.data() + shard_.begin, shard_.owned_numel());
  }

  void adamw_step(const AdamWHyper& hyper) override {
    kernels::cpu::AdamWScalars s;
    s.lr = hyper.lr;
    s.beta1 = hyper.beta1;
    s.beta2 = hyper.beta2;
    s.eps = hyper.eps;
    s.grad_scale = hyper.grad_scale;
    s.step = hyper.step;
    if (hyper.step < 1) throw std::invalid_argument("adamw_step: step is 1-based, got " + std::to_string(hyper.step));
    // Tensor by tensor (each with its weight decay), clipped to the owned elements; the moments
    // are indexed from the shard's first element.
    for (const ParameterInfo& p : model_.layout().parameters()) {
      const size_t first = std::max(p.offset, shard_.begin), end = std::min(p.offset + p.numel, shard_.owned_end());
      if (first >= end) continue;
      s.weight_decay = p.weight_decay ? hyper.weight_decay : 0.0f;
      kernels::cpu::adamw_update(params_.data() + first, grads_.data() + first, m_.data() + (first - shard_.begin),
                                 v_.data() + (first - shard_.begin), end - first, s);
    }
  }
  float* parameter_buffer() override { return params_.data(); }
  void parameters_gathered() override {}

 private:
  size_t bytes() const { return shard_.numel * sizeof(float); }

  BertCpuModel<float> model_;
  OptimizerShard shard_;
  std::vector<float> params_, grads_;  // padded_numel floats (the padding stays zero)
  std::vector<float> m_, v_;           // the shard's count floats
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const BertConfig& config) {
  return make_cpu_backend(config, OptimizerShard::whole(ParameterLayout::for_bert(config).total_numel()));
}

std::unique_ptr<Backend> make_cpu_backend(const BertConfig& config, const OptimizerShard& shard) {
  return std::make_unique<CpuBackend>(config, shard);
}

std::vector<float> cpu_last_hidden_state(const BertConfig& config, const float* params, const data::Batch& batch) {
  BertCpuModel<float> model(config);
  DropoutKey off;
  off.enabled = false;
  data::Batch unlabeled = batch;
  unlabeled.labels.clear();
  model.forward(params, unlabeled, off);
  const size_t n = static_cast<size_t>(batch.rows) * batch.seq_len * config.hidden_size;
  return std::vector<float>(model.last_hidden_state(), model.last_hidden_state() + n);
}

}  // namespace llmqs::core
