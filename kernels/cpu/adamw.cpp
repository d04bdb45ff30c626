// AdamW update over a flat range, operation for operation as torch's _single_tensor_adam
// with decoupled weight decay (scalars in double, cast to float where torch casts them).
#include "kernels/cpu/adamw.h"

#include <cmath>

namespace llmqs::kernels::cpu {

void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, const AdamWScalars& s) {
  const double lr = s.lr, beta1 = s.beta1, beta2 = s.beta2;
  const float decay = static_cast<float>(1.0 - lr * static_cast<double>(s.weight_decay));
  const float one_minus_beta1 = static_cast<float>(1.0 - beta1);
  const float beta2_f = s.beta2;
  const float one_minus_beta2 = static_cast<float>(1.0 - beta2);
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(s.step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(s.step));
  const float step_size = static_cast<float>(lr / bias_correction1);
  const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float eps = s.eps, grad_scale = s.grad_scale;
#pragma omp parallel for schedule(static) if (n > (1u << 15))
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) {
    const float g = grads[i] * grad_scale;
    float p = params[i];
    if (s.weight_decay != 0.0f) p *= decay;
    const float mi = m[i] + one_minus_beta1 * (g - m[i]);
    const float vi = v[i] * beta2_f + one_minus_beta2 * g * g;
    const float denom = std::sqrt(vi) / bias_correction2_sqrt + eps;
    params[i] = p - step_size * (mi / denom);
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace llmqs::kernels::cpu
