// BertForSequenceClassification on the CPU, templated on the scalar type: float is the fp32
// reference behind the `cpu` backend, double is the "float64 check path" that the gradient
// check runs. It composes the kernels of kernels/cpu/ exactly as HF does:
//
//   h0 = dropout_0(LayerNorm(word[ids] + position[s] + token_type[0]))
//   for each layer l (post-LN):
//     q, k, v = h W_{q,k,v}^T + b;  ctx = attention(q, k, v, key padding mask, dropout 8(l+1)+0)
//     h' = LayerNorm(dropout_{8(l+1)+1}(ctx W_o^T + b_o) + h)
//     h  = LayerNorm(dropout_{8(l+1)+2}(gelu(h' W_1^T + b_1) W_2^T + b_2) + h')
//   pooled = tanh(h[:, 0] W_p^T + b_p);  logits = dropout_1(pooled) W_c^T + b_c
//   loss = sum_r CE(logits_r, label_r)   (the Backend scales it by loss_weight)
//
// Parameters and gradients are flat buffers in ParameterLayout order (core/parameters.h); the
// model keeps only activations, sized for the largest batch seen so far.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/backend.h"
#include "core/model_config.h"
#include "core/parameters.h"
#include "data/batch.h"
#include "kernels/philox.h"

namespace llmqs::core {

template <typename T>
class BertCpuModel {
 public:
  explicit BertCpuModel(const BertConfig& config);

  const BertConfig& config() const { return config_; }
  const ParameterLayout& layout() const { return layout_; }

  // Runs the forward pass, keeping what the backward needs. dropout.enabled = false (or
  // probabilities of 0) turns every dropout site off. Validates the batch (ids in the
  // vocabulary, 1 <= length <= seq_len <= max_position_embeddings, labels in range) and throws
  // std::invalid_argument naming the row and field. Returns the loss sum and accuracy counts.
  BatchStats forward(const T* params, const data::Batch& batch, const DropoutKey& dropout);

  // Adds d(loss_weight * sum_r CE_r)/d(params) into grads, for the batch of the last forward.
  // layer_done (may be empty) is called after encoder layer l's gradients are complete, l from the
  // last layer down to 0, and with l = -1 after the embeddings' (Backend::backward_finished_layer).
  void backward(const T* params, T* grads, T loss_weight, const std::function<void(int)>& layer_done = {});

  // Of the last forward: logits [rows x num_labels], per-row CE [rows], predictions [rows],
  // and the encoder output hidden states [rows x seq_len x hidden] (HF last_hidden_state).
  const std::vector<T>& logits() const { return logits_; }
  const std::vector<T>& row_losses() const { return row_loss_; }
  const std::vector<int32_t>& predictions() const { return predictions_; }
  const T* last_hidden_state() const;
  int rows() const { return rows_; }
  int seq_len() const { return seq_; }

 private:
  struct LayerActivations {
    std::vector<T> q, k, v, ctx, probs;
    std::vector<T> attn_sum, attn_mean, attn_rstd, attn_out;  // attn_out = LN1 output (h')
    std::vector<T> ffn_pre, ffn_act;                           // dense1 output, gelu output
    std::vector<T> ffn_sum, ffn_mean, ffn_rstd, out;           // out = LN2 output (next h)
  };

  void resize(int rows, int seq);
  kernels::DropoutSite site(uint32_t tensor_id, float p) const;

  BertConfig config_;
  ParameterLayout layout_;
  int rows_ = 0, seq_ = 0, capacity_tokens_ = 0, capacity_rows_ = 0;
  data::Batch batch_;            // ids, lengths and labels of the last forward
  DropoutKey dropout_;

  std::vector<T> emb_sum_, emb_mean_, emb_rstd_, h0_;
  std::vector<LayerActivations> layers_;
  std::vector<T> cls_, pooled_, pooled_dropped_, logits_, probs_, row_loss_;
  std::vector<int32_t> predictions_;
  // backward scratch
  std::vector<T> d_h_, d_sum_, d_tmp_, d_q_, d_k_, d_v_, d_ffn_;
};

extern template class BertCpuModel<float>;
extern template class BertCpuModel<double>;

}  // namespace llmqs::core
