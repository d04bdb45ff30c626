// AdamW over a flat range of parameters (torch.optim.AdamW, decoupled weight decay), the fp32
// reference; CUDA twin: kernels/adamw.cu. Scalars follow torch's _single_tensor_adam:
//
//   g   = grad * grad_scale                      (clipping / unscaling folded in)
//   p  *= 1 - lr * weight_decay                  (weight_decay = 0 where HF does not decay)
//   m   = m + (1 - beta1) * (g - m)              (torch: exp_avg.lerp_(g, 1 - beta1))
//   v   = beta2 * v + (1 - beta2) * g * g
//   bc1 = 1 - beta1^step, bc2 = 1 - beta2^step   (step 1-based; computed in double)
//   p  -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
// Shapes: params, grads, m, v: n floats each, updated in place (grads untouched).
// The Backend calls it once per parameter tensor with that tensor's weight decay.
#pragma once
#include <cstddef>
#include <cstdint>

namespace llmqs::kernels::cpu {

struct AdamWScalars {
  float lr = 0.0f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  float grad_scale = 1.0f;
  int64_t step = 1;
};

void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, const AdamWScalars& s);

}  // namespace llmqs::kernels::cpu
