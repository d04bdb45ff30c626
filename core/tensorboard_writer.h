// TensorBoard event files written by hand: no TensorFlow, no protobuf library. An event file is
// a sequence of TFRecords (u64 length, masked CRC-32C of the length, payload, masked CRC-32C of
// the payload); each payload is a serialized tensorflow.Event protobuf. We only ever emit three
// message shapes, so the protobuf wire encoding is written out directly:
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
// Rank 0 owns one writer per run, under output_dir/runs/.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace llmqs::core {

class TensorBoardWriter {
 public:
  // Creates log_dir (and parents) and a new events.out.tfevents.<seconds>.<host> file in it.
  explicit TensorBoardWriter(const std::string& log_dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One event holding several scalars at the same step (e.g. "train/loss", "train/learning_rate").
  void add_scalars(int64_t step, const std::vector<std::pair<std::string, float>>& scalars);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& payload);
  std::string path_;
  std::FILE* file_ = nullptr;
};

// CRC-32C (Castagnoli) and TFRecord's masking of it; exposed for the tests.
uint32_t crc32c(const void* data, size_t size);
uint32_t masked_crc32c(const void* data, size_t size);

}  // namespace llmqs::core
