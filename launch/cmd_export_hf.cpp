// `llmqs-dist export-hf CHECKPOINT DIR`: a checkpoint becomes an HF folder that
// transformers.AutoModelForSequenceClassification and AutoTokenizer load (F32 safetensors).
#include <cstdio>
#include <string>

#include "core/checkpoint.h"
#include "core/hf_model_dir.h"
#include "launch/options.h"
#include "launch/subcommand.h"

namespace llmqs::launch {

int run_export_hf(int argc, char** argv) {
  std::string checkpoint_file, dir;
  bool overwrite = false;
  CommandLine cl;
  cl.command = "export-hf";
  cl.usage = "llmqs-dist export-hf CHECKPOINT.h5 DIR [--overwrite]";
  cl.summary =
      "Writes config.json (BertForSequenceClassification), model.safetensors (F32, HF names), vocab.txt,\n"
      "tokenizer.json, tokenizer_config.json and special_tokens_map.json into DIR, so that\n"
      "AutoModelForSequenceClassification.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR) load it.";
  cl.options.add_options()
      ("checkpoint", po::value<std::string>(&checkpoint_file)->required(), "checkpoint-<step>.h5 (first positional argument)")
      ("output_dir", po::value<std::string>(&dir)->required(), "folder to write (second positional argument)")
      ("overwrite", po::bool_switch(&overwrite), "replace files in an existing non-empty folder");
  cl.positional.add("checkpoint", 1).add("output_dir", 1);
  po::variables_map vm;
  if (!parse_command_line(cl, argc, argv, vm)) return 0;

  const core::Checkpoint checkpoint = core::read_checkpoint(checkpoint_file);
  const std::vector<std::string> written = core::export_hf_model_dir(checkpoint, dir, overwrite);
  std::printf("export-hf: %s (step %lld, %d labels) -> %s\n", checkpoint_file.c_str(),
              static_cast<long long>(checkpoint.trainer.global_step), checkpoint.model.num_labels, dir.c_str());
  for (const auto& file : written) std::printf("  wrote %s\n", file.c_str());
  if (checkpoint.tokenizer.vocab.empty())
    std::fprintf(stderr, "llmqs-dist: warning: %s carries no vocabulary: no tokenizer files were written\n",
                 checkpoint_file.c_str());
  return 0;
}

LLMQS_REGISTER_SUBCOMMAND("export-hf", "checkpoint -> Hugging Face folder (transformers loads it)", 80, run_export_hf);

}  // namespace llmqs::launch
