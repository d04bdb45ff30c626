// Options <-> TrainConfig: every key of `train` (and the part `eval` reads), bound to its field.
#include "launch/train_options.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <vector>

namespace llmqs::launch {

namespace {

// Defaults are shown as a user would write them (5e-05, not 4.99999987e-05).
std::string shown(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", value);
  return buffer;
}

template <typename T>
po::typed_value<T>* bound(T* field) {
  return po::value<T>(field)->default_value(*field);
}

po::typed_value<bool>* bound(bool* field) { return po::value<bool>(field)->default_value(*field, *field ? "true" : "false"); }
po::typed_value<float>* bound(float* field) { return po::value<float>(field)->default_value(*field, shown(*field)); }
po::typed_value<double>* bound(double* field) { return po::value<double>(field)->default_value(*field, shown(*field)); }
po::typed_value<std::string>* bound(std::string* field) {
  return po::value<std::string>(field)->default_value(*field, field->empty() ? "\"\"" : *field);
}

void add_model_shape_options(po::options_description& options, core::BertConfig& model) {
  options.add_options()
      ("num_labels", bound(&model.num_labels), "classes (YelpReviewFull: 5)")
      ("vocab_size", bound(&model.vocab_size), "embedding rows; 0 = the vocabulary's size")
      ("hidden_size", bound(&model.hidden_size), "model width")
      ("num_hidden_layers", bound(&model.num_hidden_layers), "encoder layers")
      ("num_attention_heads", bound(&model.num_attention_heads), "attention heads (must divide hidden_size)")
      ("intermediate_size", bound(&model.intermediate_size), "feed-forward width")
      ("max_position_embeddings", bound(&model.max_position_embeddings), "longest sequence the model can take")
      ("hidden_dropout_prob", bound(&model.hidden_dropout_prob), "dropout on hidden states, in [0, 1)")
      ("attention_probs_dropout_prob", bound(&model.attention_probs_dropout_prob),
       "dropout on attention probabilities, in [0, 1)");
}

}  // namespace

void add_train_options(po::options_description& options, core::TrainConfig& c) {
  po::options_description data("Data", 100);
  data.add_options()
      ("train_file", bound(&c.train_file), "training data: CSV (YelpReviewFull or HF export), JSON Lines, or a .h5 token cache from `prepare`")
      ("validation_file", bound(&c.validation_file), "evaluation data, same formats; \"\" = no evaluation")
      ("output_dir", bound(&c.output_dir), "where metrics.jsonl and checkpoint-<step>.h5 go")
      ("vocab", bound(&c.vocab), "vocab.txt or tokenizer.json of the model")
      ("do_lower_case", bound(&c.do_lower_case), "lower-case and strip accents (uncased models)")
      ("max_length", bound(&c.max_length), "tokens per review incl. [CLS]/[SEP]; longer reviews are truncated")
      ("label_offset", bound(&c.label_offset), "subtracted from the file's labels; -1 = auto (headerless CSV 1, HF exports 0)");
  po::options_description model("Model", 100);
  add_model_shape_options(model, c.model);
  po::options_description training("Training (HF TrainingArguments names)", 100);
  training.add_options()
      ("per_device_train_batch_size", bound(&c.per_device_train_batch_size), "reviews per rank per micro-batch")
      ("per_device_eval_batch_size", bound(&c.per_device_eval_batch_size), "reviews per rank per evaluation batch")
      ("gradient_accumulation_steps", bound(&c.gradient_accumulation_steps), "micro-batches per optimizer step")
      ("learning_rate", bound(&c.learning_rate), "peak AdamW learning rate")
      ("weight_decay", bound(&c.weight_decay), "AdamW decoupled weight decay (not on biases and LayerNorm weights)")
      ("adam_beta1", bound(&c.adam_beta1), "AdamW beta1")
      ("adam_beta2", bound(&c.adam_beta2), "AdamW beta2")
      ("adam_epsilon", bound(&c.adam_epsilon), "AdamW epsilon")
      ("max_grad_norm", bound(&c.max_grad_norm), "clip the global gradient norm to this; <= 0 = no clipping")
      ("zero_stage", bound(&c.zero_stage),
       "0 = every rank keeps all AdamW moments; 1 = ZeRO-1: each of N ranks keeps and updates 1/N of them")
      ("lr_scheduler_type", bound(&c.lr_scheduler_type), "linear | cosine | constant | constant_with_warmup")
      ("warmup_ratio", bound(&c.warmup_ratio), "warmup as a fraction of all steps, in [0, 1)")
      ("warmup_steps", bound(&c.warmup_steps), "warmup steps (> 0 wins over warmup_ratio)")
      ("num_train_epochs", bound(&c.num_train_epochs), "epochs (fractional allowed)")
      ("max_steps", bound(&c.max_steps), "optimizer steps (> 0 wins over num_train_epochs); -1 = from epochs")
      ("group_by_length", bound(&c.group_by_length), "batch reviews of similar length (less padding)")
      ("dataloader_drop_last", bound(&c.dataloader_drop_last), "drop the last incomplete batch of each epoch")
      ("seed", bound(&c.seed), "initialisation, shuffling and dropout seed");
  po::options_description logging("Logging, evaluation, checkpoints", 100);
  logging.add_options()
      ("logging_steps", bound(&c.logging_steps), "log the mean loss every N optimizer steps")
      ("eval_strategy", bound(&c.eval_strategy), "no | steps | epoch (a final evaluation runs whenever validation_file is set)")
      ("eval_steps", bound(&c.eval_steps), "with eval_strategy=steps: evaluate every N steps; 0 = logging_steps")
      ("save_steps", bound(&c.save_steps), "write a checkpoint every N steps; 0 = only at the end")
      ("save_total_limit", bound(&c.save_total_limit), "keep at most N checkpoints; 0 = all")
      ("resume_from_checkpoint", bound(&c.resume_from_checkpoint), "none | auto (latest in output_dir) | a checkpoint file")
      ("overwrite_output_dir", bound(&c.overwrite_output_dir), "start afresh even though output_dir holds checkpoints of an earlier run")
      ("init_from", bound(&c.init_from), "start from this checkpoint's weights (e.g. made by import-hf)")
      ("metric_for_best_model", bound(&c.metric_for_best_model), "\"\" | eval_loss | eval_accuracy | eval_macro_f1");
  po::options_description device("Device", 100);
  device.add_options()
      ("device", bound(&c.device), "auto | cpu | cuda")
      ("precision", bound(&c.precision), "auto | bf16 | fp16 | fp32 | tf32 (auto: bf16 on sm_80+, fp16 on older GPUs; cpu: fp32 only)")
      ("collective_timeout_s", bound(&c.collective_timeout_s),
       "abort the job, naming the missing rank, when a rank waits longer than this for the others");
  options.add(data).add(model).add(training).add(logging).add(device);
}

void add_eval_options(po::options_description& options, EvalOptions& e) {
  core::TrainConfig& c = e.config;
  options.add_options()
      ("checkpoint", po::value<std::string>(&e.checkpoint)->required(), "checkpoint-<step>.h5 to evaluate")
      ("validation_file", po::value<std::string>(&c.validation_file)->required(),
       "CSV / JSON Lines / .h5 token cache to evaluate on")
      ("per_device_eval_batch_size", bound(&c.per_device_eval_batch_size), "reviews per rank per batch")
      ("output", bound(&e.output), "also write the metrics as JSON to this file")
      ("device", bound(&c.device), "auto | cpu | cuda")
      ("precision", bound(&c.precision), "auto | bf16 | fp16 | fp32 | tf32 (cpu: fp32 only)")
      ("vocab", po::value<std::string>(&c.vocab), "vocabulary (default: the one stored in the checkpoint)")
      ("do_lower_case", po::value<bool>(&c.do_lower_case), "default: as the checkpoint was trained")
      ("max_length", po::value<int>(&c.max_length), "default: as the checkpoint was trained")
      ("label_offset", po::value<int>(&c.label_offset), "default: as the checkpoint was trained");
}

std::string effective_config_ini(const CommandLine& cl, const po::variables_map& vm) {
  std::ostringstream ini;
  print_effective_config(ini, cl, vm);
  return ini.str();
}

bool succeeded_on_every_rank(comm::Communicator& comm, const std::function<void()>& work) {
  std::exception_ptr error;
  try {
    work();
  } catch (...) {
    error = std::current_exception();
  }
  std::vector<int64_t> failed(static_cast<size_t>(comm.world_size()), 0);
  failed[static_cast<size_t>(comm.rank())] = error ? 1 : 0;
  comm.all_reduce_sum_host(failed.data(), failed.size());
  int first_failed = -1;
  for (size_t r = 0; r < failed.size() && first_failed < 0; ++r)
    if (failed[r]) first_failed = static_cast<int>(r);
  if (first_failed < 0) return true;
  if (first_failed == comm.rank()) std::rethrow_exception(error);
  return false;
}

void fail_collective(comm::Communicator& comm, std::exception_ptr error) {
  if (comm.world_size() == 1) std::rethrow_exception(error);
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    std::cerr << "llmqs-dist: error on rank " << comm.rank() << ": " << e.what() << "\n";
  } catch (...) {
    std::cerr << "llmqs-dist: error on rank " << comm.rank() << "\n";
  }
  std::cerr.flush();
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

}  // namespace llmqs::launch
