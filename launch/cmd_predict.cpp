// `llmqs-dist predict`: star ratings (class probabilities) for new reviews from a checkpoint.
// One JSON object per input record, in input order (JSON Lines), to stdout or --output:
//   {"index": 0, "line": 3, "label": 4, "predicted_label": 5, "probabilities": [...], "text": "..."}
// index: 0-based position among the records; line: 1-based line of the input file where the
// record starts (absent for --text); label: the input's own label, verbatim, when it has one;
// predicted_label: argmax class + label_offset (the checkpoint's unless --label_offset is given),
// so a model trained on YelpReviewFull 1-5 answers 1-5; probabilities: softmax over the classes,
// probabilities[k] belongs to label k + label_offset; text: the first 80 characters of the input.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <system_error>
#include <charconv>
#include <vector>

#include "comm/communicator.h"
#include "core/trainer.h"
#include "core/checkpoint.h"
#include "core/predictor.h"
#include "launch/options.h"
#include "launch/subcommand.h"

namespace llmqs::launch {

namespace {

constexpr size_t kEchoedTextCodePoints = 80;

struct PredictOptions {
  std::string checkpoint;
  std::string input;
  std::string text;
  std::string output;
  std::string format = "auto";
  int per_device_eval_batch_size = 8;
  std::string device = "auto";
  std::string precision = "auto";
  int label_offset = -1;  // -1: the checkpoint's
};

// The shortest decimal that reads back as the same float (0.2, not 0.20000000298023224).
double shortest_float(float value) {
  char buffer[32];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  double shortest = 0.0;
  std::from_chars(buffer, result.ptr, shortest);
  return shortest;
}

std::string prediction_line(int64_t index, const core::PredictInput& input, bool from_file, const float* probabilities,
                            int num_labels, int32_t predicted_class, int label_offset) {
  nlohmann::ordered_json record;
  record["index"] = index;
  if (from_file) record["line"] = input.line;
  if (input.has_label) record["label"] = input.label;
  record["predicted_label"] = predicted_class + label_offset;
  nlohmann::ordered_json probs = nlohmann::ordered_json::array();
  for (int k = 0; k < num_labels; ++k) probs.push_back(shortest_float(probabilities[k]));
  record["probabilities"] = std::move(probs);
  record["text"] = core::utf8_prefix(input.text, kEchoedTextCodePoints);
  // --text is not validated as UTF-8: an invalid byte becomes U+FFFD rather than an error.
  return record.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace

int run_predict(int argc, char** argv) {
  PredictOptions o;
  CommandLine cl;
  cl.command = "predict";
  cl.usage = "llmqs-dist predict --checkpoint FILE.h5 (--input FILE | --text \"...\") [options]";
  cl.summary =
      "Predicts the class of each review with a checkpoint, tokenized exactly as the model was\n"
      "trained (the checkpoint's vocabulary, lower-casing and max_length). Writes one JSON object\n"
      "per review, in input order: index, line (file inputs), label (echoed when the input has\n"
      "one), predicted_label (class + label_offset: 1-5 for a YelpReviewFull model),\n"
      "probabilities (probabilities[k] is label k + label_offset) and the first 80 characters of\n"
      "text. Inputs: CSV (YelpReviewFull, an HF export, a 'text' header alone, or one column of\n"
      "text), JSON Lines with \"text\" (\"label\" optional) or plain text, one review per line.\n"
      "Labels are optional everywhere. Runs as one process.";
  cl.options.add_options()
      ("checkpoint", po::value<std::string>(&o.checkpoint)->required(), "checkpoint-<step>.h5 (from train or import-hf)")
      ("input", po::value<std::string>(&o.input), "file of reviews: .csv, .jsonl, or text (one review per line)")
      ("text", po::value<std::string>(&o.text), "one review given on the command line (instead of --input)")
      ("output", po::value<std::string>(&o.output), "write the JSON Lines here (default: stdout)")
      ("format", po::value<std::string>(&o.format)->default_value(o.format),
       "auto | csv | jsonl | text (auto: .csv, .jsonl/.json, anything else text)")
      ("per_device_eval_batch_size", po::value<int>(&o.per_device_eval_batch_size)->default_value(o.per_device_eval_batch_size),
       "reviews per forward pass")
      ("device", po::value<std::string>(&o.device)->default_value(o.device), "auto | cpu | cuda")
      ("precision", po::value<std::string>(&o.precision)->default_value(o.precision), "auto | bf16 | fp16 | fp32 (cpu: fp32 only)")
      ("label_offset", po::value<int>(&o.label_offset),
       "added to the class index in predicted_label (default: as the checkpoint was trained)");
  po::variables_map vm;
  if (!parse_command_line(cl, argc, argv, vm)) return 0;
  if (vm.count("input") == vm.count("text"))
    throw UsageError("predict: give exactly one of --input FILE and --text \"...\"");
  if (o.per_device_eval_batch_size < 1)
    throw UsageError("per_device_eval_batch_size: " + std::to_string(o.per_device_eval_batch_size) + " must be at least 1");
  if (vm.count("label_offset") && o.label_offset < 0)
    throw UsageError("label_offset: " + std::to_string(o.label_offset) + " is negative");
  const core::PredictInputFormat format = core::parse_predict_input_format(o.format);

  comm::MpiSession mpi(&argc, &argv);
  if (mpi.world_size() > 1)
    throw UsageError("predict: runs as one process; start it without mpirun (or with -np 1), not with " +
                     std::to_string(mpi.world_size()) + " ranks");
  // The device's communicator (NCCL for cuda picks the GPU before the backend exists).
  std::unique_ptr<comm::Communicator> comm = core::make_communicator(o.device);

  // Inputs first: a bad file is reported before the model is loaded.
  const bool from_file = vm.count("input") > 0;
  std::vector<core::PredictInput> inputs;
  if (from_file) {
    inputs = core::read_predict_inputs(o.input, format);
  } else {
    inputs.push_back(core::PredictInput{o.text, 0, false, 0});
  }

  core::PredictSettings settings;
  settings.device = o.device;
  settings.precision = o.precision;
  settings.batch_size = o.per_device_eval_batch_size;
  core::Predictor predictor = core::Predictor::from_checkpoint(o.checkpoint, settings, *comm);
  const int label_offset = vm.count("label_offset") ? o.label_offset : predictor.label_offset();

  std::vector<std::string> texts;
  texts.reserve(inputs.size());
  for (const auto& input : inputs) texts.push_back(input.text);
  const auto start = std::chrono::steady_clock::now();
  const core::Predictions predictions = predictor.predict(texts, o.per_device_eval_batch_size);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const std::string destination = o.output.empty() ? "" : core::temporary_path(o.output);
  std::ofstream file;
  if (!destination.empty()) {
    file.open(destination, std::ios::binary | std::ios::trunc);
    if (!file) throw std::runtime_error(o.output + ": cannot create " + destination);
  }
  std::ostream& out = destination.empty() ? std::cout : file;
  try {
    for (int64_t i = 0; i < predictions.size(); ++i) {
      out << prediction_line(i, inputs[static_cast<size_t>(i)], from_file, predictions.row(i), predictions.num_labels,
                             predictions.predicted_class[static_cast<size_t>(i)], label_offset)
          << '\n';
    }
    out.flush();
  } catch (...) {
    if (!destination.empty()) std::remove(destination.c_str());
    throw;
  }
  if (!destination.empty()) {
    file.close();
    if (!file) {
      std::remove(destination.c_str());
      throw std::runtime_error(o.output + ": cannot write (disk full?)");
    }
    core::publish_file(destination, o.output);
  }
  std::fprintf(stderr, "predict: %lld reviews, %.1f reviews/s on %s%s%s\n", static_cast<long long>(predictions.size()),
               seconds > 0 ? static_cast<double>(predictions.size()) / seconds : 0.0,
               predictor.backend().name().c_str(), o.output.empty() ? "" : " -> ", o.output.c_str());
  return 0;
}

LLMQS_REGISTER_SUBCOMMAND("predict", "class probabilities for new reviews (JSON Lines) from a checkpoint", 60, run_predict);

}  // namespace llmqs::launch
