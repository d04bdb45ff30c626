// BERT input embeddings, CUDA twin of kernels/cpu/embeddings.h.
//
//   forward   out[r, s, c] = word[ids[r, s], c] + position[s, c] + token_type0[c]
//             grid (rows * seq), block 256 threads over c; tables are the fp32 master weights.
//   backward  dword[v, c]     += sum over tokens with id v (v != padding_idx) of dout[t, c]
//             dposition[s, c] += sum_r dout[r, s, c]
//             dtoken_type0[c] += sum_t dout[t, c]
// Deterministic with no atomics: the host groups token positions by id (group_tokens_by_id), one
// block owns one vocabulary row (grid (groups, ceil(C / 256))) and adds its positions in
// increasing order; one block owns one position row likewise; the token-type sum is a
// column reduction (column_reduce.cuh).
#include <algorithm>
#include <numeric>

#include "kernels/column_reduce.cuh"

namespace llmqs::kernels::cuda {

namespace {

template <typename T>
__global__ void embeddings_forward_kernel(T* out, const int32_t* ids, const float* word, const float* position,
                                          const float* token_type0, int seq, int C) {
  const int64_t token = blockIdx.x;
  const int s = static_cast<int>(token % seq);
  const int64_t id = ids[token];
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    out[token * C + c] = from_float<T>(word[id * C + c] + position[static_cast<int64_t>(s) * C + c] + token_type0[c]);
}

template <typename T>
__global__ void word_embedding_backward_kernel(float* dword, const T* dout, const int32_t* group_token,
                                               const int32_t* group_offset, const int32_t* group_position, int C) {
  const int g = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0.0f;
  for (int i = group_offset[g]; i < group_offset[g + 1]; ++i)
    acc += to_float(dout[static_cast<int64_t>(group_position[i]) * C + c]);
  dword[static_cast<int64_t>(group_token[g]) * C + c] += acc;
}

template <typename T>
__global__ void position_embedding_backward_kernel(float* dposition, const T* dout, int rows, int seq, int C) {
  const int s = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0.0f;
  for (int r = 0; r < rows; ++r) acc += to_float(dout[(static_cast<int64_t>(r) * seq + s) * C + c]);
  dposition[static_cast<int64_t>(s) * C + c] += acc;
}

}  // namespace

TokenGroupsHost group_tokens_by_id(const int32_t* ids_host, int64_t n, int padding_idx) {
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  // Stable: equal ids keep increasing positions, which fixes the summation order.
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ids_host[a] < ids_host[b]; });
  TokenGroupsHost groups;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t position = order[static_cast<size_t>(i)];
    const int32_t id = ids_host[position];
    if (id == padding_idx) continue;
    if (groups.token.empty() || groups.token.back() != id) {
      groups.token.push_back(id);
      groups.offset.push_back(static_cast<int32_t>(groups.position.size()));
    }
    groups.position.push_back(position);
  }
  groups.offset.push_back(static_cast<int32_t>(groups.position.size()));
  return groups;
}

void embeddings_forward(void* out, DType type, const int32_t* ids, const float* word, const float* position,
                        const float* token_type0, int rows, int seq, int C, cudaStream_t stream) {
  if (rows <= 0 || seq <= 0) return;
  LLMQS_DISPATCH_DTYPE(type, {
    embeddings_forward_kernel<scalar_t><<<static_cast<unsigned>(rows) * seq, 256, 0, stream>>>(
        static_cast<scalar_t*>(out), ids, word, position, token_type0, seq, C);
  });
  CUDA_CHECK_LAUNCH("embeddings_forward_kernel");
}

void embeddings_backward(float* dword, float* dposition, float* dtoken_type0, const void* dout, DType type,
                         const int32_t* group_token, const int32_t* group_offset, const int32_t* group_position,
                         int num_groups, int rows, int seq, int C, float* scratch, cudaStream_t stream) {
  if (rows <= 0 || seq <= 0) return;
  LLMQS_DISPATCH_DTYPE(type, {
    const scalar_t* d = static_cast<const scalar_t*>(dout);
    if (num_groups > 0) {
      word_embedding_backward_kernel<scalar_t><<<dim3(num_groups, ceil_div(C, 256)), 256, 0, stream>>>(
          dword, d, group_token, group_offset, group_position, C);
      CUDA_CHECK_LAUNCH("word_embedding_backward_kernel");
    }
    position_embedding_backward_kernel<scalar_t><<<dim3(seq, ceil_div(C, 256)), 256, 0, stream>>>(dposition, d, rows,
                                                                                                  seq, C);
    CUDA_CHECK_LAUNCH("position_embedding_backward_kernel");
  });
  column_sum_accumulate(dtoken_type0, dout, type, static_cast<int64_t>(rows) * seq, C, C, scratch, stream);
}

}  // namespace llmqs::kernels::cuda
