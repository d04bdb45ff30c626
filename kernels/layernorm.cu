// LayerNorm over the last dimension with the residual add and dropouts that post-LN BERT wraps
// around it; CUDA twin of kernels/cpu/layernorm.h (+ kernels/cpu/dropout.h where fused).
//
//   forward   x = dropout_a(a) + b   (stored in `sum` for the backward when b is given)
//             mean = sum_c x / C,  rstd = 1 / sqrt(sum_c (x - mean)^2 / C + eps)   (two-pass, fp32)
//             out = dropout_out((x - mean) * rstd * gamma + beta)
//   backward  g = dropout_out^T(dout), xhat = (x - mean) * rstd
//             dx = rstd * (g gamma - mean_c(g gamma) - xhat mean_c(g gamma xhat))
//             dx_dropped = dropout_a^T(dx);  dgamma += sum_n g xhat;  dbeta += sum_n g
//             dbias_dropped += sum_n dx_dropped (the stored, rounded values: the bias gradient of
//             the dense layer whose output went through dropout_a; CPU twin: matmul's dbias loop)
// Shapes: a, b, sum, out, dout, dx [N x C] row-major (N tokens), gamma, beta fp32 [C],
// mean, rstd fp32 [N]. Dropout element index = n * C + c (philox.h's hidden-state sites).
// Launch: one warp per row, 8 rows per 256-thread block; a row lives in registers
// (C <= 32 * kMaxPerLane = 1024), so x is read once and dropout masks are drawn once.
// When the storage type is bf16/fp16 the stored sum is rounded first and the statistics use the
// rounded values, so forward and backward see the same x.
//
// Two variants (KernelVariants::packed_layernorm picks; the scalar one is also the fallback):
//   scalar  lane l owns columns l, l + 32, ...; 2-byte loads; a Philox call per element (8x the
//           needed work); gamma/beta sums by column_reduce, which re-reads dout and x.
//   packed  lane l owns 16-byte packs l, l + 32, ... (8 bf16/fp16 or 4 fp32 columns each; needs
//           C % pack == 0 and 16-byte aligned pointers); one Philox call per eight elements (a bf16/fp16
//           pack starts at a multiple of 8: one call's eight 16-bit uniforms, philox.h);
//           the backward block owns up to kColumnReduceChunk rows (backward_rows_per_block: the
//           rows spread evenly over the resident blocks; 8 warps, rows w, w + 8, ...), keeps
//           per-warp g * xhat and g column sums in shared memory across its rows, adds the 8
//           warps' sums in warp order and writes partial[block, 2C]; column_reduce's finish
//           kernel then adds the blocks in order. With dbias_dropped a third per-warp slice sums
//           the stored dx_dropped values and its partials go to [blocks x C] after the 2C ones
//           (a second finish). Fixed order everywhere: deterministic.
// dbias_dropped without the fused slice: column_sum_accumulate over the stored dx_dropped after
// the kernel (one more read of N x C), in the scalar variant and where the third slice would not
// fit the device's per-block opt-in or would cost blocks per SM (fused_bias_fits_device: a T4 at
// C = 768, sm_86/89 at bf16/fp16 C > 512, sm_80 at bf16/fp16 C > 768; sm_90 fuses every C).
#include <algorithm>
#include <atomic>
#include <string>
#include <type_traits>

#include "kernels/column_reduce.cuh"

namespace llmqs::kernels::cuda {

size_t layernorm_backward_scratch_floats(int64_t N, int C) {
  return static_cast<size_t>(std::max<int64_t>(ceil_div(N, kColumnReduceChunk), kLayerNormMaxPartials)) * 3 * C;
}

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
  a_site = resolve_site(a_site);  // the live keys under CUDA graphs
  out_site = resolve_site(out_site);
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
  a_site = resolve_site(a_site);  // the live keys under CUDA graphs
  out_site = resolve_site(out_site);
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
  static constexpr int kRowsInFlight = 4;  // column_reduce.cuh: loads of 4 rows issued before adding
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
    // (resolved per element: this is the scalar validation path, LLMQS_LAYERNORM=scalar)
    const float g = dropout_apply(resolve_site(out_site), e, to_float(dout[e]), out_scale);
    return is_beta ? g : g * (to_float(x[e]) - mean[r]) * rstd[r];
  }
};

// ---- packed variant ------------------------------------------------------------------------------

// dropout_pack's draw (same keep decisions, same product) that also sets bit `bit + k` of `bits`
// for each kept element k, so the second pass over a row can re-apply the mask from one register
// instead of a second Philox call or 24 fp32 registers of the dropped values.
template <int kN>
__device__ __forceinline__ void dropout_pack_bits(const DropoutSite& site, int64_t first, float (&x)[kN], float scale,
                                                  uint32_t& bits, int bit) {
  const uint32_t keep = dropout_keep_bits<kN>(site, first);
#pragma unroll
  for (int k = 0; k < kN; ++k) x[k] = (keep >> k) & 1u ? x[k] * scale : 0.0f;
  bits |= keep << bit;
}

template <typename T, int kChunks>
__global__ void layernorm_forward_packed_kernel(T* out, T* sum, float* mean_out, float* rstd_out, const T* a,
                                                const T* b, const float* gamma, const float* beta, int N, int C,
                                                float eps, DropoutSite a_site, DropoutSite out_site,
                                                uint32_t* a_keep_bits) {
  a_site = resolve_site(a_site);  // the live keys under CUDA graphs
  out_site = resolve_site(out_site);
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
  const bool record = a_keep_bits != nullptr && a_site.p > 0.0f;
  uint32_t keep_bits = 0;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int j = lane + i * 32;
    if (j < packs) {
      const int64_t e = base + static_cast<int64_t>(j) * V;
      if (record)
        dropout_pack_bits(a_site, e, xs[i], a_scale, keep_bits, i * V);
      else
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
  if (record) a_keep_bits[row * 32 + lane] = keep_bits;
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// A 16-byte pack held as four 32-bit words until its elements are used: a Pack<__nv_bfloat16>
// would become eight 16-bit registers, each taking a full 32-bit register after ptxas, which is
// no saving over fp32. Element v of the pack (v a compile-time constant after unrolling) is the
// low (even v) or high (odd v) half of word v / 2 for bf16/fp16, word v for fp32; the bf16
// conversion is exact (a bf16 is the top half of an fp32), like __bfloat162float.
__device__ __forceinline__ uint32_t word_of(const uint4& r, int k) {
  return k == 0 ? r.x : k == 1 ? r.y : k == 2 ? r.z : r.w;
}
template <typename T>
__device__ __forceinline__ float unpack(const uint4& r, int v);
template <>
__device__ __forceinline__ float unpack<float>(const uint4& r, int v) {
  return __uint_as_float(word_of(r, v));
}
template <>
__device__ __forceinline__ float unpack<__nv_bfloat16>(const uint4& r, int v) {
  const uint32_t w = word_of(r, v >> 1);
  return __uint_as_float(v & 1 ? w & 0xffff0000u : w << 16);
}
template <>
__device__ __forceinline__ float unpack<__half>(const uint4& r, int v) {
  const uint32_t w = word_of(r, v >> 1);
  return __half2float(__ushort_as_half(static_cast<unsigned short>(v & 1 ? w >> 16 : w & 0xffffu)));
}

// Registers of the packed backward (sm_90, bf16, C = 768: 190 with the row in fp32 and the
// dgamma/dbeta sums in registers, one 256-thread block per SM). Now: the row stays in its storage
// type as 16-byte words (unpack) and is converted where used, in both passes; each warp keeps its
// dgamma/dbeta column sums in its own slice of dynamic shared memory (each lane touches only its
// own float4 slots, so no synchronisation inside the loop); and while a row is reduced and stored,
// the warp's next row is already loaded (software pipelining) when a lane's share of one row of
// one tensor is at most 48 bytes (bf16/fp16 C <= 768, fp32 C <= 384; wider rows spilled with
// it). Two blocks per SM, one for fp32 rows over 64 bytes per lane (C > 512).
// The dbias_dropped slice (kBias) adds a shared-memory add per float4 in the second pass, no
// registers: bf16/fp16 C = 768 (K = 3) stays at 128 on sm_90 and sm_75 and, unlike the kernel
// without it (12 bytes spilled on sm_90, nvcc 13.0), spills nothing; fp32 C = 768 145 (was 143).
template <typename T, int kChunks>
constexpr bool kBackwardPrefetch = kChunks * 16 <= 48;
template <typename T, int kChunks>
constexpr int kBackwardMinBlocks = kChunks * 16 <= 64 ? 2 : 1;

// Shared memory of the backward: per warp, kChunks * kPack floats per lane for g * xhat, then as
// many for g, then (kBias) as many for the stored dx_dropped; lane l's float4 number k
// (k = i * kPack / 4 + h: pack i, half h) of a slice sits at ((k * 32) + l) * 4, so the 8 lanes of
// a 128-bit access phase hit 8 different 16-byte bank groups. bf16/fp16 C = 768: 48 KiB with two
// slices, 72 KiB with three (2 blocks/SM still fit sm_90's 228 KB, not sm_75's 64 KB).
template <typename T, int kChunks>
constexpr int kBackwardLaneFloats = kChunks * kPack<T>;
template <bool kBias>
constexpr int kBackwardSlices = kBias ? 3 : 2;
template <typename T, int kChunks, bool kBias>
constexpr size_t kBackwardSmemBytes =
    size_t(kRowsPerBlock) * kBackwardSlices<kBias> * 32 * kBackwardLaneFloats<T, kChunks> * sizeof(float);

// Block: 8 warps over rows [blockIdx.x * rows_per_block, + rows_per_block) (backward_rows_per_block); writes
// partial[blockIdx.x, 0..C) = sum g * xhat (dgamma) and partial[blockIdx.x, C..2C) = sum g (dbeta);
// with kBias (dx_dropped not null) also partial[gridDim.x * 2C + blockIdx.x * C + c] = sum of the
// stored dx_dropped (dbias_dropped).
// Per row two passes over the registers: (1) g, xhat -> the warp's dgamma/dbeta column sums and
// the two row sums; (2) after the warp reductions, g and xhat again (from the packed row, the
// out-dropout mask from keep bits) -> dx, dx_dropped (and its column sums). Each column sum adds
// the warp's rows in row order, then the 8 warps in warp order: fixed, as before.
template <typename T, int kChunks, bool kBias, bool kKeepBits>
__global__ void __launch_bounds__(256, kBackwardMinBlocks<T, kChunks>) layernorm_backward_packed_kernel(
    T* dx, T* dx_dropped, float* partial, const T* dout, const T* x, const float* mean, const float* rstd,
    const float* gamma, int N, int C, int rows_per_block, DropoutSite a_site, DropoutSite out_site,
    const uint32_t* a_keep_bits) {
  a_site = resolve_site(a_site);  // the live keys under CUDA graphs
  out_site = resolve_site(out_site);
  constexpr int V = kPack<T>, H = V / 4;  // H float4 halves per pack
  constexpr bool kPrefetch = kBackwardPrefetch<T, kChunks>;
  constexpr int kLaneFloats = kBackwardLaneFloats<T, kChunks>;
  constexpr int kSlices = kBackwardSlices<kBias>;
  static_assert(kLaneFloats <= 32, "one keep bit per element of a lane's row in a uint32_t");
  extern __shared__ float4 backward_smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float4* const acc_gx = backward_smem + warp * kSlices * 8 * kLaneFloats + lane;  // float4 k at [k * 32]
  float4* const acc_g = acc_gx + 8 * kLaneFloats;
  float4* const acc_b = acc_g + 8 * kLaneFloats;  // kBias only
  const float a_scale = 1.0f / (1.0f - a_site.p), out_scale = 1.0f / (1.0f - out_site.p);
  const bool drop_out = out_site.p > 0.0f;
  const int packs = C / V;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t end = min(static_cast<int64_t>(N), begin + rows_per_block);
  const float* const gamma_lane = gamma + lane * V;
#pragma unroll
  for (int k = 0; k < kChunks * H; ++k) {
    acc_gx[k * 32] = acc_g[k * 32] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if constexpr (kBias) acc_b[k * 32] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }

  // The row a warp loads next (its words stay zero on lanes past the row's end). Addresses are
  // (row's lane start) + i * 32 packs: one 64-bit add per tensor and row, immediates per chunk.
  uint4 next_d[kChunks], next_x[kChunks];
  float next_mu = 0.0f, next_rs = 0.0f;
  uint32_t next_a_bits = 0;
  // kKeepBits: a_site's mask from the forward's bits (a_keep_bits), no Philox draw for it here.
  const bool a_from_bits = kKeepBits && a_site.p > 0.0f;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) next_d[i] = next_x[i] = make_uint4(0u, 0u, 0u, 0u);
  const auto load_row = [&](int64_t row) {
    const int64_t start = row * C + lane * V;
    const uint4* dp = reinterpret_cast<const uint4*>(dout + start);
    const uint4* xp = reinterpret_cast<const uint4*>(x + start);
    next_mu = mean[row];
    next_rs = rstd[row];
    if (a_from_bits) next_a_bits = a_keep_bits[row * 32 + lane];
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      if (lane + i * 32 < packs) {
        next_d[i] = dp[i * 32];
        next_x[i] = xp[i * 32];
      }
    }
  };
  if (kPrefetch && begin + warp < end) load_row(begin + warp);

  // Every lane of a warp walks the same rows, so the shuffles in warp_sum are convergent.
  for (int64_t row = begin + warp; row < end; row += kRowsPerBlock) {
    if (!kPrefetch) load_row(row);
    uint4 d[kChunks], xv[kChunks];
#pragma unroll
    for (int i = 0; i < kChunks; ++i) d[i] = next_d[i], xv[i] = next_x[i];
    const float mu = next_mu, rs = next_rs;
    const uint32_t a_bits = next_a_bits;
    // Issued before this row's stores: the compiler may not move a load above a store that
    // might alias it, so this is the only place the next row's loads can overlap this row.
    if (kPrefetch && row + kRowsPerBlock < end) load_row(row + kRowsPerBlock);

    const int64_t start = row * C + lane * V;  // element index of the lane's first pack
    float sum_g = 0.0f, sum_gx = 0.0f;
    uint32_t keep_bits = 0;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      if (lane + i * 32 < packs) {
        float g[V], gx[V], gm[V];  // g: dout after the out-dropout, before gamma; gx = g * xhat
#pragma unroll
        for (int v = 0; v < V; ++v) g[v] = unpack<T>(d[i], v);
        if (drop_out) dropout_pack_bits(out_site, start + i * 32 * V, g, out_scale, keep_bits, i * V);
        load_floats(gamma_lane + i * 32 * V, gm);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const float xhat = (unpack<T>(xv[i], v) - mu) * rs;
          gx[v] = g[v] * xhat;
          const float gg = g[v] * gm[v];
          sum_g += gg;
          sum_gx += gg * xhat;
        }
#pragma unroll
        for (int h = 0; h < H; ++h) {
          float4 a = acc_gx[(i * H + h) * 32], b = acc_g[(i * H + h) * 32];
          a.x += gx[4 * h], a.y += gx[4 * h + 1], a.z += gx[4 * h + 2], a.w += gx[4 * h + 3];
          b.x += g[4 * h], b.y += g[4 * h + 1], b.z += g[4 * h + 2], b.w += g[4 * h + 3];
          acc_gx[(i * H + h) * 32] = a;
          acc_g[(i * H + h) * 32] = b;
        }
      }
    }
    const float mean_g = warp_sum(sum_g) / C, mean_gx = warp_sum(sum_gx) / C;
    T* const dx_lane = dx + start;
    T* const dx_dropped_lane = dx_dropped ? dx_dropped + start : nullptr;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      if (lane + i * 32 < packs) {
        float gm[V], dd[V];
        load_floats(gamma_lane + i * 32 * V, gm);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          float g = unpack<T>(d[i], v);
          if (drop_out) g = (keep_bits >> (i * V + v)) & 1u ? g * out_scale : 0.0f;
          const float xhat = (unpack<T>(xv[i], v) - mu) * rs;
          dd[v] = rs * (g * gm[v] - mean_g - xhat * mean_gx);
        }
        store_pack(dx_lane + i * 32 * V, dd);
        if (dx_dropped) {
          if constexpr (kKeepBits) {  // the forward's decisions, applied as dropout_pack applies them
            if (a_from_bits) {
#pragma unroll
              for (int v = 0; v < V; ++v) dd[v] = (a_bits >> (i * V + v)) & 1u ? dd[v] * a_scale : 0.0f;
            }
          } else {
            dropout_pack(a_site, start + i * 32 * V, dd, a_scale);
          }
          if constexpr (kBias) {
            // Sum what is stored: the rounded values, as linear_backward_bias would read them.
            Pack<T> stored;
#pragma unroll
            for (int v = 0; v < V; ++v) stored.v[v] = from_float<T>(dd[v]);
            *reinterpret_cast<Pack<T>*>(dx_dropped_lane + i * 32 * V) = stored;
#pragma unroll
            for (int h = 0; h < H; ++h) {
              float4 b = acc_b[(i * H + h) * 32];
              b.x += to_float(stored.v[4 * h]), b.y += to_float(stored.v[4 * h + 1]);
              b.z += to_float(stored.v[4 * h + 2]), b.w += to_float(stored.v[4 * h + 3]);
              acc_b[(i * H + h) * 32] = b;
            }
          } else {
            store_pack(dx_dropped_lane + i * 32 * V, dd);
          }
        }
      }
    }
  }

  // The warps' column sums, added in warp order. Float s of a warp's g * xhat slice is element
  // q = s % 4 of float4 k = s / 128 of lane l = (s / 4) % 32: column (i * 32 + l) * V + h * 4 + q
  // with k = i * H + h.
  __syncthreads();
  constexpr int kSlice = 32 * kLaneFloats;  // floats of one slice of one warp
  const float* const sums = reinterpret_cast<const float*>(backward_smem);
  float* const out = partial + static_cast<int64_t>(blockIdx.x) * 2 * C;
  float* const out_b = partial + static_cast<int64_t>(gridDim.x) * 2 * C + static_cast<int64_t>(blockIdx.x) * C;
  for (int s = threadIdx.x; s < kSlice; s += blockDim.x) {
    const int q = s & 3, l = (s >> 2) & 31, k = s >> 7;
    const int pack = (k / H) * 32 + l;
    if (pack >= packs) continue;
    const int c = pack * V + (k % H) * 4 + q;
    float total_gx = sums[s], total_g = sums[kSlice + s], total_b = kBias ? sums[2 * kSlice + s] : 0.0f;
    for (int w = 1; w < kRowsPerBlock; ++w) {
      total_gx += sums[w * kSlices * kSlice + s];
      total_g += sums[w * kSlices * kSlice + kSlice + s];
      if constexpr (kBias) total_b += sums[w * kSlices * kSlice + 2 * kSlice + s];
    }
    out[c] = total_gx;
    out[C + c] = total_g;
    if constexpr (kBias) out_b[c] = total_b;
  }
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

// Over the 48 KiB default a kernel must opt in to its dynamic shared memory; done per launch
// (cheap, and right for whichever device is current), with the carveout that holds the most blocks.
template <typename Kernel>
void opt_in_shared_memory(Kernel kernel, size_t smem) {
  if (smem <= 48 * 1024) return;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutMaxShared));
}

// Rows per block of the packed backward: the rows spread evenly over every resident block slot
// (SMs x blocks_per_sm), in as few waves of such blocks as keep a block at most kColumnReduceChunk
// (128) rows and at least 16. Every SM then does the same share of the rows: a Yelp-length batch of
// ~11K rows is 264 blocks of 43 rows on an H200 (132 SMs, 2 blocks each), where halving 128 until
// the blocks covered the SMs gave 176 blocks of 64, a second block on only 44 of the SMs. Not
// smaller: each block has a fixed cost (zeroing and adding its shared-memory column sums, one more
// partial row for the finish), and 64-row blocks at 32K rows measured 0.120 ms per call against
// 0.101 with 128 (H200, bf16, C = 768). The blocks never exceed the scratch's partial rows,
// max(ceil(N / 128), kLayerNormMaxPartials) (layernorm_backward_scratch_floats).
int backward_rows_per_block(int N, int blocks_per_sm) {
  int device = 0, sms = 0;  // the current device's, asked per call (two host queries, no sync)
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t slots = static_cast<int64_t>(sms) * std::max(1, blocks_per_sm);
  const int64_t waves = std::max<int64_t>(1, ceil_div(static_cast<int64_t>(N), slots * kColumnReduceChunk));
  const int64_t blocks = std::min<int64_t>(waves * slots, ceil_div(static_cast<int64_t>(N), 16));
  if (blocks > std::max<int64_t>(ceil_div(static_cast<int64_t>(N), kColumnReduceChunk), kLayerNormMaxPartials))
    return kColumnReduceChunk;
  return static_cast<int>(ceil_div(static_cast<int64_t>(N), blocks));
}

// Whether the backward with the third (dbias) slice runs on the current device, and with as many
// blocks per SM as the kernel without it: the fused sum saves one read of N x C, a halved occupancy
// would cost more. Fused where the opt-in allows it (cudaDevAttrMaxSharedMemoryPerBlockOptin:
// sm_75 64 KiB, sm_80 163, sm_86/89 99, sm_90 227) and the occupancy calculator (registers,
// shared memory with its per-block reserve) gives no fewer blocks: bf16/fp16 C = 768 (72 KiB
// instead of 48) fuses on sm_80 and sm_90 at 2 blocks per SM, not on sm_86/89 (1 instead of 2) or
// sm_75 (over 64 KiB). Decided once per device and instantiation.
template <typename T, int K>
bool fused_bias_fits_device() {
  constexpr int kDevices = 64;
  static std::atomic<int> decided[kDevices];  // 0 not yet, 1 fused, 2 fallback
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  if (device < kDevices) {
    if (const int d = decided[device].load(std::memory_order_relaxed)) return d == 1;
  }
  const auto fused = layernorm_backward_packed_kernel<T, K, true, false>;
  const auto plain = layernorm_backward_packed_kernel<T, K, false, false>;
  constexpr size_t kFusedSmem = kBackwardSmemBytes<T, K, true>, kPlainSmem = kBackwardSmemBytes<T, K, false>;
  int optin = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  bool fits = kFusedSmem <= static_cast<size_t>(optin);
  if (fits) {
    opt_in_shared_memory(fused, kFusedSmem);
    opt_in_shared_memory(plain, kPlainSmem);
    int with_bias = 0, without = 0;
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&with_bias, fused, 32 * kRowsPerBlock, kFusedSmem));
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&without, plain, 32 * kRowsPerBlock, kPlainSmem));
    fits = with_bias > 0 && with_bias >= without;
  }
  if (device < kDevices) decided[device].store(fits ? 1 : 2, std::memory_order_relaxed);
  return fits;
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

size_t layernorm_keep_bits_words(int64_t N, int C, DType type) {
  bool packed = false;
  LLMQS_DISPATCH_DTYPE(type, { packed = kernel_variants().packed_layernorm && C % kPack<scalar_t> == 0; });
  return packed && C <= 32 * kMaxPerLane ? static_cast<size_t>(N) * 32 : 0;
}

bool layernorm_forward(void* out, void* sum, float* mean, float* rstd, const void* a, const void* b,
                       const float* gamma, const float* beta, DType type, int N, int C, float eps,
                       const DropoutSite& a_site, const DropoutSite& out_site, cudaStream_t stream,
                       uint32_t* a_keep_bits) {
  if (N <= 0) return false;
  check_width(C);
  bool recorded = false;
  LLMQS_DISPATCH_DTYPE(type, {
    if (packed_fits<scalar_t>(C, {out, sum, a, b, gamma, beta})) {
      with_chunks<scalar_t>(C, [&](auto chunks) {
        layernorm_forward_packed_kernel<scalar_t, decltype(chunks)::value>
            <<<ceil_div(N, kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
                static_cast<scalar_t*>(out), static_cast<scalar_t*>(sum), mean, rstd, static_cast<const scalar_t*>(a),
                static_cast<const scalar_t*>(b), gamma, beta, N, C, eps, a_site, out_site, a_keep_bits);
      });
      CUDA_CHECK_LAUNCH("layernorm_forward_packed_kernel");
      recorded = a_keep_bits != nullptr;
    } else {
      layernorm_forward_kernel<scalar_t><<<ceil_div(N, kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
          static_cast<scalar_t*>(out), static_cast<scalar_t*>(sum), mean, rstd, static_cast<const scalar_t*>(a),
          static_cast<const scalar_t*>(b), gamma, beta, N, C, eps, a_site, out_site);
      CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
    }
  });
  return recorded;
}

void layernorm_backward(void* dx, void* dx_dropped, float* dgamma, float* dbeta, float* dbias_dropped,
                        const void* dout, const void* x, const float* mean, const float* rstd, const float* gamma,
                        DType type, int N, int C, const DropoutSite& a_site, const DropoutSite& out_site,
                        float* scratch, cudaStream_t stream, const uint32_t* a_keep_bits) {
  if (N <= 0) return;
  check_width(C);
  if (dbias_dropped && !dx_dropped)
    throw std::invalid_argument("layernorm_backward: dbias_dropped sums dx_dropped, which is null");
  LLMQS_DISPATCH_DTYPE(type, {
    if (packed_fits<scalar_t>(C, {dx, dx_dropped, dout, x, gamma})) {
      // scratch holds layernorm_backward_scratch_floats(N, C): per block one 2C row (dgamma | dbeta),
      // then [blocks x C] for dbias_dropped when fused.
      unsigned blocks = 0;
      bool bias_fused = false;
      with_chunks<scalar_t>(C, [&](auto chunks) {
        constexpr int K = decltype(chunks)::value;
        const int rows_per_block = backward_rows_per_block(N, kBackwardMinBlocks<scalar_t, K>);
        blocks = ceil_div(N, rows_per_block);
        const auto launch = [&](auto kernel, size_t smem) {
          opt_in_shared_memory(kernel, smem);
          kernel<<<blocks, 32 * kRowsPerBlock, smem, stream>>>(
              static_cast<scalar_t*>(dx), static_cast<scalar_t*>(dx_dropped), scratch,
              static_cast<const scalar_t*>(dout), static_cast<const scalar_t*>(x), mean, rstd, gamma, N, C,
              rows_per_block, a_site, out_site, a_keep_bits);
        };
        const bool bits = a_keep_bits != nullptr;
        if (dbias_dropped && fused_bias_fits_device<scalar_t, K>()) {
          constexpr size_t smem = kBackwardSmemBytes<scalar_t, K, true>;
          if (bits)
            launch(layernorm_backward_packed_kernel<scalar_t, K, true, true>, smem);
          else
            launch(layernorm_backward_packed_kernel<scalar_t, K, true, false>, smem);
          bias_fused = true;
        } else {
          // Two slices: at most 64 KiB (C <= 1024), which every supported device (sm_75+) allows.
          constexpr size_t smem = kBackwardSmemBytes<scalar_t, K, false>;
          if (bits)
            launch(layernorm_backward_packed_kernel<scalar_t, K, false, true>, smem);
          else
            launch(layernorm_backward_packed_kernel<scalar_t, K, false, false>, smem);
        }
      });
      CUDA_CHECK_LAUNCH("layernorm_backward_packed_kernel");
      column_reduce_finish(scratch, static_cast<int>(blocks), 2 * C, dgamma, C, dbeta, stream);
      if (bias_fused)
        column_reduce_finish(scratch + static_cast<size_t>(blocks) * 2 * C, static_cast<int>(blocks), C, dbias_dropped,
                             C, nullptr, stream);
      else if (dbias_dropped)
        column_sum_accumulate(dbias_dropped, dx_dropped, type, N, C, C, scratch, stream);
      break;
    }
    layernorm_backward_kernel<scalar_t><<<ceil_div(N, kRowsPerBlock), 32 * kRowsPerBlock, 0, stream>>>(
        static_cast<scalar_t*>(dx), static_cast<scalar_t*>(dx_dropped), static_cast<const scalar_t*>(dout),
        static_cast<const scalar_t*>(x), mean, rstd, gamma, N, C, a_site, out_site);
    CUDA_CHECK_LAUNCH("layernorm_backward_kernel");
    const LayerNormParamGrad<scalar_t> f{static_cast<const scalar_t*>(dout), static_cast<const scalar_t*>(x), mean,
                                         rstd, C, out_site, 1.0f / (1.0f - out_site.p)};
    column_reduce(f, N, 2 * C, dgamma, C, dbeta, scratch, stream);
    if (dbias_dropped) column_sum_accumulate(dbias_dropped, dx_dropped, type, N, C, C, scratch, stream);
  });
}

void set_kernel_variants(const KernelVariants& variants) { g_variants = variants; }
KernelVariants kernel_variants() { return g_variants; }

}  // namespace llmqs::kernels::cuda
