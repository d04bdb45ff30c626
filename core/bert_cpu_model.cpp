// BertForSequenceClassification forward/backward from the kernels of kernels/cpu/, in float
// (the `cpu` backend) and double (the gradient check). See bert_cpu_model.h for the math.
#include "core/bert_cpu_model.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/cpu/activations.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/embeddings.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/softmax_cross_entropy.h"

namespace llmqs::core {

namespace kc = llmqs::kernels::cpu;
using kernels::LayerDropoutSite;

namespace {

// Tensor indices in ParameterLayout::for_bert order (checked against the names in the constructor).
enum EmbeddingTensor : size_t { kWord = 0, kPosition, kTokenType, kEmbLnWeight, kEmbLnBias, kEmbeddingTensors };
enum LayerTensor : size_t {
  kQueryW = 0, kQueryB, kKeyW, kKeyB, kValueW, kValueB, kAttnOutW, kAttnOutB, kAttnLnW, kAttnLnB,
  kInterW, kInterB, kOutW, kOutB, kOutLnW, kOutLnB, kLayerTensors
};
enum HeadTensor : size_t { kPoolerW = 0, kPoolerB, kClassifierW, kClassifierB };

}  // namespace

template <typename T>
BertCpuModel<T>::BertCpuModel(const BertConfig& config) : config_(config), layout_(ParameterLayout::for_bert(config)) {
  const auto& p = layout_.parameters();
  const size_t expected = kEmbeddingTensors + kLayerTensors * config.num_hidden_layers + 4;
  if (p.size() != expected || p[kWord].name != "bert.embeddings.word_embeddings.weight" ||
      p[kEmbeddingTensors + kInterW].name != "bert.encoder.layer.0.intermediate.dense.weight" ||
      p[expected - 1].name != "classifier.bias")
    throw std::logic_error("BertCpuModel: ParameterLayout order changed; update the tensor indices");
  layers_.resize(config.num_hidden_layers);
}

template <typename T>
const T* BertCpuModel<T>::last_hidden_state() const {
  return layers_.empty() ? h0_.data() : layers_.back().out.data();
}

template <typename T>
kernels::DropoutSite BertCpuModel<T>::site(uint32_t tensor_id, float p) const {
  kernels::DropoutSite s;
  s.seed = dropout_.seed;
  s.step = dropout_.step;
  s.rank = dropout_.rank;
  s.micro_step = dropout_.micro_step;
  s.tensor_id = tensor_id;
  s.p = dropout_.enabled ? p : 0.0f;
  return s;
}

template <typename T>
void BertCpuModel<T>::resize(int rows, int seq) {
  const size_t H = config_.hidden_size, I = config_.intermediate_size, N = static_cast<size_t>(rows) * seq;
  const size_t heads = config_.num_attention_heads;
  rows_ = rows;
  seq_ = seq;
  emb_sum_.resize(N * H);
  emb_mean_.resize(N);
  emb_rstd_.resize(N);
  h0_.resize(N * H);
  for (LayerActivations& L : layers_) {
    for (std::vector<T>* v : {&L.q, &L.k, &L.v, &L.ctx, &L.attn_sum, &L.attn_out, &L.ffn_sum, &L.out}) v->resize(N * H);
    for (std::vector<T>* v : {&L.attn_mean, &L.attn_rstd, &L.ffn_mean, &L.ffn_rstd}) v->resize(N);
    L.probs.resize(static_cast<size_t>(rows) * heads * seq * seq);
    L.ffn_pre.resize(N * I);
    L.ffn_act.resize(N * I);
  }
  const size_t labels = config_.num_labels;
  cls_.resize(rows * H);
  pooled_.resize(rows * H);
  pooled_dropped_.resize(rows * H);
  logits_.resize(rows * labels);
  probs_.resize(rows * labels);
  row_loss_.resize(rows);
  predictions_.resize(rows);
  for (std::vector<T>* v : {&d_h_, &d_sum_, &d_tmp_, &d_q_, &d_k_, &d_v_}) v->resize(N * H);
  d_ffn_.resize(N * I);
}

template <typename T>
BatchStats BertCpuModel<T>::forward(const T* params, const data::Batch& batch, const DropoutKey& dropout) {
  const BertConfig& c = config_;
  const int rows = batch.rows, seq = batch.seq_len;
  if (rows <= 0 || seq <= 0) throw std::invalid_argument("batch: rows and seq_len must be positive");
  if (seq > c.max_position_embeddings)
    throw std::invalid_argument("batch: seq_len " + std::to_string(seq) + " exceeds max_position_embeddings " +
                                std::to_string(c.max_position_embeddings));
  if (batch.input_ids.size() != static_cast<size_t>(rows) * seq || batch.lengths.size() != static_cast<size_t>(rows))
    throw std::invalid_argument("batch: input_ids must hold rows x seq_len ids and lengths one per row");
  const bool has_labels = !batch.labels.empty();
  if (has_labels && batch.labels.size() != static_cast<size_t>(rows))
    throw std::invalid_argument("batch: labels must hold one label per row (or none)");
  for (int r = 0; r < rows; ++r) {
    if (batch.lengths[r] < 1 || batch.lengths[r] > seq)
      throw std::invalid_argument("batch row " + std::to_string(r) + ": length " + std::to_string(batch.lengths[r]) +
                                  " outside [1, seq_len " + std::to_string(seq) + "]");
    if (has_labels && (batch.labels[r] < 0 || batch.labels[r] >= c.num_labels))
      throw std::invalid_argument("batch row " + std::to_string(r) + ": label " + std::to_string(batch.labels[r]) +
                                  " outside [0, num_labels " + std::to_string(c.num_labels) + ")");
    for (int s = 0; s < seq; ++s) {
      const int32_t id = batch.input_ids[static_cast<size_t>(r) * seq + s];
      if (id < 0 || id >= c.vocab_size)
        throw std::invalid_argument("batch row " + std::to_string(r) + " position " + std::to_string(s) +
                                    ": token id " + std::to_string(id) + " outside the vocabulary of " +
                                    std::to_string(c.vocab_size));
    }
  }
  batch_ = batch;
  dropout_ = dropout;
  resize(rows, seq);

  const auto& info = layout_.parameters();
  auto P = [&](size_t index) { return params + info[index].offset; };
  const int H = c.hidden_size, I = c.intermediate_size, heads = c.num_attention_heads, labels = c.num_labels;
  const int N = rows * seq;
  const float eps = c.layer_norm_eps;
  const size_t NH = static_cast<size_t>(N) * H;
  std::vector<T>& scratch = d_tmp_;  // the backward's scratch is free during the forward

  kc::embeddings_forward(emb_sum_.data(), batch.input_ids.data(), P(kWord), P(kPosition), P(kTokenType), rows, seq, H);
  kc::layernorm_forward(h0_.data(), emb_mean_.data(), emb_rstd_.data(), emb_sum_.data(), P(kEmbLnWeight),
                        P(kEmbLnBias), N, H, eps);
  kc::dropout_forward(h0_.data(), h0_.data(), NH, site(kernels::kEmbeddingDropoutId, c.hidden_dropout_prob));

  const T* h = h0_.data();
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    LayerActivations& L = layers_[l];
    const size_t base = kEmbeddingTensors + kLayerTensors * static_cast<size_t>(l);
    kc::matmul_forward(L.q.data(), h, P(base + kQueryW), P(base + kQueryB), N, H, H);
    kc::matmul_forward(L.k.data(), h, P(base + kKeyW), P(base + kKeyB), N, H, H);
    kc::matmul_forward(L.v.data(), h, P(base + kValueW), P(base + kValueB), N, H, H);
    kc::attention_forward(L.ctx.data(), L.probs.data(), L.q.data(), L.k.data(), L.v.data(), batch.lengths.data(),
                          rows, seq, H, heads,
                          site(kernels::bert_dropout_tensor_id(l, LayerDropoutSite::kAttentionProbs),
                               c.attention_probs_dropout_prob));
    kc::matmul_forward(scratch.data(), L.ctx.data(), P(base + kAttnOutW), P(base + kAttnOutB), N, H, H);
    kc::dropout_forward(scratch.data(), scratch.data(), NH,
                        site(kernels::bert_dropout_tensor_id(l, LayerDropoutSite::kAttentionOutput),
                             c.hidden_dropout_prob));
    kc::residual_layernorm_forward(L.attn_out.data(), L.attn_sum.data(), L.attn_mean.data(), L.attn_rstd.data(),
                                   scratch.data(), h, P(base + kAttnLnW), P(base + kAttnLnB), N, H, eps);
    kc::matmul_forward(L.ffn_pre.data(), L.attn_out.data(), P(base + kInterW), P(base + kInterB), N, H, I);
    kc::gelu_forward(L.ffn_act.data(), L.ffn_pre.data(), static_cast<size_t>(N) * I);
    kc::matmul_forward(scratch.data(), L.ffn_act.data(), P(base + kOutW), P(base + kOutB), N, I, H);
    kc::dropout_forward(scratch.data(), scratch.data(), NH,
                        site(kernels::bert_dropout_tensor_id(l, LayerDropoutSite::kFeedForwardOutput),
                             c.hidden_dropout_prob));
    kc::residual_layernorm_forward(L.out.data(), L.ffn_sum.data(), L.ffn_mean.data(), L.ffn_rstd.data(),
                                   scratch.data(), L.attn_out.data(), P(base + kOutLnW), P(base + kOutLnB), N, H, eps);
    h = L.out.data();
  }

  const size_t head = kEmbeddingTensors + kLayerTensors * static_cast<size_t>(c.num_hidden_layers);
  for (int r = 0; r < rows; ++r)
    std::copy(h + static_cast<size_t>(r) * seq * H, h + static_cast<size_t>(r) * seq * H + H,
              cls_.begin() + static_cast<size_t>(r) * H);
  kc::matmul_forward(pooled_.data(), cls_.data(), P(head + kPoolerW), P(head + kPoolerB), rows, H, H);
  kc::tanh_forward(pooled_.data(), pooled_.data(), pooled_.size());
  kc::dropout_forward(pooled_dropped_.data(), pooled_.data(), pooled_.size(),
                      site(kernels::kPooledDropoutId, c.classifier_dropout_prob()));
  kc::matmul_forward(logits_.data(), pooled_dropped_.data(), P(head + kClassifierW), P(head + kClassifierB), rows, H,
                     labels);

  BatchStats stats;
  stats.rows = rows;
  if (has_labels) {
    kc::softmax_cross_entropy_forward(row_loss_.data(), probs_.data(), predictions_.data(), logits_.data(),
                                      batch.labels.data(), rows, labels);
    for (int r = 0; r < rows; ++r) {
      stats.loss_sum += static_cast<double>(row_loss_[r]);
      stats.correct += predictions_[r] == batch.labels[r] ? 1 : 0;
    }
  } else {
    for (int r = 0; r < rows; ++r) {
      const T* z = logits_.data() + static_cast<size_t>(r) * labels;
      predictions_[r] = static_cast<int32_t>(std::max_element(z, z + labels) - z);
      row_loss_[r] = 0;
    }
  }
  return stats;
}

template <typename T>
void BertCpuModel<T>::backward(const T* params, T* grads, T loss_weight, const std::function<void(int)>& layer_done) {
  const BertConfig& c = config_;
  if (rows_ == 0) throw std::logic_error("BertCpuModel::backward called before forward");
  if (batch_.labels.empty()) throw std::invalid_argument("backward needs a batch with labels");
  const auto& info = layout_.parameters();
  auto P = [&](size_t index) { return params + info[index].offset; };
  auto G = [&](size_t index) { return grads + info[index].offset; };
  const int rows = rows_, seq = seq_, H = c.hidden_size, I = c.intermediate_size, heads = c.num_attention_heads;
  const int labels = c.num_labels, N = rows * seq;
  const size_t NH = static_cast<size_t>(N) * H;
  const size_t head = kEmbeddingTensors + kLayerTensors * static_cast<size_t>(c.num_hidden_layers);

  // Classifier head: the small [rows x ...] gradients live at the front of the scratch buffers.
  T* d_logits = d_q_.data();
  T* d_pooled = d_k_.data();
  T* d_cls = d_v_.data();
  kc::softmax_cross_entropy_backward(d_logits, probs_.data(), batch_.labels.data(), rows, labels, loss_weight);
  kc::matmul_backward(d_pooled, G(head + kClassifierW), G(head + kClassifierB), d_logits, pooled_dropped_.data(),
                      P(head + kClassifierW), rows, H, labels, false);
  kc::dropout_backward(d_pooled, d_pooled, static_cast<size_t>(rows) * H,
                       site(kernels::kPooledDropoutId, c.classifier_dropout_prob()));
  kc::tanh_backward(d_pooled, pooled_.data(), d_pooled, static_cast<size_t>(rows) * H);
  kc::matmul_backward(d_cls, G(head + kPoolerW), G(head + kPoolerB), d_pooled, cls_.data(), P(head + kPoolerW), rows,
                      H, H, false);
  std::fill(d_h_.begin(), d_h_.begin() + NH, T(0));
  for (int r = 0; r < rows; ++r)
    std::copy(d_cls + static_cast<size_t>(r) * H, d_cls + static_cast<size_t>(r) * H + H,
              d_h_.begin() + static_cast<size_t>(r) * seq * H);

  for (int l = c.num_hidden_layers - 1; l >= 0; --l) {
    LayerActivations& L = layers_[l];
    const T* h_in = l == 0 ? h0_.data() : layers_[l - 1].out.data();
    const size_t base = kEmbeddingTensors + kLayerTensors * static_cast<size_t>(l);
    // out = LN2(dropout(ffn_act W2^T + b2) + attn_out)
    kc::layernorm_backward(d_sum_.data(), G(base + kOutLnW), G(base + kOutLnB), d_h_.data(), L.ffn_sum.data(),
                           L.ffn_mean.data(), L.ffn_rstd.data(), P(base + kOutLnW), N, H);
    kc::dropout_backward(d_tmp_.data(), d_sum_.data(), NH,
                         site(kernels::bert_dropout_tensor_id(l, LayerDropoutSite::kFeedForwardOutput),
                              c.hidden_dropout_prob));
    kc::matmul_backward(d_ffn_.data(), G(base + kOutW), G(base + kOutB), d_tmp_.data(), L.ffn_act.data(),
                        P(base + kOutW), N, I, H, false);
    kc::gelu_backward(d_ffn_.data(), L.ffn_pre.data(), d_ffn_.data(), static_cast<size_t>(N) * I);
    std::copy(d_sum_.begin(), d_sum_.begin() + NH, d_h_.begin());  // residual into attn_out
    kc::matmul_backward(d_h_.data(), G(base + kInterW), G(base + kInterB), d_ffn_.data(), L.attn_out.data(),
                        P(base + kInterW), N, H, I, true);
    // attn_out = LN1(dropout(ctx Wo^T + bo) + h_in)
    kc::layernorm_backward(d_sum_.data(), G(base + kAttnLnW), G(base + kAttnLnB), d_h_.data(), L.attn_sum.data(),
                           L.attn_mean.data(), L.attn_rstd.data(), P(base + kAttnLnW), N, H);
    kc::dropout_backward(d_tmp_.data(), d_sum_.data(), NH,
                         site(kernels::bert_dropout_tensor_id(l, LayerDropoutSite::kAttentionOutput),
                              c.hidden_dropout_prob));
    T* d_ctx = d_h_.data();
    kc::matmul_backward(d_ctx, G(base + kAttnOutW), G(base + kAttnOutB), d_tmp_.data(), L.ctx.data(),
                        P(base + kAttnOutW), N, H, H, false);
    kc::attention_backward(d_q_.data(), d_k_.data(), d_v_.data(), d_ctx, L.q.data(), L.k.data(), L.v.data(),
                           L.probs.data(), batch_.lengths.data(), rows, seq, H, heads,
                           site(kernels::bert_dropout_tensor_id(l, LayerDropoutSite::kAttentionProbs),
                                c.attention_probs_dropout_prob));
    std::copy(d_sum_.begin(), d_sum_.begin() + NH, d_h_.begin());  // residual into h_in
    kc::matmul_backward(d_h_.data(), G(base + kQueryW), G(base + kQueryB), d_q_.data(), h_in, P(base + kQueryW), N, H,
                        H, true);
    kc::matmul_backward(d_h_.data(), G(base + kKeyW), G(base + kKeyB), d_k_.data(), h_in, P(base + kKeyW), N, H, H,
                        true);
    kc::matmul_backward(d_h_.data(), G(base + kValueW), G(base + kValueB), d_v_.data(), h_in, P(base + kValueW), N, H,
                        H, true);
    if (layer_done) layer_done(l);
  }

  kc::dropout_backward(d_h_.data(), d_h_.data(), NH, site(kernels::kEmbeddingDropoutId, c.hidden_dropout_prob));
  kc::layernorm_backward(d_sum_.data(), G(kEmbLnWeight), G(kEmbLnBias), d_h_.data(), emb_sum_.data(),
                         emb_mean_.data(), emb_rstd_.data(), P(kEmbLnWeight), N, H);
  kc::embeddings_backward(G(kWord), G(kPosition), G(kTokenType), d_sum_.data(), batch_.input_ids.data(), rows, seq, H,
                          c.pad_token_id);
  if (layer_done) layer_done(-1);
}

template class BertCpuModel<float>;
template class BertCpuModel<double>;

}  // namespace llmqs::core
