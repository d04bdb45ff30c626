// Dense layers: one packed, register-blocked GEMM (GotoBLAS-style tiles) behind forward and
// both backward products. See matmul.h for the math and the layouts.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace llmqs::kernels::cpu {

namespace {

// Register tile MR x NR: 8 (float) or 4 (double) accumulators per row fill the 16 SSE/AVX
// registers without spilling at -O3 with the default x86-64 target. Cache tiles: a packed
// A block (MC x KC) stays in L2, a packed B panel (KC x NR) in L1.
template <typename T> struct Tile;
template <> struct Tile<float> { static constexpr int MR = 4, NR = 8; };
template <> struct Tile<double> { static constexpr int MR = 4, NR = 4; };
constexpr int kMC = 128, kNC = 256, kKC = 256;

// acc[MR x NR] += Ap[k][MR] (x) Bp[k][NR] over kc steps, then C (+)= acc on the valid part.
template <typename T>
void micro_kernel(T* c, int ldc, const T* ap, const T* bp, int kc, int m_valid, int n_valid, bool load_c) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  T acc[MR][NR];
  if (load_c && m_valid == MR && n_valid == NR) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = c[static_cast<ptrdiff_t>(i) * ldc + j];
  } else {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j)
        acc[i][j] = (load_c && i < m_valid && j < n_valid) ? c[static_cast<ptrdiff_t>(i) * ldc + j] : T(0);
  }
  for (int k = 0; k < kc; ++k) {
    const T* a = ap + static_cast<ptrdiff_t>(k) * MR;
    const T* b = bp + static_cast<ptrdiff_t>(k) * NR;
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i];
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * b[j];
    }
  }
  for (int i = 0; i < m_valid; ++i)
    for (int j = 0; j < n_valid; ++j) c[static_cast<ptrdiff_t>(i) * ldc + j] = acc[i][j];
}

}  // namespace

template <typename T>
void gemm_strided(T* c, int ldc, const T* a, ptrdiff_t a_row_stride, ptrdiff_t a_col_stride, const T* b,
                  ptrdiff_t b_row_stride, ptrdiff_t b_col_stride, int M, int N, int K, bool accumulate) {
  constexpr int MR = Tile<T>::MR, NR = Tile<T>::NR;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int m = 0; m < M; ++m) std::fill(c + static_cast<ptrdiff_t>(m) * ldc, c + static_cast<ptrdiff_t>(m) * ldc + N, T(0));
    return;
  }
  const int m_tiles = (M + kMC - 1) / kMC, n_tiles = (N + kNC - 1) / kNC;
  // Packing buffers sized to the problem (rounded to the register tile), kept per thread
  // across calls: the model makes hundreds of small products per step.
  const size_t apack_size = static_cast<size_t>((std::min(kMC, M) + MR - 1) / MR * MR) * std::min(kKC, K);
  const size_t bpack_size = static_cast<size_t>((std::min(kNC, N) + NR - 1) / NR * NR) * std::min(kKC, K);
  const bool parallel = static_cast<double>(M) * N * K > 65536.0 && m_tiles * n_tiles > 1;
#pragma omp parallel if (parallel)
  {
    thread_local std::vector<T> apack, bpack;
    if (apack.size() < apack_size) apack.resize(apack_size);
    if (bpack.size() < bpack_size) bpack.resize(bpack_size);
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int mt = 0; mt < m_tiles; ++mt) {
      for (int nt = 0; nt < n_tiles; ++nt) {
        const int m0 = mt * kMC, mc = std::min(kMC, M - m0);
        const int n0 = nt * kNC, nc = std::min(kNC, N - n0);
        for (int k0 = 0; k0 < K; k0 += kKC) {
          const int kc = std::min(kKC, K - k0);
          // Pack A: blocks of MR rows, k-major inside, zero rows past M.
          for (int mb = 0; mb < mc; mb += MR) {
            T* dst = apack.data() + static_cast<size_t>(mb) * kc;
            for (int k = 0; k < kc; ++k)
              for (int i = 0; i < MR; ++i) {
                const int m = m0 + mb + i;
                dst[k * MR + i] = m < M ? a[m * a_row_stride + (k0 + k) * a_col_stride] : T(0);
              }
          }
          // Pack B: panels of NR columns, k-major inside, zero columns past N.
          for (int nb = 0; nb < nc; nb += NR) {
            T* dst = bpack.data() + static_cast<size_t>(nb) * kc;
            const int nvalid = std::min(NR, nc - nb);
            for (int k = 0; k < kc; ++k) {
              const T* src = b + (k0 + k) * b_row_stride + (n0 + nb) * b_col_stride;
              for (int j = 0; j < NR; ++j) dst[k * NR + j] = j < nvalid ? src[j * b_col_stride] : T(0);
            }
          }
          const bool load_c = accumulate || k0 > 0;
          for (int nb = 0; nb < nc; nb += NR)
            for (int mb = 0; mb < mc; mb += MR)
              micro_kernel<T>(c + static_cast<ptrdiff_t>(m0 + mb) * ldc + n0 + nb, ldc,
                              apack.data() + static_cast<size_t>(mb) * kc, bpack.data() + static_cast<size_t>(nb) * kc,
                              kc, std::min(MR, mc - mb), std::min(NR, nc - nb), load_c);
        }
      }
    }
  }
}

template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int IN, int OUT) {
  if (bias) {
#pragma omp parallel for schedule(static) if (static_cast<long>(N) * OUT > (1 << 15))
    for (int n = 0; n < N; ++n) std::memcpy(out + static_cast<size_t>(n) * OUT, bias, sizeof(T) * OUT);
  }
  // out [N x OUT] (+)= inp [N x IN] . W^T, with B(k, o) = W[o * IN + k].
  gemm_strided<T>(out, OUT, inp, IN, 1, weight, 1, IN, N, OUT, IN, bias != nullptr);
}

template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, int N, int IN,
                     int OUT, bool accumulate_dinp) {
  // dinp [N x IN] (+)= dout [N x OUT] . W [OUT x IN]
  if (dinp) gemm_strided<T>(dinp, IN, dout, OUT, 1, weight, IN, 1, N, IN, OUT, accumulate_dinp);
  // dW [OUT x IN] += dout^T . inp, with A(o, n) = dout[n * OUT + o]
  if (dweight) gemm_strided<T>(dweight, IN, dout, 1, OUT, inp, IN, 1, OUT, IN, N, true);
  if (dbias) {
    // Column sums in row order; threads own disjoint column chunks.
    constexpr int kChunk = 64;
    const int chunks = (OUT + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (static_cast<long>(N) * OUT > (1 << 15))
    for (int ch = 0; ch < chunks; ++ch) {
      const int o0 = ch * kChunk, o1 = std::min(OUT, o0 + kChunk);
      T sum[kChunk] = {};
      for (int n = 0; n < N; ++n) {
        const T* row = dout + static_cast<size_t>(n) * OUT;
        for (int o = o0; o < o1; ++o) sum[o - o0] += row[o];
      }
      for (int o = o0; o < o1; ++o) dbias[o] += sum[o - o0];
    }
  }
}

#define LLMQS_INSTANTIATE(T)                                                                              \
  template void gemm_strided<T>(T*, int, const T*, ptrdiff_t, ptrdiff_t, const T*, ptrdiff_t, ptrdiff_t, int, int, \
                                int, bool);                                                               \
  template void matmul_forward<T>(T*, const T*, const T*, const T*, int, int, int);                      \
  template void matmul_backward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, int, bool);
LLMQS_INSTANTIATE(float)
LLMQS_INSTANTIATE(double)
#undef LLMQS_INSTANTIATE

}  // namespace llmqs::kernels::cpu
