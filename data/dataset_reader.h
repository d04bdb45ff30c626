// Labeled-text dataset readers: YelpReviewFull CSV as distributed (no header, label 1-5, RFC 4180
// quoting), HF `datasets` CSV exports (`label,text` header, label 0-4) and JSON Lines exports
// (`{"label": 0, "text": "..."}` per line). Text is passed through byte for byte (literal two-character
// `\n` sequences stay, as in HF's yelp_review_full) after UTF-8 validation; labels come out 0-based.
// Every error is a std::runtime_error whose message starts with `path:line:`.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llmqs::data {

struct LabeledText {
  int32_t label;     // 0-based class index (raw label - label_offset)
  std::string text;  // UTF-8, unmodified
  int64_t line;      // 1-based line of the file where the record starts
};

enum class DatasetFormat { kAuto, kCsv, kJsonl };

struct ReadOptions {
  DatasetFormat format = DatasetFormat::kAuto;  // auto: by extension (.jsonl/.json -> jsonl, else csv)
  int label_offset = -1;  // -1 = auto: headerless CSV (YelpReviewFull as distributed) -> 1; CSV with a
                          // `label,text` header or JSON Lines (HF datasets exports) -> 0
  int num_labels = 0;     // > 0: every label - offset must be in [0, num_labels), else error naming file:line
  bool labels_optional = false;  // true (predict): a CSV without a label column (a one-field first record,
                                 // or a header without 'label') or JSON Lines without "label" read as text
};

struct Dataset {
  std::string path;
  std::vector<LabeledText> rows;
  int label_offset = 0;     // the offset that was applied (resolved when options said auto)
  int num_labels_seen = 0;  // max 0-based label + 1
  bool has_labels = true;   // false only with ReadOptions::labels_optional: every row's label is 0
};

Dataset read_dataset(const std::string& path, const ReadOptions& options);

// "auto" | "csv" | "jsonl" (as given to --format); throws std::invalid_argument otherwise.
DatasetFormat parse_dataset_format(const std::string& name);

}  // namespace llmqs::data
