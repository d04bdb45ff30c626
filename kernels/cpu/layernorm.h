// LayerNorm over the last dimension, the fp32 reference; CUDA twin: kernels/layernorm.cu.
//
//   forward   mean[n] = sum_c x[n,c] / C,  rstd[n] = 1 / sqrt(sum_c (x[n,c] - mean)^2 / C + eps)
//             out[n, c] = (x[n, c] - mean[n]) * rstd[n] * gamma[c] + beta[c]
//   backward  xhat = (x - mean) * rstd,  g = dout * gamma
//             dx[n, c]  = rstd[n] * (g[c] - mean_c(g) - xhat[c] * mean_c(g * xhat))   (overwrites)
//             dgamma[c] += sum_n dout[n, c] * xhat[n, c],  dbeta[c] += sum_n dout[n, c]
// Shapes: x/out/dout/dx [N x C] row-major, gamma/beta/dgamma/dbeta [C], mean/rstd [N]
// (saved by the forward for the backward). Statistics are computed in double for T = float
// (two-pass: mean, then centred variance) so the reference is not the weak link.
//
// The model applies LayerNorm after a residual add (post-LN BERT): residual_layernorm_forward
// computes sum = a + b, stores it (the backward needs it) and normalises it. Its backward is
// layernorm_backward on the stored sum: d(sum) flows unchanged into both a and b.
#pragma once

namespace llmqs::kernels::cpu {

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* gamma, const T* beta, int N, int C,
                       float eps);

// sum = a + b (sum may alias a or b), out = LayerNorm(sum).
template <typename T>
void residual_layernorm_forward(T* out, T* sum, T* mean, T* rstd, const T* a, const T* b, const T* gamma,
                                const T* beta, int N, int C, float eps);

// x is the LayerNorm input (for the residual variant: the stored sum). dx may alias dout.
template <typename T>
void layernorm_backward(T* dx, T* dgamma, T* dbeta, const T* dout, const T* x, const T* mean, const T* rstd,
                        const T* gamma, int N, int C);

}  // namespace llmqs::kernels::cpu
