// Elementwise activations, CUDA twin of kernels/cpu/activations.h:
//   gelu (exact erf, HF "gelu"): y = 0.5 x (1 + erf(x / sqrt 2)),
//                                dy/dx = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)
//   tanh (pooler):               y = tanh x, dy/dx = 1 - y^2 (from the saved output)
// Flat arrays of n elements, one thread per element, fp32 math. The kernels library builds with
// --use_fast_math, which turns tanhf into tanh.approx.f32 (relative error ~5e-4, seen in the
// PTX): tanh runs in double instead (the pooler has only rows x hidden elements). erff keeps its
// precise form; expf becomes ex2.approx (~1e-6 relative here), well inside the fp32 tolerance.
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

namespace llmqs::kernels::cuda {

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

template <typename T>
__global__ void gelu_forward_kernel(T* out, const T* inp, size_t n) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float x = to_float(inp[i]);
  out[i] = from_float<T>(0.5f * x * (1.0f + erff(x * kInvSqrt2)));
}

template <typename T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, size_t n) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float x = to_float(inp[i]);
  const float grad = 0.5f * (1.0f + erff(x * kInvSqrt2)) + x * expf(-0.5f * x * x) * kInvSqrt2Pi;
  dinp[i] = from_float<T>(to_float(dout[i]) * grad);
}

template <typename T>
__global__ void tanh_forward_kernel(T* out, const T* inp, size_t n) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = from_float<T>(static_cast<float>(tanh(static_cast<double>(to_float(inp[i])))));
}

template <typename T>
__global__ void tanh_backward_kernel(T* dinp, const T* out, const T* dout, size_t n) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float y = to_float(out[i]);
  dinp[i] = from_float<T>(to_float(dout[i]) * (1.0f - y * y));
}

}  // namespace

void gelu_forward(void* out, const void* inp, DType type, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LLMQS_DISPATCH_DTYPE(type, {
    gelu_forward_kernel<scalar_t><<<ceil_div(n, 256), 256, 0, stream>>>(static_cast<scalar_t*>(out),
                                                                        static_cast<const scalar_t*>(inp), n);
  });
  CUDA_CHECK_LAUNCH("gelu_forward_kernel");
}

void gelu_backward(void* dinp, const void* inp, const void* dout, DType type, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LLMQS_DISPATCH_DTYPE(type, {
    gelu_backward_kernel<scalar_t><<<ceil_div(n, 256), 256, 0, stream>>>(
        static_cast<scalar_t*>(dinp), static_cast<const scalar_t*>(inp), static_cast<const scalar_t*>(dout), n);
  });
  CUDA_CHECK_LAUNCH("gelu_backward_kernel");
}

void tanh_forward(void* out, const void* inp, DType type, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LLMQS_DISPATCH_DTYPE(type, {
    tanh_forward_kernel<scalar_t><<<ceil_div(n, 256), 256, 0, stream>>>(static_cast<scalar_t*>(out),
                                                                        static_cast<const scalar_t*>(inp), n);
  });
  CUDA_CHECK_LAUNCH("tanh_forward_kernel");
}

void tanh_backward(void* dinp, const void* out, const void* dout, DType type, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LLMQS_DISPATCH_DTYPE(type, {
    tanh_backward_kernel<scalar_t><<<ceil_div(n, 256), 256, 0, stream>>>(
        static_cast<scalar_t*>(dinp), static_cast<const scalar_t*>(out), static_cast<const scalar_t*>(dout), n);
  });
  CUDA_CHECK_LAUNCH("tanh_backward_kernel");
}

}  // namespace llmqs::kernels::cuda
