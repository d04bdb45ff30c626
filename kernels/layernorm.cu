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
//
// Two variants (KernelVariants::packed_layernorm picks; the scalar one is also the fallback):
//   scalar  lane l owns columns l, l + 32, ...; 2-byte loads; a Philox call per element (4x the
//           needed work); gamma/beta sums by column_reduce, which re-reads dout and x.
//   packed  lane l owns 16-byte packs l, l + 32, ... (8 bf16/fp16 or 4 fp32 columns each; needs
//           C % pack == 0 and 16-byte aligned pointers); one Philox call per four elements (the
//           pack starts at a multiple of 4, so philox.h's word e % 4 is the pack's j-th word);
//           the backward block owns kColumnReduceChunk rows (8 warps, rows w, w + 8, ...), keeps
//           per-lane g * xhat and g sums in registers across its rows, adds the 8 warps' sums in
//           warp order in shared memory and writes partial[block, 2C]; column_reduce's finish
//           kernel then adds the blocks in order. Fixed order everywhere: deterministic.
#include <string>
#include <type_traits>

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

// ---- packed variant ------------------------------------------------------------------------------

template <typename T, int kChunks>
__global__ void layernorm_forward_packed_kernel(T* out, T* sum, float* mean_out, float* rstd_out, const T* a,
                                                const T* b, const float* gamma, const float* beta, int N, int C,
                                                float eps, DropoutSite a_site, DropoutSite out_site) {
  constexpr int V = kPack<T>;
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= N) return;
  const float a_scale = 1.0f / (1.0f - a_site.p), out_scale = 1.0f / (1.0f - out_site.p);
  const int64_t base = row * C;
  const int packs = C / V;
  float xs[kChunks][V];
  Pack<T> bs[kChunks];  // kept packed until used: half the registers for bf16/fp16
  // Every load of the row before any store: the compiler cannot move a load above a store that
  // might alias it, so this order is what lets all of the row's loads be in flight at once.
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int j = lane + i * 32;
    if (j < packs) {
      const int64_t e = base + static_cast<int64_t>(j) * V;
      load_pack(a + e, xs[i]);
      if (b) bs[i] = *reinterpret_cast<const Pack<T>*>(b + e);
    }
  }
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int j = lane + i * 32;
    if (j < packs) {
      const int64_t e = base + static_cast<int64_t>(j) * V;
      dropout_pack(a_site, e, xs[i], a_scale);
      if (b) {
        Pack<T> stored;
#pragma unroll
        for (int v = 0; v < V; ++v) {
          stored.v[v] = from_float<T>(xs[i][v] + to_float(bs[i].v[v]));
          xs[i][v] = to_float(stored.v[v]);
        }
        if (sum) *reinterpret_cast<Pack<T>*>(sum + e) = stored;
      }
#pragma unroll
      for (int v = 0; v < V; ++v) total += xs[i][v];
    }
  }
  const float mean = warp_sum(total) / C;
  float var = 0.0f;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    if (lane + i * 32 < packs) {
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const float d = xs[i][v] - mean;
        var += d * d;
      }
    }
  }
  const float rstd = rsqrtf(warp_sum(var) / C + eps);
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int j = lane + i * 32;
    if (j < packs) {
      const int c = j * V;
      float g[V], bt[V], y[V];
      load_floats(gamma + c, g);
      load_floats(beta + c, bt);
#pragma unroll
      for (int v = 0; v < V; ++v) y[v] = (xs[i][v] - mean) * rstd * g[v] + bt[v];
      dropout_pack(out_site, base + c, y, out_scale);
      store_pack(out + base + c, y);
    }
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// Block: 8 warps over rows [blockIdx.x * kColumnReduceChunk, + kColumnReduceChunk); writes
// partial[blockIdx.x, 0..C) = sum g * xhat (dgamma) and partial[blockIdx.x, C..2C) = sum g (dbeta).
template <typename T, int kChunks>
__global__ void __launch_bounds__(256) layernorm_backward_packed_kernel(
    T* dx, T* dx_dropped, float* partial, const T* dout, const T* x, const float* mean, const float* rstd,
    const float* gamma, int N, int C, DropoutSite a_site, DropoutSite out_site) {
  constexpr int V = kPack<T>;
  __shared__ float block_sums[2 * 32 * kMaxPerLane];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const float a_scale = 1.0f / (1.0f - a_site.p), out_scale = 1.0f / (1.0f - out_site.p);
  const int packs = C / V;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kColumnReduceChunk;
  const int64_t end = min(static_cast<int64_t>(N), begin + kColumnReduceChunk);
  float acc_gx[kChunks][V], acc_g[kChunks][V];
#pragma unroll
  for (int i = 0; i < kChunks; ++i)
#pragma unroll
    for (int v = 0; v < V; ++v) acc_gx[i][v] = acc_g[i][v] = 0.0f;

  // Every lane of a warp walks the same rows, so the shuffles in warp_sum are convergent.
  for (int64_t row = begin + warp; row < end; row += kRowsPerBlock) {
    const int64_t base = row * C;
    const float mu = mean[row], rs = rstd[row];
    float gs[kChunks][V], xhat[kChunks][V];  // gs: g (dropout applied), before gamma
    float sum_g = 0.0f, sum_gx = 0.0f;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int j = lane + i * 32;
      if (j < packs) {
        const int c = j * V;
        float gm[V];
        load_pack(dout + base + c, gs[i]);
        dropout_pack(out_site, base + c, gs[i], out_scale);
        load_pack(x + base + c, xhat[i]);
        load_floats(gamma + c, gm);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          xhat[i][v] = (xhat[i][v] - mu) * rs;
          acc_g[i][v] += gs[i][v];
          acc_gx[i][v] += gs[i][v] * xhat[i][v];
          const float gg = gs[i][v] * gm[v];
          sum_g += gg;
          sum_gx += gg * xhat[i][v];
        }
      }
    }
    const float mean_g = warp_sum(sum_g) / C, mean_gx = warp_sum(sum_gx) / C;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int j = lane + i * 32;
      if (j < packs) {
        const int c = j * V;
        float gm[V], d[V];
        load_floats(gamma + c, gm);
#pragma unroll
        for (int v = 0; v < V; ++v) d[v] = rs * (gs[i][v] * gm[v] - mean_g - xhat[i][v] * mean_gx);
        store_pack(dx + base + c, d);
        if (dx_dropped) {
          dropout_pack(a_site, base + c, d, a_scale);
          store_pack(dx_dropped + base + c, d);
        }
      }
    }
  }

  // The warps' column sums, added in warp order.
  for (int w = 0; w < kRowsPerBlock; ++w) {
    if (warp == w) {
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        const int j = lane + i * 32;
        if (j < packs) {
#pragma unroll
          for (int v = 0; v < V; ++v) {
            const int c = j * V + v;
            block_sums[c] = w == 0 ? acc_gx[i][v] : block_sums[c] + acc_gx[i][v];
            block_sums[C + c] = w == 0 ? acc_g[i][v] : block_sums[C + c] + acc_g[i][v];
          }
        }
      }
    }
    __syncthreads();
  }
  float* out = partial + static_cast<int64_t>(blockIdx.x) * 2 * C;
  for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) out[c] = block_sums[c];
}

// Calls launch(std::integral_constant<int, K>) with the smallest instantiated K >= the packs per
// lane that C needs (K * kPack<T> <= kMaxPerLane, so a lane never holds more than the scalar kernel).
template <typename T, typename Launch>
void with_chunks(int C, Launch&& launch) {
  const int needed = static_cast<int>(ceil_div(C / kPack<T>, 32));
  if (needed <= 1) return launch(std::integral_constant<int, 1>{});
  if (needed <= 2) return launch(std::integral_constant<int, 2>{});
  if (needed <= 3) return launch(std::integral_constant<int, 3>{});
  if constexpr (kPack<T> == 8) {
    return launch(std::integral_constant<int, 4>{});
  } else {
    if (needed <= 4) return launch(std::integral_constant<int, 4>{});
    if (needed <= 6) return launch(std::integral_constant<int, 6>{});
    return launch(std::integral_constant<int, 8>{});
  }
}

template <typename T>
bool packed_fits(int C, std::initializer_list<const void*> pointers) {
  if (!kernel_variants().packed_layernorm || C % kPack<T> != 0) return false;
  for (const void* p : pointers)
    if (p && !is_aligned16(p)) return false;
  return true;
}

KernelVariants g_variants;

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
    if (packed_fits<scalar_t>(C, {out, sum, a, b, gamma, beta})) {
      with_chunks<scalar_t>(C, [&](auto chunks) {
        layernorm_forward_packed_kernel<scalar_t, decltype(chunks)::value>
            <<<ceil_div(N, kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
                static_cast<scalar_t*>(out), static_cast<scalar_t*>(sum), mean, rstd, static_cast<const scalar_t*>(a),
                static_cast<const scalar_t*>(b), gamma, beta, N, C, eps, a_site, out_site);
      });
      CUDA_CHECK_LAUNCH("layernorm_forward_packed_kernel");
    } else {
      layernorm_forward_kernel<scalar_t><<<ceil_div(N, kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
          static_cast<scalar_t*>(out), static_cast<scalar_t*>(sum), mean, rstd, static_cast<const scalar_t*>(a),
          static_cast<const scalar_t*>(b), gamma, beta, N, C, eps, a_site, out_site);
      CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
    }
  });
}

void layernorm_backward(void* dx, void* dx_dropped, float* dgamma, float* dbeta, const void* dout, const void* x,
                        const float* mean, const float* rstd, const float* gamma, DType type, int N, int C,
                        const DropoutSite& a_site, const DropoutSite& out_site, float* scratch, cudaStream_t stream) {
  if (N <= 0) return;
  check_width(C);
  LLMQS_DISPATCH_DTYPE(type, {
    if (packed_fits<scalar_t>(C, {dx, dx_dropped, dout, x, gamma})) {
      // scratch holds column_reduce_scratch_floats(N, 2C) = one 2C row per kColumnReduceChunk rows.
      const unsigned blocks = ceil_div(N, kColumnReduceChunk);
      with_chunks<scalar_t>(C, [&](auto chunks) {
        layernorm_backward_packed_kernel<scalar_t, decltype(chunks)::value><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(
            static_cast<scalar_t*>(dx), static_cast<scalar_t*>(dx_dropped), scratch, static_cast<const scalar_t*>(dout),
            static_cast<const scalar_t*>(x), mean, rstd, gamma, N, C, a_site, out_site);
      });
      CUDA_CHECK_LAUNCH("layernorm_backward_packed_kernel");
      column_reduce_finish_kernel<<<ceil_div(2 * C, 256), 256, 0, stream>>>(scratch, static_cast<int>(blocks), 2 * C,
                                                                             dgamma, C, dbeta);
      CUDA_CHECK_LAUNCH("column_reduce_finish_kernel");
      break;
    }
    layernorm_backward_kernel<scalar_t><<<ceil_div(N, kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
        static_cast<scalar_t*>(dx), static_cast<scalar_t*>(dx_dropped), static_cast<const scalar_t*>(dout),
        static_cast<const scalar_t*>(x), mean, rstd, gamma, N, C, a_site, out_site);
    CUDA_CHECK_LAUNCH("layernorm_backward_kernel");
    const LayerNormParamGrad<scalar_t> f{static_cast<const scalar_t*>(dout), static_cast<const scalar_t*>(x), mean,
                                         rstd, C, out_site, 1.0f / (1.0f - out_site.p)};
    column_reduce(f, N, 2 * C, dgamma, C, dbeta, scratch, stream);
  });
}

void set_kernel_variants(const KernelVariants& variants) { g_variants = variants; }
KernelVariants kernel_variants() { return g_variants; }

}  // namespace llmqs::kernels::cuda
