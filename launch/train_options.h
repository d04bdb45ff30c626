// The mapping between command-line / INI options and core::TrainConfig, shared by `train` and
// `eval`. Each option is bound to its TrainConfig field, and its default is that field's value
// in TrainConfig{}, so the defaults live in one place (core/train_config.h).
#pragma once
#include <exception>
#include <functional>
#include <string>

#include "comm/communicator.h"

#include "core/train_config.h"
#include "launch/options.h"

namespace llmqs::launch {

// Declares every training key, bound to the fields of `target` (which must outlive parsing).
void add_train_options(po::options_description& options, core::TrainConfig& target);

// What `eval` reads besides the checkpoint: validation_file, per_device_eval_batch_size,
// device, precision and optional overrides of the checkpoint's tokenizer settings.
struct EvalOptions {
  std::string checkpoint;
  std::string output;  // JSON metrics file, "" for none
  core::TrainConfig config;
};
void add_eval_options(po::options_description& options, EvalOptions& target);

// The effective configuration as INI text (for checkpoints and --print-config).
std::string effective_config_ini(const CommandLine& cl, const po::variables_map& vm);

// Runs `work` (which must call no collective) on every rank, then agrees on the outcome: true
// when it succeeded everywhere; otherwise the lowest failing rank rethrows its exception (so
// main prints it once) and every other rank gets false (exit non-zero, quietly).
bool succeeded_on_every_rank(comm::Communicator& comm, const std::function<void()>& work);

// A failure inside collective work: one rank cannot leave the others waiting, so with more than
// one rank the message is printed (with the rank) and the whole job is aborted; with one rank
// the exception is simply rethrown.
[[noreturn]] void fail_collective(comm::Communicator& comm, std::exception_ptr error);

}  // namespace llmqs::launch
