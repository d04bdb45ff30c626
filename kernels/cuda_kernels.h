// The CUDA kernels of the BERT classifier, one entry point per CPU reference function
// (kernels/cpu/*.h, the oracle the tests compare against), same math, same row-major layouts.
// Differences from the CPU signatures, all deliberate:
//   - activations are untyped pointers with a DType (fp32, bf16, fp16 chosen at run time);
//     parameters and their gradients are always fp32 (master weights);
//   - LayerNorm statistics (mean, rstd) are fp32 whatever the activation type;
//   - dropout can be fused where the model applies it (the same Philox sites, kernels/philox.h,
//     so masks are bit-identical with the CPU's);
//   - scratch memory comes from the caller (the backend's arena): no kernel allocates.
// Every function enqueues on `stream` and returns without synchronising. Pointers are device
// memory unless the name ends in _host.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/cuda_dtype.h"
#include "kernels/matmul_cublaslt.h"
#include "kernels/philox.h"

namespace llmqs::kernels::cuda {

// ---- conversions (kernels/convert.cu) --------------------------------------------------------
// dst[i] = (dst_type) src[i]; fp32 <-> bf16/fp16 (round to nearest even).
void convert(void* dst, DType dst_type, const void* src, DType src_type, size_t n, cudaStream_t stream);

// ---- deterministic column sums (kernels/column_reduce.cu) ---------------------------------------
// out[c] += sum_r x[r, c] over x [rows x cols] (row stride ld), in a fixed order: rows are cut
// into chunks of kColumnReduceChunk, each chunk summed into partial[chunk, c] (fp32 scratch of
// column_reduce_scratch_floats(rows, cols)), then the partials are added in chunk order.
constexpr int kColumnReduceChunk = 128;
size_t column_reduce_scratch_floats(int64_t rows, int cols);
void column_sum_accumulate(float* out, const void* x, DType type, int64_t rows, int cols, int64_t ld,
                           float* scratch, cudaStream_t stream);
// The bias gradient of a Linear layer: dbias[o] += sum_n dout[n, o] (CPU: inside matmul_backward).
inline void linear_backward_bias(float* dbias, const void* dout, DType type, int64_t rows, int out_features,
                                 float* scratch, cudaStream_t stream) {
  column_sum_accumulate(dbias, dout, type, rows, out_features, out_features, scratch, stream);
}

// ---- embeddings (kernels/embeddings.cu; CPU twin kernels/cpu/embeddings.h) ----------------------
// out[r, s, c] = word[ids[r, s], c] + position[s, c] + token_type0[c]; tables fp32.
void embeddings_forward(void* out, DType type, const int32_t* ids, const float* word, const float* position,
                        const float* token_type0, int rows, int seq, int C, cudaStream_t stream);

// The tokens of one batch grouped by vocabulary id, built on the host (the ids are there anyway):
// for group g, token id token[g] occurs at flat positions position[offset[g] .. offset[g+1]) in
// increasing order. The padding id is left out (nn.Embedding(padding_idx) gets no gradient).
// One CUDA block owns one vocabulary row, so the backward needs no atomics and is deterministic.
struct TokenGroupsHost {
  std::vector<int32_t> token, offset, position;
};
TokenGroupsHost group_tokens_by_id(const int32_t* ids_host, int64_t n, int padding_idx);

// dword[v] += sum of dout over the tokens with id v (groups: device copies of TokenGroupsHost);
// dposition[s] += sum_r dout[r, s]; dtoken_type0 += sum of every row. scratch: see column_reduce.
void embeddings_backward(float* dword, float* dposition, float* dtoken_type0, const void* dout, DType type,
                         const int32_t* group_token, const int32_t* group_offset, const int32_t* group_position,
                         int num_groups, int rows, int seq, int C, float* scratch, cudaStream_t stream);

// ---- kernel variants (defined in kernels/layernorm.cu) -------------------------------------------
// The packed kernels (16-byte loads, one Philox call per eight elements, LayerNorm gamma/beta sums
// and the preceding dense layer's bias sum fused into the backward row pass) are the default; the first, scalar kernels stay as the
// fallback for shapes the packed ones do not take (C % 8 for bf16/fp16, C % 4 for fp32, or an
// unaligned pointer) and as a switch for validation runs (core reads LLMQS_LAYERNORM=scalar and
// LLMQS_GELU=scalar). Process-wide; set before launching, not while kernels are being enqueued.
// packed_column_sums (LLMQS_COLUMN_SUM=scalar to turn off) covers the bias-gradient column sums;
// packed_gelu also selects gelu_backward_bias_grad's fused single pass.
struct KernelVariants {
  bool packed_layernorm = true;
  bool packed_gelu = true;
  bool packed_column_sums = true;
  // The fused attention's Hopper kernels (wgmma, kernels/flash_attention_sm90.cu) where they apply
  // (head_dim 64, sm_90a code loaded); off: the mma.sync kernels (core reads LLMQS_ATTENTION_WGMMA=0).
  bool wgmma_attention = true;
  // Packed column sums: at most this many blocks along the rows (0: one wave of the device), each
  // summing several 128-row chunks; the tests set it small so that blocks take several chunks.
  int column_sum_chunk_blocks = 0;
};
void set_kernel_variants(const KernelVariants& variants);
KernelVariants kernel_variants();

// ---- LayerNorm (kernels/layernorm.cu; CPU twin kernels/cpu/layernorm.h) -------------------------
// x = dropout_a(a) + b (b may be null: x = dropout_a(a)); when b is given, x is stored in `sum`
// (the backward's input). out = dropout_out(LayerNorm(x) * gamma + beta). mean/rstd fp32 [N].
// The CPU composes the same from dropout_forward + residual_layernorm_forward / layernorm_forward.
// a_keep_bits (may be null; layernorm_keep_bits_words(N, C, type) words): where the packed kernel
// records a_site's keep decisions for the backward. Returns whether it did (false: null, or the
// scalar kernel ran, e.g. for unaligned tensors); hand the bits to the backward only then.
bool layernorm_forward(void* out, void* sum, float* mean, float* rstd, const void* a, const void* b,
                       const float* gamma, const float* beta, DType type, int N, int C, float eps,
                       const DropoutSite& a_site, const DropoutSite& out_site, cudaStream_t stream,
                       uint32_t* a_keep_bits = nullptr);
// Words of a_site keep bits for N rows of width C: 32 per row (lane l's word holds its packs'
// elements, bit i * pack + v for column (i * 32 + l) * pack + v), or 0 when the packed kernels do
// not run for (type, C) (C not a multiple of the pack, LLMQS_LAYERNORM=scalar's variant). The
// packed backward then re-applies a_site's mask from the bits instead of drawing it again (same mask).
size_t layernorm_keep_bits_words(int64_t N, int C, DType type);

// g = dropout_out^T(dout) (the mask of out_site); dx = LayerNorm backward of g at x
// (overwrites; may not alias dout); dx_dropped (may be null) = dropout_a^T(dx) for the branch that
// went through a_site; dgamma += sum_n g * xhat, dbeta += sum_n g.
// dbias_dropped (fp32 [C], may be null: not computed; needs dx_dropped, else invalid_argument)
// += sum_n dx_dropped[n, c] over the values as stored (after dropout_a, rounded to `type`): the
// bias gradient of the dense layer that produced `a`, equal to linear_backward_bias(dbias,
// dx_dropped) up to the order of the fp32 additions (fixed, so still deterministic), without its
// second read of N x C; the caller then skips that layer's bias sum.
// scratch: layernorm_backward_scratch_floats(N, C): the packed kernel's blocks take fewer than
// kColumnReduceChunk rows each when N is small (so a short batch fills the GPU), up to
// kLayerNormMaxPartials blocks of 3C partial sums. a_keep_bits: what layernorm_forward recorded for
// a_site with the same N, C and type when it returned true (may be null: the mask is drawn again;
// the scalar kernel always draws it).
constexpr int kLayerNormMaxPartials = 1024;
size_t layernorm_backward_scratch_floats(int64_t N, int C);
void layernorm_backward(void* dx, void* dx_dropped, float* dgamma, float* dbeta, float* dbias_dropped,
                        const void* dout, const void* x, const float* mean, const float* rstd, const float* gamma,
                        DType type, int N, int C, const DropoutSite& a_site, const DropoutSite& out_site,
                        float* scratch, cudaStream_t stream, const uint32_t* a_keep_bits = nullptr);

// ---- activations (kernels/activations.cu; CPU twin kernels/cpu/activations.h) -------------------
// Exact erf GELU and tanh, fp32 math. out/dinp may alias inputs as on the CPU.
void gelu_forward(void* out, const void* inp, DType type, size_t n, cudaStream_t stream);
void gelu_backward(void* dinp, const void* inp, const void* dout, DType type, size_t n, cudaStream_t stream);
// gelu_backward over [rows x cols] (row-major, dense) fused with the bias gradient of the Linear
// that produced inp: dbias[c] += sum_r dinp[r, c], summing the stored (rounded) dinp values in
// column_reduce's order, so the bits equal gelu_backward followed by linear_backward_bias.
// dinp may alias dout. scratch: column_reduce_scratch_floats(rows, cols).
void gelu_backward_bias_grad(void* dinp, float* dbias, const void* inp, const void* dout, DType type, int64_t rows,
                             int cols, float* scratch, cudaStream_t stream);
void tanh_forward(void* out, const void* inp, DType type, size_t n, cudaStream_t stream);
void tanh_backward(void* dinp, const void* out, const void* dout, DType type, size_t n, cudaStream_t stream);

// ---- dropout (kernels/dropout.cu; CPU twin kernels/cpu/dropout.h) ------------------------------
// out[e] = keep(site, e) ? inp[e] / (1 - p) : 0 (in place allowed); backward is the same map.
void dropout_forward(void* out, const void* inp, DType type, size_t n, const DropoutSite& site, cudaStream_t stream);
void dropout_backward(void* dinp, const void* dout, DType type, size_t n, const DropoutSite& site,
                      cudaStream_t stream);

// ---- attention (kernels/attention.cu; CPU twin kernels/cpu/attention.h) -------------------------
// q, k, v, ctx [rows x seq x C] (heads interleaved by column), probs [rows x heads x seq x seq]
// pre-dropout, lengths [rows] on the device. The products are strided-batched cuBLASLt GEMMs over
// (row, head) on head-major copies; the masked softmax (+ dropout) is a warp-per-query kernel.
struct AttentionScratch {
  void* q_heads = nullptr;   // [rows x heads x seq x d], type; likewise the next six
  void* k_heads = nullptr;
  void* v_heads = nullptr;
  void* ctx_heads = nullptr;
  void* dq_heads = nullptr;  // backward only
  void* dk_heads = nullptr;
  void* dv_heads = nullptr;
  float* scores = nullptr;   // [rows x heads x seq x seq] fp32 (scores, then dP in the backward)
  void* dropped = nullptr;   // [rows x heads x seq x seq] type (dropped probs, then dS)
};
// Elements of each scratch buffer for the given shape (the arena's plan uses these).
inline size_t attention_head_elements(int rows, int seq, int C) { return size_t(rows) * seq * C; }
inline size_t attention_score_elements(int rows, int seq, int heads) { return size_t(rows) * heads * seq * seq; }

// q, k, v (and dq, dk, dv) have row stride qkv_ld >= C, like the fused kernels below.
void attention_forward(void* ctx, void* probs, const void* q, const void* k, const void* v, const int32_t* lengths,
                       DType type, int rows, int seq, int C, int heads, int qkv_ld, const DropoutSite& dropout,
                       const AttentionScratch& scratch, MatmulContext& matmul, cudaStream_t stream);
// dq, dk, dv are overwritten.
void attention_backward(void* dq, void* dk, void* dv, const void* dctx, const void* q, const void* k,
                        const void* v, const void* probs, const int32_t* lengths, DType type, int rows, int seq,
                        int C, int heads, int qkv_ld, const DropoutSite& dropout, const AttentionScratch& scratch,
                        MatmulContext& matmul, cudaStream_t stream);

// ---- fused attention (kernels/flash_attention.cu; same CPU twin) --------------------------------
// The same function as attention_forward/backward for bf16/fp16 and head_dim 32 or 64, on tensor
// cores, without any seq x seq buffer of values: the forward saves lse [rows x heads x seq] fp32
// (log2 domain) instead of probs; the backward recomputes P from lse. With dropout.p > 0 both read
// the keep bits of every (query, key) from dropout_mask (flash_attention_mask_words(rows, seq,
// heads) uint32 words, filled by flash_attention_dropout_mask for the same site; may be null when
// p == 0): the draw is its own kernel so that it can run on another stream, overlapped with the
// matmuls. delta_scratch: [rows x heads x seq] fp32. ds_scratch: null, or
// flash_attention_ds_elements(rows, seq, heads) elements of `type`: the dK/dV kernel then stores
// dS (rounded to `type`, as the products use it) and dQ becomes one product over it, instead of a
// third kernel that recomputes S, P and dO V^T (measured in docs/performance.md, section 4).
// Where the Hopper kernels run and seq <= 128, one persistent kernel does the whole backward with
// dS on chip and delta formed inside it: ds_scratch and delta_scratch are not touched
// (docs/performance.md, sections 9 and 10).
// qkv_bias_partials: null, or flash_attention_qkv_bias_partial_rows(rows, seq) x 3C fp32. Where
// flash_attention_backward_sums_qkv_bias holds (the Hopper long-row kernels), row r x ceil(seq/64) + i
// receives the column sums of what the kernels store in dq | dk | dv (columns 0 | C | 2C + c) over
// positions 64 i .. 64 i + 63 of row r; the column sums of the whole buffer are then the QKV bias
// gradient (the backend sums them with linear_backward_bias instead of reading dq, dk, dv again).
// Elsewhere the buffer is not touched.
// dq, dk, dv are overwritten. q, k, v, dq, dk, dv have row stride qkv_ld (C, or 3C when they are
// the column blocks of one [tokens x 3C] buffer); ctx and dctx row stride C. Unsupported shapes throw.
bool flash_attention_supported(DType type, int C, int heads);
// __CUDA_ARCH__ of the code this binary runs on the current GPU (750 for a compute_75-only build on
// any GPU); 0 without a usable device.
int loaded_code_arch();
// Whether flash_attention_forward/backward take the Hopper (wgmma) kernels for this shape here:
// head_dim 64, sm_90a code running, KernelVariants::wgmma_attention on. Results agree with the
// mma.sync kernels within the tests' tolerances, not bit for bit (other tile order).
bool flash_attention_uses_wgmma(DType type, int C, int heads);
size_t flash_attention_mask_words(int rows, int seq, int heads);
size_t flash_attention_ds_elements(int rows, int seq, int heads);
bool flash_attention_backward_sums_qkv_bias(DType type, int C, int heads, int seq, bool ds_stored);
size_t flash_attention_qkv_bias_partial_rows(int rows, int seq);
void flash_attention_dropout_mask(uint32_t* dropout_mask, int rows, int seq, int heads, const DropoutSite& dropout,
                                  cudaStream_t stream);
void flash_attention_forward(void* ctx, float* lse, const uint32_t* dropout_mask, const void* q, const void* k,
                             const void* v, const int32_t* lengths, DType type, int rows, int seq, int C, int heads,
                             int qkv_ld, const DropoutSite& dropout, cudaStream_t stream);
void flash_attention_backward(void* dq, void* dk, void* dv, const void* dctx, const void* ctx, const void* q,
                              const void* k, const void* v, const float* lse, const uint32_t* dropout_mask,
                              float* delta_scratch, void* ds_scratch, float* qkv_bias_partials,
                              const int32_t* lengths, DType type, int rows, int seq, int C, int heads, int qkv_ld,
                              const DropoutSite& dropout, cudaStream_t stream);

// ---- softmax cross-entropy (kernels/softmax_cross_entropy.cu; CPU twin ...cpu/softmax_cross_entropy.h)
// logits fp32 [rows x C]; writes loss [rows] fp32, prediction [rows], and when dlogits is not
// null, dlogits[r, c] = loss_weight * (softmax - onehot) in `dlogits_type`. One warp per row.
void softmax_cross_entropy(float* loss, int32_t* prediction, void* dlogits, DType dlogits_type, const float* logits,
                           const int32_t* labels, int rows, int C, float loss_weight, cudaStream_t stream);

// ---- AdamW (kernels/adamw.cu; CPU twin kernels/cpu/adamw.h) --------------------------------------
struct AdamWScalars {
  float lr = 0.0f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f, grad_scale = 1.0f;
  int64_t step = 1;
};
// Which elements decay: bit (i % 32) of word i / 32 is set when element i gets s.weight_decay
// (ParameterInfo::weight_decay); adamw_decay_mask_words(n) words, built once by the backend.
constexpr size_t adamw_decay_mask_words(size_t n) { return (n + 31) / 32; }
// ONE launch over n consecutive parameters (the backend passes its whole flat buffer), bit-identical
// to the CPU twin applied tensor by tensor with weight_decay = s.weight_decay where the element's
// decay_mask bit is set and 0 elsewhere; decay_mask == nullptr decays every element (one tensor).
// When params_low is not null it receives the updated parameters in low_type at the same element
// offsets (the copy the matmuls read; must not alias params). Any alignment works; params, grads,
// m, v 16-byte aligned and params_low aligned to 4 elements take the float4 path.
void adamw_update(float* params, const float* grads, float* m, float* v, const uint32_t* decay_mask, size_t n,
                  const AdamWScalars& s, void* params_low, DType low_type, cudaStream_t stream);

// ---- global gradient norm (kernels/grad_norm.cu; CPU twin kernels/cpu/grad_norm.h) ---------------
// sum_i grad[i]^2 in double, deterministic (fixed blocks, fixed order). partial_device holds
// kGradNormBlocks doubles; the result is summed on the host after one copy (synchronises).
constexpr int kGradNormBlocks = 1024;
double sum_of_squares(const float* grad, size_t n, double* partial_device, cudaStream_t stream);

}  // namespace llmqs::kernels::cuda
