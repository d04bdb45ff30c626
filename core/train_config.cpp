// TrainConfig::validate and friends: every refusal names the option key first, so the user can
// find the line in the INI file or the flag on the command line.
#include "core/train_config.h"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

#include "core/optimizer.h"

namespace llmqs::core {

namespace {

template <typename T>
std::string to_text(const T& value) {
  std::ostringstream s;
  s << value;
  return s.str();
}

[[noreturn]] void refuse(const std::string& key, const std::string& problem) {
  throw std::invalid_argument(key + ": " + problem);
}

template <typename T>
void at_least(const std::string& key, T value, T minimum) {
  if (!(value >= minimum)) refuse(key, "must be at least " + to_text(minimum) + ", got " + to_text(value));
}

void positive_finite(const std::string& key, double value) {
  if (!(std::isfinite(value) && value > 0.0)) refuse(key, "must be a positive number, got " + to_text(value));
}

// Probabilities and betas: [0, 1).
void unit_interval(const std::string& key, double value) {
  if (!(value >= 0.0 && value < 1.0)) refuse(key, "must be in [0, 1), got " + to_text(value));
}

void one_of(const std::string& key, const std::string& value, std::initializer_list<const char*> allowed) {
  std::string list;
  for (const char* a : allowed) {
    if (value == a) return;
    list += list.empty() ? a : std::string(", ") + a;
  }
  refuse(key, "unknown value '" + value + "' (expected one of: " + list + ")");
}

}  // namespace

void TrainConfig::validate(bool for_training) const {
  // ---- files ----
  if (for_training) {
    if (train_file.empty()) refuse("train_file", "is required (a CSV, JSON Lines or .h5 token cache)");
    if (output_dir.empty()) refuse("output_dir", "is required (metrics.jsonl and checkpoints go there)");
    if (vocab.empty() && init_from.empty())
      refuse("vocab", "is required (vocab.txt or tokenizer.json of the model)");
  }
  if (!(max_length >= 2)) refuse("max_length", "must be at least 2 ([CLS] and [SEP]), got " + to_text(max_length));
  at_least("label_offset", label_offset, -1);

  // ---- model shape ----
  at_least("vocab_size", model.vocab_size, 0);
  at_least("hidden_size", model.hidden_size, 1);
  at_least("num_hidden_layers", model.num_hidden_layers, 1);
  at_least("num_attention_heads", model.num_attention_heads, 1);
  at_least("intermediate_size", model.intermediate_size, 1);
  at_least("max_position_embeddings", model.max_position_embeddings, 1);
  if (model.hidden_size % model.num_attention_heads != 0)
    refuse("num_attention_heads", "hidden_size " + to_text(model.hidden_size) + " is not divisible by num_attention_heads " +
                                      to_text(model.num_attention_heads));
  if (model.num_labels < 2) refuse("num_labels", "must be at least 2, got " + to_text(model.num_labels));
  if (max_length > model.max_position_embeddings)
    refuse("max_length", to_text(max_length) + " is beyond max_position_embeddings " +
                             to_text(model.max_position_embeddings) + " of the model");
  unit_interval("hidden_dropout_prob", model.hidden_dropout_prob);
  unit_interval("attention_probs_dropout_prob", model.attention_probs_dropout_prob);

  // ---- batching ----
  at_least("per_device_eval_batch_size", per_device_eval_batch_size, 1);

  // ---- device ----
  one_of("device", device, {"auto", "cpu", "cuda"});
  one_of("precision", precision, {"auto", "bf16", "fp16", "fp32", "tf32"});
  positive_finite("collective_timeout_s", collective_timeout_s);

  if (!for_training) return;

  at_least("per_device_train_batch_size", per_device_train_batch_size, 1);
  at_least("gradient_accumulation_steps", gradient_accumulation_steps, 1);

  // ---- optimizer and schedule ----
  positive_finite("learning_rate", learning_rate);
  if (!(std::isfinite(weight_decay) && weight_decay >= 0.0f))
    refuse("weight_decay", "must be a number >= 0, got " + to_text(weight_decay));
  unit_interval("adam_beta1", adam_beta1);
  unit_interval("adam_beta2", adam_beta2);
  positive_finite("adam_epsilon", adam_epsilon);
  if (std::isnan(max_grad_norm)) refuse("max_grad_norm", "must be a number (<= 0 turns clipping off)");
  if (zero_stage != 0 && zero_stage != 1)
    refuse("zero_stage", "must be 0 (every rank keeps all AdamW moments) or 1 (ZeRO-1: each rank keeps 1/N), got " +
                             to_text(zero_stage));
  unit_interval("warmup_ratio", warmup_ratio);
  at_least<int64_t>("warmup_steps", warmup_steps, 0);
  try {
    (void)parse_lr_scheduler_type(lr_scheduler_type);
  } catch (const std::exception&) {
    refuse("lr_scheduler_type", "unknown value '" + lr_scheduler_type +
                                    "' (expected one of: linear, cosine, constant, constant_with_warmup)");
  }
  if (max_steps == 0 || max_steps < -1)
    refuse("max_steps", "must be -1 (use num_train_epochs) or a positive step count, got " + to_text(max_steps));
  if (max_steps < 0) positive_finite("num_train_epochs", num_train_epochs);

  // ---- logging, evaluation, checkpoints ----
  at_least<int64_t>("logging_steps", logging_steps, 1);
  one_of("eval_strategy", eval_strategy, {"no", "steps", "epoch"});
  at_least<int64_t>("eval_steps", eval_steps, 0);
  if (eval_strategy != "no" && validation_file.empty())
    refuse("eval_strategy", "'" + eval_strategy + "' needs a validation_file");
  at_least<int64_t>("save_steps", save_steps, 0);
  at_least("save_total_limit", save_total_limit, 0);
  if (resume_from_checkpoint.empty())
    refuse("resume_from_checkpoint", "must be 'none', 'auto' or a checkpoint file");
  if (!metric_for_best_model.empty())
    one_of("metric_for_best_model", metric_for_best_model,
           {"loss", "accuracy", "macro_f1", "eval_loss", "eval_accuracy", "eval_macro_f1"});
}

void TrainConfig::validate_labels(int num_labels_seen, const std::string& file) const {
  if (num_labels_seen > model.num_labels)
    refuse("num_labels", to_text(model.num_labels) + " is smaller than the " + to_text(num_labels_seen) +
                             " labels in " + file + " (set --num_labels " + to_text(num_labels_seen) +
                             " or check --label_offset)");
}

void TrainConfig::resolve_vocab_size(int vocabulary_size) {
  if (model.vocab_size == 0) {
    model.vocab_size = vocabulary_size;
  } else if (model.vocab_size < vocabulary_size) {
    refuse("vocab_size", to_text(model.vocab_size) + " is smaller than the vocabulary (" + vocab + ": " +
                             to_text(vocabulary_size) + " tokens)");
  }
}

}  // namespace llmqs::core
