// Counter-based random numbers for dropout: Philox4x32-7 (Salmon et al., SC'11, "Parallel random
// numbers: as easy as 1, 2, 3"; -10 for parameter initialisation, core/parameters.cpp), usable from
// host C++ and CUDA device code, so that the CPU reference and the CUDA kernels draw bit-identical
// dropout masks with no stored state.
//
// One Philox call maps (key, 128-bit counter) to four 32-bit words, eight 16-bit uniforms. Layout:
//   key      k0 = low 32 bits of seed, k1 = high 32 bits of seed
//   counter  c0 = low 32 bits of (element >> 3)        element = flat index inside the tensor
//            c1 = tensor_id                             the dropout site, see bert_dropout_tensor_id
//            c2 = low 32 bits of step                   optimizer step (0-based)
//            c3 = (rank & 0xFFFF) << 16 | (micro_step & 0xFFFF)
//   half     element & 1 (low half first) of word (element >> 1) & 3 of the four outputs
//   keep     half >= dropout_threshold(p) = p * 65536 rounded to nearest, so p is quantised to
//            2^-16 (0.1 -> 6554 / 65536 = 0.100006); kept values are multiplied by 1 / (1 - p)
//            (computed in the scalar type)
// So a CUDA thread that owns eight consecutive elements (one 16-byte pack of bf16) needs a single
// Philox call. Limits: 2^35 elements per tensor, 2^32 steps, 65536 ranks and micro-steps
// (wrap-around repeats masks, nothing worse).
//
// BERT dropout sites (tensor ids, shared by every backend):
//   0                      embeddings output (after the embeddings LayerNorm)
//   1                      pooled output, before the classifier
//   8 * (layer + 1) + 0    attention probabilities, element ((row * heads + head) * seq + query) * seq + key
//   8 * (layer + 1) + 1    attention output dense, before the residual add; element token * hidden + channel
//   8 * (layer + 1) + 2    feed-forward output dense, before the residual add; same indexing
// Hidden-state sites index [rows x seq_len x hidden] row-major (token = row * seq_len + position);
// the pooled site indexes [rows x hidden].
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define LLMQS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LLMQS_HOST_DEVICE inline
#endif

namespace llmqs::kernels {

struct Philox4x32 {
  uint32_t v[4];
};

LLMQS_HOST_DEVICE uint32_t philox_mulhi(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

// Philox4x32 with kRounds rounds; 10 and 7 match the Random123 known-answer vectors
// (tests/kernels_cpu_test.cpp).
template <int kRounds>
LLMQS_HOST_DEVICE Philox4x32 philox4x32_rounds(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                               uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < kRounds; ++round) {
    const uint32_t hi0 = philox_mulhi(kMul0, c0), lo0 = kMul0 * c0;
    const uint32_t hi1 = philox_mulhi(kMul1, c2), lo1 = kMul1 * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Philox4x32{{c0, c1, c2, c3}};
}
LLMQS_HOST_DEVICE Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                           uint32_t k1) {
  return philox4x32_rounds<10>(c0, c1, c2, c3, k0, k1);
}
// 7 rounds: the fewest that Salmon et al. found to pass TestU01's BigCrush with the 4x32 variant
// (10 is Random123's default, with a safety margin); FlashAttention draws its attention dropout
// with 7 as well. Every dropout site uses it (dropout_words below).
LLMQS_HOST_DEVICE Philox4x32 philox4x32_7(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                          uint32_t k1) {
  return philox4x32_rounds<7>(c0, c1, c2, c3, k0, k1);
}

// Everything that selects one dropout mask; p = 0 keeps every element (dropout off).
struct DropoutSite {
  uint64_t seed = 0;
  uint64_t step = 0;
  uint32_t rank = 0;
  uint32_t micro_step = 0;
  uint32_t tensor_id = 0;
  float p = 0.0f;
  // CUDA only: when set, device memory holding the key words {seed low, seed high, step low, step
  // high, rank, micro_step} (kDropoutKeyWords), which CUDA kernels read at entry in place of the
  // four fields above (resolve_site in kernels/cuda_common.cuh). A kernel captured in a CUDA graph
  // then draws each replay's masks from the key uploaded before it. Never set on the CPU.
  const uint32_t* key_words = nullptr;
};
constexpr int kDropoutKeyWords = 6;

// The key words of a site's seed, step, rank and micro_step, in key_words' order.
inline void dropout_key_words(const DropoutSite& site, uint32_t (&words)[kDropoutKeyWords]) {
  words[0] = static_cast<uint32_t>(site.seed);
  words[1] = static_cast<uint32_t>(site.seed >> 32);
  words[2] = static_cast<uint32_t>(site.step);
  words[3] = static_cast<uint32_t>(site.step >> 32);
  words[4] = site.rank;
  words[5] = site.micro_step;
}

// The four words of call `group` of a site: the 16-bit uniforms of elements 8 * group .. + 7.
// Philox4x32-7, eight uniforms per call: a bert-base step at 64 x 512 draws about 3 G numbers
// (2.4 G of them attention probabilities), so the draw's ALU work shows up next to the matmuls and
// memory-bound passes it runs beside (docs/performance.md sections 11 and 12).
LLMQS_HOST_DEVICE Philox4x32 dropout_words(const DropoutSite& site, uint64_t group) {
  return philox4x32_7(static_cast<uint32_t>(group), site.tensor_id, static_cast<uint32_t>(site.step),
                       ((site.rank & 0xFFFFu) << 16) | (site.micro_step & 0xFFFFu),
                       static_cast<uint32_t>(site.seed), static_cast<uint32_t>(site.seed >> 32));
}

LLMQS_HOST_DEVICE uint32_t dropout_threshold(float p) {
  return static_cast<uint32_t>(static_cast<double>(p) * 65536.0 + 0.5);
}
// The keep decision of the element that uses half `half` of `word`.
LLMQS_HOST_DEVICE bool dropout_keep_from_word(uint32_t word, int half, uint32_t threshold) {
  return ((half ? word >> 16 : word & 0xFFFFu)) >= threshold;
}
// Every backend's mask: element `element` of the site's tensor is kept.
LLMQS_HOST_DEVICE bool dropout_keep(const DropoutSite& site, uint64_t element) {
  if (site.p <= 0.0f) return true;
  const Philox4x32 words = dropout_words(site, element >> 3);
  return dropout_keep_from_word(words.v[(element >> 1) & 3], static_cast<int>(element & 1),
                                dropout_threshold(site.p));
}

constexpr uint32_t kEmbeddingDropoutId = 0;
constexpr uint32_t kPooledDropoutId = 1;
enum class LayerDropoutSite : uint32_t { kAttentionProbs = 0, kAttentionOutput = 1, kFeedForwardOutput = 2 };

LLMQS_HOST_DEVICE uint32_t bert_dropout_tensor_id(int layer, LayerDropoutSite site) {
  return 8u * static_cast<uint32_t>(layer + 1) + static_cast<uint32_t>(site);
}

}  // namespace llmqs::kernels
