// Hugging Face model folders in and out: config.json, model.safetensors, vocab.txt /
// tokenizer.json, tokenizer_config.json, special_tokens_map.json. This is the one place that
// maps HF files onto a Checkpoint (core/checkpoint.h); HF parameter names themselves come from
// ParameterLayout (core/parameters.h).
//
// Import accepts BertForSequenceClassification folders (bert.* names + classifier.*) and bare
// BertModel folders such as all-MiniLM-L6-v2 (names without the `bert.` prefix, no classifier,
// sometimes no pooler); what is missing is initialised the way HF does (normal(0,
// initializer_range) weights, zero biases), and the import report says so.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/model_config.h"

namespace llmqs::core {

// config.json -> BertConfig. Refuses a model_type other than "bert" and hidden_act other than
// gelu, naming the file and key. num_labels: `num_labels_override` when > 0, else the size of
// id2label / num_labels in the file, else HF's default 2.
BertConfig read_hf_config_json(const std::string& path, int num_labels_override = 0);
// BertForSequenceClassification config.json text for `config` (id2label LABEL_0.., ...).
std::string hf_config_json(const BertConfig& config);

// The tokenizer files of an HF folder: vocab.txt (preferred) or tokenizer.json's WordPiece
// vocabulary; do_lower_case and model_max_length from tokenizer_config.json (model_max_length
// is capped at max_position_embeddings: HF writes 1e30 for "no limit").
TokenizerInfo read_hf_tokenizer(const std::string& dir, int max_position_embeddings);

struct HfImportOptions {
  int num_labels = 0;   // > 0: overrides config.json
  uint64_t seed = 42;   // for parameters the folder does not have (classifier, pooler)
};

struct HfImportReport {
  std::vector<std::string> initialised_fresh;  // HF names initialised here
  std::vector<std::string> ignored;            // tensors in the file that are not parameters
  std::string weights_file;
  std::string vocab_file;
  std::string prefix_note;                     // "names without the bert. prefix (BertModel)" or ""
};

// Reads an HF folder into a starting checkpoint (no optimizer state, global_step 0).
Checkpoint import_hf_model_dir(const std::string& dir, const HfImportOptions& options, HfImportReport* report);

// Writes config.json, model.safetensors (F32), vocab.txt, tokenizer_config.json and
// special_tokens_map.json so that transformers' AutoModelForSequenceClassification and
// AutoTokenizer load the folder. Refuses an existing non-empty `dir` unless overwrite.
// Returns the files written.
std::vector<std::string> export_hf_model_dir(const Checkpoint& checkpoint, const std::string& dir, bool overwrite);

}  // namespace llmqs::core
