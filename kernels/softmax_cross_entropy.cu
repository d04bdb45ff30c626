// Softmax cross-entropy over the class logits fused with argmax and the backward; CUDA twin of
// kernels/cpu/softmax_cross_entropy.h:
//   loss[r]       = log(sum_c exp(logits[r, c] - max_r)) - (logits[r, label_r] - max_r)
//   prediction[r] = argmax_c logits[r, c] (first maximum wins, as torch.argmax)
//   dlogits[r, c] = loss_weight * (softmax(logits[r])[c] - [c == label_r])
// Shapes: logits fp32 [rows x C] row-major, labels/prediction int32 [rows], loss fp32 [rows],
// dlogits [rows x C] in the activation type (it feeds the classifier's backward matmul).
// One warp per row, lanes over classes (C is small: 5 for Yelp).
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

namespace llmqs::kernels::cuda {

namespace {

template <typename T>
__global__ void softmax_cross_entropy_kernel(float* loss, int32_t* prediction, T* dlogits, const float* logits,
                                             const int32_t* labels, int rows, int C, float loss_weight) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const float* z = logits + static_cast<int64_t>(row) * C;
  // Max and first argmax: lanes scan strided classes, then the warp keeps the larger value,
  // the smaller index on ties.
  float best = -INFINITY;
  int best_index = C;
  for (int c = lane; c < C; c += 32)
    if (z[c] > best) {
      best = z[c];
      best_index = c;
    }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, best, offset);
    const int other_index = __shfl_xor_sync(0xffffffffu, best_index, offset);
    if (other > best || (other == best && other_index < best_index)) {
      best = other;
      best_index = other_index;
    }
  }
  float sum = 0.0f;
  for (int c = lane; c < C; c += 32) sum += expf(z[c] - best);
  sum = warp_sum(sum);
  const int label = labels[row];
  if (lane == 0) {
    loss[row] = logf(sum) - (z[label] - best);
    prediction[row] = best_index;
  }
  if (dlogits)
    for (int c = lane; c < C; c += 32) {
      const float p = expf(z[c] - best) / sum;
      dlogits[static_cast<int64_t>(row) * C + c] = from_float<T>(loss_weight * (p - (c == label ? 1.0f : 0.0f)));
    }
}

}  // namespace

void softmax_cross_entropy(float* loss, int32_t* prediction, void* dlogits, DType dlogits_type, const float* logits,
                           const int32_t* labels, int rows, int C, float loss_weight, cudaStream_t stream) {
  if (rows <= 0) return;
  LLMQS_DISPATCH_DTYPE(dlogits_type, {
    softmax_cross_entropy_kernel<scalar_t><<<ceil_div(rows, 8), 256, 0, stream>>>(
        loss, prediction, static_cast<scalar_t*>(dlogits), logits, labels, rows, C, loss_weight);
  });
  CUDA_CHECK_LAUNCH("softmax_cross_entropy_kernel");
}

}  // namespace llmqs::kernels::cuda
