// Pieces the two fused-attention files share (kernels/flash_attention.cu: mma.sync, every GPU from
// sm_75; kernels/flash_attention_sm90.cu: Hopper's warpgroup MMA): the tile size, bf16/fp16 pairs,
// ldmatrix and cp.async, quad reductions, and the layouts of the dropout bitmask and the dS^T
// buffer that the forward and backward kernels of both files read and write. Included only by .cu files.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace llmqs::kernels::cuda {
namespace {

constexpr int kTile = 64;     // keys (or queries) per streamed tile
constexpr float kLog2e = 1.4426950408889634f;

template <typename T>
struct Pack2;
template <>
struct Pack2<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};
template <>
struct Pack2<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lane l gives the address of row l % 8 of matrix l / 8 and receives, of
// matrix i, row l / 4 elements 2 (l % 4), +1 in r[i] (.trans: column l / 4 rows 2 (l % 4), +1).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(p)));
}

// Asynchronous global -> shared copies on sm_80+ (zero-filled when !in); plain copies on sm_75,
// where the wait functions are no-ops. `src` must be a valid address even when !in.
template <int kBytes>
__device__ __forceinline__ void copy_async(void* dst, const void* src, bool in) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (kBytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src),
                 "r"(in ? 16 : 0));
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_address(dst)), "l"(src), "n"(kBytes),
                 "r"(in ? kBytes : 0));
#else
  if constexpr (kBytes == 16) *static_cast<uint4*>(dst) = in ? *static_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
  else if constexpr (kBytes == 8) *static_cast<uint2*>(dst) = in ? *static_cast<const uint2*>(src) : make_uint2(0, 0);
  else *static_cast<uint32_t*>(dst) = in ? *static_cast<const uint32_t*>(src) : 0u;
#endif
}
__device__ __forceinline__ void copy_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int kPending>
__device__ __forceinline__ void copy_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}
// The accumulators of two adjacent 16x8 column blocks (2kk, 2kk+1) as the A fragment of
// columns [16kk, 16kk + 16): the register reuse that keeps P in registers between products.
template <typename T>
__device__ __forceinline__ void acc_to_a(uint32_t a[4], const float lo[4], const float hi[4]) {
  a[0] = Pack2<T>::pack(lo[0], lo[1]);
  a[1] = Pack2<T>::pack(lo[2], lo[3]);
  a[2] = Pack2<T>::pack(hi[0], hi[1]);
  a[3] = Pack2<T>::pack(hi[2], hi[3]);
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// ---- the dropout mask ---------------------------------------------------------------------------
// Bit j % 32 of word mask[(bh * seq + i) * words_per_row + j / 32] is keep(i, j) (j < seq), drawn
// by the forward, read by the backward. words_per_row = 2 ceil(seq / 64): a 64-key tile of a query
// is one aligned 8-byte pair.
__host__ __device__ __forceinline__ int mask_words_per_row(int seq) { return 2 * ((seq + kTile - 1) / kTile); }

// Rows and columns of one head's dS^T block (flash_attention_ds_elements): seq rounded up to whole
// 64-key tiles, so the dQ kernel's 64 x 64 loads never need a bound check.
__host__ __device__ __forceinline__ int ds_pad(int seq) { return (seq + kTile - 1) / kTile * kTile; }

}  // namespace
}  // namespace llmqs::kernels::cuda
