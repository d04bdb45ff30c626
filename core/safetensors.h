// The safetensors format (HF model.safetensors): 8-byte little-endian header length N, N bytes
// of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then
// the data section; offsets are relative to the start of the data section.
//
// The reader distrusts the header: it checks N against the file size, every dtype, that
// product(shape) x dtype size == end - begin, that every range lies inside the data section and
// that no two ranges overlap, all before any tensor byte is read. Tensors are then read with one
// pread each; F32, F16, BF16 and F64 convert to fp32, other dtypes (I64 position_ids buffers,
// ...) are listed but refuse conversion. The writer emits F32 only (what export needs).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace llmqs::core {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;            // as in the header: "F32", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range inside the data section
  size_t numel() const;
};

class SafetensorsFile {
 public:
  // Opens and validates; throws std::runtime_error naming the file (and the tensor) otherwise.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }  // header order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsTensor* find(const std::string& name) const;  // nullptr when absent

  // Reads one tensor converted to fp32 into out[0 .. numel). Throws for non-float dtypes.
  void read_f32(const SafetensorsTensor& tensor, float* out) const;
  std::vector<float> read_f32(const std::string& name) const;

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;  // 8 + header length
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Bytes per element of a safetensors dtype name; 0 for a name the format does not define.
size_t safetensors_dtype_size(const std::string& dtype);

struct SafetensorsF32Tensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;  // product(shape) floats
};

// Writes F32 tensors in the given order to <path>.tmp.<pid> and renames it to path (complete
// or absent). The header is space-padded to a multiple of 8 bytes, as the reference writer does.
void write_safetensors_f32(const std::string& path, const std::vector<SafetensorsF32Tensor>& tensors,
                           const std::map<std::string, std::string>& metadata);

}  // namespace llmqs::core
