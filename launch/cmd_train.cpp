// `llmqs-dist train`: options -> TrainConfig -> core::Trainer, on every MPI rank, and the exit
// code that tells a job script what happened.
#include <iostream>
#include <memory>

#include "comm/communicator.h"
#include "core/trainer.h"
#include "launch/options.h"
#include "launch/subcommand.h"
#include "launch/train_options.h"

namespace llmqs::launch {

// Exit codes besides 0 / 1 (error) / 2 (usage): 3 a numerical fault (NaN/Inf loss or gradient,
// the last good checkpoint kept), 130 SIGINT, 143 SIGTERM (checkpoint written, resumable).
constexpr int kNumericalFaultExit = 3;

int run_train(int argc, char** argv) {
  core::TrainConfig config;
  CommandLine cl;
  cl.command = "train";
  cl.usage = "mpirun -np N llmqs-dist train --config configs/tiny.ini [--key value ...]";
  cl.summary =
      "Fine-tunes a BERT sequence classifier, data-parallel over the MPI ranks. Every INI key is\n"
      "also a flag (command line wins); names follow HF TrainingArguments. Progress goes to stderr\n"
      "and output_dir/metrics.jsonl; the final checkpoint to output_dir/checkpoint-<step>.h5.";
  add_train_options(cl.options, config);
  po::variables_map vm;
  // MPI first, so that a refusal (the same on every rank) is printed once, by rank 0; nothing is
  // read or written before the options are validated.
  comm::MpiSession mpi(&argc, &argv);
  std::unique_ptr<comm::Communicator> control = comm::make_mpi_communicator();
  bool proceed = true;
  if (!succeeded_on_every_rank(*control, [&] {
        proceed = parse_command_line(cl, argc, argv, vm);
        if (!proceed) return;
        config.config_ini = effective_config_ini(cl, vm);
        config.validate(/*for_training=*/true);
      }))
    return 1;
  if (!proceed) return 0;  // --help / --print-config

  // `device cuda` without a GPU is refused here, once, by rank 0.
  std::unique_ptr<comm::Communicator> comm;
  if (!succeeded_on_every_rank(*control, [&] { comm = core::make_communicator(config.device); })) return 1;
  std::unique_ptr<core::Trainer> trainer;
  if (!succeeded_on_every_rank(*comm, [&] { trainer = std::make_unique<core::Trainer>(config, *comm); })) return 1;
  try {
    const core::TrainSummary summary = trainer->train();
    // Pre-empted (SIGTERM) or interrupted (SIGINT): the checkpoint is written; exit as the shell
    // reports a process ended by that signal, so schedulers see it was stopped, not done.
    if (summary.stop_signal != 0) return 128 + summary.stop_signal;
  } catch (const core::NumericalFault& fault) {
    // Every rank saw the same all-reduced values and stopped at the same step: no abort needed.
    if (comm->rank() == 0) std::cerr << "llmqs-dist: error: " << fault.what() << "\n";
    return kNumericalFaultExit;
  } catch (const core::OutputFault& fault) {
    // output_dir failed rank 0 (full disk, not writable, ...): every rank knows, none waits.
    if (comm->rank() == 0) std::cerr << "llmqs-dist: error: " << fault.what() << "\n";
    return 1;
  } catch (...) {
    fail_collective(*comm, std::current_exception());
  }
  return 0;
}

LLMQS_REGISTER_SUBCOMMAND("train", "fine-tune a classifier (data-parallel over MPI ranks)", 40, run_train);

}  // namespace llmqs::launch
