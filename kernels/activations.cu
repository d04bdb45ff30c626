// Elementwise activations, CUDA twin of kernels/cpu/activations.h:
//   gelu (exact erf, HF "gelu"): y = 0.5 x (1 + erf(x / sqrt 2)),
//                                dy/dx = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)
//   tanh (pooler):               y = tanh x, dy/dx = 1 - y^2 (from the saved output)
// Flat arrays of n elements, fp32 math; gelu runs 16-byte packs per thread (+ a scalar tail),
// tanh one thread per element. gelu_backward_bias_grad fuses the dGELU pass with the column sums
// of the FFN1 bias gradient (column_reduce.cuh's packed kernel): one read of dout and inp, one
// write of dinp, instead of a second full read of dinp for the bias. The kernels library builds with
// --use_fast_math, which turns tanhf into tanh.approx.f32 (relative error ~5e-4, seen in the
// PTX): tanh runs in double instead (the pooler has only rows x hidden elements). erf is a
// 1.5e-7-accurate rational form sharing the gradient's exponential (erf_terms below); __expf is
// ex2.approx (~1e-6 relative here), well inside the fp32 tolerance.
#include "kernels/column_reduce.cuh"

namespace llmqs::kernels::cuda {

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;

// 1 + erf(x / sqrt 2) and exp(-x^2 / 2), sharing the exponential: Abramowitz & Stegun 7.1.26,
// erf(z) = 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) e^(-z^2) for z >= 0 with t = 1 / (1 + p z),
// |error| <= 1.5e-7 (far below bf16/fp16 rounding and the fp32 tests' 2e-5), odd in z. About 15
// instructions instead of erff's ~25 plus a second exponential in the gradient: GELU's passes are
// as much ALU as memory at bert-base sizes (docs/performance.md, section 4).
struct ErfTerms {
  float one_plus_erf, gauss;  // 1 + erf(x / sqrt 2), exp(-x^2 / 2)
};
__device__ __forceinline__ ErfTerms erf_terms(float x) {
  constexpr float p = 0.3275911f * kInvSqrt2;  // t = 1 / (1 + p |x| / sqrt 2)
  constexpr float a1 = 0.254829592f, a2 = -0.284496736f, a3 = 1.421413741f, a4 = -1.453152027f,
                  a5 = 1.061405429f;
  const float gauss = __expf(-0.5f * x * x);
  const float t = __fdividef(1.0f, fmaf(p, fabsf(x), 1.0f));
  const float tail = t * fmaf(t, fmaf(t, fmaf(t, fmaf(t, a5, a4), a3), a2), a1) * gauss;  // 1 - erf(|z|)
  return {x >= 0.0f ? 2.0f - tail : tail, gauss};
}
__device__ __forceinline__ float gelu(float x) { return 0.5f * x * erf_terms(x).one_plus_erf; }
__device__ __forceinline__ float gelu_grad(float x) {
  const ErfTerms e = erf_terms(x);
  return 0.5f * e.one_plus_erf + x * e.gauss * kInvSqrt2Pi;
}

template <typename T>
__global__ void gelu_forward_kernel(T* out, const T* inp, size_t n) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = from_float<T>(gelu(to_float(inp[i])));
}

template <typename T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, size_t n) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  dinp[i] = from_float<T>(to_float(dout[i]) * gelu_grad(to_float(inp[i])));
}

// Packed forms: thread i owns elements [i * kPack, (i + 1) * kPack) (16-byte loads and stores);
// the n % kPack tail goes to the scalar kernels. Same per-element math as the scalar kernels.
template <typename T>
__global__ void gelu_forward_packed_kernel(T* out, const T* inp, size_t packs) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= packs) return;
  float x[kPack<T>];
  load_pack(inp + i * kPack<T>, x);
#pragma unroll
  for (int v = 0; v < kPack<T>; ++v) x[v] = gelu(x[v]);
  store_pack(out + i * kPack<T>, x);
}

template <typename T>
__global__ void gelu_backward_packed_kernel(T* dinp, const T* inp, const T* dout, size_t packs) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= packs) return;
  float x[kPack<T>], g[kPack<T>];
  load_pack(inp + i * kPack<T>, x);
  load_pack(dout + i * kPack<T>, g);
#pragma unroll
  for (int v = 0; v < kPack<T>; ++v) g[v] *= gelu_grad(x[v]);
  store_pack(dinp + i * kPack<T>, g);
}

// The fused dGELU + bias-gradient pass: column_reduce_packed's functor. Stores dinp and hands the
// stored (rounded) values to the column sums.
template <typename T>
struct GeluBackwardPack {
  T* dinp;
  const T* inp;
  const T* dout;
  int cols;
  __device__ void pack(int64_t r, int c0, float (&values)[kPack<T>]) const {
    const int64_t e = r * cols + c0;
    float x[kPack<T>];
    load_pack(inp + e, x);
    load_pack(dout + e, values);
    Pack<T> stored;
#pragma unroll
    for (int v = 0; v < kPack<T>; ++v) {
      stored.v[v] = from_float<T>(values[v] * gelu_grad(x[v]));
      values[v] = to_float(stored.v[v]);
    }
    *reinterpret_cast<Pack<T>*>(dinp + e) = stored;
  }
};

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
  const bool packed = kernel_variants().packed_gelu && is_aligned16(out) && is_aligned16(inp);
  LLMQS_DISPATCH_DTYPE(type, {
    auto* y = static_cast<scalar_t*>(out);
    const auto* x = static_cast<const scalar_t*>(inp);
    const size_t packs = packed ? n / kPack<scalar_t> : 0, done = packs * kPack<scalar_t>;
    if (packs) {
      gelu_forward_packed_kernel<scalar_t><<<ceil_div(packs, 256), 256, 0, stream>>>(y, x, packs);
      CUDA_CHECK_LAUNCH("gelu_forward_packed_kernel");
    }
    if (n > done) {
      gelu_forward_kernel<scalar_t><<<ceil_div(n - done, 256), 256, 0, stream>>>(y + done, x + done, n - done);
      CUDA_CHECK_LAUNCH("gelu_forward_kernel");
    }
  });
}

void gelu_backward(void* dinp, const void* inp, const void* dout, DType type, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  const bool packed = kernel_variants().packed_gelu && is_aligned16(dinp) && is_aligned16(inp) && is_aligned16(dout);
  LLMQS_DISPATCH_DTYPE(type, {
    auto* dx = static_cast<scalar_t*>(dinp);
    const auto* x = static_cast<const scalar_t*>(inp);
    const auto* dy = static_cast<const scalar_t*>(dout);
    const size_t packs = packed ? n / kPack<scalar_t> : 0, done = packs * kPack<scalar_t>;
    if (packs) {
      gelu_backward_packed_kernel<scalar_t><<<ceil_div(packs, 256), 256, 0, stream>>>(dx, x, dy, packs);
      CUDA_CHECK_LAUNCH("gelu_backward_packed_kernel");
    }
    if (n > done) {
      gelu_backward_kernel<scalar_t><<<ceil_div(n - done, 256), 256, 0, stream>>>(dx + done, x + done, dy + done,
                                                                                n - done);
      CUDA_CHECK_LAUNCH("gelu_backward_kernel");
    }
  });
}

void gelu_backward_bias_grad(void* dinp, float* dbias, const void* inp, const void* dout, DType type, int64_t rows,
                             int cols, float* scratch, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const bool aligned = is_aligned16(dinp) && is_aligned16(inp) && is_aligned16(dout);
  LLMQS_DISPATCH_DTYPE(type, {
    constexpr int V = kPack<scalar_t>;
    if (kernel_variants().packed_gelu && aligned && cols % V == 0) {
      const GeluBackwardPack<scalar_t> f{static_cast<scalar_t*>(dinp), static_cast<const scalar_t*>(inp),
                                         static_cast<const scalar_t*>(dout), cols};
      column_reduce_packed<V>(f, rows, cols, dbias, cols, nullptr, scratch, stream);
    } else {
      gelu_backward(dinp, inp, dout, type, static_cast<size_t>(rows) * cols, stream);
      column_sum_accumulate(dbias, dinp, type, rows, cols, cols, scratch, stream);
    }
  });
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
