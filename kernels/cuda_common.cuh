// Device-side helpers shared by the kernel files: typed load/store through float (every kernel
// computes in fp32 whatever the storage type), 16-byte packed loads/stores, dropout of a pack
// with one Philox call per eight elements, warp reductions, the DType dispatch macro and
// launch-size helpers. Included only by .cu files.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>

#include "kernels/cuda_check.h"
#include "kernels/cuda_dtype.h"
#include "kernels/philox.h"

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

// Blocks of `kernel` (threads per block, dynamic shared memory) that fit the current device at
// once: SMs x the occupancy calculator's blocks per SM (at least 1). For grids of one wave.
template <typename Kernel>
int resident_blocks_of(Kernel kernel, int threads, int dynamic_smem_bytes) {
  int device = 0, sms = 0, per_sm = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, dynamic_smem_bytes));
  return sms * per_sm > 0 ? sms * per_sm : 1;
}

// ---- 16-byte packs: kPack<T> consecutive elements moved with one 128-bit load or store ---------
// (8 for bf16/fp16, 4 for fp32). The address must be 16-byte aligned: callers check
// is_aligned16 on the host and fall back to a scalar kernel otherwise.
template <typename T>
constexpr int kPack = 16 / static_cast<int>(sizeof(T));

template <typename T>
struct alignas(16) Pack {
  T v[kPack<T>];
};

inline bool is_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T>
__device__ __forceinline__ void load_pack(const T* p, float (&out)[kPack<T>]) {
  const Pack<T> pack = *reinterpret_cast<const Pack<T>*>(p);
#pragma unroll
  for (int i = 0; i < kPack<T>; ++i) out[i] = to_float(pack.v[i]);
}

template <typename T>
__device__ __forceinline__ void store_pack(T* p, const float (&in)[kPack<T>]) {
  Pack<T> pack;
#pragma unroll
  for (int i = 0; i < kPack<T>; ++i) pack.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Pack<T>*>(p) = pack;
}

// kN fp32 values from 16-byte aligned fp32 memory (LayerNorm's gamma/beta), kN a multiple of 4.
template <int kN>
__device__ __forceinline__ void load_floats(const float* p, float (&out)[kN]) {
#pragma unroll
  for (int i = 0; i < kN; i += 4) {
    const float4 q = *reinterpret_cast<const float4*>(p + i);
    out[i] = q.x, out[i + 1] = q.y, out[i + 2] = q.z, out[i + 3] = q.w;
  }
}

// The site a kernel draws with: its own fields, or the key words in device memory when the site
// points at them (DropoutSite::key_words; CUDA graphs). Called once at kernel entry.
__device__ __forceinline__ DropoutSite resolve_site(DropoutSite site) {
  if (site.key_words != nullptr) {
    const uint32_t* w = site.key_words;
    site.seed = (uint64_t(w[1]) << 32) | w[0];
    site.step = (uint64_t(w[3]) << 32) | w[2];
    site.rank = w[4];
    site.micro_step = w[5];
    site.key_words = nullptr;
  }
  return site;
}

// The keep decisions (bit k: element first + k) of kN consecutive elements of a site's tensor,
// first % 4 == 0, kN % 4 == 0, kN <= 32 -- exactly dropout_keep's (philox.h), so masks match the
// CPU's. One Philox call per eight elements; a four-element pack (fp32) takes half of its call.
template <int kN>
__device__ __forceinline__ uint32_t dropout_keep_bits(const DropoutSite& site, int64_t first) {
  static_assert(kN % 4 == 0 && kN <= 32, "dropout_keep_bits: whole quads, one 32-bit word");
  const uint32_t threshold = dropout_threshold(site.p);
  uint32_t bits = 0;
  if (kN % 8 == 0 && (first & 7) == 0) {
#pragma unroll
    for (int g = 0; g < kN / 8; ++g) {
      const Philox4x32 w = dropout_words(site, static_cast<uint64_t>(first >> 3) + g);
#pragma unroll
      for (int c = 0; c < 8; ++c) bits |= uint32_t(dropout_keep_from_word(w.v[c >> 1], c & 1, threshold)) << (8 * g + c);
    }
  } else {
#pragma unroll
    for (int q = 0; q < kN / 4; ++q) {
      const int64_t e = first + 4 * q;
      const Philox4x32 w = dropout_words(site, static_cast<uint64_t>(e >> 3));
      const bool upper = (e & 4) != 0;  // elements 4..7 of the call: words 2 and 3
      const uint32_t lo = upper ? w.v[2] : w.v[0], hi = upper ? w.v[3] : w.v[1];
#pragma unroll
      for (int c = 0; c < 4; ++c)
        bits |= uint32_t(dropout_keep_from_word(c < 2 ? lo : hi, c & 1, threshold)) << (4 * q + c);
    }
  }
  return bits;
}

// Inverted dropout of kN consecutive elements first .. first + kN - 1 (dropout_keep_bits' terms).
template <int kN>
__device__ __forceinline__ void dropout_pack(const DropoutSite& site, int64_t first, float (&x)[kN], float scale) {
  if (site.p <= 0.0f) return;
  const uint32_t keep = dropout_keep_bits<kN>(site, first);
#pragma unroll
  for (int k = 0; k < kN; ++k) x[k] = (keep >> k) & 1u ? x[k] * scale : 0.0f;
}

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
