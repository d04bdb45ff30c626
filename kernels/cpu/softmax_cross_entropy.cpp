// Softmax cross-entropy with argmax, forward and backward. See softmax_cross_entropy.h.
#include "kernels/cpu/softmax_cross_entropy.h"

#include <cmath>
#include <cstddef>

namespace llmqs::kernels::cpu {

template <typename T>
void softmax_cross_entropy_forward(T* loss, T* probs, int32_t* prediction, const T* logits, const int32_t* labels,
                                   int rows, int C) {
  for (int r = 0; r < rows; ++r) {
    const T* z = logits + static_cast<size_t>(r) * C;
    T* p = probs + static_cast<size_t>(r) * C;
    int best = 0;
    for (int c = 1; c < C; ++c)
      if (z[c] > z[best]) best = c;
    const T max_logit = z[best];
    T sum = 0;
    for (int c = 0; c < C; ++c) {
      p[c] = std::exp(z[c] - max_logit);
      sum += p[c];
    }
    for (int c = 0; c < C; ++c) p[c] /= sum;
    loss[r] = std::log(sum) - (z[labels[r]] - max_logit);
    prediction[r] = best;
  }
}

template <typename T>
void softmax_cross_entropy_backward(T* dlogits, const T* probs, const int32_t* labels, int rows, int C,
                                    T loss_weight) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < C; ++c) {
      const size_t at = static_cast<size_t>(r) * C + c;
      dlogits[at] = loss_weight * (probs[at] - (c == labels[r] ? T(1) : T(0)));
    }
}

template void softmax_cross_entropy_forward<float>(float*, float*, int32_t*, const float*, const int32_t*, int, int);
template void softmax_cross_entropy_forward<double>(double*, double*, int32_t*, const double*, const int32_t*, int,
                                                    int);
template void softmax_cross_entropy_backward<float>(float*, const float*, const int32_t*, int, int, float);
template void softmax_cross_entropy_backward<double>(double*, const double*, const int32_t*, int, int, double);

}  // namespace llmqs::kernels::cpu
