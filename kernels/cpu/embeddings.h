// BERT input embeddings (word + position + token type 0), the fp32 reference; CUDA twin:
// kernels/embeddings.cu. The LayerNorm and dropout that follow are separate kernels.
//
//   forward   out[r, s, c] = word[ids[r, s], c] + position[s, c] + token_type0[c]
//   backward  dword[v, c]        += sum over tokens with ids == v (v != padding_idx) of dout[t, c]
//             dposition[s, c]    += sum_r dout[r, s, c]
//             dtoken_type0[c]    += sum_{r, s} dout[r, s, c]
// Shapes: ids [rows x seq] int32, word [V x C], position [P x C] (seq <= P), token_type0 [C]
// (row 0 of the token_type table: single-text classification), out/dout [rows x seq x C].
// The padding row gets no gradient, as nn.Embedding(padding_idx=pad_token_id) in HF.
// Deterministic: tokens are visited in order and threads split the channel dimension, so no
// two threads ever add into the same element (no atomics, same bits on every run).
#pragma once
#include <cstdint>

namespace llmqs::kernels::cpu {

template <typename T>
void embeddings_forward(T* out, const int32_t* ids, const T* word, const T* position, const T* token_type0,
                        int rows, int seq, int C);

template <typename T>
void embeddings_backward(T* dword, T* dposition, T* dtoken_type0, const T* dout, const int32_t* ids,
                         int rows, int seq, int C, int padding_idx);

}  // namespace llmqs::kernels::cpu
