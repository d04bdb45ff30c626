// `llmqs-dist eval`: a checkpoint's loss, accuracy and macro-F1 on a dataset, sharded over the
// MPI ranks; rank 0 prints them (and writes them as JSON with --output).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <unistd.h>

#include "comm/communicator.h"
#include "core/trainer.h"
#include "launch/options.h"
#include "launch/subcommand.h"
#include "launch/train_options.h"

namespace llmqs::launch {

namespace {

void write_json_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp);
    out << text << '\n';
    out.close();
    if (!out) {
      std::filesystem::remove(tmp);
      throw std::runtime_error(path + ": cannot write");
    }
  }
  std::error_code error;
  std::filesystem::rename(tmp, path, error);
  if (error) {
    std::filesystem::remove(tmp);
    throw std::runtime_error(path + ": cannot write: " + error.message());
  }
}

}  // namespace

int run_eval(int argc, char** argv) {
  EvalOptions options;
  CommandLine cl;
  cl.command = "eval";
  cl.usage = "mpirun -np N llmqs-dist eval --checkpoint FILE.h5 --validation_file FILE [options]";
  cl.summary =
      "Evaluates a checkpoint: eval_loss, eval_accuracy, eval_macro_f1 and the confusion matrix over every example of the\n"
      "file (each counted once, whatever the number of ranks). The tokenizer settings stored in\n"
      "the checkpoint are used unless given here.";
  add_eval_options(cl.options, options);
  po::variables_map vm;
  comm::MpiSession mpi(&argc, &argv);
  std::unique_ptr<comm::Communicator> control = comm::make_mpi_communicator();
  bool proceed = true;
  // Parsed on every rank; a refusal is printed once, by rank 0.
  if (!succeeded_on_every_rank(*control, [&] { proceed = parse_command_line(cl, argc, argv, vm); })) return 1;
  if (!proceed) return 0;  // --help / --print-config
  core::TokenizerOverrides overrides;
  overrides.vocab = vm.count("vocab") > 0;
  overrides.do_lower_case = vm.count("do_lower_case") > 0;
  overrides.max_length = vm.count("max_length") > 0;
  overrides.label_offset = vm.count("label_offset") > 0;

  std::unique_ptr<comm::Communicator> comm;
  if (!succeeded_on_every_rank(*control, [&] { comm = core::make_communicator(options.config.device); })) return 1;
  core::EvalMetrics metrics;
  try {
    metrics = core::evaluate_checkpoint(options.checkpoint, options.config, overrides, *comm);
  } catch (...) {
    // Reading and checking happen alike on every rank, so an error is the same everywhere:
    // rank 0 reports it.
    if (comm->rank() == 0 || comm->world_size() == 1) throw;
    return 1;
  }
  if (comm->rank() != 0) return 0;
  nlohmann::ordered_json json;
  json["checkpoint"] = options.checkpoint;
  json["validation_file"] = options.config.validation_file;
  json["eval_samples"] = metrics.examples;
  json["eval_loss"] = metrics.loss;
  json["eval_accuracy"] = metrics.accuracy;
  json["eval_macro_f1"] = metrics.macro_f1;
  const int k = metrics.num_labels;
  nlohmann::json matrix = nlohmann::json::array();
  for (int t = 0; t < k; ++t) {
    nlohmann::json row = nlohmann::json::array();
    for (int p = 0; p < k; ++p) row.push_back(metrics.confusion[static_cast<size_t>(t) * k + p]);
    matrix.push_back(row);
  }
  json["confusion_matrix"] = matrix;  // [true class][predicted class]
  std::printf("eval: %lld examples | eval_loss %.4f | eval_accuracy %.4f | eval_macro_f1 %.4f\n",
              static_cast<long long>(metrics.examples), metrics.loss, metrics.accuracy, metrics.macro_f1);
  // Classes are 0-based (the file's label minus label_offset: Yelp's 1-5 stars are classes 0-4).
  std::printf("confusion matrix (rows: true class, columns: predicted class)\n%8s", "");
  for (int p = 0; p < k; ++p) std::printf(" %7d", p);
  std::printf(" %8s\n", "recall");
  for (int t = 0; t < k; ++t) {
    std::printf("%8d", t);
    int64_t row_total = 0;
    for (int p = 0; p < k; ++p) {
      const int64_t n = metrics.confusion[static_cast<size_t>(t) * k + p];
      row_total += n;
      std::printf(" %7lld", static_cast<long long>(n));
    }
    const int64_t hits = metrics.confusion[static_cast<size_t>(t) * k + t];
    std::printf(" %8.3f\n", row_total ? static_cast<double>(hits) / row_total : 0.0);
  }
  if (!options.output.empty()) write_json_file(options.output, json.dump(2));
  return 0;
}

LLMQS_REGISTER_SUBCOMMAND("eval", "loss, accuracy, macro-F1 and confusion matrix of a checkpoint on a dataset", 50, run_eval);

}  // namespace llmqs::launch
