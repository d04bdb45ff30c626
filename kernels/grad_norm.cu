// Global gradient norm for clip_grad_norm_, CUDA twin of kernels/cpu/grad_norm.h:
//   sq_norm = sum_i grad[i]^2, accumulated in double.
// Deterministic: a fixed grid of kGradNormBlocks x 256 threads; thread t of block b sums the
// elements i = b * 256 + t + k * (blocks * 256) in k order; the block adds its 256 sums in a
// fixed tree; the host adds the block sums in block order. (Not the CPU's order, so the two agree
// to double rounding, ~1e-15 relative, not bit for bit.)
#include <vector>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

namespace llmqs::kernels::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void sum_of_squares_kernel(const float* grad, size_t n, double* partial) {
  __shared__ double sums[kThreads];
  double acc = 0.0;
  const size_t stride = static_cast<size_t>(gridDim.x) * kThreads;
  for (size_t i = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const double g = grad[i];
    acc += g * g;
  }
  sums[threadIdx.x] = acc;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sums[0];
}

}  // namespace

double sum_of_squares(const float* grad, size_t n, double* partial_device, cudaStream_t stream) {
  sum_of_squares_kernel<<<kGradNormBlocks, kThreads, 0, stream>>>(grad, n, partial_device);
  CUDA_CHECK_LAUNCH("sum_of_squares_kernel");
  std::vector<double> partial(kGradNormBlocks);
  CUDA_CHECK(cudaMemcpyAsync(partial.data(), partial_device, sizeof(double) * kGradNormBlocks, cudaMemcpyDeviceToHost,
                             stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace llmqs::kernels::cuda
