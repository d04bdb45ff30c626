// Global gradient norm for clip_grad_norm_, CUDA twin of kernels/cpu/grad_norm.h:
//   sq_norm = sum_i grad[i]^2, accumulated in double.
// Deterministic: a fixed grid of kGradNormBlocks x 256 threads; thread t of block b sums the
// elements i = b * 256 + t + k * (blocks * 256) in k order; the block adds its 256 sums in a
// fixed tree; the host adds the block sums in block order. (Not the CPU's order, so the two agree
// to double rounding, ~1e-15 relative, not bit for bit.)
// With a 16-byte-aligned buffer the same scheme runs over float4 packs (pack j = elements
// 4j .. 4j + 3, added in element order), two packs in flight per thread; the n % 4 last elements
// are added by thread 0 of block 0 after its packs. The gradient buffer (433 MB for bert-base) is
// read at close to copy bandwidth that way; one 4-byte load per thread per iteration reached
// about 40% of it (0.25 ms per step on the H200).
#include <cstdint>
#include <vector>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

namespace llmqs::kernels::cuda {

namespace {

constexpr int kThreads = 256;

// The block's 256 thread sums added in a fixed tree into partial[blockIdx.x].
__device__ __forceinline__ void store_block_sum(double acc, double* partial) {
  __shared__ double sums[kThreads];
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sums[0];
}

__global__ void sum_of_squares_kernel(const float* grad, size_t n, double* partial) {
  double acc = 0.0;
  const size_t stride = static_cast<size_t>(gridDim.x) * kThreads;
  for (size_t i = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const double g = grad[i];
    acc += g * g;
  }
  store_block_sum(acc, partial);
}

__device__ __forceinline__ double pack_sum_of_squares(const float4 v) {
  double s = double(v.x) * double(v.x);
  s += double(v.y) * double(v.y);
  s += double(v.z) * double(v.z);
  s += double(v.w) * double(v.w);
  return s;
}

__global__ void sum_of_squares_packed_kernel(const float4* grad, size_t packs, const float* tail, int tail_count,
                                             double* partial) {
  double acc = 0.0;
  const size_t stride = static_cast<size_t>(gridDim.x) * kThreads;
  size_t i = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (; i + stride < packs; i += 2 * stride) {  // two loads in flight, added in pack order
    const float4 a = grad[i], b = grad[i + stride];
    acc += pack_sum_of_squares(a);
    acc += pack_sum_of_squares(b);
  }
  if (i < packs) acc += pack_sum_of_squares(grad[i]);
  if (blockIdx.x == 0 && threadIdx.x == 0)
    for (int t = 0; t < tail_count; ++t) acc += double(tail[t]) * double(tail[t]);
  store_block_sum(acc, partial);
}

}  // namespace

double sum_of_squares(const float* grad, size_t n, double* partial_device, cudaStream_t stream) {
  if (reinterpret_cast<uintptr_t>(grad) % 16 == 0) {
    const size_t packs = n / 4;
    sum_of_squares_packed_kernel<<<kGradNormBlocks, kThreads, 0, stream>>>(
        reinterpret_cast<const float4*>(grad), packs, grad + packs * 4, static_cast<int>(n % 4), partial_device);
    CUDA_CHECK_LAUNCH("sum_of_squares_packed_kernel");
  } else {
    sum_of_squares_kernel<<<kGradNormBlocks, kThreads, 0, stream>>>(grad, n, partial_device);
    CUDA_CHECK_LAUNCH("sum_of_squares_kernel");
  }
  std::vector<double> partial(kGradNormBlocks);
  CUDA_CHECK(cudaMemcpyAsync(partial.data(), partial_device, sizeof(double) * kGradNormBlocks, cudaMemcpyDeviceToHost,
                             stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace llmqs::kernels::cuda
