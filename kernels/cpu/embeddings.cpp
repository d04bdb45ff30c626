// BERT embedding sum forward and its deterministic backward. See embeddings.h.
#include "kernels/cpu/embeddings.h"

#include <cstddef>

namespace llmqs::kernels::cpu {

template <typename T>
void embeddings_forward(T* out, const int32_t* ids, const T* word, const T* position, const T* token_type0,
                        int rows, int seq, int C) {
#pragma omp parallel for collapse(2) schedule(static) if (rows * seq * C > (1 << 15))
  for (int r = 0; r < rows; ++r) {
    for (int s = 0; s < seq; ++s) {
      const size_t t = static_cast<size_t>(r) * seq + s;
      const T* w = word + static_cast<size_t>(ids[t]) * C;
      const T* p = position + static_cast<size_t>(s) * C;
      T* o = out + t * C;
      // HF order: (inputs_embeds + token_type_embeddings) + position_embeddings.
      for (int c = 0; c < C; ++c) o[c] = (w[c] + token_type0[c]) + p[c];
    }
  }
}

template <typename T>
void embeddings_backward(T* dword, T* dposition, T* dtoken_type0, const T* dout, const int32_t* ids, int rows,
                         int seq, int C, int padding_idx) {
  // Threads split the channels; every thread walks all tokens in order, so each gradient
  // element receives its contributions in token order, from exactly one thread.
  constexpr int kChunk = 32;
  const int chunks = (C + kChunk - 1) / kChunk;
  const size_t tokens = static_cast<size_t>(rows) * seq;
#pragma omp parallel for schedule(static) if (tokens * C > (1u << 15))
  for (int ch = 0; ch < chunks; ++ch) {
    const int c0 = ch * kChunk, c1 = C < c0 + kChunk ? C : c0 + kChunk;
    for (size_t t = 0; t < tokens; ++t) {
      const T* d = dout + t * C;
      const int s = static_cast<int>(t % seq);
      T* dp = dposition + static_cast<size_t>(s) * C;
      for (int c = c0; c < c1; ++c) {
        dp[c] += d[c];
        dtoken_type0[c] += d[c];
      }
      if (ids[t] == padding_idx) continue;
      T* dw = dword + static_cast<size_t>(ids[t]) * C;
      for (int c = c0; c < c1; ++c) dw[c] += d[c];
    }
  }
}

#define LLMQS_INSTANTIATE(T)                                                                             \
  template void embeddings_forward<T>(T*, const int32_t*, const T*, const T*, const T*, int, int, int); \
  template void embeddings_backward<T>(T*, T*, T*, const T*, const int32_t*, int, int, int, int);
LLMQS_INSTANTIATE(float)
LLMQS_INSTANTIATE(double)
#undef LLMQS_INSTANTIATE

}  // namespace llmqs::kernels::cpu
