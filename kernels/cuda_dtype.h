// The element types the CUDA kernels store activations in. Master weights, gradients and AdamW
// moments are always fp32; activations (and the weight copy the matmuls read) are fp32, bf16 or
// fp16, chosen at run time, so every kernel entry point takes a DType and untyped pointers.
#pragma once
#include <cstddef>
#include <string>

namespace llmqs::kernels {

enum class DType { kF32, kBF16, kF16 };

inline size_t dtype_bytes(DType type) { return type == DType::kF32 ? 4 : 2; }

inline const char* dtype_name(DType type) {
  switch (type) {
    case DType::kF32: return "fp32";
    case DType::kBF16: return "bf16";
    case DType::kF16: return "fp16";
  }
  return "?";
}

}  // namespace llmqs::kernels
