// AdamW over one parameter tensor, CUDA twin of kernels/cpu/adamw.h (torch.optim.AdamW,
// _single_tensor_adam): the scalars are prepared on the host exactly as the CPU twin prepares
// them (double, then cast to float), and the per-element arithmetic uses the round-to-nearest
// intrinsics (__fmul_rn ...), which neither --use_fast_math nor FMA contraction rewrite, so the
// update is bit-identical to the CPU's for the same inputs:
//   g = grad * grad_scale;  p *= 1 - lr * wd;  m += (1 - beta1) (g - m);
//   v = beta2 v + (1 - beta2) g^2;  p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
// One thread per element; the low-precision copy of p (what the matmuls read) is written in
// the same pass, so no separate cast kernel runs after the step.
#include <cmath>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

namespace llmqs::kernels::cuda {

namespace {

struct AdamWDeviceScalars {
  float decay, one_minus_beta1, beta2, one_minus_beta2, step_size, bias_correction2_sqrt, eps, grad_scale;
  bool apply_decay;
};

template <typename Low>
__global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, size_t n, AdamWDeviceScalars s,
                             Low* params_low) {
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = __fmul_rn(grads[i], s.grad_scale);
  float p = params[i];
  if (s.apply_decay) p = __fmul_rn(p, s.decay);
  const float mi = __fadd_rn(m[i], __fmul_rn(s.one_minus_beta1, __fsub_rn(g, m[i])));
  const float vi = __fadd_rn(__fmul_rn(v[i], s.beta2), __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bias_correction2_sqrt), s.eps);
  p = __fsub_rn(p, __fmul_rn(s.step_size, __fdiv_rn(mi, denom)));
  params[i] = p;
  m[i] = mi;
  v[i] = vi;
  if (params_low) params_low[i] = from_float<Low>(p);
}

}  // namespace

void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, const AdamWScalars& s,
                  void* params_low, DType low_type, cudaStream_t stream) {
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
  LLMQS_DISPATCH_DTYPE(low_type, {
    adamw_kernel<scalar_t><<<ceil_div(n, 256), 256, 0, stream>>>(params, grads, m, v, n, d,
                                                                 static_cast<scalar_t*>(params_low));
  });
  CUDA_CHECK_LAUNCH("adamw_kernel");
}

}  // namespace llmqs::kernels::cuda
