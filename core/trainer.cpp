// The data-parallel training loop (see trainer.h for the scheme and its invariants).
#include "core/trainer.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <cuda_runtime.h>
#include <mpi.h>

#include "comm/nccl_communicator.h"
#include "core/checkpoint.h"
#include "core/cpu_backend.h"
#include "core/cuda_backend.h"
#include "core/device_memory.h"
#include "core/gradient_reduction.h"
#include "core/optimizer.h"
#include "core/output_dir.h"
#include "core/parameters.h"
#include "core/progress_log.h"
#include "core/tensorboard_writer.h"
#include "data/batch_loader.h"
#include "data/dataset_reader.h"
#include "data/sharded_sampler.h"
#include "data/tokenized_dataset.h"
#include "data/wordpiece_tokenizer.h"

namespace llmqs::core {

namespace fs = std::filesystem;

// ---- device selection ----------------------------------------------------------------------

std::string resolve_device(const std::string& device, std::string* note) {
  if (device == "cpu") return "cpu";
  if (device != "auto" && device != "cuda")
    throw std::invalid_argument("device: unknown value '" + device + "' (expected one of: auto, cpu, cuda)");
  std::string why;
  if (cuda_device_available(&why)) return "cuda";
  if (device == "cuda")
    throw std::invalid_argument("device: cuda was asked for, but no GPU is usable (" + why +
                                "); use --device cpu, or auto to fall back to the CPU");
  if (note) *note = "device auto: no usable GPU (" + why + "), falling back to cpu (the fp32 reference; slow for real models)";
  return "cpu";
}

std::string resolve_precision(const std::string& device, const std::string& precision) {
  if (precision != "auto" && precision != "fp32" && precision != "tf32" && precision != "bf16" && precision != "fp16")
    throw std::invalid_argument("precision: unknown value '" + precision +
                                "' (expected one of: auto, bf16, fp16, fp32, tf32)");
  if (device == "cpu") {
    if (precision == "auto" || precision == "fp32") return "fp32";
    throw std::invalid_argument("precision: " + precision + " is not available on device cpu (the fp32 reference); use auto or fp32");
  }
  if (device == "cuda") {
    int gpu = 0;
    if (cudaGetDevice(&gpu) != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error("device: cuda: cudaGetDevice failed");
    }
    return resolve_cuda_precision(precision, gpu);
  }
  throw std::invalid_argument("device: no backend for '" + device + "'");
}

std::string describe_device(const std::string& device, const std::string& precision) {
  if (device != "cuda") return "device: " + device + " (" + precision + ")";
  int gpu = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&gpu) != cudaSuccess || cudaGetDeviceProperties(&prop, gpu) != cudaSuccess) {
    cudaGetLastError();
    return "device: cuda (" + precision + ")";
  }
  return "device: cuda (" + std::string(prop.name) + ", " + precision + ")";
}

std::unique_ptr<comm::Communicator> make_communicator(const std::string& device) {
  const std::string resolved = resolve_device(device);
  if (resolved == "cpu") return comm::make_mpi_communicator();
  if (resolved == "cuda") return comm::make_nccl_communicator();
  throw std::invalid_argument("device: no communicator for '" + resolved + "'");
}

int backend_max_rows(const TrainConfig& config) {
  return std::max(config.per_device_train_batch_size, config.per_device_eval_batch_size);
}

int backend_max_seq_len(const TrainConfig& config) {
  // Batches pad to a multiple of 8 (data::BatchLoader, make_padded_batch), never past the positions.
  return std::min((config.max_length + 7) / 8 * 8, config.model.max_position_embeddings);
}

// ZeRO-1's shard of this rank (TrainConfig::zero_stage 1), else every parameter.
OptimizerShard optimizer_shard_for(const TrainConfig& config, const comm::Communicator& comm) {
  const size_t numel = ParameterLayout::for_bert(config.model).total_numel();
  return config.zero_stage == 1 ? OptimizerShard::of_rank(numel, comm.rank(), comm.world_size())
                                : OptimizerShard::whole(numel);
}

void check_cuda_memory(const TrainConfig& config, const comm::Communicator& comm) {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error("device: cuda: cudaMemGetInfo failed; is the GPU in use by another job?");
  }
  check_device_memory_fits(config.model, backend_max_rows(config), backend_max_seq_len(config), config.precision,
                           free_bytes, /*fused_kernels_available=*/true, optimizer_shard_for(config, comm));
}

std::unique_ptr<Backend> make_backend(const TrainConfig& config, comm::Communicator& comm) {
  const std::string device = resolve_device(config.device);
  const std::string precision = resolve_precision(device, config.precision);
  if (device == "cpu") return make_cpu_backend(config.model, optimizer_shard_for(config, comm));
  if (device == "cuda") {
    // The NCCL communicator chose this rank's GPU; an MPI one would leave every rank on GPU 0 and
    // be handed device pointers to reduce.
    if (std::string(comm.name()) != "nccl")
      throw std::logic_error("make_backend: device cuda needs the communicator of make_communicator(\"cuda\"), got " +
                             std::string(comm.name()));
    return make_cuda_backend(config.model, precision, backend_max_rows(config), backend_max_seq_len(config),
                             optimizer_shard_for(config, comm));
  }
  throw std::invalid_argument("device: no backend for '" + device + "'");
}

// ---- helpers ---------------------------------------------------------------------------------

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Largest 0-based label + 1 (0 for an empty dataset).
int labels_in(const data::TokenizedDataset& dataset) {
  int32_t largest = -1;
  for (int32_t label : dataset.labels()) largest = std::max(largest, label);
  return largest + 1;
}

std::unique_ptr<data::TokenizedDataset> load_checked(const TrainConfig& config, const std::string& path,
                                                     const data::WordPieceTokenizer& tokenizer) {
  data::ReadOptions options;
  options.label_offset = config.label_offset;
  options.num_labels = config.model.num_labels;
  auto dataset = data::load_tokenized(path, options, tokenizer, config.max_length);
  if (dataset->size() == 0) throw std::runtime_error(path + ": no examples");
  config.validate_labels(labels_in(*dataset), path);
  return dataset;
}

}  // namespace

// The micro-batches of one optimizer step (gradient_accumulation_steps of them, fewer at the
// end of an epoch), fetched before any backward so the loss weight can use their row count.
class StepBatches {
 public:
  std::vector<data::Batch> micro;
  int64_t rows() const {
    int64_t n = 0;
    for (const auto& b : micro) n += b.rows;
    return n;
  }
};

struct Trainer::StepResult {
  bool stopped = false;    // a rank got SIGTERM / SIGINT: nothing was computed, the run ends
  int stop_signal = 0;     // which (agreed on by every rank)
  bool skipped = false;    // fp16 overflow: no AdamW update, the scale was halved
  double loss = 0.0;       // mean cross-entropy over the global batch
  double grad_norm = 0.0;  // before clipping, unscaled
  double learning_rate = 0.0;
  int64_t rows = 0;        // global
  double tokens = 0.0;     // real tokens, global
};

// ---- fp16 loss scaling and stop signals ---------------------------------------------------------

bool DynamicLossScaler::update(bool gradients_finite, int64_t step) {
  if (gradients_finite) {
    consecutive_overflows_ = 0;
    if (++good_steps_ >= kGrowthInterval) {
      scale_ *= 2.0f;
      good_steps_ = 0;
    }
    return true;
  }
  good_steps_ = 0;
  scale_ *= 0.5f;
  if (++consecutive_overflows_ >= kMaxConsecutiveOverflows)
    throw NumericalFault("step " + std::to_string(step) + ": fp16 gradients overflowed " +
                         std::to_string(consecutive_overflows_) +
                         " steps in a row (loss scale now " + std::to_string(scale_) +
                         "): the model diverged; lower learning_rate or use bf16 / fp32");
  return false;
}

namespace {

volatile std::sig_atomic_t g_stop_signal = 0;

extern "C" void on_stop_signal(int signal_number) {
  if (g_stop_signal != 0) {  // the second one: stop now
    std::signal(signal_number, SIG_DFL);
    std::raise(signal_number);
    return;
  }
  g_stop_signal = signal_number;
}

// Installs the handlers for the duration of train() and puts the previous ones back.
class StopSignalHandlers {
 public:
  StopSignalHandlers() {
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;  // MPI and file calls carry on; the loop polls the flag
    sigaction(SIGTERM, &action, &previous_term_);
    sigaction(SIGINT, &action, &previous_int_);
  }
  ~StopSignalHandlers() {
    sigaction(SIGTERM, &previous_term_, nullptr);
    sigaction(SIGINT, &previous_int_, nullptr);
  }
  StopSignalHandlers(const StopSignalHandlers&) = delete;
  StopSignalHandlers& operator=(const StopSignalHandlers&) = delete;

 private:
  struct sigaction previous_term_ {};
  struct sigaction previous_int_ {};
};

// A file size limit (ulimit -f, RLIMIT_FSIZE) would otherwise kill the process with SIGXFSZ
// and a core dump in the middle of a checkpoint write; ignored, the write fails with EFBIG and
// the run stops with a message, like on a full disk.
class FileSizeSignalIgnored {
 public:
  FileSizeSignalIgnored() {
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGXFSZ, &ignore, &previous_);
  }
  ~FileSizeSignalIgnored() { sigaction(SIGXFSZ, &previous_, nullptr); }
  FileSizeSignalIgnored(const FileSizeSignalIgnored&) = delete;
  FileSizeSignalIgnored& operator=(const FileSizeSignalIgnored&) = delete;

 private:
  struct sigaction previous_ {};
};

const char* signal_name(int signal_number) {
  switch (signal_number) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    default: return "a signal";
  }
}

}  // namespace

// ---- watchdog and arrival check ----------------------------------------------------------------

CollectiveWatchdog::CollectiveWatchdog(double timeout_s, int rank) : timeout_s_(timeout_s), rank_(rank) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  mpi_active_ = initialized && !finalized;
  if (mpi_active_) {
    int provided = MPI_THREAD_SINGLE;
    MPI_Query_thread(&provided);
    mpi_thread_multiple_ = provided == MPI_THREAD_MULTIPLE;
  }
  owner_thread_ = std::this_thread::get_id();
  thread_ = std::thread(&CollectiveWatchdog::watch, this);
}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void CollectiveWatchdog::enter(const char* what, int64_t step) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    inside_ = true;
    what_ = what;
    step_ = step;
    since_ = std::chrono::steady_clock::now();
  }
  changed_.notify_all();
}

void CollectiveWatchdog::leave() {
  std::lock_guard<std::mutex> lock(mutex_);
  inside_ = false;
}

namespace {

// Test hook, off unless the environment sets LLMQS_TEST_HOOK_STALL_RANK_AT_STEP=R:S: rank R stops
// for good after it reported its arrival at step S's gradient all-reduce and before it calls it,
// so its peers block inside the all-reduce (NCCL: a kernel waiting on the GPU) and the collective
// watchdog has to end the job (tests/faults/lost_rank_multi_gpu.py). Read once per process.
void stall_for_test_if_asked(int rank, int64_t step) {
  static const std::pair<int, int64_t> target = [] {
    const char* value = std::getenv("LLMQS_TEST_HOOK_STALL_RANK_AT_STEP");
    int r = -1;
    long long s = -1;
    if (value && std::sscanf(value, "%d:%lld", &r, &s) != 2) r = -1;
    return std::make_pair(r, static_cast<int64_t>(s));
  }();
  if (rank != target.first || step != target.second) return;
  std::fprintf(stderr, "llmqs-dist: test hook: rank %d stalls before the gradient all-reduce of step %lld\n", rank,
               static_cast<long long>(step));
  std::fflush(stderr);
  for (;;) ::pause();
}

}  // namespace

void CollectiveWatchdog::set_abort_hook(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(mutex_);
  abort_hook_ = std::move(hook);
}

void CollectiveWatchdog::set_abort_for_test(std::function<void(const std::string&)> abort) {
  std::lock_guard<std::mutex> lock(mutex_);
  abort_for_test_ = std::move(abort);
}

void CollectiveWatchdog::abort_job(const std::string& message) {
  std::function<void()> hook;
  std::function<void(const std::string&)> for_test;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    hook = abort_hook_;
    for_test = abort_for_test_;
  }
  if (for_test) {
    if (hook) hook();
    for_test(message);
    throw std::runtime_error(message);  // the test's hook returned: unwind instead of aborting
  }
  std::fprintf(stderr, "llmqs-dist: error on rank %d: %s\n", rank_, message.c_str());
  std::fflush(stderr);
  if (hook) hook();
  // See the class comment: MPI_Abort only where MPI allows this thread to call it.
  const bool may_call_mpi = mpi_active_ && (mpi_thread_multiple_ || std::this_thread::get_id() == owner_thread_);
  if (may_call_mpi) MPI_Abort(MPI_COMM_WORLD, 1);
  // No exit handlers and no destructors: the other threads are still inside MPI or the backend.
  ::_exit(1);
}

void CollectiveWatchdog::watch() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    if (!inside_) {
      changed_.wait(lock);
      continue;
    }
    const auto deadline = since_ + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                       std::chrono::duration<double>(timeout_s_));
    const auto entered = since_;
    if (changed_.wait_until(lock, deadline) == std::cv_status::timeout && inside_ && since_ == entered &&
        !stopping_) {
      char message[256];
      std::snprintf(message, sizeof(message),
                    "%s of step %lld has not completed after %g s (collective_timeout_s): another rank died or "
                    "hangs; aborting the job",
                    what_, static_cast<long long>(step_), timeout_s_);
      inside_ = false;
      lock.unlock();
      try {
        abort_job(message);
      } catch (...) {
        // only with a test hook: the watched thread carries on
      }
      lock.lock();
    }
  }
}

namespace {
constexpr int kArrivalTag = 0x11d5;
}

ArrivalCheck::ArrivalCheck(int rank, int world_size, double timeout_s)
    : rank_(rank), world_(world_size), timeout_s_(timeout_s) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  enabled_ = initialized && world_ > 1;
  if (enabled_) send_request_ = new MPI_Request(MPI_REQUEST_NULL);
}

ArrivalCheck::~ArrivalCheck() {
  if (!send_request_) return;
  auto* request = static_cast<MPI_Request*>(send_request_);
  // Rank 0 received every arrival it waited for; one that it will never wait for is cancelled.
  if (*request != MPI_REQUEST_NULL) {
    int done = 0;
    MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (!done) {
      MPI_Cancel(request);
      MPI_Request_free(request);
    }
  }
  delete request;
}

void ArrivalCheck::arrive(int64_t step, int point, CollectiveWatchdog& watchdog) {
  if (!enabled_) return;
  const int64_t arrival = 2 * step + point;
  const char* where = point == 0 ? "the start" : "the gradient all-reduce";
  if (rank_ != 0) {
    auto* request = static_cast<MPI_Request*>(send_request_);
    // The previous arrival was received long ago (rank 0 waits for each one); the watchdog
    // covers a rank 0 that is gone.
    watchdog.enter("sending the arrival to rank 0", step);
    MPI_Wait(request, MPI_STATUS_IGNORE);
    watchdog.leave();
    sent_arrival_ = arrival;
    MPI_Isend(&sent_arrival_, 1, MPI_INT64_T, 0, kArrivalTag, MPI_COMM_WORLD, request);
    return;
  }
  std::vector<int64_t> arrivals(static_cast<size_t>(world_), -1);
  std::vector<MPI_Request> requests(static_cast<size_t>(world_ - 1));
  for (int r = 1; r < world_; ++r)
    MPI_Irecv(&arrivals[static_cast<size_t>(r)], 1, MPI_INT64_T, r, kArrivalTag, MPI_COMM_WORLD, &requests[r - 1]);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                               std::chrono::duration<double>(timeout_s_));
  int spins = 0;
  for (;;) {
    // One request at a time: MPI_Test sets a completed one to MPI_REQUEST_NULL (MPI_Testall
    // leaves them all untouched until every one is done), so the stragglers are known.
    bool all = true;
    for (MPI_Request& request : requests) {
      if (request == MPI_REQUEST_NULL) continue;
      int done = 0;
      MPI_Test(&request, &done, MPI_STATUS_IGNORE);
      all = all && done;
    }
    if (all) break;
    if (std::chrono::steady_clock::now() > deadline) {
      std::string lost;
      for (int r = 1; r < world_; ++r)
        if (requests[r - 1] != MPI_REQUEST_NULL) lost += (lost.empty() ? "" : ", ") + std::to_string(r);
      char timeout[32];
      std::snprintf(timeout, sizeof(timeout), "%g", timeout_s_);
      watchdog.abort_job("rank(s) " + lost + " did not reach " + where + " of step " + std::to_string(step) +
                         " within " + timeout + " s (collective_timeout_s): lost (crashed or hung); aborting the job");
    }
    // Spin briefly (steps are milliseconds apart on a GPU), then yield the core.
    if (++spins > 1000) std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (int r = 1; r < world_; ++r)
    if (arrivals[static_cast<size_t>(r)] != arrival)
      watchdog.abort_job("rank " + std::to_string(r) + " is at step " + std::to_string(arrivals[static_cast<size_t>(r)] / 2) +
                         " while rank 0 is at " + where + " of step " + std::to_string(step) + ": the ranks are out of step");
}

int pending_stop_signal() { return static_cast<int>(g_stop_signal); }
void request_stop(int signal_number) { on_stop_signal(signal_number); }
void clear_stop_request() { g_stop_signal = 0; }

// ---- `eval` ---------------------------------------------------------------------------------------

namespace {

// The vocabulary a checkpoint carries, as a tokenizer.
data::WordPieceTokenizer tokenizer_from_vocabulary(const std::vector<std::string>& vocab, bool do_lower_case,
                                                   const std::string& checkpoint) {
  if (vocab.empty())
    throw std::runtime_error(checkpoint + ": carries no vocabulary; pass --vocab");
  return data::WordPieceTokenizer::from_tokens(vocab, do_lower_case, checkpoint + " (/tokenizer/vocab)");
}

// A --vocab given next to a checkpoint must be the vocabulary the checkpoint was trained with
// (when it stores one): with any other, token ids index embedding rows that learned other words.
void check_same_vocabulary(const std::string& option, const std::string& checkpoint,
                           const std::vector<std::string>& stored, const data::WordPieceTokenizer& tokenizer) {
  const std::vector<std::string>& given = tokenizer.tokens();
  if (stored.empty() || stored == given) return;
  size_t id = 0;
  while (id < stored.size() && id < given.size() && stored[id] == given[id]) ++id;
  std::string first_difference;
  if (id < stored.size() && id < given.size())
    first_difference = "; id " + std::to_string(id) + " is '" + stored[id] + "' there and '" + given[id] + "' here";
  throw std::invalid_argument(option + ": " + checkpoint + " was trained with another vocabulary than --vocab " +
                              tokenizer.source_path() + " (" + std::to_string(stored.size()) + " vs " +
                              std::to_string(given.size()) + " tokens" + first_difference +
                              "): the token ids would mean other words; leave out --vocab to use the checkpoint's");
}

}  // namespace

EvalMetrics evaluate_checkpoint(const std::string& checkpoint_file, TrainConfig config, const TokenizerOverrides& overrides,
                                comm::Communicator& comm) {
  if (checkpoint_file.empty()) throw std::invalid_argument("checkpoint: is required");
  if (config.validation_file.empty()) throw std::invalid_argument("validation_file: is required");
  Checkpoint checkpoint = read_checkpoint(checkpoint_file);
  config.model = checkpoint.model;
  if (!overrides.do_lower_case) config.do_lower_case = checkpoint.tokenizer.do_lower_case;
  if (!overrides.max_length) config.max_length = checkpoint.tokenizer.max_length;
  if (!overrides.label_offset) config.label_offset = checkpoint.tokenizer.label_offset;
  config.validate(/*for_training=*/false);
  config.device = resolve_device(config.device);
  config.precision = resolve_precision(config.device, config.precision);

  const data::WordPieceTokenizer tokenizer =
      overrides.vocab ? data::WordPieceTokenizer::from_file(config.vocab, config.do_lower_case)
                      : tokenizer_from_vocabulary(checkpoint.tokenizer.vocab, config.do_lower_case, checkpoint_file);
  if (overrides.vocab) check_same_vocabulary("checkpoint", checkpoint_file, checkpoint.tokenizer.vocab, tokenizer);
  if (tokenizer.vocab_size() > config.model.vocab_size)
    throw std::invalid_argument("vocab: " + std::to_string(tokenizer.vocab_size()) + " tokens, more than the model's vocab_size " +
                                std::to_string(config.model.vocab_size));
  auto dataset = load_checked(config, config.validation_file, tokenizer);
  auto backend = make_backend(config, comm);
  backend->set_parameters(checkpoint.parameters.data());
  return evaluate(*backend, comm, *dataset, config.per_device_eval_batch_size, tokenizer.pad_id());
}

// ---- construction ----------------------------------------------------------------------------

Trainer::Trainer(TrainConfig config, comm::Communicator& comm, std::unique_ptr<Backend> backend)
    : config_(std::move(config)), comm_(comm) {
  config_.validate(/*for_training=*/true);
  refuse_earlier_runs_checkpoints(config_);
  config_.device = resolve_device(config_.device, &device_note_);
  // A backend handed in by a test brings its own arithmetic: its precision is taken as given
  // (an fp32 CPU backend run with precision fp16 exercises the loss scaling exactly).
  if (!backend || config_.precision == "auto") config_.precision = resolve_precision(config_.device, config_.precision);

  // init_from (e.g. an import-hf checkpoint): its shape must be the configured one, and its
  // vocabulary is used unless --vocab names another.
  std::vector<std::string> init_from_vocab;
  if (!config_.init_from.empty()) {
    CheckpointSummary start = read_checkpoint_summary(config_.init_from);
    const BertConfig& have = start.model;
    BertConfig& want = config_.model;
    auto same = [&](const char* key, int from_checkpoint, int& configured, bool zero_means_take) {
      if (zero_means_take && configured == 0) configured = from_checkpoint;
      if (configured != from_checkpoint)
        throw std::invalid_argument("init_from: " + config_.init_from + " has " + key + " " +
                                    std::to_string(from_checkpoint) + ", the configuration says " +
                                    std::to_string(configured));
    };
    same("vocab_size", have.vocab_size, want.vocab_size, true);
    same("hidden_size", have.hidden_size, want.hidden_size, false);
    same("num_hidden_layers", have.num_hidden_layers, want.num_hidden_layers, false);
    same("num_attention_heads", have.num_attention_heads, want.num_attention_heads, false);
    same("intermediate_size", have.intermediate_size, want.intermediate_size, false);
    same("max_position_embeddings", have.max_position_embeddings, want.max_position_embeddings, false);
    same("num_labels", have.num_labels, want.num_labels, false);
    want.type_vocab_size = have.type_vocab_size;
    want.layer_norm_eps = have.layer_norm_eps;
    if (config_.vocab.empty())
      tokenizer_ = std::make_unique<data::WordPieceTokenizer>(
          tokenizer_from_vocabulary(start.tokenizer.vocab, config_.do_lower_case, config_.init_from));
    init_from_vocab = std::move(start.tokenizer.vocab);
  }
  if (!tokenizer_) {
    tokenizer_ = std::make_unique<data::WordPieceTokenizer>(
        data::WordPieceTokenizer::from_file(config_.vocab, config_.do_lower_case));
    if (!config_.init_from.empty()) check_same_vocabulary("init_from", config_.init_from, init_from_vocab, *tokenizer_);
  }
  config_.resolve_vocab_size(tokenizer_->vocab_size());
  config_.model.pad_token_id = tokenizer_->pad_id();
  config_.model.validate();
  // Before reading the data (minutes for the full Yelp set): an output_dir that cannot take a
  // checkpoint and a batch that cannot fit are refused now.
  if (comm_.rank() == 0) {
    const ParameterLayout layout = ParameterLayout::for_bert(config_.model);
    output_dir_note_ = check_output_dir(
        config_.output_dir, estimated_checkpoint_bytes(layout.total_numel(), layout.parameters().size(),
                                                       /*with_optimizer=*/true, tokenizer_->tokens(), 0));
  }
  if (!backend && config_.device == "cuda") check_cuda_memory(config_, comm_);

  train_data_ = load_checked(config_, config_.train_file, *tokenizer_);
  if (!config_.validation_file.empty()) validation_data_ = load_checked(config_, config_.validation_file, *tokenizer_);

  backend_ = backend ? std::move(backend) : make_backend(config_, comm_);
  watchdog_ = std::make_unique<CollectiveWatchdog>(config_.collective_timeout_s, comm_.rank());
  // A hung collective: unblock this rank's own collectives in flight (ncclCommAbort) before the
  // job ends, so the GPU work queued behind them does not keep the process alive.
  watchdog_->set_abort_hook([this] { comm_.abort(); });
  arrivals_ = std::make_unique<ArrivalCheck>(comm_.rank(), comm_.world_size(), config_.collective_timeout_s);

  const int world = comm_.world_size();
  const int64_t per_rank = data::ShardedSampler(train_data_->size(), world, comm_.rank(), config_.seed, true, false)
                               .num_samples();
  const int64_t batch = config_.per_device_train_batch_size;
  batches_per_epoch_ = data::count_batches(per_rank, config_.per_device_train_batch_size, config_.dataloader_drop_last);
  if (batches_per_epoch_ == 0)
    throw std::invalid_argument("per_device_train_batch_size: " + std::to_string(batch) + " x " + std::to_string(world) +
                                " ranks is more than the " + std::to_string(train_data_->size()) + " examples of " +
                                config_.train_file + " with dataloader_drop_last");
  const int64_t accumulation = config_.gradient_accumulation_steps;
  steps_per_epoch_ = (batches_per_epoch_ + accumulation - 1) / accumulation;

  state_ = TrainerState{};
  state_.seed = config_.seed;
  state_.world_size = world;
  state_.global_batch_size = batch * accumulation * world;
  state_.precision = config_.precision;
  state_.max_steps = config_.max_steps > 0
                         ? config_.max_steps
                         : std::max<int64_t>(1, static_cast<int64_t>(std::ceil(config_.num_train_epochs *
                                                                              static_cast<double>(steps_per_epoch_) -
                                                                          1e-9)));
  warmup_steps_ = resolve_warmup_steps(state_.max_steps, config_.warmup_steps, config_.warmup_ratio);
}

Trainer::~Trainer() = default;

void Trainer::initialize_parameters() {
  // One initialisation, broadcast: every replica starts bit-identical whatever the platform.
  const ParameterLayout& layout = backend_->layout();
  std::vector<float> parameters(layout.total_numel());
  if (comm_.rank() == 0) {
    if (config_.init_from.empty()) {
      init_bert_parameters(config_.model, layout, config_.seed, parameters.data());
    } else {
      Checkpoint start = read_checkpoint(config_.init_from);
      if (start.parameters.size() != parameters.size())
        throw std::runtime_error("init_from: " + config_.init_from + " holds " + std::to_string(start.parameters.size()) +
                                 " parameters, the model needs " + std::to_string(parameters.size()));
      parameters = std::move(start.parameters);
    }
  }
  comm_.broadcast_host(parameters.data(), parameters.size() * sizeof(float), 0);
  backend_->set_parameters(parameters.data());
  parameters_initialized_ = true;
}

std::string Trainer::resume_checkpoint_path() const {
  const std::string& resume = config_.resume_from_checkpoint;
  if (resume == "none") return "";
  if (resume == "auto") return find_latest_checkpoint(config_.output_dir);  // "" = nothing to resume
  return resume;
}

namespace {

// The value of `key` in INI text as effective_config_ini writes it ("key = value"); "" if absent.
std::string ini_value(const std::string& ini, const std::string& key) {
  std::istringstream in(ini);
  std::string line;
  while (std::getline(in, line)) {
    const size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    auto trim = [](std::string text) {
      const size_t first = text.find_first_not_of(" \t\r");
      const size_t last = text.find_last_not_of(" \t\r");
      return first == std::string::npos ? std::string() : text.substr(first, last - first + 1);
    };
    if (trim(line.substr(0, eq)) == key) return trim(line.substr(eq + 1));
  }
  return "";
}

}  // namespace

void Trainer::restore(const std::string& path) {
  Checkpoint checkpoint = read_checkpoint(path);
  const std::string refused = "resume_from_checkpoint: " + path + " ";
  // The model shape, one key at a time, so the message says which one differs.
  const BertConfig& have = checkpoint.model;
  const BertConfig& want = config_.model;
  for (const auto& [key, saved, configured] :
       {std::tuple<const char*, int, int>{"vocab_size", have.vocab_size, want.vocab_size},
        {"hidden_size", have.hidden_size, want.hidden_size},
        {"num_hidden_layers", have.num_hidden_layers, want.num_hidden_layers},
        {"num_attention_heads", have.num_attention_heads, want.num_attention_heads},
        {"intermediate_size", have.intermediate_size, want.intermediate_size},
        {"max_position_embeddings", have.max_position_embeddings, want.max_position_embeddings},
        {"num_labels", have.num_labels, want.num_labels}})
    if (saved != configured)
      throw std::invalid_argument(refused + "has " + key + " " + std::to_string(saved) + ", this run " +
                                  std::to_string(configured) + ": a checkpoint resumes only the same model shape");
  const size_t numel = backend_->layout().total_numel();
  if (checkpoint.parameters.size() != numel)
    throw std::runtime_error(refused + "holds another model shape (" + std::to_string(checkpoint.parameters.size()) +
                             " parameters, this run " + std::to_string(numel) + ")");
  if (!checkpoint.has_optimizer_state())
    throw std::runtime_error(refused + "has no optimizer state (an imported model?); use --init_from to start from it");
  if (!checkpoint.tokenizer.vocab.empty() && checkpoint.tokenizer.vocab != tokenizer_->tokens())
    throw std::invalid_argument(refused + "was trained with another vocabulary (" +
                                std::to_string(checkpoint.tokenizer.vocab.size()) + " tokens; " + config_.vocab + ": " +
                                std::to_string(tokenizer_->vocab_size()) +
                                "): the token ids would mean other words; use the checkpoint's vocabulary");
  // The position is counted in global batches (optimizer steps) of the epoch, so it means the
  // same examples on any number of ranks as long as the global batch and the seed are the same.
  const TrainerState& saved = checkpoint.trainer;
  if (saved.global_batch_size != state_.global_batch_size || saved.seed != state_.seed)
    throw std::invalid_argument(refused + "was written with global batch " + std::to_string(saved.global_batch_size) +
                                " and seed " + std::to_string(saved.seed) + "; this run has " +
                                std::to_string(state_.global_batch_size) + " and " + std::to_string(state_.seed) +
                                " (per_device_train_batch_size x gradient_accumulation_steps x ranks): keep both to "
                                "resume, or start a new run with --init_from");
  backend_->set_parameters(checkpoint.parameters.data());
  backend_->set_optimizer_state(checkpoint.adam_m.data(), checkpoint.adam_v.data());
  const int64_t max_steps = state_.max_steps;
  const int world = state_.world_size;
  state_ = saved;
  state_.max_steps = max_steps;
  state_.world_size = world;
  parameters_initialized_ = true;
  if (saved.world_size == world) {
    // The same global batch over the same data gives the same steps per epoch; a position past
    // them means another train_file (and would index batches that do not exist).
    if (saved.sampler_position > steps_per_epoch_)
      throw std::invalid_argument(refused + "stopped after step " + std::to_string(saved.sampler_position) +
                                  " of epoch " + std::to_string(saved.sampler_epoch + 1) + ", but " + config_.train_file +
                                  " gives " + std::to_string(steps_per_epoch_) +
                                  " steps per epoch: resume with the training data it was written with");
    return;
  }

  // Another number of ranks: the rest of the interrupted epoch is what none of the old ranks
  // consumed, dealt out again DistributedSampler-style over the new ranks.
  std::string note = "resuming a " + std::to_string(saved.world_size) + "-rank run on " + std::to_string(world) +
                     " rank(s): same global batch " + std::to_string(saved.global_batch_size);
  if (saved.sampler_position == 0) {
    resume_note_ = note + ", at the start of epoch " + std::to_string(saved.sampler_epoch + 1) +
                   " (sharded over the new ranks)";
    return;
  }
  const int64_t n = train_data_->size();
  const int old_world = saved.world_size;
  // How the old run cut its global batch: its own settings (stored INI), or, without them (a
  // checkpoint written by a program, not the CLI), one micro-batch per step, which selects the
  // same examples whenever batches are plain slices of the shard (no group_by_length).
  int64_t old_batch = saved.global_batch_size / old_world, old_accumulation = 1;
  bool old_grouped = false, old_drop_last = false;
  const std::string ini_batch = ini_value(checkpoint.config_ini, "per_device_train_batch_size");
  const std::string ini_accumulation = ini_value(checkpoint.config_ini, "gradient_accumulation_steps");
  if (!ini_batch.empty() && !ini_accumulation.empty()) {
    // Text from the file: a positive count, or the checkpoint is refused.
    auto count_of = [&](const std::string& key, const std::string& text) {
      int64_t value = 0;
      const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
      if (error != std::errc() || end != text.data() + text.size() || value < 1 || value > (int64_t{1} << 30))
        throw std::runtime_error(refused + "/trainer/config_ini: " + key + " '" + text + "' is not a positive count");
      return value;
    };
    old_batch = count_of("per_device_train_batch_size", ini_batch);
    old_accumulation = count_of("gradient_accumulation_steps", ini_accumulation);
    old_grouped = ini_value(checkpoint.config_ini, "group_by_length") == "true";
    old_drop_last = ini_value(checkpoint.config_ini, "dataloader_drop_last") == "true";
  } else if (config_.group_by_length) {
    throw std::invalid_argument(refused + "stopped mid-epoch on " + std::to_string(old_world) +
                                " ranks with group_by_length and stores no configuration to replay its batches: "
                                "resume it on " + std::to_string(old_world) + " ranks");
  }
  std::vector<char> consumed(static_cast<size_t>(n), 0);
  for (int r = 0; r < old_world; ++r) {
    data::ShardedSampler old_sampler(n, old_world, r, config_.seed, /*shuffle=*/true, /*drop_last=*/false);
    const auto plan = data::plan_batches(old_sampler.indices(saved.sampler_epoch), train_data_->lengths(),
                                         static_cast<int>(old_batch), old_grouped, old_drop_last);
    // Clamped before multiplying: both factors come from the checkpoint.
    const auto planned = static_cast<int64_t>(plan.size());
    const int64_t batches_done = std::min<int64_t>(std::min(saved.sampler_position, planned) * old_accumulation, planned);
    for (int64_t b = 0; b < batches_done; ++b)
      for (int64_t index : plan[static_cast<size_t>(b)]) consumed[static_cast<size_t>(index)] = 1;
  }
  std::vector<int64_t> remaining;
  for (int64_t index : data::permutation(n, config_.seed, saved.sampler_epoch))
    if (!consumed[static_cast<size_t>(index)]) remaining.push_back(index);
  note += ", the rest of epoch " + std::to_string(saved.sampler_epoch + 1) + " (" + std::to_string(remaining.size()) +
          " examples) is re-sharded";
  resume_note_ = note;
  if (remaining.empty()) {
    ++state_.sampler_epoch;
    state_.sampler_position = 0;
    return;
  }
  // DistributedSampler's rule on the remaining list: pad by repeating it to a multiple of the
  // world size, rank r takes every world-th example from r.
  const int64_t per_rank = (static_cast<int64_t>(remaining.size()) + world - 1) / world;
  resharded_shard_.clear();
  for (int64_t i = comm_.rank(); i < per_rank * world; i += world)
    resharded_shard_.push_back(remaining[static_cast<size_t>(i % static_cast<int64_t>(remaining.size()))]);
  reshard_pending_ = true;
}

// ---- one optimizer step ----------------------------------------------------------------------

Trainer::StepResult Trainer::train_step(StepBatches& batches) {
  StepResult result;
  // One all-reduce carries the step's rows and the stop flag: the ranks agree on stopping
  // before any of them starts the step.
  const int signal_here = pending_stop_signal();
  int64_t control[3] = {batches.rows(), signal_here == SIGINT ? 1 : 0, signal_here != 0 && signal_here != SIGINT ? 1 : 0};
  arrivals_->arrive(state_.global_step + 1, 0, *watchdog_);
  watchdog_->enter("the step's first all-reduce (rows, stop flag)", state_.global_step + 1);
  comm_.all_reduce_sum_host(control, 3);
  watchdog_->leave();
  if (control[1] + control[2] > 0) {
    result.stopped = true;
    result.stop_signal = control[1] > 0 ? SIGINT : SIGTERM;  // Ctrl-C anywhere wins
    return result;
  }
  const int64_t rows = control[0];
  result.rows = rows;
  // fp16: the loss (so every gradient) is multiplied by the scale, a power of two: exact.
  const float scale = fp16_loss_scaling_ ? scaler_.scale() : 1.0f;
  const float loss_weight = scale / static_cast<float>(rows);

  backend_->zero_gradients();
  GradientReduction reduction(*backend_, comm_);
  double sums[2] = {0.0, 0.0};  // loss_sum, real tokens
  for (size_t micro = 0; micro < batches.micro.size(); ++micro) {
    if (micro + 1 == batches.micro.size()) reduction.arm();  // the backward that finishes the gradients
    DropoutKey key;
    key.seed = config_.seed;
    key.step = static_cast<uint64_t>(state_.global_step);
    key.rank = static_cast<uint32_t>(comm_.rank());
    key.micro_step = static_cast<uint32_t>(micro);
    key.enabled = true;
    const BatchStats stats = backend_->forward_backward(batches.micro[micro], loss_weight, key);
    sums[0] += stats.loss_sum;
    sums[1] += static_cast<double>(batches.micro[micro].real_tokens());
  }
  const int64_t step = state_.global_step + 1;  // 1-based, as logged
  arrivals_->arrive(step, 1, *watchdog_);
  stall_for_test_if_asked(comm_.rank(), step);
  watchdog_->enter("the gradient all-reduce", step);
  reduction.finish();
  comm_.all_reduce_sum_host(sums, 2);
  // The norm reads the reduced gradients: the first wait for the device collectives (started
  // during the backward when overlapped), so it stays under the watchdog.
  const double sq_norm = reduction.gradient_sq_norm();
  watchdog_->leave();

  result.loss = sums[0] / static_cast<double>(rows);
  result.tokens = sums[1];
  result.grad_norm = std::sqrt(sq_norm) / static_cast<double>(scale);
  const LrSchedulerType schedule = parse_lr_scheduler_type(config_.lr_scheduler_type);
  // The schedule follows global_step, skipped fp16 steps included (torch.cuda.amp: the
  // scheduler steps even when GradScaler skipped optimizer.step()).
  result.learning_rate = learning_rate_at(schedule, config_.learning_rate, state_.global_step, warmup_steps_,
                                          state_.max_steps);
  const bool finite = std::isfinite(sq_norm) && std::isfinite(result.loss);
  if (fp16_loss_scaling_) {
    const float scale_before = scaler_.scale();
    if (!scaler_.update(finite, step)) {
      result.skipped = true;
      ++state_.skipped_steps;
      state_.loss_scale = scaler_.scale();
      state_.loss_scale_good_steps = scaler_.good_steps();
      if (comm_.rank() == 0)
        std::fprintf(stderr, "step %lld: fp16 gradient overflow, step skipped (loss scale %g -> %g)\n",
                     static_cast<long long>(step), static_cast<double>(scale_before),
                     static_cast<double>(scaler_.scale()));
      return result;
    }
  } else if (!finite) {
    throw NumericalFault("step " + std::to_string(step) + ": the " +
                         (std::isfinite(result.loss) ? std::string("gradient norm") : std::string("loss")) +
                         " is not finite (loss " + std::to_string(result.loss) + ", gradient norm " +
                         std::to_string(result.grad_norm) + ", " + config_.precision +
                         "); stopped before updating the weights");
  }

  AdamWHyper hyper;
  hyper.lr = static_cast<float>(result.learning_rate);
  hyper.beta1 = config_.adam_beta1;
  hyper.beta2 = config_.adam_beta2;
  hyper.eps = config_.adam_epsilon;
  hyper.weight_decay = config_.weight_decay;
  // Unscale and clip in one factor: gradients * (clip / scale).
  hyper.grad_scale = clip_coefficient(result.grad_norm, config_.max_grad_norm) / scale;
  hyper.step = step - state_.skipped_steps;  // AdamW's own count: skipped steps never reached it
  backend_->adamw_step(hyper);
  watchdog_->enter("the parameter all-gather (zero_stage 1)", step);
  reduction.share_updated_parameters();
  watchdog_->leave();
  state_.loss_scale = fp16_loss_scaling_ ? scaler_.scale() : 1.0f;
  state_.loss_scale_good_steps = scaler_.good_steps();
  return result;
}

// ---- evaluation and checkpoints -----------------------------------------------------------------

EvalMetrics Trainer::evaluate_validation() {
  if (!validation_data_) throw std::logic_error("evaluate_validation: no validation_file");
  return evaluate(*backend_, comm_, *validation_data_, config_.per_device_eval_batch_size, tokenizer_->pad_id());
}

bool Trainer::run_evaluation(ProgressLog& log) {
  last_eval_ = evaluate_validation();
  has_final_eval_ = true;
  EvalRecord record;
  record.step = state_.global_step;
  record.epoch = state_.epoch;
  record.loss = last_eval_.loss;
  record.accuracy = last_eval_.accuracy;
  record.macro_f1 = last_eval_.macro_f1;
  record.samples = last_eval_.examples;
  state_.log_history.push_back(log.log_eval(record));
  log_scalars(state_.global_step, {{"eval/loss", static_cast<float>(last_eval_.loss)},
                                   {"eval/accuracy", static_cast<float>(last_eval_.accuracy)},
                                   {"eval/macro_f1", static_cast<float>(last_eval_.macro_f1)}});

  const std::string& metric = config_.metric_for_best_model;
  if (metric.empty()) return false;
  const std::string key = metric.rfind("eval_", 0) == 0 ? metric.substr(5) : metric;
  const double value = key == "loss" ? last_eval_.loss : key == "accuracy" ? last_eval_.accuracy : last_eval_.macro_f1;
  if (!std::isfinite(value)) return false;
  const bool greater_is_better = key != "loss";
  const bool first = state_.best_checkpoint.empty();
  if (!first && !(greater_is_better ? value > state_.best_metric : value < state_.best_metric)) return false;
  state_.best_metric = value;
  // Named before the checkpoint is written, so that checkpoint records itself as the best and
  // rotate_checkpoints never deletes it.
  state_.best_checkpoint = fs::path(checkpoint_path(config_.output_dir, state_.global_step)).filename().string();
  char line[160];
  std::snprintf(line, sizeof(line), "best eval_%s so far: %.6g at step %lld (%s)", key.c_str(), value,
                static_cast<long long>(state_.global_step), state_.best_checkpoint.c_str());
  log.message(line);
  return true;
}

void Trainer::log_scalars(int64_t step, const std::vector<std::pair<std::string, float>>& scalars) {
  if (!tensorboard_) return;
  tensorboard_->add_scalars(step, scalars);
  tensorboard_->flush();  // a crash or a pre-emption loses nothing that was logged
}

void Trainer::agree_on_output(const std::string& problem, const char* what) {
  int64_t failed = problem.empty() ? 0 : 1;
  watchdog_->enter(what, state_.global_step);
  comm_.all_reduce_sum_host(&failed, 1);
  watchdog_->leave();
  if (failed != 0) throw OutputFault(comm_.rank() == 0 ? problem : "");
}

std::string Trainer::save_checkpoint() {
  last_saved_step_ = state_.global_step;
  // Every replica holds the same weights; rank 0 alone writes them, and tells the others whether
  // that worked, so a full disk stops every rank with one message instead of an abort. With
  // ZeRO-1 each rank holds only its shard of the AdamW moments: rank 0 gathers them first, into
  // whole arrays; the other ranks send their shard from arrays of that size only.
  const OptimizerShard& shard = backend_->optimizer_shard();
  std::vector<float> adam_m, adam_v;
  if (shard.sharded()) {
    // Every rank's block starts its array (rank 0's block is the first of the whole); past
    // owned_numel it is padding (zeros).
    const size_t size = comm_.rank() == 0 ? shard.padded_numel : shard.count;
    adam_m.assign(size, 0.0f);
    adam_v.assign(size, 0.0f);
    backend_->get_owned_optimizer_state(adam_m.data(), adam_v.data());
    watchdog_->enter("gathering the AdamW moments for a checkpoint (zero_stage 1)", state_.global_step);
    comm_.gather_host(adam_m.data(), shard.count, 0);
    comm_.gather_host(adam_v.data(), shard.count, 0);
    watchdog_->leave();
  }
  std::string path, problem;
  if (comm_.rank() == 0) {
    path = checkpoint_path(config_.output_dir, state_.global_step);
    try {
      Checkpoint checkpoint;
      checkpoint.model = config_.model;
      const size_t numel = backend_->layout().total_numel();
      checkpoint.parameters.resize(numel);
      backend_->get_parameters(checkpoint.parameters.data());
      if (shard.sharded()) {  // the gathered moments themselves, their padding cut off (no copy)
        checkpoint.adam_m = std::move(adam_m);
        checkpoint.adam_v = std::move(adam_v);
        checkpoint.adam_m.resize(numel);
        checkpoint.adam_v.resize(numel);
      } else {
        checkpoint.adam_m.resize(numel);
        checkpoint.adam_v.resize(numel);
        backend_->get_optimizer_state(checkpoint.adam_m.data(), checkpoint.adam_v.data());
      }
      checkpoint.trainer = state_;
      checkpoint.config_ini = config_.config_ini;
      checkpoint.tokenizer.vocab = tokenizer_->tokens();
      checkpoint.tokenizer.do_lower_case = config_.do_lower_case;
      checkpoint.tokenizer.max_length = config_.max_length;
      checkpoint.tokenizer.label_offset = train_data_->info().label_offset;
      write_checkpoint(path, checkpoint);
      // Only after the new checkpoint is complete: a failed write never costs an older one.
      rotate_checkpoints(config_.output_dir, config_.save_total_limit, state_.best_checkpoint);
    } catch (const std::exception& e) {
      problem = std::string(e.what()) + "; training stopped at step " + std::to_string(state_.global_step) + ", " +
                (last_checkpoint_.empty()
                     ? std::string("no earlier checkpoint exists")
                     : "the last complete checkpoint is " + last_checkpoint_ +
                           " (untouched; continue from it with --resume_from_checkpoint auto once the problem is fixed)");
    }
  }
  agree_on_output(problem, "waiting for rank 0 to write a checkpoint");
  if (comm_.rank() != 0) return "";
  last_checkpoint_ = path;
  return path;
}

// A fresh run (resume_from_checkpoint none) into an output_dir that holds checkpoints would mix
// two runs there, and a later `resume_from_checkpoint auto` would pick up the wrong one: the
// course's "checkpoint directory already exists" trap. Say what to do instead.
void refuse_earlier_runs_checkpoints(const TrainConfig& config) {
  if (config.resume_from_checkpoint != "none" || config.overwrite_output_dir) return;
  std::error_code ec;
  if (!fs::is_directory(config.output_dir, ec)) return;
  int64_t newest = -1;
  int count = 0;
  for (const auto& entry : fs::directory_iterator(config.output_dir, ec)) {
    const int64_t step = checkpoint_step_from_name(entry.path().filename().string());
    // Anything else under such a name is not a checkpoint: the output_dir checks name it.
    if (step < 0 || !entry.is_regular_file(ec)) continue;
    ++count;
    newest = std::max(newest, step);
  }
  if (count == 0) return;
  throw std::invalid_argument(
      "output_dir: " + config.output_dir + " already holds " + std::to_string(count) +
      " checkpoint(s) of an earlier run (newest: checkpoint-" + std::to_string(newest) +
      ".h5). Continue that run with --resume_from_checkpoint auto, start a new one with another "
      "--output_dir, or replace it with --overwrite_output_dir true");
}

// ---- the loop --------------------------------------------------------------------------------------

TrainSummary Trainer::train() {
  const int rank = comm_.rank();
  const int world = comm_.world_size();
  StopSignalHandlers stop_handlers;
  FileSizeSignalIgnored file_size_signal;
  clear_stop_request();
  const std::string resume_from = resume_checkpoint_path();
  if (!resume_from.empty()) {
    restore(resume_from);
    last_checkpoint_ = rank == 0 ? resume_from : "";
    last_saved_step_ = state_.global_step;
  } else if (!parameters_initialized_) {
    initialize_parameters();
  }
  fp16_loss_scaling_ = config_.precision == "fp16";
  if (fp16_loss_scaling_) {
    // A resumed fp16 run continues with its scale and its growth count, so the scale doubles at
    // the same step as it would have without the interruption.
    const bool resumed_fp16 = !resume_from.empty() && state_.precision == "fp16" && state_.loss_scale > 0.0f;
    const int64_t good_steps = std::clamp<int64_t>(state_.loss_scale_good_steps, 0, DynamicLossScaler::kGrowthInterval - 1);
    scaler_ = resumed_fp16 ? DynamicLossScaler(state_.loss_scale, good_steps) : DynamicLossScaler();
  } else {
    scaler_ = DynamicLossScaler(1.0f);
  }
  state_.loss_scale = scaler_.scale();
  state_.loss_scale_good_steps = scaler_.good_steps();
  state_.precision = config_.precision;
  const std::string metrics_path = (fs::path(config_.output_dir) / "metrics.jsonl").string();
  // Rank 0 prepares output_dir; every rank learns the outcome (no rank is left waiting).
  std::vector<std::string> output_notes;
  std::string output_problem;
  if (rank == 0) {
    try {
      output_notes = prepare_output_dir_for_steps(config_.output_dir, state_.global_step, state_.max_steps);
      tensorboard_ = std::make_unique<TensorBoardWriter>((fs::path(config_.output_dir) / "runs").string());
      if (!resume_from.empty()) {
        // The history up to the checkpoint, not what an interrupted run logged after it.
        const std::string tmp = temporary_path(metrics_path);
        std::ofstream out(tmp, std::ios::trunc);
        for (const auto& line : state_.log_history) out << line << '\n';
        out.close();
        if (!out || std::rename(tmp.c_str(), metrics_path.c_str()) != 0) {
          const std::string reason = std::strerror(errno);
          std::remove(tmp.c_str());
          throw std::runtime_error(metrics_path + ": cannot write the log history of " + resume_from + ": " + reason);
        }
      }
    } catch (const std::exception& e) {
      output_problem = e.what();
    }
  }
  agree_on_output(output_problem, "preparing output_dir");
  ProgressLog log(rank == 0, metrics_path, /*append=*/!resume_from.empty());
  if (!resume_from.empty())
    log.message("resumed from " + resume_from + " at step " + std::to_string(state_.global_step) + " (epoch " +
                format_epoch(state_.epoch) + ")");
  else if (config_.resume_from_checkpoint == "auto")
    log.message("resume_from_checkpoint auto: no checkpoint in " + config_.output_dir + ", starting at step 0");
  if (!resume_note_.empty()) log.message(resume_note_);

  const int64_t total = state_.max_steps;
  if (!device_note_.empty()) log.message(device_note_);
  log.message(describe_device(config_.device, config_.precision));
  if (!output_dir_note_.empty()) log.message(output_dir_note_);
  for (const auto& note : output_notes) log.message(note);
  log.message("train: " + std::to_string(train_data_->size()) + " examples on " + std::to_string(world) +
              " rank(s) | device " + config_.device + " " + config_.precision + " | global batch " +
              std::to_string(state_.global_batch_size) + " | " + std::to_string(steps_per_epoch_) +
              " steps/epoch | " + std::to_string(total) + " steps | warmup " + std::to_string(warmup_steps_) +
              " | " + std::to_string(backend_->layout().total_numel()) + " parameters");
  const OptimizerShard& shard = backend_->optimizer_shard();
  if (shard.sharded())
    log.message("zero_stage 1: each rank keeps the AdamW moments of " + std::to_string(shard.count) + " of " +
                std::to_string(shard.padded_numel) + " (padded) parameters, 1/" + std::to_string(shard.world) +
                "; gradients reduce-scattered, parameters all-gathered");
  else if (config_.zero_stage == 1)
    log.message("zero_stage 1 on one rank: nothing to shard, every parameter's moments stay here");

  data::ShardedSampler sampler(train_data_->size(), world, rank, config_.seed, /*shuffle=*/true, /*drop_last=*/false);
  const int64_t accumulation = config_.gradient_accumulation_steps;
  const int64_t steps_at_start = state_.global_step;
  const auto loop_start = Clock::now();
  auto interval_start = loop_start;
  double interval_loss = 0.0, interval_tokens = 0.0, all_tokens = 0.0;
  int64_t interval_loss_steps = 0, all_rows = 0;
  double last_logged_loss = std::nan("");
  double eval_seconds = 0.0;
  int stop_signal = 0;

  try {
    while (stop_signal == 0 && state_.global_step < total) {
      data::BatchLoaderOptions loader_options;
      loader_options.group_by_length = config_.group_by_length;
      loader_options.drop_last_batch = config_.dataloader_drop_last;
      loader_options.max_positions = config_.model.max_position_embeddings;
      std::unique_ptr<data::BatchLoader> loader;
      if (reshard_pending_) {
        // The rest of an epoch begun on another number of ranks (see restore()).
        loader_options.start_batch = 0;
        loader = std::make_unique<data::BatchLoader>(*train_data_, resharded_shard_, state_.sampler_epoch,
                                                     config_.per_device_train_batch_size, tokenizer_->pad_id(),
                                                     loader_options);
        resharded_shard_.clear();
        reshard_pending_ = false;
      } else {
        loader_options.start_batch = state_.sampler_position * accumulation;
        loader = std::make_unique<data::BatchLoader>(*train_data_, sampler, state_.sampler_epoch,
                                                     config_.per_device_train_batch_size, tokenizer_->pad_id(),
                                                     loader_options);
      }
      bool epoch_done = loader->batches_delivered() >= loader->num_batches();
      while (!epoch_done && state_.global_step < total) {
        StepBatches batches;
        for (int64_t micro = 0; micro < accumulation; ++micro) {
          data::Batch batch;
          if (!loader->next(batch)) break;
          batches.micro.push_back(std::move(batch));
        }
        const StepResult step = train_step(batches);
        if (step.stopped) {
          stop_signal = step.stop_signal;
          break;
        }

        ++state_.global_step;
        ++state_.sampler_position;
        state_.samples_seen += step.rows;
        epoch_done = loader->batches_delivered() >= loader->num_batches();
        state_.epoch = epoch_done ? static_cast<double>(state_.sampler_epoch + 1)
                                  : static_cast<double>(state_.sampler_epoch) +
                                        std::min(0.999999, static_cast<double>(state_.sampler_position) /
                                                               static_cast<double>(steps_per_epoch_));
        if (epoch_done) {
          ++state_.sampler_epoch;
          state_.sampler_position = 0;
        }
        if (std::isfinite(step.loss)) {
          interval_loss += step.loss;
          ++interval_loss_steps;
        }
        interval_tokens += step.tokens;
        all_tokens += step.tokens;
        all_rows += step.rows;

        const double elapsed = seconds_since(loop_start) - eval_seconds;
        const int64_t done = state_.global_step - steps_at_start;
        const double eta_s = elapsed / static_cast<double>(done) * static_cast<double>(total - state_.global_step);
        const bool last_step = state_.global_step == total;
        if (state_.global_step % config_.logging_steps == 0 || last_step) {
          TrainRecord record;
          record.step = state_.global_step;
          record.total_steps = total;
          record.epoch = state_.epoch;
          record.loss = interval_loss_steps > 0 ? interval_loss / static_cast<double>(interval_loss_steps) : std::nan("");
          record.learning_rate = step.learning_rate;
          record.grad_norm = step.grad_norm;
          record.tokens_per_s = interval_tokens / std::max(1e-9, seconds_since(interval_start));
          record.eta_s = eta_s;
          record.loss_scale = fp16_loss_scaling_ ? scaler_.scale() : 0.0;
          state_.log_history.push_back(log.log_train(record));
          std::vector<std::pair<std::string, float>> scalars = {
              {"train/loss", static_cast<float>(record.loss)},
              {"train/learning_rate", static_cast<float>(record.learning_rate)},
              {"train/grad_norm", static_cast<float>(record.grad_norm)},
              {"train/tokens_per_s", static_cast<float>(record.tokens_per_s)}};
          if (fp16_loss_scaling_) scalars.emplace_back("train/loss_scale", static_cast<float>(record.loss_scale));
          log_scalars(state_.global_step, scalars);
          last_logged_loss = record.loss;
          interval_loss = interval_tokens = 0.0;
          interval_loss_steps = 0;
          interval_start = Clock::now();
        } else {
          log.status(state_.global_step, total, state_.epoch, last_logged_loss, eta_s);
        }

        const auto eval_start = Clock::now();
        const bool eval_due =
            (config_.eval_strategy == "steps" && state_.global_step % config_.effective_eval_steps() == 0) ||
            (config_.eval_strategy == "epoch" && epoch_done);
        bool best_improved = false;
        if (validation_data_ && (eval_due || last_step)) best_improved = run_evaluation(log);
        const bool save_due = config_.save_steps > 0 && state_.global_step % config_.save_steps == 0;
        if ((save_due || best_improved) && !last_step) save_checkpoint();
        const double paused = seconds_since(eval_start);
        eval_seconds += paused;
        interval_start += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(paused));
      }
    }
  } catch (const NumericalFault& fault) {
    std::string where = last_checkpoint_.empty()
                            ? std::string("no checkpoint was written before it")
                            : "the last good checkpoint is " + last_checkpoint_ +
                                  " (resume with --resume_from_checkpoint auto, e.g. with a lower learning_rate)";
    throw NumericalFault(std::string(fault.what()) + "; nothing was saved of this state, " + where);
  }

  TrainSummary summary;
  summary.steps = state_.global_step - steps_at_start;
  summary.train_seconds = seconds_since(loop_start) - eval_seconds;
  summary.samples_per_s = static_cast<double>(all_rows) / std::max(1e-9, summary.train_seconds);
  summary.tokens_per_s = all_tokens / std::max(1e-9, summary.train_seconds);
  summary.last_loss = last_logged_loss;
  summary.has_eval = has_final_eval_;
  summary.final_eval = last_eval_;
  summary.stop_signal = stop_signal;
  if (last_saved_step_ != state_.global_step) {
    summary.checkpoint = save_checkpoint();
  } else {
    summary.checkpoint = last_checkpoint_;  // written at this very step already (save_steps, best, resume)
  }

  std::string line;
  if (stop_signal != 0) {
    line = std::string("stopped by ") + signal_name(stop_signal) + " at step " + std::to_string(state_.global_step) +
           "; checkpoint " + summary.checkpoint + "; resume with --resume_from_checkpoint auto";
  } else {
    line = "done: " + std::to_string(summary.steps) + " steps in " + format_duration(summary.train_seconds) + " | " +
           format_rate(summary.samples_per_s) + " samples/s | " + format_rate(summary.tokens_per_s) +
           " tok/s | epoch " + format_epoch(state_.epoch);
    if (summary.has_eval) {
      char metrics[160];
      std::snprintf(metrics, sizeof(metrics), " | final eval_loss %.4f eval_accuracy %.4f eval_macro_f1 %.4f",
                    summary.final_eval.loss, summary.final_eval.accuracy, summary.final_eval.macro_f1);
      line += metrics;
    }
    if (fp16_loss_scaling_)
      line += " | fp16 loss scale " + std::to_string(static_cast<int64_t>(scaler_.scale())) + ", " +
              std::to_string(state_.skipped_steps) + " overflow steps skipped";
    if (!state_.best_checkpoint.empty()) line += " | best " + state_.best_checkpoint;
    if (!summary.checkpoint.empty()) line += " | " + summary.checkpoint;
  }
  log.message(line);
  summary.message = line;
  return summary;
}

}  // namespace llmqs::core
