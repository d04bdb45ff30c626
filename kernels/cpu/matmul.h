// Dense (torch.nn.Linear) layers, the fp32 reference; CUDA twin: kernels/matmul_cublaslt.cu.
//
//   forward   out[n, o] = bias[o] + sum_i inp[n, i] * weight[o, i]        (y = x W^T + b)
//   backward  dinp[n, i]  (=|+=) sum_o dout[n, o] * weight[o, i]          (dX = dY W)
//             dweight[o, i] += sum_n dout[n, o] * inp[n, i]               (dW += dY^T X)
//             dbias[o]      += sum_n dout[n, o]                           (db += colsum dY)
// Shapes, all row-major: inp [N x IN], weight [OUT x IN] (torch layout), bias [OUT] (may be null),
// out/dout [N x OUT], dinp [N x IN]. N = rows * seq_len tokens (or rows for the pooler/classifier).
// Parameter gradients always accumulate (+=): the Backend contract adds into the gradient buffer.
//
// All three products run through one packed, register-blocked kernel C (+)= A B (gemm_strided);
// OpenMP splits C into independent tiles.
// Every output element is summed in increasing k order whatever the blocking or thread count,
// so results are bitwise reproducible across runs and machines with the same compiler flags.
#pragma once
#include <cstddef>

namespace llmqs::kernels::cpu {

template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int N, int IN, int OUT);

// dinp may be null (the embedding side needs no input gradient there); accumulate_dinp adds
// into dinp instead of overwriting (residual branches). dbias may be null.
template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                     int N, int IN, int OUT, bool accumulate_dinp);

// The general product behind both: C[m, n] = (accumulate ? C[m, n] : 0) + sum_k A(m, k) * B(k, n)
// with A(m, k) = a[m * a_row_stride + k * a_col_stride], B(k, n) = b[k * b_row_stride + n * b_col_stride],
// C row-major [M x ldc]. Transposes are just strides: the packing step reads either layout.
template <typename T>
void gemm_strided(T* c, int ldc, const T* a, ptrdiff_t a_row_stride, ptrdiff_t a_col_stride, const T* b,
                  ptrdiff_t b_row_stride, ptrdiff_t b_col_stride, int M, int N, int K, bool accumulate);

}  // namespace llmqs::kernels::cpu
