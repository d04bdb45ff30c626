// Deterministic sum of squares in double. See grad_norm.h.
#include "kernels/cpu/grad_norm.h"

#include <cstdint>
#include <vector>

namespace llmqs::kernels::cpu {

template <typename T>
double sum_of_squares(const T* grad, size_t n) {
  constexpr size_t kChunk = 4096;
  const int64_t chunks = static_cast<int64_t>((n + kChunk - 1) / kChunk);
  std::vector<double> partial(static_cast<size_t>(chunks));
#pragma omp parallel for schedule(static) if (chunks > 4)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const size_t begin = static_cast<size_t>(ch) * kChunk, end = begin + kChunk < n ? begin + kChunk : n;
    double sum = 0.0;
    for (size_t i = begin; i < end; ++i) sum += static_cast<double>(grad[i]) * static_cast<double>(grad[i]);
    partial[static_cast<size_t>(ch)] = sum;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

template double sum_of_squares<float>(const float*, size_t);
template double sum_of_squares<double>(const double*, size_t);

}  // namespace llmqs::kernels::cpu
