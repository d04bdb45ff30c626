// Elementwise activations, the fp32 reference; CUDA twins: GELU in the cuBLASLt epilogue
// (kernels/matmul_cublaslt.cu), tanh in kernels/activations.cu.
//
//   gelu  (exact, HF "gelu"):  y = 0.5 x (1 + erf(x / sqrt(2)))
//                              dy/dx = 0.5 (1 + erf(x / sqrt(2))) + x exp(-x^2 / 2) / sqrt(2 pi)
//   tanh  (the BERT pooler):   y = tanh(x),  dy/dx = 1 - y^2 (uses the saved output)
// Shapes: flat arrays of n elements. Backward overwrites dinp (it may alias dout).
#pragma once
#include <cstddef>

namespace llmqs::kernels::cpu {

template <typename T>
void gelu_forward(T* out, const T* inp, size_t n);
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, size_t n);

template <typename T>
void tanh_forward(T* out, const T* inp, size_t n);
template <typename T>
void tanh_backward(T* dinp, const T* out, const T* dout, size_t n);

}  // namespace llmqs::kernels::cpu
