// The shape and regularisation of a BERT sequence classifier: the fields and defaults of HF
// `BertConfig` that BertForSequenceClassification uses. One owner: the CLI, config.json import
// and checkpoints all read and write this struct.
#pragma once
#include <cstdint>
#include <string>

namespace llmqs::core {

struct BertConfig {
  int vocab_size = 28996;  // bert-base-cased
  int hidden_size = 768;
  int num_hidden_layers = 12;
  int num_attention_heads = 12;
  int intermediate_size = 3072;
  int max_position_embeddings = 512;
  int type_vocab_size = 2;
  int num_labels = 5;
  int pad_token_id = 0;
  float layer_norm_eps = 1e-12f;
  float hidden_dropout_prob = 0.1f;
  float attention_probs_dropout_prob = 0.1f;
  float classifier_dropout = -1.0f;  // < 0: use hidden_dropout_prob (HF: classifier_dropout=None)
  float initializer_range = 0.02f;

  int head_dim() const { return hidden_size / num_attention_heads; }
  float classifier_dropout_prob() const {
    return classifier_dropout >= 0.0f ? classifier_dropout : hidden_dropout_prob;
  }
  // Throws std::invalid_argument naming the field when the shape is inconsistent or beyond the
  // limits below.
  void validate() const;
  // Parameters of BertForSequenceClassification, in double (no overflow for any int fields).
  double parameter_count_estimate() const;

  static constexpr int kMaxHiddenLayers = 1024;
  static constexpr int64_t kMaxParameters = int64_t{1} << 34;  // 17 G: 69 GB of fp32 weights alone
};

}  // namespace llmqs::core
