// ParameterLayout (HF names, shapes, offsets in state_dict order) and the HF-style initialiser.
#include "core/parameters.h"

#include <cmath>
#include <stdexcept>

#include "kernels/philox.h"

namespace llmqs::core {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

ParameterLayout ParameterLayout::for_bert(const BertConfig& c) {
  c.validate();
  ParameterLayout layout;
  auto add = [&layout](const std::string& name, std::vector<int64_t> shape) {
    ParameterInfo info;
    info.name = name;
    info.shape = std::move(shape);
    info.numel = 1;
    for (int64_t d : info.shape) info.numel *= static_cast<size_t>(d);
    info.offset = layout.total_;
    // HF Trainer.get_decay_parameter_names: no decay for biases and LayerNorm weights.
    info.weight_decay = !(ends_with(name, ".bias") || name.find("LayerNorm") != std::string::npos);
    layout.total_ += info.numel;
    layout.params_.push_back(std::move(info));
  };
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  add("bert.embeddings.word_embeddings.weight", {c.vocab_size, H});
  add("bert.embeddings.position_embeddings.weight", {c.max_position_embeddings, H});
  add("bert.embeddings.token_type_embeddings.weight", {c.type_vocab_size, H});
  add("bert.embeddings.LayerNorm.weight", {H});
  add("bert.embeddings.LayerNorm.bias", {H});
  std::vector<size_t> layer_start;
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    layer_start.push_back(layout.total_);
    const std::string p = "bert.encoder.layer." + std::to_string(l) + ".";
    // The list stays in HF order, but the offsets put the three weights next to each other, then the
    // three biases: [3H x H] and [3H], which the CUDA backend's fused QKV product reads as one
    // matrix and one bias (it checks this at construction).
    const size_t qkv_base = layout.total_;
    int index = 0;
    for (const char* qkv : {"query", "key", "value"}) {
      add(p + "attention.self." + qkv + ".weight", {H, H});
      layout.params_.back().offset = qkv_base + index * static_cast<size_t>(H * H);
      add(p + "attention.self." + qkv + ".bias", {H});
      layout.params_.back().offset = qkv_base + 3 * static_cast<size_t>(H * H) + index * static_cast<size_t>(H);
      ++index;
    }
    layout.total_ = qkv_base + 3 * static_cast<size_t>(H * H + H);
    add(p + "attention.output.dense.weight", {H, H});
    add(p + "attention.output.dense.bias", {H});
    add(p + "attention.output.LayerNorm.weight", {H});
    add(p + "attention.output.LayerNorm.bias", {H});
    add(p + "intermediate.dense.weight", {I, H});
    add(p + "intermediate.dense.bias", {I});
    add(p + "output.dense.weight", {H, I});
    add(p + "output.dense.bias", {H});
    add(p + "output.LayerNorm.weight", {H});
    add(p + "output.LayerNorm.bias", {H});
  }
  add("bert.pooler.dense.weight", {H, H});
  add("bert.pooler.dense.bias", {H});
  add("classifier.weight", {c.num_labels, H});
  add("classifier.bias", {c.num_labels});
  // Layer l's parameters fill [layer_start[l], layer_start[l + 1]); the pooler and classifier
  // follow the last layer, the embeddings precede layer 0.
  for (int l = c.num_hidden_layers - 1; l >= 0; --l) {
    const size_t end = l == c.num_hidden_layers - 1 ? layout.total_ : layer_start[l + 1];
    layout.backward_ranges_.push_back({layer_start[l], end - layer_start[l]});
  }
  layout.backward_ranges_.push_back({0, layer_start[0]});
  return layout;
}

const ParameterInfo& ParameterLayout::find(const std::string& name) const {
  for (const ParameterInfo& p : params_)
    if (p.name == name) return p;
  throw std::out_of_range("no parameter named '" + name + "' in the BERT layout");
}

bool ParameterLayout::contains(const std::string& name) const {
  for (const ParameterInfo& p : params_)
    if (p.name == name) return true;
  return false;
}

// Normal deviates from Philox4x32-10 (key = seed, counter = (pair index, tensor index, "INIT"))
// through Box-Muller in double: no std::normal_distribution, whose algorithm differs between
// standard libraries, so a seed means the same weights everywhere.
void init_bert_parameters(const BertConfig& config, const ParameterLayout& layout, uint64_t seed,
                          float* params) {
  constexpr uint32_t kInitTag = 0x494E4954u;  // "INIT": keeps init streams apart from dropout's
  const double two_pi = 6.283185307179586476925286766559;
  const auto& infos = layout.parameters();
  for (size_t t = 0; t < infos.size(); ++t) {
    const ParameterInfo& info = infos[t];
    float* p = params + info.offset;
    const bool is_layernorm_weight = info.name.find("LayerNorm.weight") != std::string::npos;
    const bool is_normal = !is_layernorm_weight && ends_with(info.name, ".weight") &&
                           info.name.find("LayerNorm") == std::string::npos;
    if (!is_normal) {
      const float value = is_layernorm_weight ? 1.0f : 0.0f;
      for (size_t i = 0; i < info.numel; ++i) p[i] = value;
      continue;
    }
    const double stddev = config.initializer_range;
#pragma omp parallel for schedule(static)
    for (int64_t pair = 0; pair < static_cast<int64_t>((info.numel + 1) / 2); ++pair) {
      const kernels::Philox4x32 r = kernels::philox4x32_10(
          static_cast<uint32_t>(pair), static_cast<uint32_t>(static_cast<uint64_t>(pair) >> 32),
          static_cast<uint32_t>(t), kInitTag, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
      const double u1 = (static_cast<double>(r.v[0]) + 1.0) * (1.0 / 4294967296.0);  // (0, 1]
      const double u2 = static_cast<double>(r.v[1]) * (1.0 / 4294967296.0);          // [0, 1)
      const double radius = std::sqrt(-2.0 * std::log(u1)) * stddev;
      const size_t i = static_cast<size_t>(pair) * 2;
      p[i] = static_cast<float>(radius * std::cos(two_pi * u2));
      if (i + 1 < info.numel) p[i + 1] = static_cast<float>(radius * std::sin(two_pi * u2));
    }
    if (info.name == "bert.embeddings.word_embeddings.weight") {
      float* pad_row = p + static_cast<size_t>(config.pad_token_id) * config.hidden_size;
      for (int c = 0; c < config.hidden_size; ++c) pad_row[c] = 0.0f;
    }
  }
}

}  // namespace llmqs::core
