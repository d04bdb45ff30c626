// Deterministic column reductions: out[c] += sum_r f(r, c) for an element functor f, used for
// bias, LayerNorm gamma/beta and token-type gradients. Two launches, no atomics, so the bits do
// not depend on scheduling:
//   1. grid (ceil(cols / 32), ceil(rows / kColumnReduceChunk)), block (32, 8): thread (tx, ty)
//      sums column blockIdx.x * 32 + tx over rows ty, ty + 8, ... of its chunk; the 8 partial
//      sums are added in ty order in shared memory and written to partial[chunk, c];
//   2. one thread per column adds partial[0..chunks) in order into out[c].
// Coalesced: the 32 threads of a warp read 32 consecutive columns of one row (the packed form
// below: 32 consecutive 16-byte packs).
#pragma once
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

namespace llmqs::kernels::cuda {

template <typename F>
__global__ void column_reduce_partial_kernel(F f, int64_t rows, int cols, float* partial) {
  __shared__ float sums[8][33];
  const int c = blockIdx.x * 32 + threadIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kColumnReduceChunk;
  const int64_t end = min(rows, begin + kColumnReduceChunk);
  float acc = 0.0f;
  if (c < cols)
    for (int64_t r = begin + threadIdx.y; r < end; r += 8) acc += f(r, c);
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = 0.0f;
    for (int i = 0; i < 8; ++i) total += sums[i][threadIdx.x];
    partial[static_cast<int64_t>(blockIdx.y) * cols + c] = total;
  }
}

// static: each .cu that reduces gets its own copy (no relocatable device code needed).
static __global__ void column_reduce_finish_kernel(const float* partial, int chunks, int cols, float* out,
                                                   int out_cols, float* out2) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float total = 0.0f;
  for (int i = 0; i < chunks; ++i) total += partial[static_cast<int64_t>(i) * cols + c];
  if (c < out_cols)
    out[c] += total;
  else
    out2[c - out_cols] += total;
}

// Packed form of the same reduction for 16-byte packs: thread (tx, ty) of a (32, 8) block owns
// the kN columns c0 = (blockIdx.x * 32 + tx) * kN .. c0 + kN - 1 and the rows ty, ty + 8, ... of
// its chunk; f.pack(r, c0, values) fills the kN values of row r (one 16-byte load, and whatever
// the functor fuses: the dGELU pass stores its output there). The per-column order of the
// additions is the scalar kernel's (rows ty, ty + 8, ... in order, then ty = 0..7), so both
// kernels give the same bits. Needs cols % kN == 0.
template <int kN, typename F>
__global__ void column_reduce_packed_partial_kernel(F f, int64_t rows, int cols, float* partial) {
  __shared__ float sums[8][32 * kN];
  const int c0 = (blockIdx.x * 32 + threadIdx.x) * kN;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kColumnReduceChunk;
  const int64_t end = min(rows, begin + kColumnReduceChunk);
  float acc[kN];
#pragma unroll
  for (int v = 0; v < kN; ++v) acc[v] = 0.0f;
  if (c0 < cols) {
    for (int64_t r = begin + threadIdx.y; r < end; r += 8) {
      float values[kN];
      f.pack(r, c0, values);
#pragma unroll
      for (int v = 0; v < kN; ++v) acc[v] += values[v];
    }
  }
#pragma unroll
  for (int v = 0; v < kN; ++v) sums[threadIdx.y][threadIdx.x * kN + v] = acc[v];
  __syncthreads();
  if (threadIdx.y == 0 && c0 < cols) {
#pragma unroll
    for (int v = 0; v < kN; ++v) {
      float total = 0.0f;
      for (int i = 0; i < 8; ++i) total += sums[i][threadIdx.x * kN + v];
      partial[static_cast<int64_t>(blockIdx.y) * cols + c0 + v] = total;
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
  column_reduce_finish_kernel<<<ceil_div(cols, 256), 256, 0, stream>>>(scratch, chunks, cols, out, out_cols, out2);
  CUDA_CHECK_LAUNCH("column_reduce_finish_kernel");
}

// column_reduce with the packed kernel: f needs pack(r, c0, float (&)[kN]); cols % kN == 0.
template <int kN, typename F>
void column_reduce_packed(F f, int64_t rows, int cols, float* out, int out_cols, float* out2, float* scratch,
                          cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const unsigned chunks = ceil_div(rows, kColumnReduceChunk);
  column_reduce_packed_partial_kernel<kN><<<dim3(ceil_div(cols / kN, 32), chunks), dim3(32, 8), 0, stream>>>(
      f, rows, cols, scratch);
  CUDA_CHECK_LAUNCH("column_reduce_packed_partial_kernel");
  column_reduce_finish_kernel<<<ceil_div(cols, 256), 256, 0, stream>>>(scratch, chunks, cols, out, out_cols, out2);
  CUDA_CHECK_LAUNCH("column_reduce_finish_kernel");
}

}  // namespace llmqs::kernels::cuda
