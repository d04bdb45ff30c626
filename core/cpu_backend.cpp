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
  explicit CpuBackend(const BertConfig& config) : model_(config) {
    const size_t n = model_.layout().total_numel();
    params_.resize(n);
    grads_.assign(n, 0.0f);
    m_.assign(n, 0.0f);
    v_.assign(n, 0.0f);
    init_bert_parameters(config, model_.layout(), 0, params_.data());
  }

  std::string name() const override { return "cpu"; }
  const BertConfig& config() const override { return model_.config(); }
  const ParameterLayout& layout() const override { return model_.layout(); }

  void set_parameters(const float* host) override { std::memcpy(params_.data(), host, bytes()); }
  void get_parameters(float* host) const override { std::memcpy(host, params_.data(), bytes()); }
  void set_optimizer_state(const float* m_host, const float* v_host) override {
    std::memcpy(m_.data(), m_host, bytes());
    std::memcpy(v_.data(), v_host, bytes());
  }
  void get_optimizer_state(float* m_host, float* v_host) const override {
    std::memcpy(m_host, m_.data(), bytes());
    std::memcpy(v_host, v_.data(), bytes());
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
  double gradient_sq_norm() override { return kernels::cpu::sum_of_squares(grads_.data(), grads_.size()); }

  void adamw_step(const AdamWHyper& hyper) override {
    kernels::cpu::AdamWScalars s;
    s.lr = hyper.lr;
    s.beta1 = hyper.beta1;
    s.beta2 = hyper.beta2;
    s.eps = hyper.eps;
    s.grad_scale = hyper.grad_scale;
    s.step = hyper.step;
    if (hyper.step < 1) throw std::invalid_argument("adamw_step: step is 1-based, got " + std::to_string(hyper.step));
    for (const ParameterInfo& p : model_.layout().parameters()) {
      s.weight_decay = p.weight_decay ? hyper.weight_decay : 0.0f;
      kernels::cpu::adamw_update(params_.data() + p.offset, grads_.data() + p.offset, m_.data() + p.offset,
                                 v_.data() + p.offset, p.numel, s);
    }
  }

 private:
  size_t bytes() const { return params_.size() * sizeof(float); }

  BertCpuModel<float> model_;
  std::vector<float> params_, grads_, m_, v_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const BertConfig& config) {
  return std::make_unique<CpuBackend>(config);
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
