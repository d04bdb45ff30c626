// Device-side helpers shared by the kernel files: typed load/store through float (every kernel
// computes in fp32 whatever the storage type), warp and block reductions, the DType dispatch
// macro and launch-size helpers. Included only by .cu files.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>

#include "kernels/cuda_check.h"
#include "kernels/cuda_dtype.h"

namespace llmqs::kernels::cuda {

template <typename T>
__device__ __forceinline__ float to_float(T x);
template <>
__device__ __forceinline__ float to_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }
template <>
__device__ __forceinline__ float to_float<__half>(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

inline unsigned int ceil_div(int64_t a, int64_t b) { return static_cast<unsigned int>((a + b - 1) / b); }

}  // namespace llmqs::kernels::cuda

// Runs `...` with `scalar_t` bound to the storage type of `dtype`.
#define LLMQS_DISPATCH_DTYPE(dtype, ...)                                  \
  switch (dtype) {                                                        \
    case ::llmqs::kernels::DType::kF32: {                                 \
      using scalar_t = float;                                             \
      __VA_ARGS__;                                                        \
      break;                                                              \
    }                                                                     \
    case ::llmqs::kernels::DType::kBF16: {                                \
      using scalar_t = __nv_bfloat16;                                     \
      __VA_ARGS__;                                                        \
      break;                                                              \
    }                                                                     \
    case ::llmqs::kernels::DType::kF16: {                                 \
      using scalar_t = __half;                                            \
      __VA_ARGS__;                                                        \
      break;                                                              \
    }                                                                     \
  }
