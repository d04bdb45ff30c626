// Fused ("flash") multi-head self-attention with a key padding mask and Philox dropout on the
// probabilities, bf16/fp16 on tensor cores (mma.sync m16n8k16; on sm_75 two m16n8k8 for fp16).
// CPU twin: kernels/cpu/attention.h (same function; the tests compare ctx, dq, dk, dv).
//
// For row r (length L_r), head h, query i, key j (d = head_dim, c = 1/sqrt(d)):
//   S_ij = c q_i.k_j;  P_ij = softmax_j(S_ij) over j < L_r;  keep_ij = Philox(site, element e_ij)
//   e_ij = ((r * heads + h) * seq + i) * seq + j  (the CPU's indexing and dropout_keep:
//   identical masks)
//   O_i = sum_j P_ij keep_ij / (1 - p) v_j
// Nothing of size seq x seq is stored except the dropout mask as bits (1/16 of bf16 probabilities):
// attention_dropout_mask_kernel draws each keep bit once (one Philox call per eight keys when
// seq % 8 == 0) -- the backend runs it on a side stream, overlapped with the matmuls -- and the
// forward and backward read the bits. The forward keeps a running max and sum per query (online
// softmax) and saves lse_i (log2-domain log-sum-exp, [rows x heads x seq] fp32).
// Backward (P recomputed from lse):
//   Di = dO_i . O_i;  dPd_ij = dO_i . v_j;  dS_ij = P_ij (dPd_ij keep_ij / (1 - p) - Di)
//   dV_j = sum_i P_ij keep_ij / (1 - p) dO_i;  dK_j = c sum_i dS_ij q_i;  dQ_i = c sum_j dS_ij k_j
// dK/dV and dQ come from two kernels (one owns a key tile, one a query tile), so every output
// element is summed by one thread in a fixed order: deterministic, no atomics, at the price of
// computing S and dPd twice in the backward.
//
// Layout: q, k, v, ctx, dq, dk, dv [rows x seq x C], head h in columns h*d .. h*d+d-1 (HF's);
// tiles are read straight from it, no head-major copies. ctx and dctx have row stride C; q, k, v,
// dq, dk, dv row stride qkv_ld >= C, so they can be the column blocks of the backend's fused
// [tokens x 3C] QKV product (qkv_ld = 3C). lengths [rows] device.
// Operands reach the tensor cores through ldmatrix (.trans for the k-major ones: V in P V, dO and Q
// in the backward's second products); streamed tiles are double-buffered with cp.async (sm_80+).
// Key tiles at or past L_r are skipped entirely.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"
#include "kernels/flash_attention_common.cuh"
#include "kernels/flash_attention_sm90.h"

namespace llmqs::kernels::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

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

// ---- shared memory, ldmatrix, cp.async ---------------------------------------------------------
// A tile is kTile rows x D of one head (a [seq x C]-strided slice), stored with a row stride of
// D + 8 elements: 16-byte rows of eight consecutive rows start 4 banks apart, so every ldmatrix
// phase (8 rows x 16 bytes) is conflict-free.
template <int D>
struct Tile {
  static constexpr int kStride = D + 8;
  static constexpr int kElements = kTile * kStride;
};


// Rows [row0, row0 + kRows) of a head slice (row stride C) into a tile; rows at or past `limit`
// are zeros (finite: a masked probability times a padding row must stay 0).
template <typename T, int D, int kRows>
__device__ __forceinline__ void load_rows(T* tile, const T* src, int row0, int limit, int C) {
  constexpr int kChunks = D * int(sizeof(T)) / 16;
  for (int c = threadIdx.x; c < kRows * kChunks; c += kThreads) {
    const int row = c / kChunks, col = (c % kChunks) * (16 / int(sizeof(T)));
    const bool in = row0 + row < limit;
    copy_async<16>(tile + row * Tile<D>::kStride + col, src + size_t(in ? row0 + row : 0) * C + col, in);
  }
}

// Tile `tile` of 64 keys of K and V into the shared-memory stage `stage` ([stage][K, V] tiles).
template <typename T, int D>
__device__ __forceinline__ void load_key_value_tiles(T* smem, const T* k, const T* v, int tile, int stage, int seq,
                                                     int ld) {
  load_rows<T, D, kTile>(smem + (2 * stage) * Tile<D>::kElements, k, tile * kTile, seq, ld);
  load_rows<T, D, kTile>(smem + (2 * stage + 1) * Tile<D>::kElements, v, tile * kTile, seq, ld);
  copy_async_commit();
}

// The double-buffered stream's step `it` of `tiles`: starts loading tile it + 1 into the other
// stage (load(tile, stage) issues and commits the copies), then waits until tile it has landed
// and every thread is done with the stage the next load overwrites.
template <typename Load>
__device__ __forceinline__ void prefetch_next_and_wait(int it, int tiles, Load&& load) {
  if (it + 1 < tiles) {
    load(it + 1, (it + 1) & 1);
    copy_async_wait<1>();
  } else {
    copy_async_wait<0>();
  }
  __syncthreads();
}

// A fragments (16 x 16 at row r0, column k0) of a row-major tile.
template <int D, typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* tile, int r0, int k0, int lane) {
  ldsm_x4(a, tile + (r0 + (lane & 15)) * Tile<D>::kStride + k0 + (lane >> 4) * 8);
}

// B fragments of two consecutive k-steps (k0 .. k0 + 31) for n-block n0 .. n0 + 7, where the tile's
// rows are B's columns (B[k][n] = tile[n0 + n][k0 + k]: K in Q K^T): b[0..1] step 0, b[2..3] step 1.
template <int D, typename T>
__device__ __forceinline__ void load_b_rows(uint32_t (&b)[4], const T* tile, int n0, int k0, int lane) {
  ldsm_x4(b, tile + (n0 + (lane & 7)) * Tile<D>::kStride + k0 + (lane >> 3) * 8);
}

// B fragments of n-blocks n0 and n0 + 8 for the k-step k0 .. k0 + 15, where the tile's rows are B's
// rows (B[k][n] = tile[k0 + k][n0 + n]: V in P V): b[0..1] n-block n0, b[2..3] n-block n0 + 8.
template <int D, typename T>
__device__ __forceinline__ void load_b_cols(uint32_t (&b)[4], const T* tile, int k0, int n0, int lane) {
  ldsm_x4_trans(b, tile + (k0 + (lane & 15)) * Tile<D>::kStride + n0 + (lane >> 4) * 8);
}

// dq_acc (this warp's 16 rows x D) += the 16 x 16 block kk of dS (as the A fragment sa) times rows
// kk * 16 .. + 15 of the K tile: the last product of both dQ kernels.
template <typename T, int D>
__device__ __forceinline__ void accumulate_ds_k(float (&dq_acc)[D / 8][4], const uint32_t (&sa)[4], const T* k_tile,
                                                int kk, int lane) {
#pragma unroll
  for (int dn = 0; dn < D / 16; ++dn) {
    uint32_t b[4];
    load_b_cols<D>(b, k_tile, kk * 16, dn * 16, lane);
    mma16816<T>(dq_acc[2 * dn], sa, b);
    mma16816<T>(dq_acc[2 * dn + 1], sa, b + 2);
  }
}

// Stores scale x dq_acc: rows (queries) first_row + g and + 8 of a head slice at `dq` (row stride
// ld), those below seq; both dQ kernels end with it.
template <typename T, int D>
__device__ __forceinline__ void store_dq_rows(T* dq, int ld, int first_row, int seq, const float (&dq_acc)[D / 8][4],
                                              float scale, int lane) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    const int i = first_row + g + 8 * x;
    if (i >= seq) continue;
    T* out = dq + size_t(i) * ld;
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
      *reinterpret_cast<uint32_t*>(out + n * 8 + 2 * t) =
          Pack2<T>::pack(dq_acc[n][2 * x] * scale, dq_acc[n][2 * x + 1] * scale);
  }
}

// One thread per 32-key word: word w of query row `row` (= bh * seq + i) holds keep(i, 32 w + b) in
// bit b, zeros for keys at or past seq (dropout_keep in philox.h: 16-bit uniforms, eight
// per Philox call). With seq % 8 == 0 each group of eight keys from a multiple of 8 is one call (4
// per word, the fewest the layout allows); otherwise one call per key.
__global__ void attention_dropout_mask_kernel(uint32_t* mask, size_t query_rows, int seq, int words, DropoutSite site) {
  site = resolve_site(site);  // the live key under CUDA graphs
  const size_t index = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= query_rows * words) return;
  const size_t row = index / words;
  const int j0 = int(index % words) * 32;
  uint32_t bits = 0;
  if (j0 < seq) {
    const uint64_t e0 = uint64_t(row) * seq + j0;
    const int keys = min(32, seq - j0);
    const uint32_t threshold = dropout_threshold(site.p);
    if ((seq & 7) == 0) {
#pragma unroll
      for (int group = 0; group < 4; ++group) {
        if (8 * group >= keys) break;
        const Philox4x32 w = dropout_words(site, (e0 >> 3) + group);
#pragma unroll
        for (int c = 0; c < 8; ++c)
          bits |= uint32_t(dropout_keep_from_word(w.v[c >> 1], c & 1, threshold)) << (8 * group + c);
      }
    } else {
      for (int b = 0; b < keys; ++b) bits |= uint32_t(dropout_keep(site, e0 + b)) << b;
    }
  }
  mask[index] = bits;
}

__device__ __forceinline__ float keep_value(uint2 bits, int col, float keep_scale) {
  const uint32_t word = col < 32 ? bits.x : bits.y;
  return (word >> (col & 31)) & 1u ? keep_scale : 0.0f;
}

// ---- forward ----------------------------------------------------------------------------------
// One block of 4 warps per (64 MT queries, row x head); warp w owns queries 16 MT w .. + 16 MT - 1
// as MT 16-row MMA tiles: with MT = 2 each K/V fragment read from shared memory feeds two products.
// K/V tiles of 64 keys are double-buffered with cp.async; key tiles at or past the row's length are
// skipped. MT = 1 (159 instead of 255 registers, 3 blocks per SM) measured 0.3 ms per step slower at
// 64x512 and equal at 256x128 (docs/performance.md, section 3), so the launch uses MT = 2.
constexpr int kForwardRowTiles = 2;

template <typename T, int D, int MT>
__global__ void __launch_bounds__(kThreads, MT == 1 ? 3 : 1)
    flash_forward_kernel(T* ctx, float* lse, const uint32_t* mask, const T* q, const T* k, const T* v,
                         const int32_t* lengths, int seq, int C, int ld, int heads, DropoutSite site) {
  // [stage][K, V]; the 128-row Q tile uses the same space before the first K/V load.
  __shared__ __align__(128) T smem[4 * Tile<D>::kElements];
  const int bh = blockIdx.y, r = bh / heads, h = bh % heads;
  const int q0 = blockIdx.x * (64 * MT);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int len = lengths[r];
  const size_t head_offset = size_t(r) * seq * ld + size_t(h) * D;  // q, k, v (row stride ld)
  const size_t ctx_offset = size_t(r) * seq * C + size_t(h) * D;
  const float scale2 = rsqrtf(float(D)) * kLog2e;  // scores in the log2 domain
  const bool dropout = site.p > 0.0f;
  const float keep_scale = 1.0f / (1.0f - site.p);
  const int words = mask_words_per_row(seq);

  load_rows<T, D, 64 * MT>(smem, q + head_offset, q0, seq, ld);
  copy_async_commit();
  copy_async_wait<0>();
  __syncthreads();
  uint32_t qa[MT][D / 16][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) load_a<D>(qa[m][kk], smem, warp * 16 * MT + m * 16, kk * 16, lane);
  __syncthreads();

  auto load_kv = [&](int tile, int stage) {
    load_key_value_tiles<T, D>(smem, k + head_offset, v + head_offset, tile, stage, seq, ld);
  };

  float o[MT][D / 8][4];
  float row_max[MT][2], row_sum[MT][2];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[m][n][0] = o[m][n][1] = o[m][n][2] = o[m][n][3] = 0.0f;
    row_max[m][0] = row_max[m][1] = -INFINITY;
    row_sum[m][0] = row_sum[m][1] = 0.0f;
  }

  const int tiles = (len + kTile - 1) / kTile;
  if (tiles > 0) load_kv(0, 0);
  for (int jt = 0; jt < tiles; ++jt) {
    const int stage = jt & 1, j0 = jt * kTile;
    prefetch_next_and_wait(jt, tiles, load_kv);
    const T* k_tile = smem + (2 * stage) * Tile<D>::kElements;
    const T* v_tile = smem + (2 * stage + 1) * Tile<D>::kElements;
    // This tile's keep bits of the thread's four query rows, shifted right by 2t: the bit of column
    // n * 8 + 2t + c is then bit (n % 4) * 8 + c of word n / 4, a constant after unrolling.
    uint2 keep[MT][2];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const int i = q0 + warp * 16 * MT + m * 16 + g + 8 * x;
        keep[m][x] = dropout && i < seq
                         ? *reinterpret_cast<const uint2*>(mask + (size_t(bh) * seq + i) * words + 2 * jt)
                         : make_uint2(~0u, ~0u);
        keep[m][x].x >>= 2 * t;
        keep[m][x].y >>= 2 * t;
      }
    const bool partial_tile = j0 + kTile > len;  // warp-uniform: only the last tile masks keys

    float s[MT][kTile / 8][4];
#pragma unroll
    for (int m = 0; m < MT; ++m)
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n) s[m][n][0] = s[m][n][1] = s[m][n][2] = s[m][n][3] = 0.0f;
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int kq = 0; kq < D / 32; ++kq) {
        uint32_t b[4];
        load_b_rows<D>(b, k_tile, n * 8, kq * 32, lane);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          mma16816<T>(s[m][n], qa[m][2 * kq], b);
          mma16816<T>(s[m][n], qa[m][2 * kq + 1], b + 2);
        }
      }

#pragma unroll
    for (int m = 0; m < MT; ++m) {
      // The max over raw scores (scale2 > 0 keeps the order), then p = 2^(s scale2 - max) in one FMA.
      if (partial_tile) {
#pragma unroll
        for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (j0 + n * 8 + 2 * t + (e & 1) >= len) s[m][n][e] = -INFINITY;
      }
      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[m][n][e]);
      float correction[2];
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        const float new_max = fmaxf(row_max[m][x], quad_max(tile_max[x]) * scale2);  // finite: key j0 is valid
        correction[x] = exp2f(row_max[m][x] - new_max);
        row_max[m][x] = new_max;
        row_sum[m][x] *= correction[x];
      }
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[m][n][0] *= correction[0], o[m][n][1] *= correction[0];
        o[m][n][2] *= correction[1], o[m][n][3] *= correction[1];
      }
#pragma unroll
      for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int x = e >> 1;
          const float p = exp2f(fmaf(s[m][n][e], scale2, -row_max[m][x]));
          row_sum[m][x] += p;
          // Dropped probabilities: kept ones stay unscaled here; 1 / (1 - p) is applied once at the end.
          const uint32_t word = n < 4 ? keep[m][x].x : keep[m][x].y;
          s[m][n][e] = word & (1u << ((n & 3) * 8 + (e & 1))) ? p : 0.0f;
        }
    }

#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) acc_to_a<T>(pa[m], s[m][2 * kk], s[m][2 * kk + 1]);
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t b[4];
        load_b_cols<D>(b, v_tile, kk * 16, dn * 16, lane);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          mma16816<T>(o[m][2 * dn], pa[m], b);
          mma16816<T>(o[m][2 * dn + 1], pa[m], b + 2);
        }
      }
    }
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }

#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int x = 0; x < 2; ++x) {
      const int i = q0 + warp * 16 * MT + m * 16 + g + 8 * x;
      const float sum = quad_sum(row_sum[m][x]);
      if (i >= seq) continue;
      const float inv = sum > 0.0f ? (dropout ? keep_scale : 1.0f) / sum : 0.0f;
      T* out = ctx + ctx_offset + size_t(i) * C;
#pragma unroll
      for (int n = 0; n < D / 8; ++n)
        *reinterpret_cast<uint32_t*>(out + n * 8 + 2 * t) =
            Pack2<T>::pack(o[m][n][2 * x] * inv, o[m][n][2 * x + 1] * inv);
      if (t == 0) lse[size_t(bh) * seq + i] = row_max[m][x] + log2f(sum);
    }
}

// ---- backward -----------------------------------------------------------------------------------
// delta[bh, i] = dO_i . O_i (fp32). One thread per 16-byte pack (8 elements) of a token's row; the
// D / 8 packs of a head are consecutive lanes, added by a shuffle tree (fixed order). A warp reads
// 512 contiguous bytes of each tensor.
template <typename T, int D>
__global__ void flash_backward_delta_kernel(float* delta, const T* dctx, const T* ctx, int rows, int seq, int C,
                                            int heads) {
  constexpr int kPacksPerHead = D / 8;
  const size_t packs_per_token = size_t(C) / 8;
  const size_t index = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const bool in = index < size_t(rows) * seq * packs_per_token;
  float sum = 0.0f;
  if (in) {
    float a[8], b[8];
    load_pack(dctx + index * 8, a);
    load_pack(ctx + index * 8, b);
    sum = pack_dot(a, b);
  }
  sum = sum_over_head_lanes<kPacksPerHead>(sum);
  if (!in || index % kPacksPerHead != 0) return;
  const size_t token = index / packs_per_token;
  const int h = int(index % packs_per_token) / kPacksPerHead;
  const size_t r = token / seq, i = token % seq;
  delta[(r * heads + h) * seq + i] = sum;
}

// dK, dV for one tile of 64 keys: warp w owns keys j0 + 16 w .. + 15 (K and V rows in registers as
// A fragments) and streams the query tiles of QT queries (Q, dO, lse, delta and the mask block
// double-buffered). Works on transposed scores S^T (keys x queries) so dV = Pd^T dO and dK = dS^T Q
// reuse registers. QT = 32 (168 instead of 251 registers, 3 blocks per SM) measured 0.35 ms per
// step slower at 64x512 and equal at 256x128 than QT = 64, which the launch uses.
constexpr int kBackwardQueryTile = 64;

template <typename T, int D, int QT>
__global__ void __launch_bounds__(kThreads, QT == 32 ? 3 : 1) flash_backward_kv_kernel(
    T* dk, T* dv, T* ds_t, const T* q, const T* k, const T* v, const T* dctx, const float* lse, const float* delta,
    const uint32_t* mask, const int32_t* lengths, int seq, int seq_pad, int C, int ld, int heads, DropoutSite site) {
  constexpr int kQStride = D + 8, kQElements = QT * kQStride;
  static_assert(4 * kQElements >= 2 * Tile<D>::kElements, "the K/V staging must fit in the query buffers");
  __shared__ __align__(128) T smem[4 * kQElements];  // [stage][Q, dO]
  __shared__ __align__(16) float lse_s[2][QT], delta_s[2][QT];
  __shared__ __align__(16) uint2 mask_s[2][QT];
  const int bh = blockIdx.y, r = bh / heads, h = bh % heads;
  const int j0 = blockIdx.x * kTile;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int len = lengths[r];
  const size_t head_offset = size_t(r) * seq * ld + size_t(h) * D;  // q, k, v, dq, dk, dv (row stride ld)
  const size_t ctx_offset = size_t(r) * seq * C + size_t(h) * D;   // dctx
  const float scale = rsqrtf(float(D)), scale2 = scale * kLog2e;
  const bool dropout = site.p > 0.0f;
  const float keep_scale = dropout ? 1.0f / (1.0f - site.p) : 1.0f;
  const int words = mask_words_per_row(seq);
  const WarpKeys keys = warp_keys(j0, warp, g, len);

  float dk_acc[D / 8][4], dv_acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[n][e] = dv_acc[n][e] = 0.0f;

  if (j0 < len) {  // key tiles past the length get zero gradients
    uint32_t ka[D / 16][4], va[D / 16][4];
    load_rows<T, D, kTile>(smem, k + head_offset, j0, seq, ld);
    load_rows<T, D, kTile>(smem + Tile<D>::kElements, v + head_offset, j0, seq, ld);
    copy_async_commit();
    copy_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      load_a<D>(ka[kk], smem, warp * 16, kk * 16, lane);
      load_a<D>(va[kk], smem + Tile<D>::kElements, warp * 16, kk * 16, lane);
    }
    __syncthreads();

    auto load_queries = [&](int tile, int stage) {
      const int i0 = tile * QT;
      load_rows<T, D, QT>(smem + (2 * stage) * kQElements, q + head_offset, i0, seq, ld);
      load_rows<T, D, QT>(smem + (2 * stage + 1) * kQElements, dctx + ctx_offset, i0, seq, C);
      const int x = threadIdx.x & (QT - 1);
      const bool in = i0 + x < seq;
      const size_t row = size_t(bh) * seq + (in ? i0 + x : 0);
      if (threadIdx.x < QT) {
        copy_async<4>(&lse_s[stage][x], lse + row, in);
        if (dropout) copy_async<8>(&mask_s[stage][x], mask + row * words + 2 * (j0 / kTile), in);
      } else if (threadIdx.x < 2 * QT) {
        copy_async<4>(&delta_s[stage][x], delta + row, in);
      }
      copy_async_commit();
    };

    const int tiles = (seq + QT - 1) / QT;
    load_queries(0, 0);
    for (int it = 0; it < tiles; ++it) {
      const int stage = it & 1, i0 = it * QT;
      prefetch_next_and_wait(it, tiles, load_queries);
      const T* q_tile = smem + (2 * stage) * kQElements;
      const T* do_tile = smem + (2 * stage + 1) * kQElements;

      float p[QT / 8][4], dp[QT / 8][4];
#pragma unroll
      for (int n = 0; n < QT / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) p[n][e] = dp[n][e] = 0.0f;
#pragma unroll
      for (int n = 0; n < QT / 8; ++n)
#pragma unroll
        for (int kq = 0; kq < D / 32; ++kq) {
          uint32_t b[4];
          ldsm_x4(b, q_tile + (n * 8 + (lane & 7)) * kQStride + kq * 32 + (lane >> 3) * 8);
          mma16816<T>(p[n], ka[2 * kq], b);
          mma16816<T>(p[n], ka[2 * kq + 1], b + 2);
          ldsm_x4(b, do_tile + (n * 8 + (lane & 7)) * kQStride + kq * 32 + (lane >> 3) * 8);
          mma16816<T>(dp[n], va[2 * kq], b);
          mma16816<T>(dp[n], va[2 * kq + 1], b + 2);
        }
      // p -> Pd^T (dropped probabilities), dp -> dS^T, one 8-query column block at a time.
      const int query_room = seq - i0 - 2 * t;
#pragma unroll
      for (int n = 0; n < QT / 8; ++n)
        scores_to_ds_block(p[n], dp[n], lse_s[stage], delta_s[stage], mask_s[stage], n * 8 + 2 * t, n * 8, query_room,
                           dropout, keys, scale2, keep_scale);
#pragma unroll
      for (int kk = 0; kk < QT / 16; ++kk) {
        uint32_t pa[4], sa[4];
        acc_to_a<T>(pa, p[2 * kk], p[2 * kk + 1]);
        acc_to_a<T>(sa, dp[2 * kk], dp[2 * kk + 1]);
        if (ds_t) {  // dS^T for the dQ kernel: keys kj[0], kj[1] x queries i0 + 16 kk + 2t (+8), +1
          T* row0 = ds_t + (size_t(bh) * seq_pad + keys.kj[0]) * seq_pad + i0 + kk * 16 + 2 * t;
          T* row1 = row0 + 8 * size_t(seq_pad);
          *reinterpret_cast<uint32_t*>(row0) = sa[0];
          *reinterpret_cast<uint32_t*>(row1) = sa[1];
          *reinterpret_cast<uint32_t*>(row0 + 8) = sa[2];
          *reinterpret_cast<uint32_t*>(row1 + 8) = sa[3];
        }
#pragma unroll
        for (int dn = 0; dn < D / 16; ++dn) {
          uint32_t b[4];
          ldsm_x4_trans(b, do_tile + (kk * 16 + (lane & 15)) * kQStride + dn * 16 + (lane >> 4) * 8);
          mma16816<T>(dv_acc[2 * dn], pa, b);
          mma16816<T>(dv_acc[2 * dn + 1], pa, b + 2);
          ldsm_x4_trans(b, q_tile + (kk * 16 + (lane & 15)) * kQStride + dn * 16 + (lane >> 4) * 8);
          mma16816<T>(dk_acc[2 * dn], sa, b);
          mma16816<T>(dk_acc[2 * dn + 1], sa, b + 2);
        }
      }
      __syncthreads();
    }
  }
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    if (keys.kj[x] >= seq) continue;
    const size_t row = head_offset + size_t(keys.kj[x]) * ld;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      *reinterpret_cast<uint32_t*>(dk + row + n * 8 + 2 * t) =
          Pack2<T>::pack(dk_acc[n][2 * x] * scale, dk_acc[n][2 * x + 1] * scale);
      *reinterpret_cast<uint32_t*>(dv + row + n * 8 + 2 * t) = Pack2<T>::pack(dv_acc[n][2 * x], dv_acc[n][2 * x + 1]);
    }
  }
}

// dQ for one tile of 64 queries: warp w owns queries i0 + 16 w .. + 15 (Q and dO rows in registers)
// and streams the key tiles below the length (K and V double-buffered).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) flash_backward_q_kernel(
    T* dq, const T* q, const T* k, const T* v, const T* dctx, const float* lse, const float* delta,
    const uint32_t* mask, const int32_t* lengths, int seq, int C, int ld, int heads, DropoutSite site) {
  __shared__ __align__(128) T smem[4 * Tile<D>::kElements];  // [stage][K, V]
  const int bh = blockIdx.y, r = bh / heads, h = bh % heads;
  const int i0 = blockIdx.x * kTile;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int len = lengths[r];
  const size_t head_offset = size_t(r) * seq * ld + size_t(h) * D;  // q, k, v, dq, dk, dv (row stride ld)
  const size_t ctx_offset = size_t(r) * seq * C + size_t(h) * D;   // dctx
  const float scale = rsqrtf(float(D)), scale2 = scale * kLog2e;
  const bool dropout = site.p > 0.0f;
  const float keep_scale = 1.0f / (1.0f - site.p);
  const int words = mask_words_per_row(seq);
  const int qi[2] = {i0 + warp * 16 + g, i0 + warp * 16 + g + 8};

  uint32_t qa[D / 16][4], doa[D / 16][4];
  load_rows<T, D, kTile>(smem, q + head_offset, i0, seq, ld);
  load_rows<T, D, kTile>(smem + Tile<D>::kElements, dctx + ctx_offset, i0, seq, C);
  copy_async_commit();
  copy_async_wait<0>();
  __syncthreads();
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    load_a<D>(qa[kk], smem, warp * 16, kk * 16, lane);
    load_a<D>(doa[kk], smem + Tile<D>::kElements, warp * 16, kk * 16, lane);
  }
  __syncthreads();
  float row_lse[2], row_delta[2];
#pragma unroll
  for (int x = 0; x < 2; ++x) {
    const bool in = qi[x] < seq;
    row_lse[x] = in ? lse[size_t(bh) * seq + qi[x]] : 0.0f;
    row_delta[x] = in ? delta[size_t(bh) * seq + qi[x]] : 0.0f;
  }
  float dq_acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dq_acc[n][0] = dq_acc[n][1] = dq_acc[n][2] = dq_acc[n][3] = 0.0f;

  auto load_kv = [&](int tile, int stage) {
    load_key_value_tiles<T, D>(smem, k + head_offset, v + head_offset, tile, stage, seq, ld);
  };
  const int tiles = (len + kTile - 1) / kTile;
  if (tiles > 0) load_kv(0, 0);
  for (int jt = 0; jt < tiles; ++jt) {
    const int stage = jt & 1, j0 = jt * kTile;
    prefetch_next_and_wait(jt, tiles, load_kv);
    const T* k_tile = smem + (2 * stage) * Tile<D>::kElements;
    const T* v_tile = smem + (2 * stage + 1) * Tile<D>::kElements;
    uint2 keep[2] = {make_uint2(~0u, ~0u), make_uint2(~0u, ~0u)};
    if (dropout) {
#pragma unroll
      for (int x = 0; x < 2; ++x)
        if (qi[x] < seq) keep[x] = *reinterpret_cast<const uint2*>(mask + (size_t(bh) * seq + qi[x]) * words + 2 * jt);
    }

    float s[kTile / 8][4], dp[kTile / 8][4];
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int kq = 0; kq < D / 32; ++kq) {
        uint32_t b[4];
        load_b_rows<D>(b, k_tile, n * 8, kq * 32, lane);
        mma16816<T>(s[n], qa[2 * kq], b);
        mma16816<T>(s[n], qa[2 * kq + 1], b + 2);
        load_b_rows<D>(b, v_tile, n * 8, kq * 32, lane);
        mma16816<T>(dp[n], doa[2 * kq], b);
        mma16816<T>(dp[n], doa[2 * kq + 1], b + 2);
      }
#pragma unroll
    for (int n = 0; n < kTile / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int x = e >> 1, col = n * 8 + 2 * t + (e & 1);
        const bool valid = qi[x] < seq && j0 + col < len;
        const float prob = valid ? exp2f(s[n][e] * scale2 - row_lse[x]) : 0.0f;
        const float keep_x = dropout ? keep_value(keep[x], col, keep_scale) : 1.0f;
        s[n][e] = prob * (dp[n][e] * keep_x - row_delta[x]);  // dS
      }
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      uint32_t sa[4];
      acc_to_a<T>(sa, s[2 * kk], s[2 * kk + 1]);
      accumulate_ds_k<T, D>(dq_acc, sa, k_tile, kk, lane);
    }
    __syncthreads();
  }
  store_dq_rows<T, D>(dq + head_offset, ld, i0 + warp * 16, seq, dq_acc, scale, lane);
}

// dQ from the dS^T the dK/dV kernel stored ([rows x heads] blocks of seq_pad x seq_pad, key-major:
// dS^T[bh][j][i]): dQ_i = c sum_j dS_ij k_j, a plain product with no recomputation of S, P or dPd.
// One block of 4 warps per 64 queries; warp w owns queries i0 + 16 w .. + 15 and streams the key
// tiles below the length (the dS^T block of 64 keys x 64 queries and the K tile, double-buffered).
// dS^T is A's transpose in shared memory, so its fragments load with ldmatrix.trans.
constexpr int kDsStride = kTile + 8;  // same bank-conflict-free padding as Tile<D>
constexpr int kDsElements = kTile * kDsStride;

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) flash_backward_q_from_ds_kernel(T* dq, const T* ds_t, const T* k,
                                                                            const int32_t* lengths, int seq,
                                                                            int seq_pad, int ld, int heads) {
  constexpr int kStage = Tile<D>::kElements + kDsElements;  // [K tile, dS^T tile]
  __shared__ __align__(128) T smem[2 * kStage];
  const int bh = blockIdx.y, r = bh / heads, h = bh % heads;
  const int i0 = blockIdx.x * kTile;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int len = lengths[r];
  const size_t head_offset = size_t(r) * seq * ld + size_t(h) * D;  // k, dq (row stride ld)
  const T* ds_head = ds_t + size_t(bh) * seq_pad * seq_pad;
  const float scale = rsqrtf(float(D));

  float dq_acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dq_acc[n][0] = dq_acc[n][1] = dq_acc[n][2] = dq_acc[n][3] = 0.0f;

  auto load = [&](int tile, int stage) {
    T* k_tile = smem + stage * kStage;
    load_rows<T, D, kTile>(k_tile, k + head_offset, tile * kTile, seq, ld);
    // 64 key rows x 64 query columns of dS^T: always inside the seq_pad x seq_pad block.
    constexpr int kChunks = kTile * int(sizeof(T)) / 16;
    T* ds_tile = k_tile + Tile<D>::kElements;
    for (int c = threadIdx.x; c < kTile * kChunks; c += kThreads) {
      const int row = c / kChunks, col = (c % kChunks) * (16 / int(sizeof(T)));
      copy_async<16>(ds_tile + row * kDsStride + col, ds_head + size_t(tile * kTile + row) * seq_pad + i0 + col, true);
    }
    copy_async_commit();
  };
  const int tiles = (len + kTile - 1) / kTile;
  if (tiles > 0) load(0, 0);
  for (int jt = 0; jt < tiles; ++jt) {
    const int stage = jt & 1;
    prefetch_next_and_wait(jt, tiles, load);
    const T* k_tile = smem + stage * kStage;
    const T* ds_tile = k_tile + Tile<D>::kElements;
#pragma unroll
    for (int kk = 0; kk < kTile / 16; ++kk) {
      // A = dS (queries x keys) = the tile's transpose: matrix l / 8 of lane l is keys
      // kk * 16 + 8 (l / 16) + l % 8, queries 16 w + 8 ((l / 8) % 2).
      uint32_t sa[4];
      ldsm_x4_trans(sa, ds_tile + (kk * 16 + ((lane >> 4) << 3) + (lane & 7)) * kDsStride + warp * 16 +
                            ((lane >> 3) & 1) * 8);
      accumulate_ds_k<T, D>(dq_acc, sa, k_tile, kk, lane);
    }
    __syncthreads();  // the next iteration's prefetch overwrites this stage
  }
  store_dq_rows<T, D>(dq + head_offset, ld, i0 + warp * 16, seq, dq_acc, scale, lane);
}

// What code the driver actually runs for this binary on the current GPU: its __CUDA_ARCH__ (a
// build holding only compute_75 PTX reports 750 even on an H200) and whether it is the
// arch-specific sm_90a code that the wgmma kernels need. Asked once per process, by the first
// flash_attention_supported (the backend's set-up) or loaded_code_arch call.
struct LoadedCode {
  int arch = 0;
  bool sm90a = false;
};
__global__ void report_loaded_code(int* out) {
#ifdef __CUDA_ARCH__
  out[0] = __CUDA_ARCH__;
#ifdef __CUDA_ARCH_FEAT_SM90_ALL
  out[1] = 1;
#else
  out[1] = 0;
#endif
#endif
}
const LoadedCode& loaded_code() {
  static const LoadedCode code = [] {
    LoadedCode found;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      cudaGetLastError();
      return found;
    }
    int* d = nullptr;
    int h[2] = {0, 0};
    if (cudaMalloc(&d, sizeof(h)) != cudaSuccess) return found;
    report_loaded_code<<<1, 1>>>(d);
    if (cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost) == cudaSuccess) {
      found.arch = h[0];
      found.sm90a = h[1] == 1;
    }
    cudaFree(d);
    return found;
  }();
  return code;
}

// The Hopper kernels (kernels/flash_attention_sm90.cu) take head_dim 64 where this binary runs
// sm_90a code, unless KernelVariants::wgmma_attention is off.
bool wgmma_attention_runs() { return kernel_variants().wgmma_attention && loaded_code().sm90a; }

template <typename T, int D>
void launch_forward(void* ctx, float* lse, const uint32_t* mask, const void* q, const void* k, const void* v,
                    const int32_t* lengths, int rows, int seq, int C, int ld, int heads, const DropoutSite& site,
                    cudaStream_t stream) {
  if constexpr (D == 64) {
    if (wgmma_attention_runs()) {
      sm90::flash_forward(std::is_same_v<T, __nv_bfloat16>, ctx, lse, mask, q, k, v, lengths, rows, seq, C, ld, heads,
                          site, stream);
      return;
    }
  }
  const dim3 grid(ceil_div(seq, 64 * kForwardRowTiles), rows * heads);
  flash_forward_kernel<T, D, kForwardRowTiles><<<grid, kThreads, 0, stream>>>(
      static_cast<T*>(ctx), lse, mask, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
      lengths, seq, C, ld, heads, site);
  CUDA_CHECK_LAUNCH("flash_forward_kernel");
}

// dK, dV (and dS^T where ds_t is set) of the backward: the Hopper kernel where it runs, else mma.sync.
template <typename T, int D>
void launch_backward_kv(void* dk, void* dv, T* ds_t, float* bias_partials, const void* dctx, const void* q,
                        const void* k, const void* v, const float* lse, const float* delta, const uint32_t* mask,
                        const int32_t* lengths, int rows, int seq, int seq_pad, int C, int ld, int heads,
                        const DropoutSite& site, cudaStream_t stream) {
  if constexpr (D == 64) {
    if (wgmma_attention_runs()) {
      sm90::flash_backward_kv(std::is_same_v<T, __nv_bfloat16>, dk, dv, ds_t, bias_partials, q, k, v, dctx, lse, delta,
                              mask, lengths, rows, seq, seq_pad, C, ld, heads, site, stream);
      return;
    }
  }
  const dim3 grid(ceil_div(seq, kTile), rows * heads);
  flash_backward_kv_kernel<T, D, kBackwardQueryTile><<<grid, kThreads, 0, stream>>>(
      static_cast<T*>(dk), static_cast<T*>(dv), ds_t, static_cast<const T*>(q), static_cast<const T*>(k),
      static_cast<const T*>(v), static_cast<const T*>(dctx), lse, delta, mask, lengths, seq, seq_pad, C, ld, heads, site);
  CUDA_CHECK_LAUNCH("flash_backward_kv_kernel");
}

template <typename T, int D>
void launch_backward(void* dq, void* dk, void* dv, const void* dctx, const void* ctx, const void* q, const void* k,
                     const void* v, const float* lse, const uint32_t* mask, float* delta, void* ds_scratch,
                     float* bias_partials, const int32_t* lengths, int rows, int seq, int C, int ld, int heads,
                     const DropoutSite& site, cudaStream_t stream) {
  // The Hopper long-row pair writes the QKV bias partials (flash_attention_backward_sums_qkv_bias).
  if (!(D == 64 && wgmma_attention_runs() && seq > sm90::kShortBackwardMaxSeq && ds_scratch)) bias_partials = nullptr;
  if constexpr (D == 64) {
    // dS stays on chip and delta is formed in the kernel: ds_scratch and delta are not touched.
    if (wgmma_attention_runs() && seq <= sm90::kShortBackwardMaxSeq) {
      sm90::flash_backward_short(std::is_same_v<T, __nv_bfloat16>, dq, dk, dv, q, k, v, dctx, ctx, lse, mask, lengths,
                                 rows, seq, C, ld, heads, site, stream);
      return;
    }
  }
  const size_t packs = size_t(rows) * seq * (C / 8);
  flash_backward_delta_kernel<T, D><<<ceil_div(packs, 256), 256, 0, stream>>>(
      delta, static_cast<const T*>(dctx), static_cast<const T*>(ctx), rows, seq, C, heads);
  CUDA_CHECK_LAUNCH("flash_backward_delta_kernel");
  const dim3 grid(ceil_div(seq, kTile), rows * heads);
  const int seq_pad = ds_pad(seq);
  T* ds_t = static_cast<T*>(ds_scratch);
  launch_backward_kv<T, D>(dk, dv, ds_t, bias_partials, dctx, q, k, v, lse, delta, mask, lengths, rows, seq, seq_pad, C,
                           ld, heads, site, stream);
  if (ds_t) {
    if constexpr (D == 64) {
      if (wgmma_attention_runs()) {
        sm90::flash_dq_from_ds(std::is_same_v<T, __nv_bfloat16>, dq, bias_partials, ds_t, k, lengths, rows, seq,
                               seq_pad, C, ld, heads, stream);
        return;
      }
    }
    flash_backward_q_from_ds_kernel<T, D><<<grid, kThreads, 0, stream>>>(
        static_cast<T*>(dq), ds_t, static_cast<const T*>(k), lengths, seq, seq_pad, ld, heads);
    CUDA_CHECK_LAUNCH("flash_backward_q_from_ds_kernel");
  } else {
    flash_backward_q_kernel<T, D><<<grid, kThreads, 0, stream>>>(
        static_cast<T*>(dq), static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
        static_cast<const T*>(dctx), lse, delta, mask, lengths, seq, C, ld, heads, site);
    CUDA_CHECK_LAUNCH("flash_backward_q_kernel");
  }
}

// q, k, v and their gradients may be column blocks of a wider row (the backend's fused QKV product
// writes [tokens x 3C]): the row stride must hold C and keep 16-byte rows (cp.async, ldmatrix).
void check_row_stride(int ld, int C, const char* who) {
  if (ld < C || ld % 8 != 0)
    throw std::invalid_argument(std::string(who) + ": q/k/v row stride " + std::to_string(ld) +
                                " must be >= C = " + std::to_string(C) + " and a multiple of 8");
}

void check_supported(DType type, int C, int heads, const char* who) {
  if (!flash_attention_supported(type, C, heads))
    throw std::invalid_argument(std::string(who) + ": needs bf16/fp16 and head_dim 32 or 64 (got " + dtype_name(type) +
                                ", head_dim " + std::to_string(C / heads) + ")");
}

}  // namespace

int loaded_code_arch() { return loaded_code().arch; }

bool flash_attention_supported(DType type, int C, int heads) {
  if (type == DType::kF32 || heads <= 0 || C % heads != 0) return false;
  // bf16 mma exists from sm_80 on; code compiled for sm_75 (the T4 build) has only the fp16 path.
  if (type == DType::kBF16 && loaded_code_arch() != 0 && loaded_code_arch() < 800) return false;
  const int d = C / heads;
  return d == 32 || d == 64;
}

bool flash_attention_uses_wgmma(DType type, int C, int heads) {
  return flash_attention_supported(type, C, heads) && C / heads == 64 && wgmma_attention_runs();
}

bool flash_attention_backward_sums_qkv_bias(DType type, int C, int heads, int seq, bool ds_stored) {
  return flash_attention_uses_wgmma(type, C, heads) && seq > sm90::kShortBackwardMaxSeq && ds_stored;
}

size_t flash_attention_qkv_bias_partial_rows(int rows, int seq) {
  if (rows <= 0 || seq <= 0) return 0;
  return size_t(rows) * ds_pad(seq) / kTile;
}

size_t flash_attention_ds_elements(int rows, int seq, int heads) {
  if (rows <= 0 || seq <= 0 || heads <= 0) return 0;
  return size_t(rows) * heads * ds_pad(seq) * ds_pad(seq);
}

size_t flash_attention_mask_words(int rows, int seq, int heads) {
  if (rows <= 0 || seq <= 0 || heads <= 0) return 0;
  return size_t(rows) * heads * seq * mask_words_per_row(seq);
}

void flash_attention_dropout_mask(uint32_t* dropout_mask, int rows, int seq, int heads, const DropoutSite& dropout,
                                  cudaStream_t stream) {
  if (dropout.p <= 0.0f || rows <= 0 || seq <= 0) return;
  const size_t query_rows = size_t(rows) * heads * seq;
  attention_dropout_mask_kernel<<<ceil_div(query_rows * mask_words_per_row(seq), 256), 256, 0, stream>>>(
      dropout_mask, query_rows, seq, mask_words_per_row(seq), dropout);
  CUDA_CHECK_LAUNCH("attention_dropout_mask_kernel");
}

void flash_attention_forward(void* ctx, float* lse, const uint32_t* dropout_mask, const void* q, const void* k,
                             const void* v, const int32_t* lengths, DType type, int rows, int seq, int C, int heads,
                             int qkv_ld, const DropoutSite& dropout, cudaStream_t stream) {
  check_supported(type, C, heads, "flash_attention_forward");
  check_row_stride(qkv_ld, C, "flash_attention_forward");
  if (dropout.p > 0.0f && dropout_mask == nullptr)
    throw std::invalid_argument("flash_attention_forward: dropout needs the mask of flash_attention_dropout_mask");
  if (rows <= 0 || seq <= 0) return;
  const int d = C / heads;
#define LLMQS_FLASH_FWD(T, D) \
  launch_forward<T, D>(ctx, lse, dropout_mask, q, k, v, lengths, rows, seq, C, qkv_ld, heads, dropout, stream)
  if (type == DType::kBF16) {
    if (d == 64) LLMQS_FLASH_FWD(__nv_bfloat16, 64);
    else LLMQS_FLASH_FWD(__nv_bfloat16, 32);
  } else {
    if (d == 64) LLMQS_FLASH_FWD(__half, 64);
    else LLMQS_FLASH_FWD(__half, 32);
  }
#undef LLMQS_FLASH_FWD
}

void flash_attention_backward(void* dq, void* dk, void* dv, const void* dctx, const void* ctx, const void* q,
                              const void* k, const void* v, const float* lse, const uint32_t* dropout_mask,
                              float* delta_scratch, void* ds_scratch, float* qkv_bias_partials,
                              const int32_t* lengths, DType type, int rows, int seq, int C, int heads, int qkv_ld,
                              const DropoutSite& dropout, cudaStream_t stream) {
  check_supported(type, C, heads, "flash_attention_backward");
  check_row_stride(qkv_ld, C, "flash_attention_backward");
  if (dropout.p > 0.0f && dropout_mask == nullptr)
    throw std::invalid_argument("flash_attention_backward: dropout needs the forward's mask buffer");
  if (rows <= 0 || seq <= 0) return;
  const int d = C / heads;
#define LLMQS_FLASH_BWD(T, D)                                                                                   \
  launch_backward<T, D>(dq, dk, dv, dctx, ctx, q, k, v, lse, dropout_mask, delta_scratch, ds_scratch,             \
                        qkv_bias_partials, lengths, rows, seq, C, qkv_ld, heads, dropout, stream)
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
