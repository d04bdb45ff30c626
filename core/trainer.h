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
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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
class TensorBoardWriter;

// ---- device selection: the one place that maps `device` / `precision` to a Backend ----------
// Extend these when a backend is added; nothing else in the trainer knows device names.

// "auto" -> cuda when cuda_device_available(), else cpu with `note` (if not null) saying why;
// "cuda" without a usable GPU, or an unknown name, throws std::invalid_argument naming `device`.
std::string resolve_device(const std::string& device, std::string* note = nullptr);
// "auto" -> what the device computes best in (cpu: fp32; cuda: resolve_cuda_precision on the
// current GPU: bf16 on sm_80+, fp16 below); refuses (naming `precision`) what it cannot do.
std::string resolve_precision(const std::string& device, const std::string& precision);
// "device: cuda (NVIDIA H200, bf16)" / "device: cpu (fp32)" for the resolved pair.
std::string describe_device(const std::string& device, const std::string& precision);
// The communicator that reduces the chosen device's gradient buffers (MPI for cpu, NCCL for
// cuda, which also picks this rank's GPU, so it comes before the backend). MPI must be
// initialised (comm::MpiSession).
std::unique_ptr<comm::Communicator> make_communicator(const std::string& device);
// The batch shape a backend is sized for: max(per_device_train_batch_size,
// per_device_eval_batch_size) rows of max_length rounded up to 8, capped at
// max_position_embeddings (what data::BatchLoader and make_padded_batch can produce).
int backend_max_rows(const TrainConfig& config);
int backend_max_seq_len(const TrainConfig& config);
// cuda only: refuses (std::runtime_error with the estimate and what to change) when the
// backend's planned memory would not fit in the GPU's free memory; config.precision resolved.
void check_cuda_memory(const TrainConfig& config);
// Throws when a fresh run (resume_from_checkpoint none, no overwrite_output_dir) would write into an
// output_dir that already holds checkpoint-<step>.h5 files, saying how to resume or start anew.
void refuse_earlier_runs_checkpoints(const TrainConfig& config);
// A fresh replica of config.model (vocab_size already resolved) on config.device, sized by
// backend_max_rows / backend_max_seq_len. `comm` must come from make_communicator(config.device).
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

// ---- fp16 dynamic loss scaling ----------------------------------------------------------------

// torch.cuda.amp.GradScaler's rule: start at 65536; a step whose gradients overflow (non-finite
// norm after the all-reduce) is skipped and halves the scale; 2000 good steps in a row double it.
// Every rank sees the same all-reduced norm, so every replica takes the same decision.
class DynamicLossScaler {
 public:
  static constexpr float kInitialScale = 65536.0f;
  static constexpr int64_t kGrowthInterval = 2000;
  // So many overflows in a row (the scale fell by 2^30) mean the model itself is broken: stop.
  static constexpr int kMaxConsecutiveOverflows = 30;

  // `good_steps`: the growth count to continue from (a resumed run passes the checkpoint's, so
  // the scale doubles at the same step as in an uninterrupted run).
  explicit DynamicLossScaler(float scale = kInitialScale, int64_t good_steps = 0)
      : scale_(scale), good_steps_(good_steps) {}
  float scale() const { return scale_; }
  // After a step: false (skip it) when the gradients overflowed. Throws NumericalFault after
  // kMaxConsecutiveOverflows overflows in a row.
  bool update(bool gradients_finite, int64_t step);
  int64_t good_steps() const { return good_steps_; }

 private:
  float scale_;
  int64_t good_steps_;       // finite steps since the scale last changed (GradScaler's growth tracker)
  int consecutive_overflows_ = 0;
};

// A non-finite loss or gradient norm (or, in fp16, a loss scale that keeps collapsing). Every rank
// throws it at the same step (the values are all-reduced first), before the bad update and
// without writing a checkpoint, so the last checkpoint on disk is the last good state.
class NumericalFault : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A problem with output_dir or a file the run writes there (not writable, full, over the file
// size limit, a checkpoint name taken by something that is not a checkpoint), found by rank 0 and
// made known to every rank by one all-reduce: rank 0's what() is the message (naming the path and,
// for a failed save, the last complete checkpoint, which stays as it was); the other ranks' is
// empty. Every rank stops at the same point, so no abort is needed.
class OutputFault : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---- pre-emption: SIGTERM / SIGINT ---------------------------------------------------------------

// While Trainer::train() runs, the first SIGTERM or SIGINT only sets a flag: the ranks agree on
// it at the next step (one int64 in the all-reduce every step already does), finish the step in
// flight, rank 0 writes a checkpoint and train() returns with TrainSummary::stop_signal set.
// A second signal ends the process at once (the default action). Exit code: 128 + signal.
int pending_stop_signal();            // 0 when none arrived
void request_stop(int signal_number);  // what the handler does (tests, embedding programs)
void clear_stop_request();

// ---- a rank that dies or hangs -----------------------------------------------------------------

// One thread per rank that watches the collective the rank is blocked in: when it has not
// completed within timeout_s, the thread prints which collective, which step and (when the
// arrival check below found out) which rank never arrived, runs the abort hook (the NCCL
// communicator's ncclCommAbort belongs there) and ends the job, so it does not hang forever.
// A rank killed outright is usually noticed by mpirun first.
//
// Ending the job from the watchdog's own thread: MPI allows that thread to call MPI_Abort only
// when MPI runs at MPI_THREAD_MULTIPLE (comm::MpiSession asks for it; Open MPI 4 provides it).
// Otherwise (FUNNELED or less, or no MPI) the thread calls no MPI at all: it prints, runs the
// hook and _exit(1)s; mpirun then terminates the other ranks ("one or more processes exited
// with non-zero status"). abort_job on the thread that constructed the watchdog (the arrival
// check) always may call MPI_Abort.
class CollectiveWatchdog {
 public:
  // Construct on the thread that initialised MPI (it records the MPI thread level there).
  CollectiveWatchdog(double timeout_s, int rank);
  ~CollectiveWatchdog();
  CollectiveWatchdog(const CollectiveWatchdog&) = delete;
  CollectiveWatchdog& operator=(const CollectiveWatchdog&) = delete;

  void enter(const char* what, int64_t step);
  void leave();
  void set_abort_hook(std::function<void()> hook);
  // Called on timeout instead of MPI_Abort (tests): receives the message.
  void set_abort_for_test(std::function<void(const std::string&)> abort);
  // Times out now with this message (the arrival check names the lost rank through it).
  [[noreturn]] void abort_job(const std::string& message);

 private:
  void watch();
  const double timeout_s_;
  const int rank_;
  std::mutex mutex_;
  std::condition_variable changed_;
  bool stopping_ = false;
  bool inside_ = false;
  const char* what_ = "";
  int64_t step_ = 0;
  std::chrono::steady_clock::time_point since_;
  std::function<void()> abort_hook_;
  std::function<void(const std::string&)> abort_for_test_;
  bool mpi_active_ = false;            // initialised and not finalised, seen at construction
  bool mpi_thread_multiple_ = false;   // any thread may call MPI_Abort
  std::thread::id owner_thread_;       // the thread that constructed the watchdog
  std::thread thread_;
};

// At the start of every step and before its gradient all-reduce, each rank tells rank 0 it
// arrived (one int64, point to point over MPI); rank 0 waits at most timeout_s for all of them
// and, if some never come, aborts the job naming them. No-op for one rank or without MPI.
class ArrivalCheck {
 public:
  ArrivalCheck(int rank, int world_size, double timeout_s);
  ~ArrivalCheck();
  ArrivalCheck(const ArrivalCheck&) = delete;
  ArrivalCheck& operator=(const ArrivalCheck&) = delete;
  // `point`: 0 = the start of `step`, 1 = its gradient all-reduce (named in the message).
  void arrive(int64_t step, int point, CollectiveWatchdog& watchdog);

 private:
  const int rank_;
  const int world_;
  const double timeout_s_;
  bool enabled_ = false;
  int64_t sent_arrival_ = 0;  // 2 x step + point
  void* send_request_ = nullptr;  // MPI_Request, kept opaque so this header needs no mpi.h
};

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
  int stop_signal = 0;         // SIGTERM / SIGINT when a signal ended the run early, else 0
  std::string message;         // the closing line rank 0 printed
};

class Trainer {
 public:
  // Validates the configuration, checks output_dir (rank 0, check_output_dir: writable, room for
  // a checkpoint; before the datasets are read), reads the tokenizer and both datasets (refusing
  // labels beyond num_labels) and builds the backend; creates nothing on disk and calls no
  // collective, so a rank that fails here cannot leave the others waiting. `backend` may be given
  // (tests); otherwise make_backend picks it.
  Trainer(TrainConfig config, comm::Communicator& comm, std::unique_ptr<Backend> backend = nullptr);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Collective: rank 0's seeded initialisation, broadcast to every replica (train() calls it
  // when it has not run yet).
  void initialize_parameters();
  // Prepares output_dir (prepare_output_dir_for_steps), runs the loop to the last step,
  // evaluates, writes the final checkpoint. Throws OutputFault on every rank when output_dir
  // cannot take the run's files, NumericalFault on a non-finite loss or gradient.
  TrainSummary train();
  // Every rank evaluates its slice of validation_file; all ranks get the global metrics.
  EvalMetrics evaluate_validation();

  const TrainConfig& config() const { return config_; }
  const TrainerState& state() const { return state_; }
  Backend& backend() { return *backend_; }
  // Exists from construction; tests and the CUDA wiring (ncclCommAbort) set its hooks.
  CollectiveWatchdog& watchdog() { return *watchdog_; }
  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  int64_t steps_per_epoch() const { return steps_per_epoch_; }

 private:
  struct StepResult;
  StepResult train_step(StepBatches& batches);
  // Evaluates and logs; true when metric_for_best_model improved (a checkpoint of this step is due).
  bool run_evaluation(ProgressLog& log);
  // Collective: rank 0 writes, then every rank throws OutputFault if that failed.
  std::string save_checkpoint();
  // Collective: throws OutputFault on every rank when rank 0's `problem` is not empty.
  void agree_on_output(const std::string& problem, const char* what);
  void log_scalars(int64_t step, const std::vector<std::pair<std::string, float>>& scalars);
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
  std::string output_dir_note_;  // rank 0: output_dir's free space against a checkpoint's size
  bool parameters_initialized_ = false;
  bool has_final_eval_ = false;
  EvalMetrics last_eval_;
  bool fp16_loss_scaling_ = false;
  DynamicLossScaler scaler_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;  // rank 0, output_dir/runs
  std::string last_checkpoint_;                     // the newest checkpoint this rank knows of
  // Resuming on another number of ranks mid-epoch: this rank's share of the epoch's remaining
  // examples, used for the first (partial) epoch instead of the sampler's shard.
  bool reshard_pending_ = false;
  std::vector<int64_t> resharded_shard_;
  std::string resume_note_;
  std::unique_ptr<CollectiveWatchdog> watchdog_;
  std::unique_ptr<ArrivalCheck> arrivals_;
  int64_t last_saved_step_ = -1;
};

}  // namespace llmqs::core
