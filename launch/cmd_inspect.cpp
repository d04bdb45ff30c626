// `llmqs-dist inspect CHECKPOINT`: what a checkpoint holds, without reading its weights: step,
// epoch, the last training and evaluation metrics, model shape, precision, world size, and
// whether it carries optimizer state (resumable) or not (imported).
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "core/checkpoint.h"
#include "launch/options.h"
#include "launch/subcommand.h"

namespace llmqs::launch {

namespace {

std::string with_thousands(uint64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// A string read from the checkpoint as it may go to a terminal: control characters (C0, DEL) as
// \xNN, so a crafted file cannot move the cursor, clear the screen or retitle the window.
std::string printable(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const auto byte = static_cast<unsigned char>(ch);
    if (byte < 0x20 || byte == 0x7f) {
      char escaped[5];
      std::snprintf(escaped, sizeof(escaped), "\\x%02x", byte);
      out += escaped;
    } else {
      out += ch;
    }
  }
  return out;
}

// `key value` pairs of one log_history record, numbers with 4 significant decimals.
std::string metrics_text(const nlohmann::ordered_json& record) {
  std::string s;
  for (auto it = record.begin(); it != record.end(); ++it) {
    char value[64];
    if (it.value().is_number_float()) {
      std::snprintf(value, sizeof(value), "%.4g", it.value().get<double>());
    } else {
      std::snprintf(value, sizeof(value), "%s", it.value().dump().c_str());
    }
    s += (s.empty() ? "" : "  ") + it.key() + " " + value;
  }
  return printable(s);
}

}  // namespace

int run_inspect(int argc, char** argv) {
  std::string path;
  CommandLine cl;
  cl.command = "inspect";
  cl.usage = "llmqs-dist inspect CHECKPOINT.h5";
  cl.summary = "Prints what a checkpoint holds: step, epoch, last metrics, model shape, precision, world size,\n"
               "whether it has optimizer state. Weights are not read, so this is quick on any size.";
  cl.options.add_options()("checkpoint", po::value<std::string>(&path)->required(), "the checkpoint file (positional)");
  cl.positional.add("checkpoint", 1);
  po::variables_map vm;
  if (!parse_command_line(cl, argc, argv, vm)) return 0;

  const core::CheckpointSummary s = core::read_checkpoint_summary(path);
  const core::BertConfig& m = s.model;
  const core::TrainerState& t = s.trainer;
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(path, ec);
  std::printf("checkpoint   %s (%.1f MB, schema %s v%d)\n", path.c_str(), ec ? 0.0 : bytes / 1e6,
              core::kCheckpointSchema, core::kCheckpointSchemaVersion);
  if (t.max_steps > 0) {
    std::printf("step         %lld of %lld, epoch %.2f\n", static_cast<long long>(t.global_step),
                static_cast<long long>(t.max_steps), t.epoch);
  } else {
    std::printf("step         %lld, epoch %.2f\n", static_cast<long long>(t.global_step), t.epoch);
  }
  std::printf("model        BERT %d layers, hidden %d, %d heads, FFN %d, vocab %d, max_position %d, %d labels\n",
              m.num_hidden_layers, m.hidden_size, m.num_attention_heads, m.intermediate_size, m.vocab_size,
              m.max_position_embeddings, m.num_labels);
  std::printf("parameters   %s (fp32 master weights)\n", with_thousands(s.parameter_count).c_str());
  std::printf("precision    %s, world size %d, global batch %lld, seed %llu\n", printable(t.precision).c_str(),
              t.world_size, static_cast<long long>(t.global_batch_size), static_cast<unsigned long long>(t.seed));
  if (s.has_optimizer_state) {
    std::printf("optimizer    AdamW moments present (optimizer step %lld): resumable\n",
                static_cast<long long>(s.optimizer_step));
  } else {
    std::printf("optimizer    none (an imported or exported model: use it with --init_from, not resume)\n");
  }
  std::printf("sampler      epoch %lld, %lld batches consumed per rank, %lld samples seen\n",
              static_cast<long long>(t.sampler_epoch), static_cast<long long>(t.sampler_position),
              static_cast<long long>(t.samples_seen));
  if (t.precision == "fp16")
    std::printf("loss scale   %g (%lld overflow steps skipped)\n", t.loss_scale, static_cast<long long>(t.skipped_steps));
  std::printf("tokenizer    %zu tokens, %s, max_length %d, label_offset %d\n", s.tokenizer.vocab.size(),
              s.tokenizer.do_lower_case ? "lower-cased" : "cased", s.tokenizer.max_length, s.tokenizer.label_offset);
  if (!t.best_checkpoint.empty())
    std::printf("best         %s (metric %.4g)\n", printable(t.best_checkpoint).c_str(), t.best_metric);

  nlohmann::ordered_json last_train, last_eval;
  for (const auto& line : t.log_history) {
    const nlohmann::ordered_json record = nlohmann::ordered_json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!record.is_object()) continue;
    bool is_eval = false;
    for (auto it = record.begin(); it != record.end(); ++it) is_eval = is_eval || it.key().rfind("eval_", 0) == 0;
    if (is_eval) {
      last_eval = record;
    } else if (record.contains("loss")) {
      last_train = record;
    }
  }
  std::printf("log history  %zu records\n", t.log_history.size());
  if (!last_train.is_null()) std::printf("last train   %s\n", metrics_text(last_train).c_str());
  if (!last_eval.is_null()) std::printf("last eval    %s\n", metrics_text(last_eval).c_str());
  return 0;
}

LLMQS_REGISTER_SUBCOMMAND("inspect", "what a checkpoint holds (step, metrics, model, optimizer state)", 90, run_inspect);

}  // namespace llmqs::launch
