// `llmqs-dist import-hf DIR --output FILE.h5`: an HF BERT folder (config.json, model.safetensors,
// vocab.txt or tokenizer.json, tokenizer_config.json) becomes a starting checkpoint for
// `train --init_from`. What the folder lacks (a classifier, a pooler) is initialised as HF does.
#include <cstdio>
#include <filesystem>
#include <string>

#include "core/checkpoint.h"
#include "core/hf_model_dir.h"
#include "launch/options.h"
#include "launch/subcommand.h"

namespace llmqs::launch {

namespace {

std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& item : items) s += (s.empty() ? "" : ", ") + item;
  return s;
}

}  // namespace

int run_import_hf(int argc, char** argv) {
  std::string dir, output;
  int num_labels = 0;
  uint64_t seed = 42;
  CommandLine cl;
  cl.command = "import-hf";
  cl.usage = "llmqs-dist import-hf DIR --output FILE.h5 [--num_labels N] [--seed S]";
  cl.summary =
      "Converts a Hugging Face BERT folder (BertModel or BertForSequenceClassification: config.json,\n"
      "model.safetensors, vocab.txt or tokenizer.json, tokenizer_config.json) into a starting checkpoint\n"
      "without optimizer state; train from it with --init_from FILE.h5. A missing classification head\n"
      "or pooler is initialised like HF does (normal(0, initializer_range), zero bias).";
  cl.options.add_options()
      ("model_dir", po::value<std::string>(&dir)->required(), "the HF model folder (also the first positional argument)")
      ("output", po::value<std::string>(&output)->required(), "checkpoint file to write (.h5)")
      ("num_labels", po::value<int>(&num_labels), "classes of the classification head (default: config.json's id2label, else 2)")
      ("seed", po::value<uint64_t>(&seed), "seed for the freshly initialised head and pooler (default 42)");
  cl.positional.add("model_dir", 1);
  po::variables_map vm;
  if (!parse_command_line(cl, argc, argv, vm)) return 0;
  if (vm.count("num_labels") && num_labels < 2)
    throw UsageError("import-hf: --num_labels must be at least 2, got " + std::to_string(num_labels));

  core::HfImportOptions options;
  options.num_labels = num_labels;
  options.seed = seed;
  core::HfImportReport report;
  const core::Checkpoint checkpoint = core::import_hf_model_dir(dir, options, &report);

  const std::filesystem::path parent = std::filesystem::path(output).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  core::write_checkpoint(output, checkpoint);

  const core::BertConfig& m = checkpoint.model;
  std::printf("import-hf: %s\n", dir.c_str());
  std::printf("  model       BERT %d layers, hidden %d, %d heads, FFN %d, vocab %d, max_position %d, %d labels (%zu parameters)\n",
              m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.intermediate_size, m.vocab_size,
              m.max_position_embeddings, m.num_labels, checkpoint.parameters.size());
  std::printf("  weights     %s%s%s\n", report.weights_file.c_str(), report.prefix_note.empty() ? "" : ": ",
              report.prefix_note.c_str());
  std::printf("  tokenizer   %s: %zu tokens, do_lower_case %s, max_length %d\n", report.vocab_file.c_str(),
              checkpoint.tokenizer.vocab.size(), checkpoint.tokenizer.do_lower_case ? "true" : "false",
              checkpoint.tokenizer.max_length);
  if (!report.initialised_fresh.empty())
    std::printf("  initialised fresh (not in the file; normal(0, %g) weights, zero biases, seed %llu): %s\n",
                m.initializer_range, static_cast<unsigned long long>(seed), join(report.initialised_fresh).c_str());
  if (!report.ignored.empty()) std::printf("  ignored (not parameters of the classifier): %s\n", join(report.ignored).c_str());
  std::printf("wrote %s (no optimizer state: train with --init_from %s)\n", output.c_str(), output.c_str());
  return 0;
}

LLMQS_REGISTER_SUBCOMMAND("import-hf", "Hugging Face BERT folder -> starting checkpoint", 70, run_import_hf);

}  // namespace llmqs::launch
