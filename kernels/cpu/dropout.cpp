// Inverted dropout with Philox masks recomputed in the backward. See dropout.h.
#include "kernels/cpu/dropout.h"

#include <cstdint>

namespace llmqs::kernels::cpu {

namespace {

template <typename T>
void apply_mask(T* out, const T* inp, size_t n, const DropoutSite& site) {
  if (site.p <= 0.0f) {
    if (out != inp)
      for (size_t i = 0; i < n; ++i) out[i] = inp[i];
    return;
  }
  const T scale = T(1) / (T(1) - static_cast<T>(site.p));
  const uint32_t threshold = dropout_threshold(site.p);
  const int64_t groups = static_cast<int64_t>((n + 7) / 8);
  // One Philox call serves eight consecutive elements, as a CUDA thread would use it.
#pragma omp parallel for schedule(static) if (n > (1u << 15))
  for (int64_t g = 0; g < groups; ++g) {
    const Philox4x32 words = dropout_words(site, static_cast<uint64_t>(g));
    for (int w = 0; w < 8; ++w) {
      const size_t i = static_cast<size_t>(g) * 8 + w;
      if (i >= n) break;
      out[i] = dropout_keep_from_word(words.v[w >> 1], w & 1, threshold) ? inp[i] * scale : T(0);
    }
  }
}

}  // namespace

template <typename T>
void dropout_forward(T* out, const T* inp, size_t n, const DropoutSite& site) {
  apply_mask(out, inp, n, site);
}

template <typename T>
void dropout_backward(T* dinp, const T* dout, size_t n, const DropoutSite& site) {
  apply_mask(dinp, dout, n, site);
}

template void dropout_forward<float>(float*, const float*, size_t, const DropoutSite&);
template void dropout_forward<double>(double*, const double*, size_t, const DropoutSite&);
template void dropout_backward<float>(float*, const float*, size_t, const DropoutSite&);
template void dropout_backward<double>(double*, const double*, size_t, const DropoutSite&);

}  // namespace llmqs::kernels::cpu
