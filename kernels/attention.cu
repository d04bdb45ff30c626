// Multi-head self-attention with a key padding mask, CUDA twin of kernels/cpu/attention.h.
// For row r (length L_r), head h, query i, key j (d = C / heads):
//   S = Q K^T / sqrt(d);  P = softmax_j(S) over j < L_r, 0 for j >= L_r;
//   D = P * keep / (1 - p) (Philox site, element ((r * heads + h) * seq + i) * seq + j);  O = D V
// Backward (D recomputed from the saved P):
//   dV = D^T dO;  dP = (dO V^T) * keep / (1 - p);  dS = P * (dP - rowsum(P * dP))
//   dQ = dS K / sqrt(d);  dK = dS^T Q / sqrt(d)
// Layout: q, k, v, ctx [rows x seq x C] (heads interleaved by column, as HF; the rows of q, k, v,
// dq, dk, dv are qkv_ld apart, 3C when they are column blocks of the fused QKV product); probs
// [rows x heads x seq x seq] in the activation type. Because (row, head) blocks are not one
// stride apart in that layout, q/k/v are first copied head-major ([rows x heads x seq x d]);
// then every product is one strided-batched cuBLASLt GEMM over rows * heads (scores in fp32),
// and the masked softmax (+ dropout) and its backward are warp-per-query kernels.
// Correct first: this materialises the seq x seq scores (fine up to seq 512 on 16 GB); a fused
// flash-style kernel is the next step for speed.
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_kernels.h"

namespace llmqs::kernels::cuda {

namespace {

// [rows x seq x heads x d] (token rows of stride ld >= heads * d) <-> [rows x heads x seq x d];
// to_heads selects the direction.
template <typename T>
__global__ void permute_heads_kernel(T* dst, const T* src, int seq, int heads, int d, int64_t ld, size_t n,
                                     bool to_heads) {
  const size_t index = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= n) return;
  // index walks the token-major layout: ((r * seq + s) * heads + h) * d + e
  const int e = static_cast<int>(index % d);
  size_t rest = index / d;
  const int h = static_cast<int>(rest % heads);
  rest /= heads;
  const int s = static_cast<int>(rest % seq);
  const size_t r = rest / seq;
  const size_t head_major = ((r * heads + h) * seq + s) * d + e;
  const size_t token_major = (r * seq + s) * ld + size_t(h) * d + e;
  if (to_heads)
    dst[head_major] = src[token_major];
  else
    dst[token_major] = src[head_major];
}

template <typename T>
void permute(void* dst, const void* src, int rows, int seq, int heads, int d, int64_t ld, bool to_heads,
             cudaStream_t stream) {
  const size_t n = static_cast<size_t>(rows) * seq * heads * d;
  permute_heads_kernel<T><<<ceil_div(n, 256), 256, 0, stream>>>(static_cast<T*>(dst), static_cast<const T*>(src),
                                                                 seq, heads, d, ld, n, to_heads);
  CUDA_CHECK_LAUNCH("permute_heads_kernel");
}

__device__ __forceinline__ float keep_factor(const DropoutSite& site, size_t element, float keep_scale) {
  return site.p <= 0.0f ? 1.0f : (dropout_keep(site, element) ? keep_scale : 0.0f);
}

// One warp per query row (bh, i) of the scores: masked softmax into probs, dropout into dropped.
template <typename T>
__global__ void masked_softmax_kernel(T* probs, T* dropped, const float* scores, const int32_t* lengths, int heads,
                                      int seq, size_t num_query_rows, DropoutSite site) {
  site = resolve_site(site);  // the live key under CUDA graphs
  const size_t qrow = static_cast<size_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (qrow >= num_query_rows) return;
  const int lane = threadIdx.x & 31;
  const int len = lengths[qrow / (static_cast<size_t>(heads) * seq)];
  const float* s = scores + qrow * seq;
  float best = -INFINITY;
  for (int j = lane; j < len; j += 32) best = fmaxf(best, s[j]);
  best = warp_max(best);
  float sum = 0.0f;
  for (int j = lane; j < len; j += 32) sum += expf(s[j] - best);
  const float inv_sum = 1.0f / warp_sum(sum);
  const float keep_scale = 1.0f / (1.0f - site.p);
  T* p = probs + qrow * seq;
  T* dp = dropped + qrow * seq;
  for (int j = lane; j < seq; j += 32) {
    const float value = j < len ? expf(s[j] - best) * inv_sum : 0.0f;
    // The stored probability is what the backward will read: drop from the rounded value.
    const T stored = from_float<T>(value);
    p[j] = stored;
    dp[j] = from_float<T>(to_float(stored) * keep_factor(site, qrow * seq + j, keep_scale));
  }
}

template <typename T>
__global__ void apply_dropout_kernel(T* dropped, const T* probs, int seq, size_t n, DropoutSite site) {
  site = resolve_site(site);  // the live key under CUDA graphs
  const size_t index = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= n) return;
  dropped[index] = from_float<T>(to_float(probs[index]) * keep_factor(site, index, 1.0f / (1.0f - site.p)));
}

// One warp per query row: dS = P * (dP * keep - rowsum(P * dP * keep)), written over `ds`.
template <typename T>
__global__ void masked_softmax_backward_kernel(T* ds, const float* dprobs, const T* probs, const int32_t* lengths,
                                               int heads, int seq, size_t num_query_rows, DropoutSite site) {
  site = resolve_site(site);  // the live key under CUDA graphs
  const size_t qrow = static_cast<size_t>(blockIdx.x) * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (qrow >= num_query_rows) return;
  const int lane = threadIdx.x & 31;
  const int len = lengths[qrow / (static_cast<size_t>(heads) * seq)];
  const float keep_scale = 1.0f / (1.0f - site.p);
  const float* dp = dprobs + qrow * seq;
  const T* p = probs + qrow * seq;
  float weighted = 0.0f;
  for (int j = lane; j < len; j += 32)
    weighted += to_float(p[j]) * dp[j] * keep_factor(site, qrow * seq + j, keep_scale);
  weighted = warp_sum(weighted);
  T* out = ds + qrow * seq;
  for (int j = lane; j < seq; j += 32) {
    float value = 0.0f;
    if (j < len) value = to_float(p[j]) * (dp[j] * keep_factor(site, qrow * seq + j, keep_scale) - weighted);
    out[j] = from_float<T>(value);
  }
}

GemmArgs batched(DType type, int rows_times_heads) {
  GemmArgs g;
  g.ab_type = type;
  g.y_type = type;
  g.batch = rows_times_heads;
  return g;
}

}  // namespace

void attention_forward(void* ctx, void* probs, const void* q, const void* k, const void* v, const int32_t* lengths,
                       DType type, int rows, int seq, int C, int heads, int qkv_ld, const DropoutSite& dropout,
                       const AttentionScratch& scratch, MatmulContext& matmul, cudaStream_t stream) {
  if (qkv_ld < C) throw std::invalid_argument("attention_forward: q/k/v row stride below C");
  if (rows <= 0 || seq <= 0) return;
  const int d = C / heads;
  const int bh = rows * heads;
  const int64_t head_stride = static_cast<int64_t>(seq) * d, score_stride = static_cast<int64_t>(seq) * seq;
  const size_t query_rows = static_cast<size_t>(bh) * seq;
  LLMQS_DISPATCH_DTYPE(type, {
    permute<scalar_t>(scratch.q_heads, q, rows, seq, heads, d, qkv_ld, true, stream);
    permute<scalar_t>(scratch.k_heads, k, rows, seq, heads, d, qkv_ld, true, stream);
    permute<scalar_t>(scratch.v_heads, v, rows, seq, heads, d, qkv_ld, true, stream);
  });

  GemmArgs scores = batched(type, bh);  // S = Q K^T / sqrt(d), fp32
  scores.trans_b = true;
  scores.m = seq, scores.n = seq, scores.k = d;
  scores.a = scratch.q_heads, scores.lda = d, scores.stride_a = head_stride;
  scores.b = scratch.k_heads, scores.ldb = d, scores.stride_b = head_stride;
  scores.y = scratch.scores, scores.y_type = DType::kF32, scores.ldy = seq, scores.stride_y = score_stride;
  scores.alpha = 1.0f / sqrtf(static_cast<float>(d));
  matmul.gemm(scores, stream);

  LLMQS_DISPATCH_DTYPE(type, {
    masked_softmax_kernel<scalar_t><<<ceil_div(query_rows, 8), 256, 0, stream>>>(
        static_cast<scalar_t*>(probs), static_cast<scalar_t*>(scratch.dropped), scratch.scores, lengths, heads, seq,
        query_rows, dropout);
  });
  CUDA_CHECK_LAUNCH("masked_softmax_kernel");

  GemmArgs out = batched(type, bh);  // O = D V
  out.m = seq, out.n = d, out.k = seq;
  out.a = scratch.dropped, out.lda = seq, out.stride_a = score_stride;
  out.b = scratch.v_heads, out.ldb = d, out.stride_b = head_stride;
  out.y = scratch.ctx_heads, out.ldy = d, out.stride_y = head_stride;
  matmul.gemm(out, stream);

  LLMQS_DISPATCH_DTYPE(type, { permute<scalar_t>(ctx, scratch.ctx_heads, rows, seq, heads, d, C, false, stream); });
}

void attention_backward(void* dq, void* dk, void* dv, const void* dctx, const void* q, const void* k, const void* v,
                        const void* probs, const int32_t* lengths, DType type, int rows, int seq, int C, int heads,
                        int qkv_ld, const DropoutSite& dropout, const AttentionScratch& scratch, MatmulContext& matmul,
                        cudaStream_t stream) {
  if (qkv_ld < C) throw std::invalid_argument("attention_backward: q/k/v row stride below C");
  if (rows <= 0 || seq <= 0) return;
  const int d = C / heads;
  const int bh = rows * heads;
  const int64_t head_stride = static_cast<int64_t>(seq) * d, score_stride = static_cast<int64_t>(seq) * seq;
  const size_t query_rows = static_cast<size_t>(bh) * seq;
  const float scale = 1.0f / sqrtf(static_cast<float>(d));
  void* dctx_heads = scratch.ctx_heads;
  LLMQS_DISPATCH_DTYPE(type, {
    permute<scalar_t>(scratch.q_heads, q, rows, seq, heads, d, qkv_ld, true, stream);
    permute<scalar_t>(scratch.k_heads, k, rows, seq, heads, d, qkv_ld, true, stream);
    permute<scalar_t>(scratch.v_heads, v, rows, seq, heads, d, qkv_ld, true, stream);
    permute<scalar_t>(dctx_heads, dctx, rows, seq, heads, d, C, true, stream);
    const size_t n = query_rows * seq;
    apply_dropout_kernel<scalar_t><<<ceil_div(n, 256), 256, 0, stream>>>(
        static_cast<scalar_t*>(scratch.dropped), static_cast<const scalar_t*>(probs), seq, n, dropout);
    CUDA_CHECK_LAUNCH("apply_dropout_kernel");
  });

  GemmArgs grad_v = batched(type, bh);  // dV = D^T dO
  grad_v.trans_a = true;
  grad_v.m = seq, grad_v.n = d, grad_v.k = seq;
  grad_v.a = scratch.dropped, grad_v.lda = seq, grad_v.stride_a = score_stride;
  grad_v.b = dctx_heads, grad_v.ldb = d, grad_v.stride_b = head_stride;
  grad_v.y = scratch.dv_heads, grad_v.ldy = d, grad_v.stride_y = head_stride;
  matmul.gemm(grad_v, stream);

  GemmArgs grad_p = batched(type, bh);  // dD = dO V^T, fp32
  grad_p.trans_b = true;
  grad_p.m = seq, grad_p.n = seq, grad_p.k = d;
  grad_p.a = dctx_heads, grad_p.lda = d, grad_p.stride_a = head_stride;
  grad_p.b = scratch.v_heads, grad_p.ldb = d, grad_p.stride_b = head_stride;
  grad_p.y = scratch.scores, grad_p.y_type = DType::kF32, grad_p.ldy = seq, grad_p.stride_y = score_stride;
  matmul.gemm(grad_p, stream);

  LLMQS_DISPATCH_DTYPE(type, {
    masked_softmax_backward_kernel<scalar_t><<<ceil_div(query_rows, 8), 256, 0, stream>>>(
        static_cast<scalar_t*>(scratch.dropped), scratch.scores, static_cast<const scalar_t*>(probs), lengths, heads,
        seq, query_rows, dropout);
  });
  CUDA_CHECK_LAUNCH("masked_softmax_backward_kernel");

  GemmArgs grad_q = batched(type, bh);  // dQ = dS K / sqrt(d)
  grad_q.m = seq, grad_q.n = d, grad_q.k = seq;
  grad_q.a = scratch.dropped, grad_q.lda = seq, grad_q.stride_a = score_stride;
  grad_q.b = scratch.k_heads, grad_q.ldb = d, grad_q.stride_b = head_stride;
  grad_q.y = scratch.dq_heads, grad_q.ldy = d, grad_q.stride_y = head_stride;
  grad_q.alpha = scale;
  matmul.gemm(grad_q, stream);

  GemmArgs grad_k = batched(type, bh);  // dK = dS^T Q / sqrt(d)
  grad_k.trans_a = true;
  grad_k.m = seq, grad_k.n = d, grad_k.k = seq;
  grad_k.a = scratch.dropped, grad_k.lda = seq, grad_k.stride_a = score_stride;
  grad_k.b = scratch.q_heads, grad_k.ldb = d, grad_k.stride_b = head_stride;
  grad_k.y = scratch.dk_heads, grad_k.ldy = d, grad_k.stride_y = head_stride;
  grad_k.alpha = scale;
  matmul.gemm(grad_k, stream);

  LLMQS_DISPATCH_DTYPE(type, {
    permute<scalar_t>(dq, scratch.dq_heads, rows, seq, heads, d, qkv_ld, false, stream);
    permute<scalar_t>(dk, scratch.dk_heads, rows, seq, heads, d, qkv_ld, false, stream);
    permute<scalar_t>(dv, scratch.dv_heads, rows, seq, heads, d, qkv_ld, false, stream);
  });
}

}  // namespace llmqs::kernels::cuda
