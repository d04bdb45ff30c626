// Rank-0 HDF5 checkpoints: output_dir/checkpoint-<step>.h5, complete or absent, self-contained
// (model config, fp32 weights by HF name, AdamW moments, trainer state with log history, the
// effective INI configuration, the vocabulary). The schema is documented in
// docs/checkpoint_schema.md; h5dump and h5py read these files directly.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/trainer_state.h"

namespace llmqs::core {

// What `predict` / `eval` need to tokenize text the way the model was trained.
struct TokenizerInfo {
  std::vector<std::string> vocab;  // id = index; empty when the checkpoint carries no vocabulary
  bool do_lower_case = false;
  int max_length = 512;
  int label_offset = 0;            // added to a predicted class index to print the dataset's label
};

struct Checkpoint {
  BertConfig model;
  std::vector<float> parameters;        // ParameterLayout::for_bert(model) order
  std::vector<float> adam_m, adam_v;    // empty when there is no optimizer state (an imported model)
  TrainerState trainer;                 // global_step, epoch, sampler position, ..., log_history
  std::string config_ini;               // the effective training configuration, INI text
  TokenizerInfo tokenizer;

  bool has_optimizer_state() const { return !adam_m.empty(); }
};

inline constexpr const char* kCheckpointSchema = "llmqs-dist-checkpoint";
inline constexpr int kCheckpointSchemaVersion = 1;

// Rank 0 only. Writes <path>.tmp.<pid>, flushes (H5Fflush + fsync), renames: complete or absent.
// Throws std::invalid_argument when sizes disagree with the model config (nothing is written) and
// std::runtime_error naming the path when the file system fails (no file and no tmp are left) or
// when something that is not a checkpoint holds `path` (checkpoint_destination_problem; it is
// left as it was).
void write_checkpoint(const std::string& path, const Checkpoint& checkpoint);

// "" when `path` does not exist or holds an llmqs-dist checkpoint (an HDF5 file whose root
// @schema is ours), which a new checkpoint may replace; otherwise what is there instead ("is a
// directory", "is a symbolic link", "is not an llmqs-dist checkpoint (...)"), which it may not.
std::string checkpoint_destination_problem(const std::string& path);

// Test hook, off unless the environment sets LLMQS_TEST_HOOK_CHECKPOINT_WRITE_PAUSE_MS=N: every
// checkpoint write then pauses N ms half-way (half of the file written to <path>.tmp.<pid>), printing
// "llmqs-dist: test hook: pausing N ms inside the write of <tmp>" to stderr first, so that a
// crash test (tests/resume/random_sigkill.py) can land SIGKILL inside a write.
inline constexpr const char* kTestHookCheckpointWritePauseMs = "LLMQS_TEST_HOOK_CHECKPOINT_WRITE_PAUSE_MS";

// Validates schema name/version, every dataset's shape against the model config, sizes; throws
// std::runtime_error naming the file (and the dataset or attribute) on any mismatch.
Checkpoint read_checkpoint(const std::string& path);

// Only the small parts (config, trainer state, tokenizer, whether moments exist): for `inspect`
// and for find_latest_checkpoint's validity check. Weights are not read. Same validation of the
// schema and of the /model dataset shapes as read_checkpoint.
struct CheckpointSummary {
  BertConfig model;
  TrainerState trainer;
  std::string config_ini;
  TokenizerInfo tokenizer;
  bool has_optimizer_state = false;
  int64_t optimizer_step = 0;
  size_t parameter_count = 0;
};
CheckpointSummary read_checkpoint_summary(const std::string& path);

// output_dir/checkpoint-<step>.h5
std::string checkpoint_path(const std::string& output_dir, int64_t global_step);

// The step encoded in a checkpoint-<step>.h5 file name, or -1 when the name is not one.
int64_t checkpoint_step_from_name(const std::string& path);

// The newest COMPLETE checkpoint-<step>.h5 in dir by step number ("" if none); never a *.tmp.*
// file; skips (with a warning on stderr) files that fail to open as a checkpoint.
std::string find_latest_checkpoint(const std::string& output_dir);

// save_total_limit rotation: deletes the oldest checkpoint-*.h5 beyond `limit`, never the newest
// and never `keep` (the best checkpoint; "" for none; compared by file name). limit <= 0: no-op.
void rotate_checkpoints(const std::string& output_dir, int limit, const std::string& keep);

// Complete-or-absent files, shared by every writer in core/: write to temporary_path(path),
// then publish_file() fsyncs it, renames it over `path` and fsyncs the directory. On failure
// publish_file removes the temporary and throws std::runtime_error naming `path`.
std::string temporary_path(const std::string& path);  // <path>.tmp.<pid>
void publish_file(const std::string& temporary, const std::string& path);

}  // namespace llmqs::core
