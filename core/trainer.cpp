// The data-parallel training loop (see trainer.h for the scheme and its invariants).
#include "core/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/cpu_backend.h"
#include "core/optimizer.h"
#include "core/parameters.h"
#include "core/progress_log.h"
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
  if (device == "auto") {
    // The CUDA backend goes first here once it is built in (and a GPU is present).
    if (note) *note = "device auto: using cpu (this build has no CUDA backend)";
    return "cpu";
  }
  if (device == "cuda")
    throw std::invalid_argument("device: cuda is not available in this build (no CUDA backend); use --device cpu");
  throw std::invalid_argument("device: unknown value '" + device + "' (expected one of: auto, cpu, cuda)");
}

std::string resolve_precision(const std::string& device, const std::string& precision) {
  if (precision != "auto" && precision != "fp32" && precision != "bf16" && precision != "fp16")
    throw std::invalid_argument("precision: unknown value '" + precision + "' (expected one of: auto, bf16, fp16, fp32)");
  if (device == "cpu") {
    if (precision == "auto" || precision == "fp32") return "fp32";
    throw std::invalid_argument("precision: " + precision + " is not available on device cpu (the fp32 reference); use auto or fp32");
  }
  throw std::invalid_argument("device: no backend for '" + device + "'");
}

std::unique_ptr<comm::Communicator> make_communicator(const std::string& device) {
  const std::string resolved = resolve_device(device);
  if (resolved == "cpu") return comm::make_mpi_communicator();
  throw std::invalid_argument("device: no communicator for '" + resolved + "'");
}

std::unique_ptr<Backend> make_backend(const TrainConfig& config, comm::Communicator& comm) {
  (void)comm;  // a GPU backend picks its device from comm.local_rank()
  const std::string device = resolve_device(config.device);
  (void)resolve_precision(device, config.precision);
  if (device == "cpu") return make_cpu_backend(config.model);
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
  double loss = 0.0;       // mean cross-entropy over the global batch
  double grad_norm = 0.0;  // before clipping
  double learning_rate = 0.0;
  int64_t rows = 0;        // global
  double tokens = 0.0;     // real tokens, global
};

// ---- `eval` ---------------------------------------------------------------------------------------

namespace {

// The vocabulary a checkpoint carries, as a tokenizer. WordPieceTokenizer reads files only, so
// the tokens go through a private temporary vocab.txt.
data::WordPieceTokenizer tokenizer_from_vocabulary(const std::vector<std::string>& vocab, bool do_lower_case,
                                                   const std::string& checkpoint) {
  if (vocab.empty())
    throw std::runtime_error(checkpoint + ": carries no vocabulary; pass --vocab");
  const fs::path path = fs::temp_directory_path() /
                        ("llmqs-vocab-" + std::to_string(::getpid()) + "-" +
                         std::to_string(reinterpret_cast<uintptr_t>(&vocab)) + ".txt");
  {
    std::ofstream out(path);
    for (const auto& token : vocab) out << token << '\n';
    if (!out) throw std::runtime_error(path.string() + ": cannot write the checkpoint's vocabulary");
  }
  try {
    auto tokenizer = data::WordPieceTokenizer::from_file(path.string(), do_lower_case);
    fs::remove(path);
    return tokenizer;
  } catch (...) {
    fs::remove(path);
    throw;
  }
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
  config_.device = resolve_device(config_.device, &device_note_);
  config_.precision = resolve_precision(config_.device, config_.precision);

  // init_from (e.g. an import-hf checkpoint): its shape must be the configured one, and its
  // vocabulary is used unless --vocab names another.
  if (!config_.init_from.empty()) {
    const CheckpointSummary start = read_checkpoint_summary(config_.init_from);
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
  }
  if (!tokenizer_)
    tokenizer_ = std::make_unique<data::WordPieceTokenizer>(
        data::WordPieceTokenizer::from_file(config_.vocab, config_.do_lower_case));
  config_.resolve_vocab_size(tokenizer_->vocab_size());
  config_.model.pad_token_id = tokenizer_->pad_id();
  config_.model.validate();

  train_data_ = load_checked(config_, config_.train_file, *tokenizer_);
  if (!config_.validation_file.empty()) validation_data_ = load_checked(config_, config_.validation_file, *tokenizer_);

  backend_ = backend ? std::move(backend) : make_backend(config_, comm_);

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

void Trainer::restore(const std::string& path) {
  Checkpoint checkpoint = read_checkpoint(path);
  const size_t numel = backend_->layout().total_numel();
  if (checkpoint.parameters.size() != numel)
    throw std::runtime_error("resume_from_checkpoint: " + path + " holds another model shape (" +
                             std::to_string(checkpoint.parameters.size()) + " parameters, this run " +
                             std::to_string(numel) + ")");
  if (!checkpoint.has_optimizer_state())
    throw std::runtime_error("resume_from_checkpoint: " + path +
                             " has no optimizer state (an imported model?); use --init_from to start from it");
  // The sampler position counts batches per rank: it means the same only with the same shards.
  const TrainerState& saved = checkpoint.trainer;
  if (saved.world_size != state_.world_size || saved.global_batch_size != state_.global_batch_size ||
      saved.seed != state_.seed)
    throw std::invalid_argument("resume_from_checkpoint: " + path + " was written by " +
                                std::to_string(saved.world_size) + " rank(s), global batch " +
                                std::to_string(saved.global_batch_size) + ", seed " + std::to_string(saved.seed) +
                                "; this run has " + std::to_string(state_.world_size) + ", " +
                                std::to_string(state_.global_batch_size) + ", " + std::to_string(state_.seed) +
                                ": resume with the same -np, batch sizes and seed");
  backend_->set_parameters(checkpoint.parameters.data());
  backend_->set_optimizer_state(checkpoint.adam_m.data(), checkpoint.adam_v.data());
  const int64_t max_steps = state_.max_steps;
  state_ = saved;
  state_.max_steps = max_steps;
  parameters_initialized_ = true;
}

// ---- one optimizer step ----------------------------------------------------------------------

Trainer::StepResult Trainer::train_step(StepBatches& batches) {
  StepResult result;
  int64_t rows = batches.rows();
  comm_.all_reduce_sum_host(&rows, 1);
  result.rows = rows;
  const float loss_weight = 1.0f / static_cast<float>(rows);

  backend_->zero_gradients();
  double sums[2] = {0.0, 0.0};  // loss_sum, real tokens
  for (size_t micro = 0; micro < batches.micro.size(); ++micro) {
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
  comm_.all_reduce_sum(backend_->gradient_buffer(), backend_->layout().total_numel());
  comm_.all_reduce_sum_host(sums, 2);

  result.grad_norm = std::sqrt(backend_->gradient_sq_norm());
  const LrSchedulerType schedule = parse_lr_scheduler_type(config_.lr_scheduler_type);
  AdamWHyper hyper;
  hyper.lr = learning_rate_at(schedule, config_.learning_rate, state_.global_step, warmup_steps_, state_.max_steps);
  hyper.beta1 = config_.adam_beta1;
  hyper.beta2 = config_.adam_beta2;
  hyper.eps = config_.adam_epsilon;
  hyper.weight_decay = config_.weight_decay;
  hyper.grad_scale = clip_coefficient(result.grad_norm, config_.max_grad_norm);
  hyper.step = state_.global_step + 1;
  backend_->adamw_step(hyper);

  result.learning_rate = hyper.lr;
  result.loss = sums[0] / static_cast<double>(rows);
  result.tokens = sums[1];
  return result;
}

// ---- evaluation and checkpoints -----------------------------------------------------------------

EvalMetrics Trainer::evaluate_validation() {
  if (!validation_data_) throw std::logic_error("evaluate_validation: no validation_file");
  return evaluate(*backend_, comm_, *validation_data_, config_.per_device_eval_batch_size, tokenizer_->pad_id());
}

void Trainer::run_evaluation(ProgressLog& log) {
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
}

std::string Trainer::save_checkpoint() {
  // Every replica holds the same weights; rank 0 alone writes them.
  if (comm_.rank() != 0) return "";
  Checkpoint checkpoint;
  checkpoint.model = config_.model;
  const size_t numel = backend_->layout().total_numel();
  checkpoint.parameters.resize(numel);
  checkpoint.adam_m.resize(numel);
  checkpoint.adam_v.resize(numel);
  backend_->get_parameters(checkpoint.parameters.data());
  backend_->get_optimizer_state(checkpoint.adam_m.data(), checkpoint.adam_v.data());
  checkpoint.trainer = state_;
  checkpoint.config_ini = config_.config_ini;
  checkpoint.tokenizer.vocab = tokenizer_->tokens();
  checkpoint.tokenizer.do_lower_case = config_.do_lower_case;
  checkpoint.tokenizer.max_length = config_.max_length;
  checkpoint.tokenizer.label_offset = train_data_->info().label_offset;
  const std::string path = checkpoint_path(config_.output_dir, state_.global_step);
  write_checkpoint(path, checkpoint);
  return path;
}

// ---- the loop --------------------------------------------------------------------------------------

TrainSummary Trainer::train() {
  const int rank = comm_.rank();
  const int world = comm_.world_size();
  const std::string resume_from = resume_checkpoint_path();
  if (!resume_from.empty()) {
    restore(resume_from);
  } else if (!parameters_initialized_) {
    initialize_parameters();
  }
  if (rank == 0) {
    std::error_code error;
    fs::create_directories(config_.output_dir, error);
    if (error || !fs::is_directory(config_.output_dir))
      throw std::runtime_error("output_dir: cannot create " + config_.output_dir + ": " + error.message());
  }
  comm_.barrier();
  const std::string metrics_path = (fs::path(config_.output_dir) / "metrics.jsonl").string();
  if (!resume_from.empty() && rank == 0) {
    // The history up to the checkpoint, not what an interrupted run logged after it.
    const std::string tmp = metrics_path + ".tmp." + std::to_string(::getpid());
    {
      std::ofstream out(tmp, std::ios::trunc);
      for (const auto& line : state_.log_history) out << line << '\n';
      if (!out) throw std::runtime_error(metrics_path + ": cannot write");
    }
    fs::rename(tmp, metrics_path);
  }
  ProgressLog log(rank == 0, metrics_path, /*append=*/!resume_from.empty());
  if (!resume_from.empty())
    log.message("resumed from " + resume_from + " at step " + std::to_string(state_.global_step) + " (epoch " +
                format_epoch(state_.epoch) + ")");
  else if (config_.resume_from_checkpoint == "auto")
    log.message("resume_from_checkpoint auto: no checkpoint in " + config_.output_dir + ", starting at step 0");

  const int64_t total = state_.max_steps;
  if (!device_note_.empty()) log.message(device_note_);
  log.message("train: " + std::to_string(train_data_->size()) + " examples on " + std::to_string(world) +
              " rank(s) | device " + config_.device + " " + config_.precision + " | global batch " +
              std::to_string(state_.global_batch_size) + " | " + std::to_string(steps_per_epoch_) +
              " steps/epoch | " + std::to_string(total) + " steps | warmup " + std::to_string(warmup_steps_) +
              " | " + std::to_string(backend_->layout().total_numel()) + " parameters");

  data::ShardedSampler sampler(train_data_->size(), world, rank, config_.seed, /*shuffle=*/true, /*drop_last=*/false);
  const int64_t steps_at_start = state_.global_step;
  const auto loop_start = Clock::now();
  auto interval_start = loop_start;
  double interval_loss = 0.0, interval_tokens = 0.0, all_tokens = 0.0;
  int64_t interval_steps = 0, all_rows = 0;
  double last_logged_loss = std::nan("");
  double eval_seconds = 0.0;
  std::string last_checkpoint;

  while (state_.global_step < total) {
    data::BatchLoaderOptions loader_options;
    loader_options.group_by_length = config_.group_by_length;
    loader_options.drop_last_batch = config_.dataloader_drop_last;
    loader_options.start_batch = state_.sampler_position;
    data::BatchLoader loader(*train_data_, sampler, state_.sampler_epoch, config_.per_device_train_batch_size,
                             tokenizer_->pad_id(), loader_options);
    bool epoch_done = false;
    while (!epoch_done && state_.global_step < total) {
      StepBatches batches;
      for (int micro = 0; micro < config_.gradient_accumulation_steps; ++micro) {
        data::Batch batch;
        if (!loader.next(batch)) break;
        batches.micro.push_back(std::move(batch));
      }
      if (batches.micro.empty()) throw std::logic_error("trainer: the batch loader ran dry mid-epoch");
      const StepResult step = train_step(batches);

      ++state_.global_step;
      state_.sampler_position += static_cast<int64_t>(batches.micro.size());
      state_.samples_seen += step.rows;
      epoch_done = state_.sampler_position >= batches_per_epoch_;
      state_.epoch = static_cast<double>(state_.sampler_epoch) +
                     static_cast<double>(state_.sampler_position) / static_cast<double>(batches_per_epoch_);
      if (epoch_done) {
        ++state_.sampler_epoch;
        state_.sampler_position = 0;
      }
      interval_loss += step.loss;
      interval_tokens += step.tokens;
      all_tokens += step.tokens;
      all_rows += step.rows;
      ++interval_steps;

      const double elapsed = seconds_since(loop_start) - eval_seconds;
      const int64_t done = state_.global_step - steps_at_start;
      const double eta_s = elapsed / static_cast<double>(done) * static_cast<double>(total - state_.global_step);
      const bool last_step = state_.global_step == total;
      if (state_.global_step % config_.logging_steps == 0 || last_step) {
        TrainRecord record;
        record.step = state_.global_step;
        record.total_steps = total;
        record.epoch = state_.epoch;
        record.loss = interval_loss / static_cast<double>(interval_steps);
        record.learning_rate = step.learning_rate;
        record.grad_norm = step.grad_norm;
        record.tokens_per_s = interval_tokens / std::max(1e-9, seconds_since(interval_start));
        record.eta_s = eta_s;
        state_.log_history.push_back(log.log_train(record));
        last_logged_loss = record.loss;
        interval_loss = interval_tokens = 0.0;
        interval_steps = 0;
        interval_start = Clock::now();
      } else {
        log.status(state_.global_step, total, state_.epoch, last_logged_loss, eta_s);
      }

      const auto eval_start = Clock::now();
      const bool eval_due = (config_.eval_strategy == "steps" && state_.global_step % config_.effective_eval_steps() == 0) ||
                            (config_.eval_strategy == "epoch" && epoch_done);
      if (validation_data_ && (eval_due || last_step)) run_evaluation(log);
      if (config_.save_steps > 0 && state_.global_step % config_.save_steps == 0 && !last_step) {
        last_checkpoint = save_checkpoint();
        if (rank == 0) rotate_checkpoints(config_.output_dir, config_.save_total_limit, state_.best_checkpoint);
      }
      const double paused = seconds_since(eval_start);
      eval_seconds += paused;
      interval_start += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(paused));
    }
  }

  TrainSummary summary;
  summary.steps = state_.global_step - steps_at_start;
  summary.train_seconds = seconds_since(loop_start) - eval_seconds;
  summary.samples_per_s = static_cast<double>(all_rows) / std::max(1e-9, summary.train_seconds);
  summary.tokens_per_s = all_tokens / std::max(1e-9, summary.train_seconds);
  summary.last_loss = last_logged_loss;
  summary.has_eval = has_final_eval_;
  summary.final_eval = last_eval_;
  summary.checkpoint = save_checkpoint();
  if (rank == 0) rotate_checkpoints(config_.output_dir, config_.save_total_limit, state_.best_checkpoint);

  std::string line = "done: " + std::to_string(summary.steps) + " steps in " + format_duration(summary.train_seconds) +
                     " | " + format_rate(summary.samples_per_s) + " samples/s | " + format_rate(summary.tokens_per_s) +
                     " tok/s | epoch " + format_epoch(state_.epoch);
  if (summary.has_eval) {
    char metrics[160];
    std::snprintf(metrics, sizeof(metrics), " | final eval_loss %.4f eval_accuracy %.4f eval_macro_f1 %.4f",
                  summary.final_eval.loss, summary.final_eval.accuracy, summary.final_eval.macro_f1);
    line += metrics;
  }
  if (!summary.checkpoint.empty()) line += " | " + summary.checkpoint;
  log.message(line);
  return summary;
}

}  // namespace llmqs::core
