// Batched inference and the input readers of `predict` (see predictor.h).
#include "core/predictor.h"

#include <utf8proc.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "core/evaluate.h"
#include "core/train_config.h"
#include "core/trainer.h"
#include "data/dataset_reader.h"

namespace llmqs::core {

namespace fs = std::filesystem;

// ---- inference ---------------------------------------------------------------------------------

void softmax_rows(const float* logits, int64_t rows, int num_labels, float* probabilities) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = logits + r * num_labels;
    float* p = probabilities + r * num_labels;
    const double largest = *std::max_element(z, z + num_labels);
    double sum = 0.0;
    for (int k = 0; k < num_labels; ++k) sum += std::exp(static_cast<double>(z[k]) - largest);
    for (int k = 0; k < num_labels; ++k) p[k] = static_cast<float>(std::exp(static_cast<double>(z[k]) - largest) / sum);
  }
}

Predictions predict_token_rows(Backend& backend, const std::vector<std::vector<int32_t>>& token_rows, int batch_size,
                               int32_t pad_id) {
  if (batch_size < 1)
    throw std::invalid_argument("per_device_eval_batch_size: " + std::to_string(batch_size) + " must be at least 1");
  const int num_labels = backend.config().num_labels;
  const int max_positions = backend.config().max_position_embeddings;
  const int64_t n = static_cast<int64_t>(token_rows.size());
  Predictions result;
  result.num_labels = num_labels;
  result.probabilities.resize(static_cast<size_t>(n) * num_labels);
  result.predicted_class.resize(static_cast<size_t>(n));

  // Longest first: rows of one batch then have similar lengths, and the first batch is the
  // largest, so a batch that does not fit fails at once rather than at the end.
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return token_rows[a].size() > token_rows[b].size(); });

  std::vector<std::vector<int32_t>> rows;
  std::vector<float> logits;
  std::vector<float> probabilities;
  for (int64_t first = 0; first < n; first += batch_size) {
    const int64_t last = std::min(n, first + batch_size);
    rows.clear();
    for (int64_t i = first; i < last; ++i) rows.push_back(token_rows[order[i]]);
    const data::Batch batch = make_padded_batch(rows, /*labels=*/{}, pad_id, max_positions);
    logits.assign(static_cast<size_t>(batch.rows) * num_labels, 0.0f);
    probabilities.resize(logits.size());
    backend.forward(batch, logits.data());
    softmax_rows(logits.data(), batch.rows, num_labels, probabilities.data());
    for (int64_t i = first; i < last; ++i) {
      const float* p = probabilities.data() + (i - first) * num_labels;
      const int64_t target = order[i];
      std::copy(p, p + num_labels, result.probabilities.begin() + target * num_labels);
      result.predicted_class[target] = static_cast<int32_t>(std::max_element(p, p + num_labels) - p);
    }
  }
  return result;
}

data::WordPieceTokenizer checkpoint_tokenizer(const Checkpoint& checkpoint, const std::string& checkpoint_path) {
  const std::vector<std::string>& vocab = checkpoint.tokenizer.vocab;
  if (vocab.empty())
    throw std::runtime_error(checkpoint_path + ": carries no vocabulary (/tokenizer/vocab); re-create it with "
                             "`llmqs-dist import-hf` or a `train` run that stores one");
  if (static_cast<int64_t>(vocab.size()) > checkpoint.model.vocab_size)
    throw std::runtime_error(checkpoint_path + ": the vocabulary has " + std::to_string(vocab.size()) +
                             " tokens, more than the model's vocab_size " + std::to_string(checkpoint.model.vocab_size));
  try {
    return data::WordPieceTokenizer::from_tokens(vocab, checkpoint.tokenizer.do_lower_case,
                                                 checkpoint_path + " (/tokenizer/vocab)");
  } catch (const std::exception& e) {
    throw std::runtime_error(checkpoint_path + ": vocabulary: " + e.what());
  }
}

Predictor Predictor::from_checkpoint(const std::string& checkpoint_path, const PredictSettings& settings,
                                     comm::Communicator& comm) {
  if (settings.batch_size < 1)
    throw std::invalid_argument("per_device_eval_batch_size: " + std::to_string(settings.batch_size) +
                                " must be at least 1");
  Checkpoint checkpoint = read_checkpoint(checkpoint_path);
  TrainConfig config;
  config.model = checkpoint.model;
  config.device = resolve_device(settings.device);
  config.precision = resolve_precision(config.device, settings.precision);
  config.max_length = checkpoint.tokenizer.max_length;
  config.per_device_eval_batch_size = settings.batch_size;
  config.per_device_train_batch_size = settings.batch_size;  // sizes a GPU backend's arena
  return Predictor(checkpoint, checkpoint_path, make_backend(config, comm));
}

Predictor::Predictor(const Checkpoint& checkpoint, const std::string& checkpoint_path, std::unique_ptr<Backend> backend)
    : tokenizer_(checkpoint_tokenizer(checkpoint, checkpoint_path)),
      backend_(std::move(backend)),
      max_length_(checkpoint.tokenizer.max_length),
      label_offset_(checkpoint.tokenizer.label_offset) {
  if (!backend_) throw std::invalid_argument("Predictor: no backend");
  if (max_length_ < 2 || max_length_ > checkpoint.model.max_position_embeddings)
    throw std::runtime_error(checkpoint_path + ": tokenizer max_length " + std::to_string(max_length_) +
                             " is outside [2, max_position_embeddings " +
                             std::to_string(checkpoint.model.max_position_embeddings) + "]");
  if (backend_->config().num_labels != checkpoint.model.num_labels ||
      backend_->layout().total_numel() != checkpoint.parameters.size())
    throw std::invalid_argument(checkpoint_path + ": the backend's model shape differs from the checkpoint's");
  backend_->set_parameters(checkpoint.parameters.data());
}

Predictions Predictor::predict(const std::vector<std::string>& texts, int batch_size) {
  std::vector<std::vector<int32_t>> token_rows(texts.size());
  const int64_t n = static_cast<int64_t>(texts.size());
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t i = 0; i < n; ++i) tokenizer_.encode_into(texts[i], max_length_, token_rows[i]);
  return predict_token_rows(*backend_, token_rows, batch_size, tokenizer_.pad_id());
}

// ---- inputs ------------------------------------------------------------------------------------

namespace {

[[noreturn]] void fail(const std::string& path, int64_t line, const std::string& problem) {
  throw std::runtime_error(path + ":" + std::to_string(line) + ": " + problem);
}

std::string read_whole_file(const std::string& path) {
  std::error_code error;
  const auto status = fs::status(path, error);
  if (error || !fs::exists(status)) fail(path, 1, "cannot open input: no such file");
  if (fs::is_directory(status)) fail(path, 1, "is a directory, expected a .csv, .jsonl or text file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, 1, std::string("cannot open input: ") + std::strerror(errno));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) fail(path, 1, "read error");
  std::string text = contents.str();
  if (text.size() >= 3 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // UTF-8 byte order mark
  return text;
}

// Byte offset of the first invalid UTF-8 sequence, or npos.
size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    utf8proc_int32_t code_point;
    const utf8proc_ssize_t used = utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(s.size() - i), &code_point);
    if (used <= 0) return i;
    i += static_cast<size_t>(used);
  }
  return std::string_view::npos;
}

bool is_blank(std::string_view line) {
  return std::all_of(line.begin(), line.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r'; });
}

// Calls visit(line_text, line_number) for every non-blank line; strips a trailing '\r'.
template <typename Visit>
void for_each_line(const std::string& contents, Visit visit) {
  int64_t line_number = 1;
  size_t begin = 0;
  while (begin < contents.size()) {
    size_t end = contents.find('\n', begin);
    if (end == std::string::npos) end = contents.size();
    std::string_view line(contents.data() + begin, end - begin);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!is_blank(line)) visit(line, line_number);
    begin = end + 1;
    ++line_number;
  }
}

std::vector<PredictInput> read_text_lines(const std::string& path) {
  const std::string contents = read_whole_file(path);
  std::vector<PredictInput> inputs;
  for_each_line(contents, [&](std::string_view line, int64_t line_number) {
    const size_t bad = find_invalid_utf8(line);
    if (bad != std::string_view::npos)
      fail(path, line_number,
           "invalid UTF-8 at byte " + std::to_string(bad + 1) + " of the line (convert the file to UTF-8)");
    inputs.push_back(PredictInput{std::string(line), line_number, false, 0});
  });
  return inputs;
}

std::vector<PredictInput> read_json_lines(const std::string& path) {
  const std::string contents = read_whole_file(path);
  std::vector<PredictInput> inputs;
  for_each_line(contents, [&](std::string_view line, int64_t line_number) {
    nlohmann::json object;
    try {
      object = nlohmann::json::parse(line.begin(), line.end());
    } catch (const nlohmann::json::parse_error& e) {
      std::string what = e.what();
      const size_t tag_end = what.find("] ");  // drop nlohmann's "[json.exception.parse_error.101] "
      if (what.rfind("[json.exception", 0) == 0 && tag_end != std::string::npos) what = what.substr(tag_end + 2);
      fail(path, line_number, "JSON syntax error: " + what);
    }
    if (!object.is_object())
      fail(path, line_number, std::string("expected a JSON object with a \"text\" string, found a JSON ") +
                                  object.type_name());
    PredictInput input;
    input.line = line_number;
    const auto text = object.find("text");
    if (text == object.end()) fail(path, line_number, "missing key \"text\"");
    if (!text->is_string())
      fail(path, line_number, std::string("\"text\" must be a string, found a JSON ") + text->type_name());
    input.text = text->get<std::string>();
    const auto label = object.find("label");
    if (label != object.end() && !label->is_null()) {
      if (!label->is_number_integer())
        fail(path, line_number, std::string("\"label\" must be an integer, found a JSON ") + label->type_name());
      if (label->is_number_unsigned() && label->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
        fail(path, line_number, "\"label\" " + label->dump() + " is out of range");
      input.has_label = true;
      input.label = label->get<int64_t>();
    }
    inputs.push_back(std::move(input));
  });
  return inputs;
}

std::vector<PredictInput> read_labeled_csv(const std::string& path) {
  data::ReadOptions options;
  options.format = data::DatasetFormat::kCsv;
  options.label_offset = 0;  // keep the file's labels verbatim: predict only echoes them
  options.labels_optional = true;
  data::Dataset dataset = data::read_dataset(path, options);
  std::vector<PredictInput> inputs;
  inputs.reserve(dataset.rows.size());
  for (data::LabeledText& row : dataset.rows)
    inputs.push_back(PredictInput{std::move(row.text), row.line, dataset.has_labels, row.label});
  return inputs;
}

std::string lower_ascii(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

PredictInputFormat parse_predict_input_format(const std::string& name) {
  if (name == "auto") return PredictInputFormat::kAuto;
  if (name == "csv") return PredictInputFormat::kCsv;
  if (name == "jsonl") return PredictInputFormat::kJsonl;
  if (name == "text") return PredictInputFormat::kText;
  throw std::invalid_argument("format: unknown value '" + name + "' (expected one of: auto, csv, jsonl, text)");
}

PredictInputFormat resolve_predict_input_format(PredictInputFormat format, const std::string& path) {
  if (format != PredictInputFormat::kAuto) return format;
  const std::string extension = lower_ascii(fs::path(path).extension().string());
  if (extension == ".csv") return PredictInputFormat::kCsv;
  if (extension == ".jsonl" || extension == ".json" || extension == ".ndjson") return PredictInputFormat::kJsonl;
  return PredictInputFormat::kText;
}

std::vector<PredictInput> read_predict_inputs(const std::string& path, PredictInputFormat format) {
  std::vector<PredictInput> inputs;
  switch (resolve_predict_input_format(format, path)) {
    case PredictInputFormat::kCsv:
      inputs = read_labeled_csv(path);
      break;
    case PredictInputFormat::kJsonl:
      inputs = read_json_lines(path);
      break;
    default:
      inputs = read_text_lines(path);
      break;
  }
  if (inputs.empty()) fail(path, 1, "no reviews to predict (the file is empty or blank)");
  return inputs;
}

std::string utf8_prefix(const std::string& text, size_t max_code_points) {
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  size_t bytes = 0;
  for (size_t count = 0; count < max_code_points && bytes < text.size(); ++count) {
    utf8proc_int32_t code_point;
    const utf8proc_ssize_t used =
        utf8proc_iterate(p + bytes, static_cast<utf8proc_ssize_t>(text.size() - bytes), &code_point);
    bytes += used > 0 ? static_cast<size_t>(used) : 1;
  }
  return text.substr(0, bytes);
}

}  // namespace llmqs::core
