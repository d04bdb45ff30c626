// Softmax cross-entropy over the class logits, fused with argmax, the fp32 reference; CUDA
// twin: kernels/softmax_cross_entropy.cu.
//
//   forward   probs[r, c] = exp(logits[r, c] - max_r) / sum_c' exp(logits[r, c'] - max_r)
//             loss[r]     = log(sum_c exp(logits[r, c] - max_r)) - (logits[r, label_r] - max_r)
//             prediction[r] = argmax_c logits[r, c] (first maximum wins, as torch.argmax)
//   backward  dlogits[r, c] (=) loss_weight * (probs[r, c] - [c == label_r])
// Shapes: logits/probs/dlogits [rows x C] row-major, labels/prediction [rows] int32,
// loss [rows]. Labels must lie in [0, C) (the caller validates and names the row).
// The Backend's loss is loss_weight * sum_r loss[r]; HF's mean is loss_weight = 1 / rows.
#pragma once
#include <cstdint>

namespace llmqs::kernels::cpu {

template <typename T>
void softmax_cross_entropy_forward(T* loss, T* probs, int32_t* prediction, const T* logits,
                                   const int32_t* labels, int rows, int C);

template <typename T>
void softmax_cross_entropy_backward(T* dlogits, const T* probs, const int32_t* labels, int rows, int C,
                                    T loss_weight);

}  // namespace llmqs::kernels::cpu
