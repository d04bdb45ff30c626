// Deterministic column reductions: out[c] += sum_r f(r, c) for an element functor f, used for
// bias, LayerNorm gamma/beta and token-type gradients. Two launches, no atomics, so the bits do
// not depend on scheduling:
//   1. grid (ceil(cols / 32), ceil(rows / kColumnReduceChunk)), block (32, 8): thread (tx, ty)
//      sums column blockIdx.x * 32 + tx over rows ty, ty + 8, ... of its chunk; the 8 partial
//      sums are added in ty order in shared memory and written to partial[chunk, c];
//   2. one thread per column adds partial[0..chunks) in order into out[c].
// Coalesced: the 32 threads of a warp read 32 consecutive columns of one row.
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

}  // namespace llmqs::kernels::cuda
