// AdamW over the whole flat parameter buffer in one launch, CUDA twin of kernels/cpu/adamw.h
// (torch.optim.AdamW, _single_tensor_adam): the scalars are prepared on the host exactly as the
// CPU twin prepares them (double, then cast to float), and the per-element arithmetic uses the
// round-to-nearest intrinsics (__fmul_rn ...), which neither --use_fast_math nor FMA contraction
// rewrite, so the update is bit-identical to the CPU's for the same inputs:
//   g = grad * grad_scale;  p *= 1 - lr * wd (where the element decays);  m += (1 - beta1) (g - m);
//   v = beta2 v + (1 - beta2) g^2;  p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
// (--use_fast_math flushes fp32 denormals to zero, which the CPU does not: inputs that make a
// denormal intermediate are the one exception to bit identity.)
// Which elements decay comes from a bitmask (1 bit per parameter, 1/240 of the bytes moved), so
// the ~200 tensors of bert-base, most of them 768-element biases, cost one launch instead of one
// each. The low-precision copy of p (what the matmuls read) is written in the same pass.
// Launch: 256 threads per block, a grid-stride loop over 4-element chunks (float4 loads/stores
// of p, g, m, v, one 4- or 8-byte store of the low copy, 4 mask bits) with at most one full wave
// of blocks; the n % 4 tail elements go to the first threads. Buffers that are not aligned for
// that take the same loop one element at a time.
#include <algorithm>
#include <cmath>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

namespace llmqs::kernels::cuda {

namespace {

constexpr int kThreads = 256;

struct AdamWDeviceScalars {
  float decay, one_minus_beta1, beta2, one_minus_beta2, step_size, bias_correction2_sqrt, eps, grad_scale;
  bool apply_decay;
};

// One element, operation for operation as the CPU twin.
__device__ __forceinline__ void adamw_element(float& p, float grad, float& m, float& v, bool decay,
                                              const AdamWDeviceScalars& s) {
  const float g = __fmul_rn(grad, s.grad_scale);
  if (decay) p = __fmul_rn(p, s.decay);
  const float mi = __fadd_rn(m, __fmul_rn(s.one_minus_beta1, __fsub_rn(g, m)));
  const float vi = __fadd_rn(__fmul_rn(v, s.beta2), __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bias_correction2_sqrt), s.eps);
  p = __fsub_rn(p, __fmul_rn(s.step_size, __fdiv_rn(mi, denom)));
  m = mi;
  v = vi;
}

__device__ __forceinline__ bool element_decays(const uint32_t* mask, size_t i, const AdamWDeviceScalars& s) {
  return s.apply_decay && (mask == nullptr || ((mask[i >> 5] >> (i & 31)) & 1u) != 0);
}

// Four low-precision values stored with one 8-byte (16 for fp32) store.
template <typename Low>
struct alignas(4 * sizeof(Low)) LowQuad {
  Low v[4];
};

template <typename Low>
__device__ __forceinline__ void update_element(float* params, const float* grads, float* m, float* v,
                                               const uint32_t* mask, size_t i, const AdamWDeviceScalars& s,
                                               Low* params_low) {
  float p = params[i], mi = m[i], vi = v[i];
  adamw_element(p, grads[i], mi, vi, element_decays(mask, i, s), s);
  params[i] = p;
  m[i] = mi;
  v[i] = vi;
  if (params_low) params_low[i] = from_float<Low>(p);
}

// Chunk c = elements 4c .. 4c + 3; every pointer aligned for its 4-element access (checked on the
// host). The tail elements 4 * (n / 4) .. n - 1 go to threads 0 .. n % 4 - 1 of the grid.
template <typename Low>
__global__ void __launch_bounds__(kThreads)
    adamw_vector_kernel(float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ m,
                        float* __restrict__ v, const uint32_t* __restrict__ mask, size_t n, AdamWDeviceScalars s,
                        Low* params_low) {
  const size_t chunks = n / 4;
  const size_t thread = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x;
  const size_t stride = static_cast<size_t>(gridDim.x) * kThreads;
  for (size_t c = thread; c < chunks; c += stride) {
    float4 p = reinterpret_cast<const float4*>(params)[c];
    const float4 g = reinterpret_cast<const float4*>(grads)[c];
    float4 mi = reinterpret_cast<const float4*>(m)[c];
    float4 vi = reinterpret_cast<const float4*>(v)[c];
    // The chunk's 4 bits: word c / 8 (32 elements), bits 4 (c % 8) .. 4 (c % 8) + 3.
    uint32_t bits = 0;
    if (s.apply_decay) bits = mask == nullptr ? 0xFu : (mask[c >> 3] >> ((c & 7) * 4)) & 0xFu;
    adamw_element(p.x, g.x, mi.x, vi.x, (bits & 1u) != 0, s);
    adamw_element(p.y, g.y, mi.y, vi.y, (bits & 2u) != 0, s);
    adamw_element(p.z, g.z, mi.z, vi.z, (bits & 4u) != 0, s);
    adamw_element(p.w, g.w, mi.w, vi.w, (bits & 8u) != 0, s);
    reinterpret_cast<float4*>(params)[c] = p;
    reinterpret_cast<float4*>(m)[c] = mi;
    reinterpret_cast<float4*>(v)[c] = vi;
    if (params_low) {
      LowQuad<Low> q;
      q.v[0] = from_float<Low>(p.x);
      q.v[1] = from_float<Low>(p.y);
      q.v[2] = from_float<Low>(p.z);
      q.v[3] = from_float<Low>(p.w);
      reinterpret_cast<LowQuad<Low>*>(params_low)[c] = q;
    }
  }
  const size_t tail = chunks * 4 + thread;
  if (tail < n) update_element(params, grads, m, v, mask, tail, s, params_low);
}

// Any alignment: one element per iteration.
template <typename Low>
__global__ void __launch_bounds__(kThreads)
    adamw_scalar_kernel(float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ m,
                        float* __restrict__ v, const uint32_t* __restrict__ mask, size_t n, AdamWDeviceScalars s,
                        Low* params_low) {
  const size_t stride = static_cast<size_t>(gridDim.x) * kThreads;
  for (size_t i = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
    update_element(params, grads, m, v, mask, i, s, params_low);
}

bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// One full wave of kThreads-thread blocks on the current device (the grid-stride loops need no more).
int64_t resident_blocks() {
  int device = 0, sms = 0, threads_per_sm = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
  return std::max<int64_t>(1, static_cast<int64_t>(sms) * std::max(1, threads_per_sm / kThreads));
}

}  // namespace

void adamw_update(float* params, const float* grads, float* m, float* v, const uint32_t* decay_mask, size_t n,
                  const AdamWScalars& s, void* params_low, DType low_type, cudaStream_t stream) {
  if (n == 0) return;
  const double lr = s.lr, beta1 = s.beta1, beta2 = s.beta2;
  AdamWDeviceScalars d;
  d.decay = static_cast<float>(1.0 - lr * static_cast<double>(s.weight_decay));
  d.apply_decay = s.weight_decay != 0.0f;
  d.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  d.beta2 = s.beta2;
  d.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  d.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, static_cast<double>(s.step))));
  d.bias_correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, static_cast<double>(s.step))));
  d.eps = s.eps;
  d.grad_scale = s.grad_scale;
  if (!params_low) low_type = DType::kF32;
  const bool vector = is_aligned(params, 16) && is_aligned(grads, 16) && is_aligned(m, 16) && is_aligned(v, 16) &&
                      (!params_low || is_aligned(params_low, 4 * dtype_bytes(low_type)));
  const int64_t items = vector ? static_cast<int64_t>(n / 4) : static_cast<int64_t>(n);
  // At least one block: with n < 4 the vector kernel has no chunks, only the tail.
  const unsigned int blocks = static_cast<unsigned int>(
      std::max<int64_t>(1, std::min<int64_t>((items + kThreads - 1) / kThreads, resident_blocks())));
  LLMQS_DISPATCH_DTYPE(low_type, {
    scalar_t* low = static_cast<scalar_t*>(params_low);
    if (vector)
      adamw_vector_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(params, grads, m, v, decay_mask, n, d, low);
    else
      adamw_scalar_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(params, grads, m, v, decay_mask, n, d, low);
  });
  CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace llmqs::kernels::cuda
