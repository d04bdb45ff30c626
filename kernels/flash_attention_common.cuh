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

// ---- delta = dO . O ------------------------------------------------------------------------------
// One order for every kernel that forms delta (flash_attention.cu's delta kernel, the Hopper
// short-row backward), so that they give the same bits: the eight products of a 16-byte pack in
// order, then the kPacks packs of a head, held by kPacks consecutive lanes, by an xor tree.
__device__ __forceinline__ float pack_dot(const float (&a)[8], const float (&b)[8]) {
  float sum = 0.0f;
#pragma unroll
  for (int e = 0; e < 8; ++e) sum += a[e] * b[e];
  return sum;
}
template <int kPacks>
__device__ __forceinline__ float sum_over_head_lanes(float sum) {
#pragma unroll
  for (int offset = 1; offset < kPacks; offset <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  return sum;
}

// ---- the dropout mask ---------------------------------------------------------------------------
// Bit j % 32 of word mask[(bh * seq + i) * words_per_row + j / 32] is keep(i, j) (j < seq), drawn
// by the forward, read by the backward. words_per_row = 2 ceil(seq / 64): a 64-key tile of a query
// is one aligned 8-byte pair.
__host__ __device__ __forceinline__ int mask_words_per_row(int seq) { return 2 * ((seq + kTile - 1) / kTile); }

// Rows and columns of one head's dS^T block (flash_attention_ds_elements): seq rounded up to whole
// 64-key tiles, so the dQ kernel's 64 x 64 loads never need a bound check.
__host__ __device__ __forceinline__ int ds_pad(int seq) { return (seq + kTile - 1) / kTile * kTile; }

// ---- the dK/dV kernels' elementwise step --------------------------------------------------------
// Warp w of a dK/dV kernel owns keys j0 + 16 w .. + 15 of its 64-key block; thread (g, t) holds
// the scores of keys kj[0] = j0 + 16 w + g and kj[1] = kj[0] + 8, whose keep bits sit in the same
// word of a query's 64-key mask pair (word w / 2) at bits shift[0] and shift[1].
struct WarpKeys {
  int kj[2];
  bool high_word;  // the pair's second word (warps 2 and 3)
  bool valid[2];   // below the row's length
  int shift[2];
};
__device__ __forceinline__ WarpKeys warp_keys(int j0, int warp, int g, int len) {
  WarpKeys keys;
  keys.kj[0] = j0 + warp * 16 + g;
  keys.kj[1] = keys.kj[0] + 8;
  keys.high_word = warp >= 2;
  keys.valid[0] = keys.kj[0] < len;
  keys.valid[1] = keys.kj[1] < len;
  keys.shift[0] = (warp * 16 + g) & 31;
  keys.shift[1] = (warp * 16 + g + 8) & 31;
  return keys;
}

// One 8-query column block of the transposed scores, in place: S^T in s4 -> Pd^T (dropped
// probabilities), dPd^T in dp4 -> dS^T. Element e: query column col + (e & 1) of the tile (col =
// 8n + 2t), key kj[e >> 1]; the two columns' lse, delta and mask pairs are adjacent in shared memory
// (one 8- or 16-byte load each). Column col + y is inside seq iff block_col + y < query_room
// (block_col = 8n: one compare with a constant per element); kBoundsTests = false: every key and
// query of the block is inside the row (the caller knows), so the tests are left out.
template <bool kBoundsTests = true>
__device__ __forceinline__ void scores_to_ds_block(float* s4, float* dp4, const float* lse_tile,
                                                   const float* delta_tile, const uint2* mask_tile, int col,
                                                   int block_col, int query_room, bool dropout,
                                                   const WarpKeys& keys, float scale2, float keep_scale) {
  const float2 lse2 = *reinterpret_cast<const float2*>(lse_tile + col);
  const float2 delta2 = *reinterpret_cast<const float2*>(delta_tile + col);
  uint32_t words[2] = {~0u, ~0u};  // the mask words of columns col, col + 1 holding this warp's keys
  if (dropout) {
    const uint4 mask2 = *reinterpret_cast<const uint4*>(mask_tile + col);
    words[0] = keys.high_word ? mask2.y : mask2.x;
    words[1] = keys.high_word ? mask2.w : mask2.z;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int y = e & 1, x = e >> 1;
    const float row_lse = y ? lse2.y : lse2.x, row_delta = y ? delta2.y : delta2.x;
    float prob = exp2f(fmaf(s4[e], scale2, -row_lse));
    if (kBoundsTests && !(keys.valid[x] && block_col + y < query_room)) prob = 0.0f;
    const float keep = (words[y] >> keys.shift[x]) & 1u ? keep_scale : 0.0f;
    dp4[e] = prob * fmaf(dp4[e], keep, -row_delta);  // dS^T
    s4[e] = prob * keep;                              // Pd^T
  }
}

}  // namespace
}  // namespace llmqs::kernels::cuda
