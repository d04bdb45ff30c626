#include "core/model_config.h"

#include <cmath>
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
  if (!(layer_norm_eps > 0.0f) || !std::isfinite(layer_norm_eps))
    throw std::invalid_argument("layer_norm_eps must be positive and finite");
  if (!(initializer_range >= 0.0f) || !std::isfinite(initializer_range))
    throw std::invalid_argument("initializer_range must be non-negative and finite, got " +
                                std::to_string(initializer_range));
  // Upper bounds: these numbers also arrive from files (checkpoints, config.json), and the
  // parameter layout is built from them before any tensor is read. Far above any BERT (bert-large
  // has 24 layers and 335 M parameters), far below what would overflow or exhaust memory.
  if (num_hidden_layers > kMaxHiddenLayers)
    throw std::invalid_argument("num_hidden_layers must be at most " + std::to_string(kMaxHiddenLayers) + ", got " +
                                std::to_string(num_hidden_layers));
  const double parameters = parameter_count_estimate();
  if (parameters > static_cast<double>(kMaxParameters))
    throw std::invalid_argument("the model would have " + std::to_string(static_cast<int64_t>(parameters)) +
                                " parameters, more than the limit of " + std::to_string(kMaxParameters) +
                                " (vocab_size " + std::to_string(vocab_size) + ", hidden_size " +
                                std::to_string(hidden_size) + ", intermediate_size " + std::to_string(intermediate_size) +
                                ", num_hidden_layers " + std::to_string(num_hidden_layers) + ")");
}

double BertConfig::parameter_count_estimate() const {
  const double H = hidden_size, I = intermediate_size;
  const double embeddings = (static_cast<double>(vocab_size) + max_position_embeddings + type_vocab_size + 2) * H;
  const double layer = 4 * (H * H + H) + 2 * H * I + I + H + 4 * H;
  return embeddings + num_hidden_layers * layer + H * H + H + static_cast<double>(num_labels) * (H + 1);
}

}  // namespace llmqs::core
