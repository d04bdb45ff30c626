// LayerNorm over the last dimension with the residual add and dropouts that post-LN BERT wraps
// around it; CUDA twin of kernels/cpu/layernorm.h (+ kernels/cpu/dropout.h where fused).
//
//   forward   x = dropout_a(a) + b   (stored in `sum` for the backward when b is given)
//             mean = sum_c x / C,  rstd = 1 / sqrt(sum_c (x - mean)^2 / C + eps)   (two-pass, fp32)
//             out = dropout_out((x - mean) * rstd * gamma + beta)
//   backward  g = dropout_out^T(dout), xhat = (x - mean) * rstd
//             dx = rstd * (g gamma - mean_c(g gamma) - xhat mean_c(g gamma xhat))
//             dx_dropped = dropout_a^T(dx);  dgamma += sum_n g xhat;  dbeta += sum_n g
// Shapes: a, b, sum, out, dout, dx [N x C] row-major (N tokens), gamma, beta fp32 [C],
// mean, rstd fp32 [N]. Dropout element index = n * C + c (philox.h's hidden-state sites).
// Launch: one warp per row, 8 rows per 256-thread block; a row lives in registers
// (C <= 32 * kMaxPerLane = 1024), so x is read once and dropout masks are drawn once.
// When the storage type is bf16/fp16 the stored sum is rounded first and the statistics use the
// rounded values, so forward and backward see the same x.
#include <string>

#include "kernels/column_reduce.cuh"

namespace llmqs::kernels::cuda {

namespace {

constexpr int kMaxPerLane = 32;
constexpr int kRowsPerBlock = 8;

__device__ __forceinline__ float dropout_apply(const DropoutSite& site, int64_t element, float value, float scale) {
  if (site.p <= 0.0f) return value;
  return dropout_keep(site, static_cast<uint64_t>(element)) ? value * scale : 0.0f;
}

template <typename T>
__global__ void layernorm_forward_kernel(T* out, T* sum, float* mean_out, float* rstd_out, const T* a, const T* b,
                                         const float* gamma, const float* beta, int N, int C, float eps,
                                         DropoutSite a_site, DropoutSite out_site) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= N) return;
  const float a_scale = 1.0f / (1.0f - a_site.p), out_scale = 1.0f / (1.0f - out_site.p);
  const int64_t base = row * C;
  float xs[kMaxPerLane];
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int c = lane + i * 32;
    if (c < C) {
      float x = dropout_apply(a_site, base + c, to_float(a[base + c]), a_scale);
      if (b) {
        const T stored = from_float<T>(x + to_float(b[base + c]));
        if (sum) sum[base + c] = stored;
        x = to_float(stored);
      }
      xs[i] = x;
      total += x;
    }
  }
  const float mean = warp_sum(total) / C;
  float var = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int c = lane + i * 32;
    if (c < C) {
      const float d = xs[i] - mean;
      var += d * d;
    }
  }
  const float rstd = rsqrtf(warp_sum(var) / C + eps);
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int c = lane + i * 32;
    if (c < C) {
      const float y = (xs[i] - mean) * rstd * gamma[c] + beta[c];
      out[base + c] = from_float<T>(dropout_apply(out_site, base + c, y, out_scale));
    }
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

template <typename T>
__global__ void layernorm_backward_kernel(T* dx, T* dx_dropped, const T* dout, const T* x, const float* mean,
                                          const float* rstd, const float* gamma, int N, int C, DropoutSite a_site,
                                          DropoutSite out_site) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= N) return;
  const float a_scale = 1.0f / (1.0f - a_site.p), out_scale = 1.0f / (1.0f - out_site.p);
  const int64_t base = row * C;
  const float mu = mean[row], rs = rstd[row];
  float gg[kMaxPerLane], xhat[kMaxPerLane];
  float sum_g = 0.0f, sum_gx = 0.0f;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int c = lane + i * 32;
    if (c < C) {
      const float g = dropout_apply(out_site, base + c, to_float(dout[base + c]), out_scale) * gamma[c];
      xhat[i] = (to_float(x[base + c]) - mu) * rs;
      gg[i] = g;
      sum_g += g;
      sum_gx += g * xhat[i];
    }
  }
  const float mean_g = warp_sum(sum_g) / C, mean_gx = warp_sum(sum_gx) / C;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int c = lane + i * 32;
    if (c < C) {
      const float d = rs * (gg[i] - mean_g - xhat[i] * mean_gx);
      dx[base + c] = from_float<T>(d);
      if (dx_dropped) dx_dropped[base + c] = from_float<T>(dropout_apply(a_site, base + c, d, a_scale));
    }
  }
}

// Columns [0, C): g * xhat (dgamma); columns [C, 2C): g (dbeta).
template <typename T>
struct LayerNormParamGrad {
  const T* dout;
  const T* x;
  const float* mean;
  const float* rstd;
  int C;
  DropoutSite out_site;
  float out_scale;
  __device__ float operator()(int64_t r, int col) const {
    const bool is_beta = col >= C;
    const int c = is_beta ? col - C : col;
    const int64_t e = r * C + c;
    const float g = dropout_apply(out_site, e, to_float(dout[e]), out_scale);
    return is_beta ? g : g * (to_float(x[e]) - mean[r]) * rstd[r];
  }
};

void check_width(int C) {
  if (C > 32 * kMaxPerLane)
    throw std::invalid_argument("layernorm: hidden size " + std::to_string(C) + " exceeds the kernel's limit of " +
                                std::to_string(32 * kMaxPerLane));
}

}  // namespace

void layernorm_forward(void* out, void* sum, float* mean, float* rstd, const void* a, const void* b,
                       const float* gamma, const float* beta, DType type, int N, int C, float eps,
                       const DropoutSite& a_site, const DropoutSite& out_site, cudaStream_t stream) {
  if (N <= 0) return;
  check_width(C);
  LLMQS_DISPATCH_DTYPE(type, {
    layernorm_forward_kernel<scalar_t><<<ceil_div(N, kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
        static_cast<scalar_t*>(out), static_cast<scalar_t*>(sum), mean, rstd, static_cast<const scalar_t*>(a),
        static_cast<const scalar_t*>(b), gamma, beta, N, C, eps, a_site, out_site);
  });
  CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
}

void layernorm_backward(void* dx, void* dx_dropped, float* dgamma, float* dbeta, const void* dout, const void* x,
                        const float* mean, const float* rstd, const float* gamma, DType type, int N, int C,
                        const DropoutSite& a_site, const DropoutSite& out_site, float* scratch, cudaStream_t stream) {
  if (N <= 0) return;
  check_width(C);
  LLMQS_DISPATCH_DTYPE(type, {
    layernorm_backward_kernel<scalar_t><<<ceil_div(N, kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
        static_cast<scalar_t*>(dx), static_cast<scalar_t*>(dx_dropped), static_cast<const scalar_t*>(dout),
        static_cast<const scalar_t*>(x), mean, rstd, gamma, N, C, a_site, out_site);
    CUDA_CHECK_LAUNCH("layernorm_backward_kernel");
    const LayerNormParamGrad<scalar_t> f{static_cast<const scalar_t*>(dout), static_cast<const scalar_t*>(x), mean,
                                         rstd, C, out_site, 1.0f / (1.0f - out_site.p)};
    column_reduce(f, N, 2 * C, dgamma, C, dbeta, scratch, stream);
  });
}

}  // namespace llmqs::kernels::cuda
