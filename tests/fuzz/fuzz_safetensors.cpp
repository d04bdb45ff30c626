// libFuzzer target: core/safetensors.h SafetensorsFile on arbitrary bytes (header length, JSON
// header, offsets, dtypes, shapes, data). Opening either throws std::runtime_error or yields
// tensors whose byte ranges lie inside the data section and do not overlap; reading every float
// tensor then succeeds and reading any other dtype throws std::runtime_error.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "core/safetensors.h"
#include "tests/fuzz/fuzz_common.h"

using namespace llmqs;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = fuzz::scratch_path(".safetensors");
  fuzz::write_file(path, data, size);
  try {
    core::SafetensorsFile file(path);
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const auto& t : file.tensors()) {
      LLMQS_FUZZ_CHECK(t.begin <= t.end && 8 + t.end <= size, "range inside the file");
      LLMQS_FUZZ_CHECK(t.numel() * core::safetensors_dtype_size(t.dtype) == t.end - t.begin, "size matches shape");
      if (t.end > t.begin) ranges.emplace_back(t.begin, t.end);
      std::vector<float> out(t.numel());
      const bool is_float = t.dtype == "F32" || t.dtype == "F16" || t.dtype == "BF16" || t.dtype == "F64";
      try {
        file.read_f32(t, out.data());
        LLMQS_FUZZ_CHECK(is_float, "only float dtypes convert");
      } catch (const std::runtime_error&) {
        LLMQS_FUZZ_CHECK(!is_float, "a float tensor that passed validation reads");
      }
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
      LLMQS_FUZZ_CHECK(ranges[i].first >= ranges[i - 1].second, "ranges do not overlap");
  } catch (const std::runtime_error&) {
  }
  return 0;
}
