// Deterministic column reductions: out[c] += sum_r f(r, c) for an element functor f, used for
// bias, LayerNorm gamma/beta and token-type gradients. Two launches, no atomics, so the bits do
// not depend on scheduling:
//   1. grid (ceil(cols / 32), ceil(rows / kColumnReduceChunk)), block (32, 8): thread (tx, ty)
//      sums column blockIdx.x * 32 + tx over rows ty, ty + 8, ... of its chunk, in that order;
//      the 8 partial sums are added in ty order in shared memory and written to partial[chunk, c];
//   2. column_reduce_finish: block (32, 8) per 32 columns; thread (tx, ty) adds
//      partial[ty, ty + 8, ...] of its column in order, then the 8 sums are added in ty order
//      into out[c]. The finish used to be one thread per column walking all chunks (3 blocks for
//      768 columns, ~256 dependent L2 loads each: a third of the 0.029 ms column sum); now 8
//      threads per column share the chunks.
// Coalesced: the 32 threads of a warp read 32 consecutive columns of one row (the packed form
// below: 32 consecutive 16-byte packs). A functor may ask for rows in flight: with
// F::kRowsInFlight (scalar kernel) or F::kPackRowsInFlight (packed kernel) = U a thread loads U
// rows before adding any (the additions stay in row order, so U changes no bits), U loads in
// flight instead of one. The default is 1: a functor that stores (the fused dGELU pass) could not
// have its next loads moved above its stores anyway, and U rows of its values cost registers.
#pragma once
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

#include <algorithm>
#include <type_traits>

namespace llmqs::kernels::cuda {

template <typename F, typename = void>
struct RowsInFlight : std::integral_constant<int, 1> {};
template <typename F>
struct RowsInFlight<F, std::void_t<decltype(F::kRowsInFlight)>> : std::integral_constant<int, F::kRowsInFlight> {};
template <typename F, typename = void>
struct PackRowsInFlight : std::integral_constant<int, 1> {};
template <typename F>
struct PackRowsInFlight<F, std::void_t<decltype(F::kPackRowsInFlight)>>
    : std::integral_constant<int, F::kPackRowsInFlight> {};

template <typename F>
__global__ void __launch_bounds__(256) column_reduce_partial_kernel(F f, int64_t rows, int cols, float* partial) {
  __shared__ float sums[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kColumnReduceChunk;
  const int64_t end = min(rows, begin + kColumnReduceChunk);
  constexpr int U = RowsInFlight<F>::value;
  float acc = 0.0f;
  if (c < cols) {
    for (int64_t r0 = begin + threadIdx.y; r0 < end; r0 += 8 * U) {
      float values[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t r = r0 + 8 * u;
        values[u] = r < end ? f(r, c) : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (r0 + 8 * u < end) acc += values[u];
    }
  }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = 0.0f;
    for (int i = 0; i < 8; ++i) total += sums[i][threadIdx.x];
    partial[static_cast<int64_t>(blockIdx.y) * cols + c] = total;
  }
}

// static: each .cu that reduces gets its own copy (no relocatable device code needed).
// Block (32, 8), grid ceil(cols / 32); see the file comment for the order.
static __global__ void __launch_bounds__(256) column_reduce_finish_kernel(const float* partial, int chunks, int cols,
                                                                          float* out, int out_cols, float* out2) {
  __shared__ float sums[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  float total = 0.0f;
  if (c < cols) {
    for (int i0 = threadIdx.y; i0 < chunks; i0 += 8 * 4) {
      float values[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int i = i0 + 8 * u;
        values[u] = i < chunks ? partial[static_cast<int64_t>(i) * cols + c] : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < 4; ++u)
        if (i0 + 8 * u < chunks) total += values[u];
    }
  }
  sums[threadIdx.y][threadIdx.x] = total;
  __syncthreads();
  if (threadIdx.y != 0 || c >= cols) return;
  total = 0.0f;
  for (int i = 0; i < 8; ++i) total += sums[i][threadIdx.x];
  if (c < out_cols)
    out[c] += total;
  else
    out2[c - out_cols] += total;
}

// Adds partial[0..chunks) x cols into out (columns [0, out_cols)) and out2 (the rest).
static inline void column_reduce_finish(const float* partial, int chunks, int cols, float* out, int out_cols, float* out2,
                                 cudaStream_t stream) {
  column_reduce_finish_kernel<<<ceil_div(cols, 32), dim3(32, 8), 0, stream>>>(partial, chunks, cols, out, out_cols,
                                                                               out2);
  CUDA_CHECK_LAUNCH("column_reduce_finish_kernel");
}

// Packed form of the same reduction for 16-byte packs: thread (tx, ty) of a (32, 8) block owns
// the kN columns c0 = (blockIdx.x * 32 + tx) * kN .. c0 + kN - 1 and the rows ty, ty + 8, ... of
// its chunk; f.pack(r, c0, values) fills the kN values of row r (one 16-byte load, and whatever
// the functor fuses: the dGELU pass stores its output there). The per-column order of the
// additions is the scalar kernel's (rows ty, ty + 8, ... in order, then ty = 0..7), so both
// kernels give the same bits. Needs cols % kN == 0.
template <int kN, typename F>
__global__ void __launch_bounds__(256) column_reduce_packed_partial_kernel(F f, int64_t rows, int cols,
                                                                           float* partial) {
  __shared__ float sums[8][32 * kN];
  const int c0 = (blockIdx.x * 32 + threadIdx.x) * kN;
  const int64_t chunks = (rows + kColumnReduceChunk - 1) / kColumnReduceChunk;
  constexpr int U = PackRowsInFlight<F>::value;
  // Chunks blockIdx.y, + gridDim.y, ...: the launcher sizes the grid to one wave of blocks, each
  // with the same number of chunks (a chunk's partial does not depend on which block sums it).
  for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
    const int64_t begin = chunk * kColumnReduceChunk;
    const int64_t end = min(rows, begin + kColumnReduceChunk);
    float acc[kN];
#pragma unroll
    for (int v = 0; v < kN; ++v) acc[v] = 0.0f;
    if (c0 < cols) {
      for (int64_t r0 = begin + threadIdx.y; r0 < end; r0 += 8 * U) {
        float values[U][kN];
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (r0 + 8 * u < end) f.pack(r0 + 8 * u, c0, values[u]);
#pragma unroll
        for (int u = 0; u < U; ++u)
          if (r0 + 8 * u < end) {
#pragma unroll
            for (int v = 0; v < kN; ++v) acc[v] += values[u][v];
          }
      }
    }
    if (chunk != blockIdx.y) __syncthreads();  // the previous chunk's sums have been read
#pragma unroll
    for (int v = 0; v < kN; ++v) sums[threadIdx.y][threadIdx.x * kN + v] = acc[v];
    __syncthreads();
    // Thread t of the block adds column blockIdx.x * 32 * kN + t over ty = 0..7 (conflict-free,
    // coalesced store).
    const int t = threadIdx.y * 32 + threadIdx.x;
    const int c = blockIdx.x * 32 * kN + t;
    if (t < 32 * kN && c < cols) {
      float total = 0.0f;
      for (int i = 0; i < 8; ++i) total += sums[i][t];
      partial[chunk * cols + c] = total;
    }
  }
}

// Reduces f over rows into out (columns [0, cols)); when out2 is not null, columns
// [out_cols, 2 * out_cols) of the functor's range go to out2 (two reductions in one pass).
template <typename F>
void column_reduce(F f, int64_t rows, int cols, float* out, int out_cols, float* out2, float* scratch,
                   cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const unsigned chunks = ceil_div(rows, kColumnReduceChunk);
  column_reduce_partial_kernel<<<dim3(ceil_div(cols, 32), chunks), dim3(32, 8), 0, stream>>>(f, rows, cols, scratch);
  CUDA_CHECK_LAUNCH("column_reduce_partial_kernel");
  column_reduce_finish(scratch, static_cast<int>(chunks), cols, out, out_cols, out2, stream);
}

// column_reduce with the packed kernel: f needs pack(r, c0, float (&)[kN]); cols % kN == 0.
template <int kN, typename F>
void column_reduce_packed(F f, int64_t rows, int cols, float* out, int out_cols, float* out2, float* scratch,
                          cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const unsigned chunks = ceil_div(rows, kColumnReduceChunk);
  const unsigned column_blocks = ceil_div(cols / kN, 32);
  // One wave: as many chunk rows of blocks as fit beside each other, every block taking the same
  // number of chunks (a grid of one block per chunk left a third wave 18% full at 32K rows x 2304).
  static const int resident = resident_blocks_of(column_reduce_packed_partial_kernel<kN, F>, 256, 0);
  const int forced = kernel_variants().column_sum_chunk_blocks;
  const unsigned fit = forced > 0 ? unsigned(forced) : std::max(1u, unsigned(resident) / column_blocks);
  const unsigned per_block = ceil_div(chunks, fit);
  const unsigned chunk_blocks = ceil_div(chunks, per_block);
  column_reduce_packed_partial_kernel<kN><<<dim3(column_blocks, chunk_blocks), dim3(32, 8), 0, stream>>>(
      f, rows, cols, scratch);
  CUDA_CHECK_LAUNCH("column_reduce_packed_partial_kernel");
  column_reduce_finish(scratch, static_cast<int>(chunks), cols, out, out_cols, out2, stream);
}

}  // namespace llmqs::kernels::cuda
