// Fused ("flash") multi-head self-attention with a key padding mask and Philox dropout on the
// probabilities, bf16/fp16 on tensor cores (mma.sync m16n8k16; on sm_75 two m16n8k8 for fp16).
// CPU twin: kernels/cpu/attention.h (same function; the tests compare ctx, dq, dk, dv).
//
// For row r (length L_r), head h, query i, key j (d = head_dim, c = 1/sqrt(d)):
//   S_ij = c q_i.k_j;  P_ij = softmax_j(S_ij) over j < L_r;  keep_ij = Philox(site, element e_ij)
//   e_ij = ((r * heads + h) * seq + i) * seq + j  (the CPU's indexing: identical masks)
//   O_i = sum_j P_ij keep_ij / (1 - p) v_j
// Nothing of size seq x seq touches memory: the forward keeps a running max and sum per query
// (online softmax) and saves only lse_i = log2-domain log-sum-exp [rows x heads x seq] fp32.
// Backward (P recomputed from lse, the mask from Philox):
//   Di = dO_i . O_i;  dPd_ij = dO_i . v_j;  dS_ij = P_ij (dPd_ij keep_ij / (1 - p) - Di)
//   dV_j = sum_i P_ij keep_ij / (1 - p) dO_i;  dK_j = c sum_i dS_ij q_i;  dQ_i = c sum_j dS_ij k_j
// dK/dV and dQ come from two kernels (one owns a key tile, one a query tile), so every output
// element is summed by one thread in a fixed order: deterministic, no atomics, at the price of
// computing S and P twice in the backward.
//
// Layout: q, k, v, ctx, dq, dk, dv [rows x seq x C], head h in columns h*d .. h*d+d-1 (HF's);
// tiles are read straight from it (row stride C), no head-major copies. lengths [rows] device.
// Launch: one block of 4 warps per (64-row tile, row x head); each warp owns 16 rows of the tile;
// key/query tiles of 64 stream through shared memory (rows padded by 8 elements: no bank
// conflicts on the 32-bit fragment loads). Key tiles at or past L_r are skipped entirely.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

namespace llmqs::kernels::cuda {

namespace {

constexpr int kTile = 64;     // queries (or keys) per block, and per streamed tile
constexpr int kWarps = 4;     // 16 rows each
constexpr float kLog2e = 1.4426950408889634f;

template <typename T>
struct Pack2;
template <>
struct Pack2<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};
template <>
struct Pack2<__half> {
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

template <typename T>
__device__ __forceinline__ uint32_t pack_pair(T lo, T hi) {
  const uint16_t a = *reinterpret_cast<const uint16_t*>(&lo), b = *reinterpret_cast<const uint16_t*>(&hi);
  return uint32_t(a) | (uint32_t(b) << 16);
}

// D(16x8 fp32) += A(16x16) B(16x8). Fragments (lane = 4 * g + t):
//   a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]
//   b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
//   d[0..1] = D[g][2t..2t+1], d[2..3] = D[g+8][2t..2t+1]
template <typename T>
__device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], const uint32_t b[2]);

template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // bf16 is refused below sm_80 on the host side
#endif
}

template <>
__device__ __forceinline__ void mma16816<__half>(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  // Turing: the k16 product as two k8 products (columns 0..7 of A with b[0], 8..15 with b[1]).
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(b[0]));
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[2]), "r"(a[3]), "r"(b[1]));
#else
  __trap();
#endif
}

// Shared-memory tile of kTile rows x D, row stride D + 8 elements.
template <int D>
struct TileLayout {
  static constexpr int kStride = D + 8;
  static constexpr int kElements = kTile * kStride;
};

// Copies rows [row0, row0 + kTile) of a [seq x C]-strided head slice into a tile (zeros past seq).
template <typename T, int D>
__device__ __forceinline__ void load_tile(T* tile, const T* src, int row0, int seq, int C) {
  constexpr int kVecPerRow = D * int(sizeof(T)) / 16;  // 16-byte vectors
  for (int v = threadIdx.x; v < kTile * kVecPerRow; v += kWarps * 32) {
    const int row = v / kVecPerRow, col = (v % kVecPerRow) * (16 / int(sizeof(T)));
    uint4 value = make_uint4(0, 0, 0, 0);
    if (row0 + row < seq) value = *reinterpret_cast<const uint4*>(src + size_t(row0 + row) * C + col);
    *reinterpret_cast<uint4*>(tile + row * TileLayout<D>::kStride + col) = value;
  }
}

// A fragment of rows [r0, r0 + 16) x columns [k0, k0 + 16) of a row-major tile.
template <typename T, int D>
__device__ __forceinline__ void load_a(uint32_t a[4], const T* tile, int r0, int k0, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const T* p = tile + (r0 + g) * TileLayout<D>::kStride + k0 + 2 * t;
  a[0] = *reinterpret_cast<const uint32_t*>(p);
  a[1] = *reinterpret_cast<const uint32_t*>(p + 8 * TileLayout<D>::kStride);
  a[2] = *reinterpret_cast<const uint32_t*>(p + 8);
  a[3] = *reinterpret_cast<const uint32_t*>(p + 8 * TileLayout<D>::kStride + 8);
}

// B fragment with B[k][n] = tile[n0 + n][k0 + k] (the tile's rows are B's columns: K for Q K^T).
template <typename T, int D>
__device__ __forceinline__ void load_b_rows(uint32_t b[2], const T* tile, int n0, int k0, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const T* p = tile + (n0 + g) * TileLayout<D>::kStride + k0 + 2 * t;
  b[0] = *reinterpret_cast<const uint32_t*>(p);
  b[1] = *reinterpret_cast<const uint32_t*>(p + 8);
}

// B fragment with B[k][n] = tile[k0 + k][n0 + n] (the tile's rows are B's rows: V for P V).
template <typename T, int D>
__device__ __forceinline__ void load_b_cols(uint32_t b[2], const T* tile, int k0, int n0, int lane) {
  const int g = lane >> 2, t = lane & 3;
  constexpr int s = TileLayout<D>::kStride;
  const T* p = tile + (k0 + 2 * t) * s + n0 + g;
  b[0] = pack_pair(p[0], p[s]);
  b[1] = pack_pair(p[8 * s], p[9 * s]);
}

// The accumulators of two adjacent 16x8 column blocks (2kk, 2kk+1) as the A fragment of
// columns [16kk, 16kk + 16): the register reuse that keeps P in registers between products.
template <typename T>
__device__ __forceinline__ void acc_to_a(uint32_t a[4], const float lo[4], const float hi[4]) {
  a[0] = Pack2<T>::pack(lo[0], lo[1]);
  a[1] = Pack2<T>::pack(lo[2], lo[3]);
  a[2] = Pack2<T>::pack(hi[0], hi[1]);
  a[3] = Pack2<T>::pack(hi[2], hi[3]);
}

__device__ __forceinline__ uint32_t philox_word(const Philox4x32& w, int k) {
  return k == 0 ? w.v[0] : k == 1 ? w.v[1] : k == 2 ? w.v[2] : w.v[3];
}

// keep / (1 - p) for the two consecutive elements (e, e + 1). With an even seq, e is even and one
// Philox call serves both; with an odd seq, e can be odd and e + 1 can start the next group of 4.
__device__ __forceinline__ void keep_pair(const DropoutSite& site, uint64_t e, float scale, float out[2]) {
  if (site.p <= 0.0f) {
    out[0] = out[1] = 1.0f;
    return;
  }
  const Philox4x32 w = dropout_words(site, e >> 2);
  const int k = int(e & 3);
  out[0] = uniform_from_word(philox_word(w, k)) >= site.p ? scale : 0.0f;
  const uint32_t next = k < 3 ? philox_word(w, k + 1) : dropout_words(site, (e >> 2) + 1).v[0];
  out[1] = uniform_from_word(next) >= site.p ? scale : 0.0f;
}

__device__ __forceinline__ float keep_one(const DropoutSite& site, uint64_t e, float scale) {
  return site.p <= 0.0f ? 1.0f : (dropout_uniform(site, e) >= site.p ? scale : 0.0f);
}

// ---- forward ----------------------------------------------------------------------------------
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32) flash_forward_kernel(T* ctx, float* lse, const T* q, const T* k,
                                                                     const T* v, const int32_t* lengths, int seq,
                                                                     int C, int heads, DropoutSite site) {
  __shared__ __align__(16) T q_tile[TileLayout<D>::kElements];
  __shared__ __align__(16) T k_tile[TileLayout<D>::kElements];
  __shared__ __align__(16) T v_tile[TileLayout<D>::kElements];
  const int bh = blockIdx.y, r = bh / heads, h = bh % heads;
  const int i0 = blockIdx.x * kTile;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int len = lengths[r];
  const size_t head_offset = size_t(r) * seq * C + size_t(h) * D;
  const float scale2 = rsqrtf(float(D)) * kLog2e;  // scores in the log2 domain
  const float keep_scale = 1.0f / (1.0f - site.p);

  load_tile<T, D>(q_tile, q + head_offset, i0, seq, C);
  __syncthreads();
  uint32_t qa[D / 16][4];
  for (int kk = 0; kk < D / 16; ++kk) load_a<T, D>(qa[kk], q_tile, warp * 16, kk * 16, lane);

  float o[D / 8][4];
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  const int qi[2] = {i0 + warp * 16 + g, i0 + warp * 16 + g + 8};

  for (int j0 = 0; j0 < len; j0 += kTile) {
    __syncthreads();
    load_tile<T, D>(k_tile, k + head_offset, j0, seq, C);
    load_tile<T, D>(v_tile, v + head_offset, j0, seq, C);
    __syncthreads();
    float s[kTile / 8][4];
    for (int n = 0; n < kTile / 8; ++n) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t b[2];
        load_b_rows<T, D>(b, k_tile, n * 8, kk * 16, lane);
        mma16816<T>(s[n], qa[kk], b);
      }
    }
    float tile_max[2] = {-INFINITY, -INFINITY};
    for (int n = 0; n < kTile / 8; ++n) {
      const int j = j0 + n * 8 + 2 * t;
      for (int e = 0; e < 4; ++e) {
        const bool valid = j + (e & 1) < len;
        s[n][e] = valid ? s[n][e] * scale2 : -INFINITY;
        tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[n][e]);
      }
    }
    float correction[2];
    for (int x = 0; x < 2; ++x) {
      tile_max[x] = fmaxf(tile_max[x], __shfl_xor_sync(0xffffffffu, tile_max[x], 1));
      tile_max[x] = fmaxf(tile_max[x], __shfl_xor_sync(0xffffffffu, tile_max[x], 2));
      const float new_max = fmaxf(row_max[x], tile_max[x]);  // finite: key 0 is always valid
      correction[x] = exp2f(row_max[x] - new_max);
      row_max[x] = new_max;
      row_sum[x] *= correction[x];
    }
    for (int n = 0; n < D / 8; ++n) {
      o[n][0] *= correction[0], o[n][1] *= correction[0];
      o[n][2] *= correction[1], o[n][3] *= correction[1];
    }
    for (int n = 0; n < kTile / 8; ++n) {
      const int j = j0 + n * 8 + 2 * t;
      for (int x = 0; x < 2; ++x) {
        const float p0 = exp2f(s[n][2 * x] - row_max[x]), p1 = exp2f(s[n][2 * x + 1] - row_max[x]);
        row_sum[x] += p0 + p1;
        float keep[2] = {1.0f, 1.0f};
        if (qi[x] < seq && j < len) keep_pair(site, (size_t(bh) * seq + qi[x]) * seq + j, keep_scale, keep);
        s[n][2 * x] = p0 * keep[0];
        s[n][2 * x + 1] = p1 * keep[1];
      }
    }
    for (int kk = 0; kk < kTile / 16; ++kk) {
      uint32_t pa[4];
      acc_to_a<T>(pa, s[2 * kk], s[2 * kk + 1]);
      for (int n = 0; n < D / 8; ++n) {
        uint32_t b[2];
        load_b_cols<T, D>(b, v_tile, kk * 16, n * 8, lane);
        mma16816<T>(o[n], pa, b);
      }
    }
  }
  for (int x = 0; x < 2; ++x) {
    row_sum[x] += __shfl_xor_sync(0xffffffffu, row_sum[x], 1);
    row_sum[x] += __shfl_xor_sync(0xffffffffu, row_sum[x], 2);
  }
  for (int x = 0; x < 2; ++x) {
    if (qi[x] >= seq) continue;
    const float inv = 1.0f / row_sum[x];
    T* out = ctx + head_offset + size_t(qi[x]) * C;
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<uint32_t*>(out + n * 8 + 2 * t) = Pack2<T>::pack(o[n][2 * x] * inv, o[n][2 * x + 1] * inv);
    if (t == 0) lse[size_t(bh) * seq + qi[x]] = row_max[x] + log2f(row_sum[x]);
  }
}

// ---- backward -----------------------------------------------------------------------------------
// delta[bh, i] = dO_i . O_i (fp32), one warp per (token, head).
template <typename T, int D>
__global__ void flash_backward_delta_kernel(float* delta, const T* dctx, const T* ctx, int rows, int seq, int C,
                                            int heads) {
  const size_t w = size_t(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (w >= size_t(rows) * seq * heads) return;
  const int h = int(w % heads);
  const size_t token = w / heads;
  const size_t r = token / seq, i = token % seq;
  const T* a = dctx + token * C + size_t(h) * D;
  const T* b = ctx + token * C + size_t(h) * D;
  float sum = 0.0f;
  for (int e = lane; e < D; e += 32) sum += to_float(a[e]) * to_float(b[e]);
  sum = warp_sum(sum);
  if (lane == 0) delta[(r * heads + h) * seq + i] = sum;
}

// dK, dV for one key tile: the warp owns keys j0 + 16 warp .. +16 and streams every query tile.
// Works on transposed scores S^T (keys x queries) so dV = Pd^T dO and dK = dS^T Q reuse registers.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32) flash_backward_kv_kernel(
    T* dk, T* dv, const T* q, const T* k, const T* v, const T* dctx, const float* lse, const float* delta,
    const int32_t* lengths, int seq, int C, int heads, DropoutSite site) {
  __shared__ __align__(16) T q_tile[TileLayout<D>::kElements];
  __shared__ __align__(16) T do_tile[TileLayout<D>::kElements];
  __shared__ float lse_tile[kTile], delta_tile[kTile];
  const int bh = blockIdx.y, r = bh / heads, h = bh % heads;
  const int j0 = blockIdx.x * kTile;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int len = lengths[r];
  const size_t head_offset = size_t(r) * seq * C + size_t(h) * D;
  const float scale = rsqrtf(float(D)), scale2 = scale * kLog2e;
  const float keep_scale = 1.0f / (1.0f - site.p);
  const int kj[2] = {j0 + warp * 16 + g, j0 + warp * 16 + g + 8};

  float dk_acc[D / 8][4], dv_acc[D / 8][4];
  for (int n = 0; n < D / 8; ++n)
    for (int e = 0; e < 4; ++e) dk_acc[n][e] = dv_acc[n][e] = 0.0f;

  if (j0 < len) {  // key tiles past the length get zero gradients
    // K and V rows of this warp as A fragments (staged through the q/do tiles).
    uint32_t ka[D / 16][4], va[D / 16][4];
    load_tile<T, D>(q_tile, k + head_offset, j0, seq, C);
    load_tile<T, D>(do_tile, v + head_offset, j0, seq, C);
    __syncthreads();
    for (int kk = 0; kk < D / 16; ++kk) {
      load_a<T, D>(ka[kk], q_tile, warp * 16, kk * 16, lane);
      load_a<T, D>(va[kk], do_tile, warp * 16, kk * 16, lane);
    }
    for (int i0 = 0; i0 < seq; i0 += kTile) {
      __syncthreads();
      load_tile<T, D>(q_tile, q + head_offset, i0, seq, C);
      load_tile<T, D>(do_tile, dctx + head_offset, i0, seq, C);
      for (int x = threadIdx.x; x < kTile; x += kWarps * 32) {
        const bool in = i0 + x < seq;
        lse_tile[x] = in ? lse[size_t(bh) * seq + i0 + x] : 0.0f;
        delta_tile[x] = in ? delta[size_t(bh) * seq + i0 + x] : 0.0f;
      }
      __syncthreads();
      float p[kTile / 8][4], dp[kTile / 8][4];
      for (int n = 0; n < kTile / 8; ++n) {
        for (int e = 0; e < 4; ++e) p[n][e] = dp[n][e] = 0.0f;
        for (int kk = 0; kk < D / 16; ++kk) {
          uint32_t b[2];
          load_b_rows<T, D>(b, q_tile, n * 8, kk * 16, lane);
          mma16816<T>(p[n], ka[kk], b);
          load_b_rows<T, D>(b, do_tile, n * 8, kk * 16, lane);
          mma16816<T>(dp[n], va[kk], b);
        }
      }
      // p -> P^T, dp -> dS^T; p afterwards holds the dropped probabilities Pd^T.
      for (int n = 0; n < kTile / 8; ++n) {
        for (int e = 0; e < 4; ++e) {
          const int qi = i0 + n * 8 + 2 * t + (e & 1), key = kj[e >> 1];
          const bool valid = qi < seq && key < len;
          const float prob = valid ? exp2f(p[n][e] * scale2 - lse_tile[qi - i0]) : 0.0f;
          const float keep = valid ? keep_one(site, (size_t(bh) * seq + qi) * seq + key, keep_scale) : 0.0f;
          dp[n][e] = prob * (dp[n][e] * keep - delta_tile[qi - i0]);
          p[n][e] = prob * keep;
        }
      }
      for (int kk = 0; kk < kTile / 16; ++kk) {
        uint32_t pa[4], sa[4];
        acc_to_a<T>(pa, p[2 * kk], p[2 * kk + 1]);
        acc_to_a<T>(sa, dp[2 * kk], dp[2 * kk + 1]);
        for (int n = 0; n < D / 8; ++n) {
          uint32_t b[2];
          load_b_cols<T, D>(b, do_tile, kk * 16, n * 8, lane);
          mma16816<T>(dv_acc[n], pa, b);
          load_b_cols<T, D>(b, q_tile, kk * 16, n * 8, lane);
          mma16816<T>(dk_acc[n], sa, b);
        }
      }
    }
  }
  for (int x = 0; x < 2; ++x) {
    if (kj[x] >= seq) continue;
    const size_t row = head_offset + size_t(kj[x]) * C;
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(dk + row + n * 8 + 2 * t) =
          Pack2<T>::pack(dk_acc[n][2 * x] * scale, dk_acc[n][2 * x + 1] * scale);
      *reinterpret_cast<uint32_t*>(dv + row + n * 8 + 2 * t) = Pack2<T>::pack(dv_acc[n][2 * x], dv_acc[n][2 * x + 1]);
    }
  }
}

// dQ for one query tile: the warp owns 16 queries and streams the key tiles below the length.
template <typename T, int D>
__global__ void __launch_bounds__(kWarps * 32) flash_backward_q_kernel(
    T* dq, const T* q, const T* k, const T* v, const T* dctx, const float* lse, const float* delta,
    const int32_t* lengths, int seq, int C, int heads, DropoutSite site) {
  __shared__ __align__(16) T k_tile[TileLayout<D>::kElements];
  __shared__ __align__(16) T v_tile[TileLayout<D>::kElements];
  const int bh = blockIdx.y, r = bh / heads, h = bh % heads;
  const int i0 = blockIdx.x * kTile;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int len = lengths[r];
  const size_t head_offset = size_t(r) * seq * C + size_t(h) * D;
  const float scale = rsqrtf(float(D)), scale2 = scale * kLog2e;
  const float keep_scale = 1.0f / (1.0f - site.p);
  const int qi[2] = {i0 + warp * 16 + g, i0 + warp * 16 + g + 8};

  uint32_t qa[D / 16][4], doa[D / 16][4];
  load_tile<T, D>(k_tile, q + head_offset, i0, seq, C);
  load_tile<T, D>(v_tile, dctx + head_offset, i0, seq, C);
  __syncthreads();
  for (int kk = 0; kk < D / 16; ++kk) {
    load_a<T, D>(qa[kk], k_tile, warp * 16, kk * 16, lane);
    load_a<T, D>(doa[kk], v_tile, warp * 16, kk * 16, lane);
  }
  float row_lse[2], row_delta[2];
  for (int x = 0; x < 2; ++x) {
    const bool in = qi[x] < seq;
    row_lse[x] = in ? lse[size_t(bh) * seq + qi[x]] : 0.0f;
    row_delta[x] = in ? delta[size_t(bh) * seq + qi[x]] : 0.0f;
  }
  float dq_acc[D / 8][4];
  for (int n = 0; n < D / 8; ++n) dq_acc[n][0] = dq_acc[n][1] = dq_acc[n][2] = dq_acc[n][3] = 0.0f;

  for (int j0 = 0; j0 < len; j0 += kTile) {
    __syncthreads();
    load_tile<T, D>(k_tile, k + head_offset, j0, seq, C);
    load_tile<T, D>(v_tile, v + head_offset, j0, seq, C);
    __syncthreads();
    float s[kTile / 8][4], dp[kTile / 8][4];
    for (int n = 0; n < kTile / 8; ++n) {
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t b[2];
        load_b_rows<T, D>(b, k_tile, n * 8, kk * 16, lane);
        mma16816<T>(s[n], qa[kk], b);
        load_b_rows<T, D>(b, v_tile, n * 8, kk * 16, lane);
        mma16816<T>(dp[n], doa[kk], b);
      }
    }
    for (int n = 0; n < kTile / 8; ++n) {
      const int j = j0 + n * 8 + 2 * t;
      for (int x = 0; x < 2; ++x) {
        float keep[2] = {0.0f, 0.0f};
        if (qi[x] < seq) keep_pair(site, (size_t(bh) * seq + qi[x]) * seq + j, keep_scale, keep);
        for (int y = 0; y < 2; ++y) {
          const bool valid = qi[x] < seq && j + y < len;
          const float prob = valid ? exp2f(s[n][2 * x + y] * scale2 - row_lse[x]) : 0.0f;
          s[n][2 * x + y] = prob * (dp[n][2 * x + y] * keep[y] - row_delta[x]);  // dS
        }
      }
    }
    for (int kk = 0; kk < kTile / 16; ++kk) {
      uint32_t sa[4];
      acc_to_a<T>(sa, s[2 * kk], s[2 * kk + 1]);
      for (int n = 0; n < D / 8; ++n) {
        uint32_t b[2];
        load_b_cols<T, D>(b, k_tile, kk * 16, n * 8, lane);
        mma16816<T>(dq_acc[n], sa, b);
      }
    }
  }
  for (int x = 0; x < 2; ++x) {
    if (qi[x] >= seq) continue;
    T* out = dq + head_offset + size_t(qi[x]) * C;
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<uint32_t*>(out + n * 8 + 2 * t) =
          Pack2<T>::pack(dq_acc[n][2 * x] * scale, dq_acc[n][2 * x + 1] * scale);
  }
}

template <typename T, int D>
void launch_forward(void* ctx, float* lse, const void* q, const void* k, const void* v, const int32_t* lengths,
                    int rows, int seq, int C, int heads, const DropoutSite& site, cudaStream_t stream) {
  const dim3 grid(ceil_div(seq, kTile), rows * heads);
  flash_forward_kernel<T, D><<<grid, kWarps * 32, 0, stream>>>(
      static_cast<T*>(ctx), lse, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), lengths,
      seq, C, heads, site);
  CUDA_CHECK_LAUNCH("flash_forward_kernel");
}

template <typename T, int D>
void launch_backward(void* dq, void* dk, void* dv, const void* dctx, const void* ctx, const void* q, const void* k,
                     const void* v, const float* lse, float* delta, const int32_t* lengths, int rows, int seq, int C,
                     int heads, const DropoutSite& site, cudaStream_t stream) {
  const size_t warps = size_t(rows) * seq * heads;
  flash_backward_delta_kernel<T, D><<<ceil_div(warps, 8), 256, 0, stream>>>(
      delta, static_cast<const T*>(dctx), static_cast<const T*>(ctx), rows, seq, C, heads);
  CUDA_CHECK_LAUNCH("flash_backward_delta_kernel");
  const dim3 grid(ceil_div(seq, kTile), rows * heads);
  flash_backward_kv_kernel<T, D><<<grid, kWarps * 32, 0, stream>>>(
      static_cast<T*>(dk), static_cast<T*>(dv), static_cast<const T*>(q), static_cast<const T*>(k),
      static_cast<const T*>(v), static_cast<const T*>(dctx), lse, delta, lengths, seq, C, heads, site);
  CUDA_CHECK_LAUNCH("flash_backward_kv_kernel");
  flash_backward_q_kernel<T, D><<<grid, kWarps * 32, 0, stream>>>(
      static_cast<T*>(dq), static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
      static_cast<const T*>(dctx), lse, delta, lengths, seq, C, heads, site);
  CUDA_CHECK_LAUNCH("flash_backward_q_kernel");
}

void check_supported(DType type, int C, int heads, const char* who) {
  if (!flash_attention_supported(type, C, heads))
    throw std::invalid_argument(std::string(who) + ": needs bf16/fp16 and head_dim 32 or 64 (got " + dtype_name(type) +
                                ", head_dim " + std::to_string(C / heads) + ")");
}

}  // namespace

namespace {
__global__ void report_code_arch(int* arch) {
#ifdef __CUDA_ARCH__
  *arch = __CUDA_ARCH__;
#endif
}
}  // namespace

int loaded_code_arch() {
  // The architecture the driver actually runs for this binary on the current GPU: a build holding
  // only compute_75 PTX reports 750 even on an H200. Asked once per process.
  static const int arch = [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      cudaGetLastError();
      return 0;
    }
    int* d = nullptr;
    int h = 0;
    if (cudaMalloc(&d, sizeof(int)) != cudaSuccess) return 0;
    report_code_arch<<<1, 1>>>(d);
    if (cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost) != cudaSuccess) h = 0;
    cudaFree(d);
    return h;
  }();
  return arch;
}

bool flash_attention_supported(DType type, int C, int heads) {
  if (type == DType::kF32 || heads <= 0 || C % heads != 0) return false;
  // bf16 mma exists from sm_80 on; code compiled for sm_75 (the T4 build) has only the fp16 path.
  if (type == DType::kBF16 && loaded_code_arch() != 0 && loaded_code_arch() < 800) return false;
  const int d = C / heads;
  return d == 32 || d == 64;
}

void flash_attention_forward(void* ctx, float* lse, const void* q, const void* k, const void* v,
                             const int32_t* lengths, DType type, int rows, int seq, int C, int heads,
                             const DropoutSite& dropout, cudaStream_t stream) {
  check_supported(type, C, heads, "flash_attention_forward");
  if (rows <= 0 || seq <= 0) return;
  const int d = C / heads;
  if (type == DType::kBF16) {
    if (d == 64) launch_forward<__nv_bfloat16, 64>(ctx, lse, q, k, v, lengths, rows, seq, C, heads, dropout, stream);
    else launch_forward<__nv_bfloat16, 32>(ctx, lse, q, k, v, lengths, rows, seq, C, heads, dropout, stream);
  } else {
    if (d == 64) launch_forward<__half, 64>(ctx, lse, q, k, v, lengths, rows, seq, C, heads, dropout, stream);
    else launch_forward<__half, 32>(ctx, lse, q, k, v, lengths, rows, seq, C, heads, dropout, stream);
  }
}

void flash_attention_backward(void* dq, void* dk, void* dv, const void* dctx, const void* ctx, const void* q,
                              const void* k, const void* v, const float* lse, float* delta_scratch,
                              const int32_t* lengths, DType type, int rows, int seq, int C, int heads,
                              const DropoutSite& dropout, cudaStream_t stream) {
  check_supported(type, C, heads, "flash_attention_backward");
  if (rows <= 0 || seq <= 0) return;
  const int d = C / heads;
#define LLMQS_FLASH_BWD(T, D)                                                                                   \
  launch_backward<T, D>(dq, dk, dv, dctx, ctx, q, k, v, lse, delta_scratch, lengths, rows, seq, C, heads, dropout, \
                        stream)
  if (type == DType::kBF16) {
    if (d == 64) LLMQS_FLASH_BWD(__nv_bfloat16, 64);
    else LLMQS_FLASH_BWD(__nv_bfloat16, 32);
  } else {
    if (d == 64) LLMQS_FLASH_BWD(__half, 64);
    else LLMQS_FLASH_BWD(__half, 32);
  }
#undef LLMQS_FLASH_BWD
}

}  // namespace llmqs::kernels::cuda
