// Batched inference with a trained classifier: texts in, class probabilities out, in input order.
//
// A Predictor holds one checkpoint's model on a Backend together with exactly the tokenizer the
// model was trained with (the checkpoint's vocabulary, do_lower_case and max_length), so a
// review is encoded here the same way `train` and `eval` encoded it. Texts are sorted longest
// first into batches of batch_size (rows of similar length waste little padding), forwarded with
// dropout off, and the probabilities are put back in input order. Every row's logits depend only
// on its own tokens (padded keys get exactly zero attention), so the result does not depend on
// the batch size or on which other texts are in the input.
//
//   probabilities[i, k] = softmax_k(logits[i, :])   (computed in double, stored as float)
//   predicted_class[i]  = argmax_k probabilities[i, k] (the first one on ties), 0-based
//   dataset label       = predicted_class + label_offset (1-5 for a YelpReviewFull model)
//
// The input readers for `predict` live here too: CSV and JSON Lines (a label is optional and
// only echoed) and plain text, one review per line.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "comm/communicator.h"
#include "core/backend.h"
#include "core/checkpoint.h"
#include "data/wordpiece_tokenizer.h"

namespace llmqs::core {

struct Predictions {
  int num_labels = 0;
  std::vector<float> probabilities;      // [size x num_labels], row-major, input order
  std::vector<int32_t> predicted_class;  // [size], 0-based

  int64_t size() const { return static_cast<int64_t>(predicted_class.size()); }
  const float* row(int64_t i) const { return probabilities.data() + static_cast<size_t>(i) * num_labels; }
};

// Softmax of each row of logits [rows x num_labels] (max-subtracted, summed in double).
void softmax_rows(const float* logits, int64_t rows, int num_labels, float* probabilities);

// Batched forward of tokenized rows ([CLS] .. [SEP], each no longer than the model's
// max_position_embeddings): longest first, batch_size rows at a time, results in input order.
Predictions predict_token_rows(Backend& backend, const std::vector<std::vector<int32_t>>& token_rows, int batch_size,
                               int32_t pad_id);

// The tokenizer a checkpoint was trained with. Throws std::runtime_error naming `checkpoint_path`
// when the checkpoint carries no vocabulary or one larger than the model's embedding table.
data::WordPieceTokenizer checkpoint_tokenizer(const Checkpoint& checkpoint, const std::string& checkpoint_path);

struct PredictSettings {
  std::string device = "auto";     // auto | cpu | cuda (core/trainer.h: resolve_device)
  std::string precision = "auto";  // auto | bf16 | fp16 | fp32
  int batch_size = 8;              // the largest batch the backend is sized for
};

class Predictor {
 public:
  // Reads the checkpoint and puts its model on the device chosen by `settings` (make_backend).
  // `comm` only tells a GPU backend its local rank; no collective is called.
  static Predictor from_checkpoint(const std::string& checkpoint_path, const PredictSettings& settings,
                                   comm::Communicator& comm);
  // A checkpoint already in memory, on a backend of the caller's choice (tests). The backend's
  // config must match checkpoint.model; its parameters are set here.
  Predictor(const Checkpoint& checkpoint, const std::string& checkpoint_path, std::unique_ptr<Backend> backend);

  // Tokenizes with the checkpoint's settings and predicts; batch_size >= 1.
  Predictions predict(const std::vector<std::string>& texts, int batch_size);
  std::vector<int32_t> encode(std::string_view text) const { return tokenizer_.encode(text, max_length_); }

  int num_labels() const { return backend_->config().num_labels; }
  int label_offset() const { return label_offset_; }  // the checkpoint's: add it to a class index
  int max_length() const { return max_length_; }
  const data::WordPieceTokenizer& tokenizer() const { return tokenizer_; }
  Backend& backend() { return *backend_; }

 private:
  data::WordPieceTokenizer tokenizer_;
  std::unique_ptr<Backend> backend_;
  int max_length_ = 512;
  int label_offset_ = 0;
};

// ---- inputs of `predict` -----------------------------------------------------------------------

enum class PredictInputFormat { kAuto, kCsv, kJsonl, kText };

// "auto" | "csv" | "jsonl" | "text"; throws std::invalid_argument naming `format` otherwise.
PredictInputFormat parse_predict_input_format(const std::string& name);
// auto: .csv -> csv; .jsonl / .json / .ndjson -> jsonl; anything else -> text.
PredictInputFormat resolve_predict_input_format(PredictInputFormat format, const std::string& path);

struct PredictInput {
  std::string text;        // UTF-8, as in the file
  int64_t line = 0;        // 1-based line where the record starts (0 for --text)
  bool has_label = false;
  int64_t label = 0;       // the file's label, verbatim (not offset), when has_label
};

// Every record of the file, in file order. Errors are std::runtime_error starting `path:line:`.
//   csv    read by data::read_dataset with labels optional: YelpReviewFull as distributed, an HF
//          export with a `label,text` header, a `text` header alone, or one column of text
//          without a header (quoted where a review holds commas); labels are echoed when present.
//   jsonl  one object per line with a string "text"; "label" (integer) optional; "idx"/"id"
//          ignored; blank lines skipped.
//   text   one review per line (LF or CRLF), used as it is; blank lines skipped.
std::vector<PredictInput> read_predict_inputs(const std::string& path, PredictInputFormat format);

// The first `max_code_points` code points of valid UTF-8 text (for short echoes of the input).
std::string utf8_prefix(const std::string& text, size_t max_code_points);

}  // namespace llmqs::core
