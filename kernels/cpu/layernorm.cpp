// LayerNorm forward/backward and the residual-add variant. See layernorm.h.
#include "kernels/cpu/layernorm.h"

#include <cmath>
#include <cstddef>

namespace llmqs::kernels::cpu {

namespace {

template <typename T>
void normalise_row(T* out, T* mean_out, T* rstd_out, const T* x, const T* gamma, const T* beta, int C, float eps) {
  double sum = 0.0;
  for (int c = 0; c < C; ++c) sum += static_cast<double>(x[c]);
  const double mean = sum / C;
  double var = 0.0;
  for (int c = 0; c < C; ++c) {
    const double d = static_cast<double>(x[c]) - mean;
    var += d * d;
  }
  var /= C;
  const double rstd = 1.0 / std::sqrt(var + static_cast<double>(eps));
  for (int c = 0; c < C; ++c)
    out[c] = static_cast<T>((static_cast<double>(x[c]) - mean) * rstd) * gamma[c] + beta[c];
  *mean_out = static_cast<T>(mean);
  *rstd_out = static_cast<T>(rstd);
}

}  // namespace

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int N, int C,
                       float eps) {
#pragma omp parallel for schedule(static) if (static_cast<long>(N) * C > (1 << 15))
  for (int n = 0; n < N; ++n) {
    const size_t row = static_cast<size_t>(n) * C;
    normalise_row(out + row, mean + n, rstd + n, x + row, gamma, beta, C, eps);
  }
}

template <typename T>
void residual_layernorm_forward(T* out, T* sum, T* mean, T* rstd, const T* a, const T* b, const T* gamma,
                                const T* beta, int N, int C, float eps) {
#pragma omp parallel for schedule(static) if (static_cast<long>(N) * C > (1 << 15))
  for (int n = 0; n < N; ++n) {
    const size_t row = static_cast<size_t>(n) * C;
    for (int c = 0; c < C; ++c) sum[row + c] = a[row + c] + b[row + c];
    normalise_row(out + row, mean + n, rstd + n, sum + row, gamma, beta, C, eps);
  }
}

template <typename T>
void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dout, const T* x, const T* mean, const T* rstd,
                        const T* gamma, int N, int C) {
  // Parameter gradients first, since dx may overwrite dout: column sums in row order, with
  // threads owning disjoint column chunks (deterministic).
  constexpr int kChunk = 64;
  const int chunks = (C + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (static_cast<long>(N) * C > (1 << 15))
  for (int ch = 0; ch < chunks; ++ch) {
    const int c0 = ch * kChunk, c1 = C < c0 + kChunk ? C : c0 + kChunk;
    double sum_gamma[kChunk] = {}, sum_beta[kChunk] = {};
    for (int n = 0; n < N; ++n) {
      const size_t row = static_cast<size_t>(n) * C;
      const double mu = static_cast<double>(mean[n]), rs = static_cast<double>(rstd[n]);
      for (int c = c0; c < c1; ++c) {
        const double d = static_cast<double>(dout[row + c]);
        sum_gamma[c - c0] += d * (static_cast<double>(x[row + c]) - mu) * rs;
        sum_beta[c - c0] += d;
      }
    }
    for (int c = c0; c < c1; ++c) {
      dgamma[c] += static_cast<T>(sum_gamma[c - c0]);
      dbeta[c] += static_cast<T>(sum_beta[c - c0]);
    }
  }
#pragma omp parallel for schedule(static) if (static_cast<long>(N) * C > (1 << 15))
  for (int n = 0; n < N; ++n) {
    const size_t row = static_cast<size_t>(n) * C;
    const double mu = static_cast<double>(mean[n]), rs = static_cast<double>(rstd[n]);
    double mean_g = 0.0, mean_g_xhat = 0.0;
    for (int c = 0; c < C; ++c) {
      const double g = static_cast<double>(dout[row + c]) * gamma[c];
      mean_g += g;
      mean_g_xhat += g * (static_cast<double>(x[row + c]) - mu) * rs;
    }
    mean_g /= C;
    mean_g_xhat /= C;
    for (int c = 0; c < C; ++c) {
      const double xhat = (static_cast<double>(x[row + c]) - mu) * rs;
      const double g = static_cast<double>(dout[row + c]) * gamma[c];
      dx[row + c] = static_cast<T>(rs * (g - mean_g - xhat * mean_g_xhat));
    }
  }
}

#define LLMQS_INSTANTIATE(T)                                                                                   \
  template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, float);              \
  template void residual_layernorm_forward<T>(T*, T*, T*, T*, const T*, const T*, const T*, const T*, int, int, \
                                              float);                                                         \
  template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, int, int);
LLMQS_INSTANTIATE(float)
LLMQS_INSTANTIATE(double)
#undef LLMQS_INSTANTIATE

}  // namespace llmqs::kernels::cpu
