// libFuzzer target: data/dataset_reader.h read_dataset on arbitrary bytes as CSV or JSON Lines.
// Byte 0 picks the format and label options; the rest is the file. Any result is fine as long as
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
  static const std::string path = fuzz::scratch_path((mode & 1) ? ".jsonl" : ".csv");
  fuzz::write_file(path, data + 1, size - 1);
  try {
    data::Dataset d = data::read_dataset(path, options);
    int64_t previous_line = 0;
    for (const auto& row : d.rows) {
      LLMQS_FUZZ_CHECK(row.label >= 0, "labels come out 0-based");
      if (options.num_labels > 0) LLMQS_FUZZ_CHECK(row.label < options.num_labels, "label below num_labels");
      LLMQS_FUZZ_CHECK(row.label < d.num_labels_seen, "num_labels_seen covers every label");
      LLMQS_FUZZ_CHECK(row.line > previous_line, "record lines increase");
      LLMQS_FUZZ_CHECK(fuzz::valid_utf8(row.text), "text is valid UTF-8");
      previous_line = row.line;
    }
  } catch (const std::runtime_error&) {
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
