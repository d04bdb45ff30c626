// `llmqs-dist train`: synchronous data-parallel fine-tuning, one Backend replica per rank.
//
// Per optimizer step every rank runs gradient_accumulation_steps micro-batches of its own shard
// (ShardedSampler + BatchLoader), each forward_backward with
//   loss_weight = 1 / (rows of this step summed over micro-batches and ranks),
// so the all-reduced (summed) gradient is the mean over the global batch: N ranks x batch B
// gives the same step as 1 rank x batch N*B. Then: global norm, clip coefficient, the lr of the
// schedule, one AdamW update on every rank (identical inputs -> identical replicas).
//
// Rank 0 initialises the parameters (init_bert_parameters with the seed) and broadcasts them,
// logs (core/progress_log.h) and writes the final checkpoint output_dir/checkpoint-<step>.h5.
// The run position lives in TrainerState (core/trainer_state.h) so checkpoints and resume see
// all of it.
#pragma once
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "core/backend.h"
#include "core/evaluate.h"
#include "core/train_config.h"
#include "core/trainer_state.h"

namespace llmqs::data {
class TokenizedDataset;
class WordPieceTokenizer;
}  // namespace llmqs::data

namespace llmqs::core {

class ProgressLog;
class StepBatches;

// ---- device selection: the one place that maps `device` / `precision` to a Backend ----------
// Extend these when a backend is added; nothing else in the trainer knows device names.

// "auto" -> the best device built in and present ("cpu" until the CUDA backend exists);
// `note` (if not null) receives a line explaining an automatic choice. Throws
// std::invalid_argument naming `device` for an unknown or unavailable device.
std::string resolve_device(const std::string& device, std::string* note = nullptr);
// "auto" -> what the device computes best in; refuses (naming `precision`) what it cannot do.
std::string resolve_precision(const std::string& device, const std::string& precision);
// The communicator that reduces the chosen device's gradient buffers (MPI for cpu). MPI must be
// initialised (comm::MpiSession).
std::unique_ptr<comm::Communicator> make_communicator(const std::string& device);
// A fresh replica of config.model (vocab_size already resolved) on config.device, sized for
// the configured batch sizes and max_length. `comm` tells a GPU backend its local rank.
std::unique_ptr<Backend> make_backend(const TrainConfig& config, comm::Communicator& comm);

// ---- `eval`: a checkpoint on a dataset ------------------------------------------------------

// Which tokenizer settings of the eval config replace the ones stored in the checkpoint.
struct TokenizerOverrides {
  bool vocab = false;
  bool do_lower_case = false;
  bool max_length = false;
  bool label_offset = false;
};

// Collective. The checkpoint gives the model and (unless overridden) the tokenizer settings;
// `config` gives validation_file, per_device_eval_batch_size, device and precision.
EvalMetrics evaluate_checkpoint(const std::string& checkpoint, TrainConfig config, const TokenizerOverrides& overrides,
                                comm::Communicator& comm);

// ---- the trainer ---------------------------------------------------------------------------

struct TrainSummary {
  int64_t steps = 0;           // optimizer steps taken in this run
  double train_seconds = 0.0;  // the step loop, without start-up and evaluation
  double samples_per_s = 0.0;  // global training examples per second
  double tokens_per_s = 0.0;   // real tokens, all ranks
  double last_loss = 0.0;      // the last logged training loss
  bool has_eval = false;
  EvalMetrics final_eval;
  std::string checkpoint;      // the final checkpoint's path ("" on ranks other than 0)
};

class Trainer {
 public:
  // Validates the configuration, reads the tokenizer and both datasets (refusing labels beyond
  // num_labels) and builds the backend; creates nothing on disk and calls no collective, so a
  // rank that fails here cannot leave the others waiting. `backend` may be given (tests);
  // otherwise make_backend picks it.
  Trainer(TrainConfig config, comm::Communicator& comm, std::unique_ptr<Backend> backend = nullptr);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Collective: rank 0's seeded initialisation, broadcast to every replica (train() calls it
  // when it has not run yet).
  void initialize_parameters();
  // Creates output_dir, runs the loop to the last step, evaluates, writes the final checkpoint.
  TrainSummary train();
  // Every rank evaluates its slice of validation_file; all ranks get the global metrics.
  EvalMetrics evaluate_validation();

  const TrainConfig& config() const { return config_; }
  const TrainerState& state() const { return state_; }
  Backend& backend() { return *backend_; }
  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }

 private:
  struct StepResult;
  StepResult train_step(StepBatches& batches);
  void run_evaluation(ProgressLog& log);
  std::string save_checkpoint();
  // resume_from_checkpoint resolved: "" for a fresh start.
  std::string resume_checkpoint_path() const;
  // Parameters, AdamW moments and TrainerState from a checkpoint of this same run setup.
  void restore(const std::string& path);

  TrainConfig config_;
  comm::Communicator& comm_;
  std::unique_ptr<data::WordPieceTokenizer> tokenizer_;
  std::unique_ptr<data::TokenizedDataset> train_data_;
  std::unique_ptr<data::TokenizedDataset> validation_data_;
  std::unique_ptr<Backend> backend_;
  TrainerState state_;
  int64_t batches_per_epoch_ = 0;  // per rank
  int64_t steps_per_epoch_ = 0;
  int64_t warmup_steps_ = 0;
  std::string device_note_;  // why `auto` chose the device, shown once by rank 0
  bool parameters_initialized_ = false;
  bool has_final_eval_ = false;
  EvalMetrics last_eval_;
};

}  // namespace llmqs::core
