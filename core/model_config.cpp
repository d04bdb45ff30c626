#include "core/model_config.h"

#include <stdexcept>
#include <string>

namespace llmqs::core {

void BertConfig::validate() const {
  auto positive = [](int v, const char* name) {
    if (v <= 0) throw std::invalid_argument(std::string(name) + " must be positive, got " + std::to_string(v));
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(intermediate_size, "intermediate_size");
  positive(max_position_embeddings, "max_position_embeddings");
  positive(type_vocab_size, "type_vocab_size");
  if (num_labels < 2) throw std::invalid_argument("num_labels must be at least 2, got " + std::to_string(num_labels));
  if (hidden_size % num_attention_heads != 0)
    throw std::invalid_argument("hidden_size (" + std::to_string(hidden_size) +
                                ") must be a multiple of num_attention_heads (" +
                                std::to_string(num_attention_heads) + ")");
  if (pad_token_id < 0 || pad_token_id >= vocab_size)
    throw std::invalid_argument("pad_token_id " + std::to_string(pad_token_id) + " is outside the vocabulary");
  auto probability = [](float p, const char* name) {
    if (!(p >= 0.0f && p < 1.0f)) throw std::invalid_argument(std::string(name) + " must be in [0, 1), got " + std::to_string(p));
  };
  probability(hidden_dropout_prob, "hidden_dropout_prob");
  probability(attention_probs_dropout_prob, "attention_probs_dropout_prob");
  if (classifier_dropout >= 0.0f) probability(classifier_dropout, "classifier_dropout");
  if (!(layer_norm_eps > 0.0f)) throw std::invalid_argument("layer_norm_eps must be positive");
}

}  // namespace llmqs::core
