// Global gradient norm for clip_grad_norm_, the fp32 reference; CUDA twin: kernels/grad_norm.cu.
//
//   sq_norm = sum_i grad[i]^2, accumulated in double
// Deterministic: fixed chunks of 4096 elements are summed in order inside each chunk, then the
// chunk sums in chunk order, whatever the number of threads.
#pragma once
#include <cstddef>

namespace llmqs::kernels::cpu {

template <typename T>
double sum_of_squares(const T* grad, size_t n);

}  // namespace llmqs::kernels::cpu
