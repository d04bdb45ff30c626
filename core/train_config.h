// TrainConfig: everything `llmqs-dist train` (and, for its evaluation part, `eval`) needs, in
// one struct. launch/train_options.cpp is the only place that fills it (from the command line
// and the INI file); the trainer only reads it. Field names are the option names, which are
// HF TrainingArguments names where one exists, so the course notebook translates line by line.
//
// validate() runs before any work (no file is read or written first) and throws
// std::invalid_argument whose message starts with the offending key.
#pragma once
#include <cstdint>
#include <string>

#include "core/model_config.h"

namespace llmqs::core {

struct TrainConfig {
  // ---- data -------------------------------------------------------------------------
  std::string train_file;       // CSV / JSON Lines / .h5 token cache (train only)
  std::string validation_file;  // same formats; "" = no evaluation
  std::string output_dir;       // metrics.jsonl and checkpoint-<step>.h5 go here (train only)
  std::string vocab;            // vocab.txt or tokenizer.json
  bool do_lower_case = false;   // bert-base-cased: false; MiniLM / uncased models: true
  int max_length = 512;         // tokens per review including [CLS] and [SEP]
  int label_offset = -1;        // -1: auto (headerless CSV: 1, HF exports: 0)

  // ---- model --------------------------------------------------------------------------
  // Shape and dropout. model.vocab_size == 0 means "the vocabulary's size" (resolved once the
  // vocabulary is read).
  BertConfig model = default_model();

  // ---- batching -----------------------------------------------------------------------
  int per_device_train_batch_size = 8;
  int per_device_eval_batch_size = 8;
  int gradient_accumulation_steps = 1;
  bool group_by_length = false;
  bool dataloader_drop_last = false;

  // ---- optimizer and schedule -----------------------------------------------------------
  float learning_rate = 5e-5f;
  float weight_decay = 0.0f;
  float adam_beta1 = 0.9f;
  float adam_beta2 = 0.999f;
  float adam_epsilon = 1e-8f;
  float max_grad_norm = 1.0f;     // <= 0: no clipping
  // 0: every rank keeps all AdamW moments and updates every parameter (DDP). 1: ZeRO-1, each of N
  // ranks keeps and updates 1/N of them (core/optimizer_shard.h): the moments' memory / N, a
  // reduce-scatter and an all-gather instead of the all-reduce. Results are the same either way.
  int zero_stage = 0;
  double warmup_ratio = 0.0;
  int64_t warmup_steps = 0;       // > 0 wins over warmup_ratio (HF)
  std::string lr_scheduler_type = "linear";
  double num_train_epochs = 3.0;  // fractional allowed
  int64_t max_steps = -1;         // > 0 wins over num_train_epochs (HF)

  // ---- logging and evaluation --------------------------------------------------------------
  int64_t logging_steps = 500;
  std::string eval_strategy = "no";  // no | steps | epoch
  int64_t eval_steps = 0;            // 0: logging_steps (HF)
  uint64_t seed = 42;

  // ---- device -------------------------------------------------------------------------------
  std::string device = "auto";     // auto | cpu | cuda
  std::string precision = "auto";  // auto | bf16 | fp16 | fp32 | tf32 (auto: cpu fp32, sm_80+ bf16, else fp16)
  // A rank waits at most this long for the others at a collective; then the job is aborted with
  // a message naming the rank that did not arrive (a crashed or hung rank never hangs the job).
  double collective_timeout_s = 300.0;

  // ---- checkpoints (stored here; core/checkpoint.* and its engineer give them meaning) ------
  int64_t save_steps = 0;                     // 0: only the final checkpoint
  int save_total_limit = 0;                   // 0: keep every checkpoint
  std::string resume_from_checkpoint = "none";  // none | auto (latest in output_dir) | a file
  bool overwrite_output_dir = false;  // HF name: allow a fresh run into an output_dir holding checkpoints
  std::string init_from;                      // a checkpoint (e.g. from import-hf) to start from
  std::string metric_for_best_model;          // "" | eval_loss | eval_accuracy | eval_macro_f1

  // The effective configuration as INI text (what --print-config shows); stored in checkpoints.
  std::string config_ini;

  static BertConfig default_model() {
    BertConfig m;
    m.vocab_size = 0;
    return m;
  }

  // Refuses every value that cannot work, before any file is touched. `for_training` false
  // skips the keys only training reads (train_file, output_dir, schedule, ...).
  void validate(bool for_training = true) const;
  // After the data is read: every label must fit num_labels. `file` names the dataset.
  void validate_labels(int num_labels_seen, const std::string& file) const;
  // After the vocabulary is read: fills model.vocab_size when 0, refuses a smaller one.
  void resolve_vocab_size(int vocabulary_size);

  int64_t effective_eval_steps() const { return eval_steps > 0 ? eval_steps : logging_steps; }
};

}  // namespace llmqs::core
