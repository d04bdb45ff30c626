// GELU (erf) and tanh, forward and backward. See activations.h.
#include "kernels/cpu/activations.h"

#include <cmath>

namespace llmqs::kernels::cpu {

// Below this many elements a parallel region costs more than it saves.
constexpr size_t kParallelMin = 1 << 15;

template <typename T>
void gelu_forward(T* out, const T* inp, size_t n) {
  const T inv_sqrt2 = static_cast<T>(0.70710678118654752440);
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (size_t i = 0; i < n; ++i) out[i] = T(0.5) * inp[i] * (T(1) + std::erf(inp[i] * inv_sqrt2));
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n) {
  const T inv_sqrt2 = static_cast<T>(0.70710678118654752440);
  const T inv_sqrt_2pi = static_cast<T>(0.39894228040143267794);
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (size_t i = 0; i < n; ++i) {
    const T x = inp[i];
    const T cdf = T(0.5) * (T(1) + std::erf(x * inv_sqrt2));
    const T pdf = std::exp(T(-0.5) * x * x) * inv_sqrt_2pi;
    dinp[i] = dout[i] * (cdf + x * pdf);
  }
}

template <typename T>
void tanh_forward(T* out, const T* inp, size_t n) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (size_t i = 0; i < n; ++i) out[i] = std::tanh(inp[i]);
}

template <typename T>
void tanh_backward(T* dinp, const T* out, const T* dout, size_t n) {
#pragma omp parallel for schedule(static) if (n > kParallelMin)
  for (size_t i = 0; i < n; ++i) dinp[i] = dout[i] * (T(1) - out[i] * out[i]);
}

#define LLMQS_INSTANTIATE(T)                                          \
  template void gelu_forward<T>(T*, const T*, size_t);                \
  template void gelu_backward<T>(T*, const T*, const T*, size_t);     \
  template void tanh_forward<T>(T*, const T*, size_t);                \
  template void tanh_backward<T>(T*, const T*, const T*, size_t);
LLMQS_INSTANTIATE(float)
LLMQS_INSTANTIATE(double)
#undef LLMQS_INSTANTIATE

}  // namespace llmqs::kernels::cpu
