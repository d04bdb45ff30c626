// Every parameter of BertForSequenceClassification lives in one contiguous fp32 buffer.
// ParameterLayout is the one place that maps HF parameter names to shapes and offsets, in
// HF state_dict order:
//   bert.embeddings.{word,position,token_type}_embeddings.weight, bert.embeddings.LayerNorm.{weight,bias},
//   bert.encoder.layer.<i>.attention.self.{query,key,value}.{weight,bias},
//   bert.encoder.layer.<i>.attention.output.dense.{weight,bias}, ...attention.output.LayerNorm.{weight,bias},
//   bert.encoder.layer.<i>.intermediate.dense.{weight,bias}, ...output.dense.{weight,bias}, ...output.LayerNorm.{weight,bias},
//   bert.pooler.dense.{weight,bias}, classifier.{weight,bias}
// Linear weights are [out_features, in_features] as in torch.nn.Linear. Offsets follow that order,
// except inside a layer's self-attention: query, key, value weights first (one [3H x H] block), then
// their three biases ([3H]), so the CUDA backend computes Q, K and V as one product.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"

namespace llmqs::core {

struct ParameterInfo {
  std::string name;            // HF name, e.g. "bert.encoder.layer.0.attention.self.query.weight"
  std::vector<int64_t> shape;  // HF shape
  size_t offset = 0;           // in floats, into the flat buffer (not monotonic: see above)
  size_t numel = 0;
  bool weight_decay = true;    // false for biases and LayerNorm weights (HF Trainer's rule)
};

class ParameterLayout {
 public:
  static ParameterLayout for_bert(const BertConfig& config);

  const std::vector<ParameterInfo>& parameters() const { return params_; }
  size_t total_numel() const { return total_; }
  // Throws std::out_of_range naming the parameter when absent.
  const ParameterInfo& find(const std::string& name) const;
  bool contains(const std::string& name) const;

  // A contiguous part of the flat buffer, in floats.
  struct Range {
    size_t offset = 0, count = 0;
  };
  // The buffer in the order a backward pass finishes it, as contiguous ranges that tile it
  // exactly: the last encoder layer together with the pooler and classifier, then every earlier
  // layer down to layer 0, then the embeddings (num_hidden_layers + 1 ranges). A data-parallel
  // step reduces each one as soon as the backward has written it (Backend::set_gradient_ready_hook).
  const std::vector<Range>& backward_ranges() const { return backward_ranges_; }

 private:
  std::vector<ParameterInfo> params_;
  size_t total_ = 0;
  std::vector<Range> backward_ranges_;
};

// HF initialisation: normal(0, initializer_range) for Linear and Embedding weights, zero
// biases, LayerNorm weight 1 / bias 0, the padding row of the word embeddings zeroed.
// Deterministic for a given seed, identical on every platform.
void init_bert_parameters(const BertConfig& config, const ParameterLayout& layout, uint64_t seed,
                          float* params);

}  // namespace llmqs::core
