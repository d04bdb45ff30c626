// Inverted dropout with counter-based masks (kernels/philox.h), the fp32 reference; CUDA twin:
// kernels/dropout.cu (and the fused epilogues that reproduce the same masks).
//
//   forward   out[e]  = keep(site, e) ? inp[e] / (1 - p) : 0
//   backward  dinp[e] = keep(site, e) ? dout[e] / (1 - p) : 0
// Shapes: flat arrays of n elements, e = flat index. The mask is never stored: the backward
// recomputes it from the same site. out may alias inp, dinp may alias dout. p = 0 copies.
#pragma once
#include <cstddef>

#include "kernels/philox.h"

namespace llmqs::kernels::cpu {

template <typename T>
void dropout_forward(T* out, const T* inp, size_t n, const DropoutSite& site);
template <typename T>
void dropout_backward(T* dinp, const T* dout, size_t n, const DropoutSite& site);

}  // namespace llmqs::kernels::cpu
