// HF model folder import/export; see core/hf_model_dir.h.
#include "core/hf_model_dir.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <stdexcept>

#include "core/parameters.h"
#include "core/safetensors.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace llmqs::core {

namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {  // syntax errors and out-of-range numbers alike
    throw std::runtime_error(path + ": not valid JSON: " + e.what());
  }
}

void write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = temporary_path(path);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(path + ": cannot create " + tmp);
    out << text;
    out.flush();
    if (!out) {
      out.close();
      std::remove(tmp.c_str());
      throw std::runtime_error(path + ": writing failed");
    }
  }
  publish_file(tmp, path);
}

// float -> the shortest decimal that reads back as the same float, as a JSON double: 0.1f is
// written "0.1" (what Python would write), not 0.10000000149011612.
double json_float(float value) {
  char buffer[32];
  auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::strtod(std::string(buffer, result.ptr).c_str(), nullptr);
}

int json_int(const json& j, const std::string& key, int fallback, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number_integer()) throw std::runtime_error(path + ": key '" + key + "' must be an integer, got " + j[key].dump());
  const int64_t v = j[key].get<int64_t>();
  if (v < INT32_MIN || v > INT32_MAX) throw std::runtime_error(path + ": key '" + key + "' is out of range");
  return static_cast<int>(v);
}

float json_number(const json& j, const std::string& key, float fallback, const std::string& path) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  if (!j[key].is_number()) throw std::runtime_error(path + ": key '" + key + "' must be a number, got " + j[key].dump());
  return j[key].get<float>();
}

const char* const kSpecialTokens[][2] = {{"unk_token", "[UNK]"}, {"sep_token", "[SEP]"}, {"pad_token", "[PAD]"},
                                         {"cls_token", "[CLS]"}, {"mask_token", "[MASK]"}};

}  // namespace

BertConfig read_hf_config_json(const std::string& path, int num_labels_override) {
  const json j = read_json_file(path);
  if (!j.is_object()) throw std::runtime_error(path + ": expected a JSON object");
  if (j.contains("model_type")) {
    if (!j["model_type"].is_string() || j["model_type"].get<std::string>() != "bert")
      throw std::runtime_error(path + ": model_type " + j["model_type"].dump() +
                               " is not supported: llmqs-dist imports BERT encoders (model_type \"bert\")");
  } else {
    bool bert_architecture = false;
    if (j.contains("architectures") && j["architectures"].is_array())
      for (const auto& a : j["architectures"])
        bert_architecture = bert_architecture || (a.is_string() && starts_with(a.get<std::string>(), "Bert"));
    if (!bert_architecture)
      throw std::runtime_error(path + ": no model_type and no Bert* architecture: not a BERT config.json");
  }
  if (j.contains("hidden_act") && j["hidden_act"] != "gelu")
    throw std::runtime_error(path + ": hidden_act " + j["hidden_act"].dump() +
                             " is not supported (llmqs-dist implements BERT's exact erf \"gelu\")");
  if (j.contains("position_embedding_type") && !j["position_embedding_type"].is_null() &&
      j["position_embedding_type"] != "absolute")
    throw std::runtime_error(path + ": position_embedding_type " + j["position_embedding_type"].dump() +
                             " is not supported (only \"absolute\")");
  for (const char* flag : {"is_decoder", "add_cross_attention"})
    if (j.contains(flag) && j[flag].is_boolean() && j[flag].get<bool>())
      throw std::runtime_error(path + ": " + flag + " = true is not supported (encoder-only classifiers)");

  BertConfig c;
  c.vocab_size = json_int(j, "vocab_size", 30522, path);  // HF BertConfig defaults where absent
  c.hidden_size = json_int(j, "hidden_size", 768, path);
  c.num_hidden_layers = json_int(j, "num_hidden_layers", 12, path);
  c.num_attention_heads = json_int(j, "num_attention_heads", 12, path);
  c.intermediate_size = json_int(j, "intermediate_size", 3072, path);
  c.max_position_embeddings = json_int(j, "max_position_embeddings", 512, path);
  c.type_vocab_size = json_int(j, "type_vocab_size", 2, path);
  c.pad_token_id = json_int(j, "pad_token_id", 0, path);
  c.layer_norm_eps = json_number(j, "layer_norm_eps", 1e-12f, path);
  c.hidden_dropout_prob = json_number(j, "hidden_dropout_prob", 0.1f, path);
  c.attention_probs_dropout_prob = json_number(j, "attention_probs_dropout_prob", 0.1f, path);
  c.classifier_dropout = json_number(j, "classifier_dropout", -1.0f, path);
  c.initializer_range = json_number(j, "initializer_range", 0.02f, path);
  if (num_labels_override > 0) {
    c.num_labels = num_labels_override;
  } else if (j.contains("id2label") && j["id2label"].is_object() && !j["id2label"].empty()) {
    c.num_labels = static_cast<int>(j["id2label"].size());
  } else {
    c.num_labels = json_int(j, "num_labels", 2, path);
  }
  try {
    c.validate();
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  return c;
}

std::string hf_config_json(const BertConfig& c) {
  json j;
  j["architectures"] = {"BertForSequenceClassification"};
  j["model_type"] = "bert";
  j["attention_probs_dropout_prob"] = json_float(c.attention_probs_dropout_prob);
  j["classifier_dropout"] = c.classifier_dropout >= 0.0f ? json(json_float(c.classifier_dropout)) : json(nullptr);
  j["hidden_act"] = "gelu";
  j["hidden_dropout_prob"] = json_float(c.hidden_dropout_prob);
  j["hidden_size"] = c.hidden_size;
  j["initializer_range"] = json_float(c.initializer_range);
  j["intermediate_size"] = c.intermediate_size;
  j["layer_norm_eps"] = json_float(c.layer_norm_eps);
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["pad_token_id"] = c.pad_token_id;
  j["position_embedding_type"] = "absolute";
  j["problem_type"] = "single_label_classification";
  j["type_vocab_size"] = c.type_vocab_size;
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab_size;
  j["torch_dtype"] = "float32";
  json id2label = json::object(), label2id = json::object();
  for (int i = 0; i < c.num_labels; ++i) {
    id2label[std::to_string(i)] = "LABEL_" + std::to_string(i);
    label2id["LABEL_" + std::to_string(i)] = i;
  }
  j["id2label"] = id2label;
  j["label2id"] = label2id;
  return j.dump(2) + "\n";
}

TokenizerInfo read_hf_tokenizer(const std::string& dir, int max_position_embeddings) {
  TokenizerInfo info;
  const fs::path root(dir);
  const fs::path vocab_txt = root / "vocab.txt", tokenizer_json = root / "tokenizer.json";
  json tokenizer;  // tokenizer.json when present (also consulted for lowercase)
  if (fs::exists(tokenizer_json)) tokenizer = read_json_file(tokenizer_json.string());
  if (fs::exists(vocab_txt)) {
    std::ifstream in(vocab_txt, std::ios::binary);
    if (!in) throw std::runtime_error(vocab_txt.string() + ": cannot open");
    std::string line;
    while (std::getline(in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      info.vocab.push_back(line);
    }
  } else if (!tokenizer.is_null()) {
    const std::string where = tokenizer_json.string();
    if (!tokenizer.contains("model") || !tokenizer["model"].is_object() || tokenizer["model"].value("type", "") != "WordPiece")
      throw std::runtime_error(where + ": model.type must be \"WordPiece\" (a BERT tokenizer)");
    const json& vocab = tokenizer["model"]["vocab"];
    if (!vocab.is_object() || vocab.empty()) throw std::runtime_error(where + ": model.vocab must be a non-empty object");
    info.vocab.assign(vocab.size(), std::string());
    std::vector<bool> seen(vocab.size(), false);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      if (!it.value().is_number_integer()) throw std::runtime_error(where + ": model.vocab[\"" + it.key() + "\"] must be an integer id");
      const int64_t id = it.value().get<int64_t>();
      if (id < 0 || id >= static_cast<int64_t>(vocab.size()) || seen[static_cast<size_t>(id)])
        throw std::runtime_error(where + ": model.vocab ids must be 0.." + std::to_string(vocab.size() - 1) +
                                 " without gaps or repeats (token \"" + it.key() + "\" has id " + std::to_string(id) + ")");
      seen[static_cast<size_t>(id)] = true;
      info.vocab[static_cast<size_t>(id)] = it.key();
    }
  } else {
    throw std::runtime_error(dir + ": no vocab.txt or tokenizer.json (the model's vocabulary is needed)");
  }
  if (info.vocab.empty()) throw std::runtime_error(dir + ": the vocabulary is empty");
  for (const char* special : {"[UNK]", "[CLS]", "[SEP]", "[PAD]"})
    if (std::find(info.vocab.begin(), info.vocab.end(), special) == info.vocab.end())
      throw std::runtime_error(dir + ": the vocabulary has no " + special + " token (not a BERT WordPiece vocabulary)");

  // HF BertTokenizer lower-cases unless told otherwise.
  info.do_lower_case = true;
  if (tokenizer.is_object() && tokenizer.contains("normalizer") && tokenizer["normalizer"].is_object() &&
      tokenizer["normalizer"].contains("lowercase") && tokenizer["normalizer"]["lowercase"].is_boolean())
    info.do_lower_case = tokenizer["normalizer"]["lowercase"].get<bool>();
  info.max_length = max_position_embeddings;
  const fs::path config_path = root / "tokenizer_config.json";
  if (fs::exists(config_path)) {
    const json config = read_json_file(config_path.string());
    if (config.contains("do_lower_case")) {
      if (!config["do_lower_case"].is_boolean())
        throw std::runtime_error(config_path.string() + ": do_lower_case must be true or false");
      info.do_lower_case = config["do_lower_case"].get<bool>();
    }
    if (config.contains("model_max_length") && config["model_max_length"].is_number()) {
      const double m = config["model_max_length"].get<double>();
      if (m >= 2 && m < max_position_embeddings) info.max_length = static_cast<int>(m);
    }
  }
  info.label_offset = 0;
  return info;
}

Checkpoint import_hf_model_dir(const std::string& dir, const HfImportOptions& options, HfImportReport* report) {
  HfImportReport local_report;
  HfImportReport& r = report ? *report : local_report;
  if (!fs::is_directory(dir)) throw std::runtime_error(dir + ": not a directory (expected an HF model folder)");
  const fs::path root(dir);
  const fs::path config_path = root / "config.json";
  if (!fs::exists(config_path)) throw std::runtime_error(dir + ": no config.json (not an HF model folder)");

  Checkpoint c;
  c.model = read_hf_config_json(config_path.string(), options.num_labels);
  const ParameterLayout layout = ParameterLayout::for_bert(c.model);

  const fs::path weights = root / "model.safetensors";
  if (!fs::exists(weights)) {
    if (fs::exists(root / "model.safetensors.index.json"))
      throw std::runtime_error(dir + ": sharded safetensors (model.safetensors.index.json) are not supported yet");
    if (fs::exists(root / "pytorch_model.bin"))
      throw std::runtime_error(dir + ": only pytorch_model.bin found; llmqs-dist reads model.safetensors (convert with "
                               "transformers: model.save_pretrained(dir, safe_serialization=True))");
    throw std::runtime_error(dir + ": no model.safetensors");
  }
  r.weights_file = weights.string();
  const SafetensorsFile file(weights.string());

  bool has_bert_prefix = false;
  for (const auto& t : file.tensors()) has_bert_prefix = has_bert_prefix || starts_with(t.name, "bert.");
  r.prefix_note = has_bert_prefix ? "" : "tensor names without the bert. prefix (a BertModel checkpoint)";

  // First match names and shapes, reading nothing: config.json alone decides how much memory the
  // model takes, so the file must be shown to hold every encoder tensor (its header's byte ranges
  // are checked against the file size) before that memory is allocated.
  std::vector<std::pair<const SafetensorsTensor*, const ParameterInfo*>> matched;
  std::set<std::string> loaded;
  for (const auto& t : file.tensors()) {
    std::string name = t.name;
    if (!has_bert_prefix && !starts_with(name, "classifier.")) name = "bert." + name;
    // Checkpoints converted from TensorFlow name LayerNorm parameters gamma/beta; HF renames them.
    if (name.find("LayerNorm.") != std::string::npos) {
      if (ends_with(name, ".gamma")) name = name.substr(0, name.size() - 6) + ".weight";
      if (ends_with(name, ".beta")) name = name.substr(0, name.size() - 5) + ".bias";
    }
    if (!layout.contains(name)) {
      r.ignored.push_back(t.name);
      continue;
    }
    const ParameterInfo& p = layout.find(name);
    if (t.shape != p.shape) {
      std::string hint;
      if (starts_with(name, "classifier."))
        hint = " (the file's classification head has " + std::to_string(t.shape.empty() ? 0 : t.shape[0]) +
               " labels; import with that --num_labels)";
      throw std::runtime_error(weights.string() + ": tensor '" + t.name + "' has shape " + shape_text(t.shape) +
                               " but config.json gives " + shape_text(p.shape) + hint);
    }
    if (!loaded.insert(name).second)
      throw std::runtime_error(weights.string() + ": parameter '" + name + "' appears twice");
    matched.emplace_back(&t, &p);
  }
  for (const auto& p : layout.parameters()) {
    if (loaded.count(p.name)) continue;
    if (starts_with(p.name, "classifier.") || starts_with(p.name, "bert.pooler.")) {
      r.initialised_fresh.push_back(p.name);
      continue;
    }
    throw std::runtime_error(weights.string() + ": missing tensor '" + p.name + "' (shape " + shape_text(p.shape) +
                             ") for the model described by config.json");
  }

  // Start from HF's own initialisation, then overwrite what the file has: the pooler and
  // classifier of a bare BertModel keep these fresh values.
  c.parameters.assign(layout.total_numel(), 0.0f);
  init_bert_parameters(c.model, layout, options.seed, c.parameters.data());
  for (const auto& [t, p] : matched) {
    float* values = c.parameters.data() + p->offset;
    file.read_f32(*t, values);
    const float* bad = std::find_if(values, values + p->numel, [](float v) { return !std::isfinite(v); });
    if (bad != values + p->numel)
      throw std::runtime_error(weights.string() + ": tensor '" + t->name + "' holds a non-finite value (" +
                               std::to_string(*bad) + ") at flat index " + std::to_string(bad - values));
  }

  c.tokenizer = read_hf_tokenizer(dir, c.model.max_position_embeddings);
  r.vocab_file = fs::exists(root / "vocab.txt") ? (root / "vocab.txt").string() : (root / "tokenizer.json").string();
  if (c.tokenizer.vocab.size() > static_cast<size_t>(c.model.vocab_size))
    throw std::runtime_error(r.vocab_file + ": " + std::to_string(c.tokenizer.vocab.size()) +
                             " tokens, more than config.json's vocab_size " + std::to_string(c.model.vocab_size));

  c.trainer.seed = options.seed;
  c.config_ini = "# imported from " + fs::absolute(root).lexically_normal().string() + " by llmqs-dist import-hf\n";
  return c;
}

std::vector<std::string> export_hf_model_dir(const Checkpoint& checkpoint, const std::string& dir, bool overwrite) {
  const fs::path root(dir);
  std::error_code ec;
  if (fs::exists(root, ec)) {
    if (!fs::is_directory(root, ec)) throw std::runtime_error(dir + ": exists and is not a directory");
    if (!fs::is_empty(root, ec) && !overwrite)
      throw std::runtime_error(dir + ": directory exists and is not empty (pass --overwrite to replace its files)");
  }
  fs::create_directories(root, ec);
  if (ec) throw std::runtime_error(dir + ": cannot create directory: " + ec.message());

  const BertConfig& config = checkpoint.model;
  const ParameterLayout layout = ParameterLayout::for_bert(config);
  if (checkpoint.parameters.size() != layout.total_numel())
    throw std::invalid_argument(dir + ": checkpoint holds " + std::to_string(checkpoint.parameters.size()) +
                                " parameters, the model needs " + std::to_string(layout.total_numel()));
  std::vector<std::string> written;

  write_text_file((root / "config.json").string(), hf_config_json(config));
  written.push_back((root / "config.json").string());

  std::vector<SafetensorsF32Tensor> tensors;
  for (const auto& p : layout.parameters()) tensors.push_back({p.name, p.shape, checkpoint.parameters.data() + p.offset});
  write_safetensors_f32((root / "model.safetensors").string(), tensors, {{"format", "pt"}});
  written.push_back((root / "model.safetensors").string());

  const TokenizerInfo& tok = checkpoint.tokenizer;
  if (tok.vocab.empty()) return written;  // nothing to write a tokenizer from; the caller says so

  std::string vocab_text;
  for (const auto& token : tok.vocab) vocab_text += token + "\n";
  write_text_file((root / "vocab.txt").string(), vocab_text);
  written.push_back((root / "vocab.txt").string());

  auto id_of = [&](const std::string& token) -> int64_t {
    auto it = std::find(tok.vocab.begin(), tok.vocab.end(), token);
    return it == tok.vocab.end() ? -1 : static_cast<int64_t>(it - tok.vocab.begin());
  };
  json special_map = json::object();
  json tokenizer_config = {{"do_lower_case", tok.do_lower_case},
                           {"model_max_length", tok.max_length},
                           {"tokenizer_class", "BertTokenizer"},
                           {"tokenize_chinese_chars", true},
                           {"strip_accents", nullptr},
                           {"clean_up_tokenization_spaces", true}};
  json added_tokens = json::array();
  for (const auto& [key, token] : kSpecialTokens) {
    const int64_t id = id_of(token);
    if (id < 0) continue;  // a small test vocabulary may lack [MASK]
    special_map[key] = token;
    tokenizer_config[key] = token;
    added_tokens.push_back({{"id", id}, {"content", token}, {"single_word", false}, {"lstrip", false},
                            {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  std::sort(added_tokens.begin(), added_tokens.end(),
            [](const json& a, const json& b) { return a["id"].get<int64_t>() < b["id"].get<int64_t>(); });
  write_text_file((root / "tokenizer_config.json").string(), tokenizer_config.dump(2) + "\n");
  written.push_back((root / "tokenizer_config.json").string());
  write_text_file((root / "special_tokens_map.json").string(), special_map.dump(2) + "\n");
  written.push_back((root / "special_tokens_map.json").string());

  // tokenizer.json as the `tokenizers` library writes it for BERT: fast tokenizers (the only
  // kind in transformers 5) load it directly instead of converting vocab.txt.
  json vocab = json::object();
  for (size_t i = 0; i < tok.vocab.size(); ++i)
    if (!vocab.contains(tok.vocab[i])) vocab[tok.vocab[i]] = i;
  const int64_t cls = id_of("[CLS]"), sep = id_of("[SEP]");
  json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added_tokens},
      {"normalizer",
       {{"type", "BertNormalizer"}, {"clean_text", true}, {"handle_chinese_chars", true}, {"strip_accents", nullptr},
        {"lowercase", tok.do_lower_case}}},
      {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "[CLS]"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                {{"SpecialToken", {{"id", "[SEP]"}, {"type_id", 0}}}}})},
        {"pair", json::array({{{"SpecialToken", {{"id", "[CLS]"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                              {{"SpecialToken", {{"id", "[SEP]"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}},
                              {{"SpecialToken", {{"id", "[SEP]"}, {"type_id", 1}}}}})},
        {"special_tokens",
         {{"[CLS]", {{"id", "[CLS]"}, {"ids", {cls}}, {"tokens", {"[CLS]"}}}},
          {"[SEP]", {{"id", "[SEP]"}, {"ids", {sep}}, {"tokens", {"[SEP]"}}}}}}}},
      {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
      {"model",
       {{"type", "WordPiece"},
        {"unk_token", "[UNK]"},
        {"continuing_subword_prefix", "##"},
        {"max_input_chars_per_word", 100},
        {"vocab", vocab}}}};
  write_text_file((root / "tokenizer.json").string(), tokenizer.dump() + "\n");
  written.push_back((root / "tokenizer.json").string());
  return written;
}

}  // namespace llmqs::core
