// Masked multi-head attention core, forward and backward. See attention.h.
// Each (row, head) runs its four products (Q K^T, P V and the backward's three) through
// gemm_strided on strided views of the [rows x seq x C] buffers: no transposed copies, and
// only the first L_r keys of a row ever enter a product.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "kernels/cpu/matmul.h"

namespace llmqs::kernels::cpu {

namespace {

template <typename T>
T keep_factor(const DropoutSite& dropout, size_t element, T keep_scale) {
  return dropout_keep(dropout, element) ? keep_scale : T(0);
}

}  // namespace

template <typename T>
void attention_forward(T* ctx, T* probs, const T* q, const T* k, const T* v, const int32_t* lengths, int rows,
                       int seq, int C, int heads, const DropoutSite& dropout) {
  const int d = C / heads;
  const T scale = T(1) / std::sqrt(static_cast<T>(d));
  const T keep_scale = dropout.p > 0.0f ? T(1) / (T(1) - static_cast<T>(dropout.p)) : T(1);
  const bool parallel = static_cast<double>(rows) * seq * seq * C > 65536.0;
#pragma omp parallel if (parallel)
  {
    thread_local std::vector<T> dropped;  // [seq x L] probabilities after dropout
    if (dropped.size() < static_cast<size_t>(seq) * seq) dropped.resize(static_cast<size_t>(seq) * seq);
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int r = 0; r < rows; ++r) {
      for (int h = 0; h < heads; ++h) {
        const int len = lengths[r];
        const size_t base = static_cast<size_t>(r) * seq * C + static_cast<size_t>(h) * d;
        const size_t pbase = (static_cast<size_t>(r) * heads + h) * seq * seq;
        // scores [seq x len] = Q_h K_h^T, staged in the probs rows (row stride seq).
        gemm_strided<T>(probs + pbase, seq, q + base, C, 1, k + base, 1, C, seq, len, d, false);
        for (int i = 0; i < seq; ++i) {
          T* p = probs + pbase + static_cast<size_t>(i) * seq;
          T max_score = -INFINITY;
          for (int j = 0; j < len; ++j) {
            p[j] *= scale;
            max_score = std::max(max_score, p[j]);
          }
          T sum = 0;
          for (int j = 0; j < len; ++j) {
            p[j] = std::exp(p[j] - max_score);
            sum += p[j];
          }
          for (int j = 0; j < len; ++j) p[j] /= sum;
          for (int j = len; j < seq; ++j) p[j] = 0;  // padded keys: exp(-huge) == 0 in HF
          T* pd = dropped.data() + static_cast<size_t>(i) * len;
          for (int j = 0; j < len; ++j) pd[j] = p[j] * keep_factor(dropout, pbase + static_cast<size_t>(i) * seq + j, keep_scale);
        }
        // ctx_h [seq x d] = dropped [seq x len] V_h [len x d]
        gemm_strided<T>(ctx + base, C, dropped.data(), len, 1, v + base, C, 1, seq, d, len, false);
      }
    }
  }
}

template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dctx, const T* q, const T* k, const T* v, const T* probs,
                        const int32_t* lengths, int rows, int seq, int C, int heads, const DropoutSite& dropout) {
  const int d = C / heads;
  const T scale = T(1) / std::sqrt(static_cast<T>(d));
  const T keep_scale = dropout.p > 0.0f ? T(1) / (T(1) - static_cast<T>(dropout.p)) : T(1);
  const bool parallel = static_cast<double>(rows) * seq * seq * C > 65536.0;
#pragma omp parallel if (parallel)
  {
    thread_local std::vector<T> dropped, dscore;  // [seq x L] each
    if (dropped.size() < static_cast<size_t>(seq) * seq) dropped.resize(static_cast<size_t>(seq) * seq);
    if (dscore.size() < static_cast<size_t>(seq) * seq) dscore.resize(static_cast<size_t>(seq) * seq);
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int r = 0; r < rows; ++r) {
      for (int h = 0; h < heads; ++h) {
        const int len = lengths[r];
        const size_t base = static_cast<size_t>(r) * seq * C + static_cast<size_t>(h) * d;
        const size_t pbase = (static_cast<size_t>(r) * heads + h) * seq * seq;
        for (int i = 0; i < seq; ++i)
          for (int j = 0; j < len; ++j) {
            const size_t at = pbase + static_cast<size_t>(i) * seq + j;
            dropped[static_cast<size_t>(i) * len + j] = probs[at] * keep_factor(dropout, at, keep_scale);
          }
        // dV_h [len x d] = dropped^T dctx_h; padded value rows get nothing.
        gemm_strided<T>(dv + base, C, dropped.data(), 1, len, dctx + base, C, 1, len, d, seq, false);
        for (int j = len; j < seq; ++j) std::fill(dv + base + static_cast<size_t>(j) * C, dv + base + static_cast<size_t>(j) * C + d, T(0));
        // d(dropped) [seq x len] = dctx_h V_h^T, then through dropout and the softmax.
        gemm_strided<T>(dscore.data(), len, dctx + base, C, 1, v + base, 1, C, seq, len, d, false);
        for (int i = 0; i < seq; ++i) {
          const T* p = probs + pbase + static_cast<size_t>(i) * seq;
          T* ds = dscore.data() + static_cast<size_t>(i) * len;
          T weighted = 0;  // sum_j p_ij dP_ij
          for (int j = 0; j < len; ++j) {
            ds[j] *= keep_factor(dropout, pbase + static_cast<size_t>(i) * seq + j, keep_scale);
            weighted += p[j] * ds[j];
          }
          for (int j = 0; j < len; ++j) ds[j] = p[j] * (ds[j] - weighted) * scale;
        }
        // dQ_h [seq x d] = dS K_h;  dK_h [len x d] = dS^T Q_h
        gemm_strided<T>(dq + base, C, dscore.data(), len, 1, k + base, C, 1, seq, d, len, false);
        gemm_strided<T>(dk + base, C, dscore.data(), 1, len, q + base, C, 1, len, d, seq, false);
        for (int j = len; j < seq; ++j) std::fill(dk + base + static_cast<size_t>(j) * C, dk + base + static_cast<size_t>(j) * C + d, T(0));
      }
    }
  }
}

#define LLMQS_INSTANTIATE(T)                                                                                  \
  template void attention_forward<T>(T*, T*, const T*, const T*, const T*, const int32_t*, int, int, int, int, \
                                     const DropoutSite&);                                                     \
  template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*,           \
                                      const int32_t*, int, int, int, int, const DropoutSite&);
LLMQS_INSTANTIATE(float)
LLMQS_INSTANTIATE(double)
#undef LLMQS_INSTANTIATE

}  // namespace llmqs::kernels::cpu
