// `llmqs-dist train`: options -> TrainConfig -> core::Trainer, on every MPI rank.
#include <iostream>
#include <memory>

#include "comm/communicator.h"
#include "core/trainer.h"
#include "launch/options.h"
#include "launch/subcommand.h"
#include "launch/train_options.h"

namespace llmqs::launch {

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

  std::unique_ptr<comm::Communicator> comm = core::make_communicator(config.device);
  std::unique_ptr<core::Trainer> trainer;
  if (!succeeded_on_every_rank(*comm, [&] { trainer = std::make_unique<core::Trainer>(config, *comm); })) return 1;
  try {
    trainer->train();
  } catch (...) {
    fail_collective(*comm, std::current_exception());
  }
  return 0;
}

LLMQS_REGISTER_SUBCOMMAND("train", "fine-tune a classifier (data-parallel over MPI ranks)", 40, run_train);

}  // namespace llmqs::launch
