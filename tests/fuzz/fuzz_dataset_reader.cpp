// libFuzzer target: data/dataset_reader.h read_dataset on arbitrary bytes as CSV or JSON Lines.
// Byte 0 picks the format and label options (bit 0 JSON Lines, bits 1-2 label offset auto/0/1,
// bit 3 num_labels 5, bit 4 labels_optional as predict reads); the rest is the file. Any result is fine as long as
// it is a Dataset that keeps the reader's promises or a std::runtime_error / std::invalid_argument:
// no crash, no sanitizer report, no other exception type, no hang.
#include <cstdint>
#include <stdexcept>

#include "data/dataset_reader.h"
#include "tests/fuzz/fuzz_common.h"

using namespace llmqs;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  data::ReadOptions options;
  options.format = (mode & 1) ? data::DatasetFormat::kJsonl : data::DatasetFormat::kCsv;
  const int offsets[4] = {-1, 0, 1, -1};
  options.label_offset = offsets[(mode >> 1) & 3];
  options.num_labels = (mode & 8) ? 5 : 0;
  options.labels_optional = (mode & 16) != 0;
  static const std::string path = fuzz::scratch_path((mode & 1) ? ".jsonl" : ".csv");
  fuzz::write_file(path, data + 1, size - 1);
  try {
    data::Dataset d = data::read_dataset(path, options);
    int64_t previous_line = 0;
    LLMQS_FUZZ_CHECK(!d.rows.empty(), "a dataset has records");
    LLMQS_FUZZ_CHECK(d.has_labels || options.labels_optional, "labels only go missing when optional");
    for (const auto& row : d.rows) {
      if (d.has_labels) {
        LLMQS_FUZZ_CHECK(row.label >= 0, "labels come out 0-based");
        if (options.num_labels > 0) LLMQS_FUZZ_CHECK(row.label < options.num_labels, "label below num_labels");
        LLMQS_FUZZ_CHECK(row.label < d.num_labels_seen, "num_labels_seen covers every label");
      } else {
        LLMQS_FUZZ_CHECK(row.label == 0, "rows without labels carry label 0");
      }
      LLMQS_FUZZ_CHECK(row.line > previous_line, "record lines increase");
      LLMQS_FUZZ_CHECK(fuzz::valid_utf8(row.text), "text is valid UTF-8");
      previous_line = row.line;
    }
  } catch (const std::runtime_error&) {
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
