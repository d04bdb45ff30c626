// Dense matrix products through cuBLASLt, in row-major terms (torch's view of memory):
//
//   Y[m, n] = alpha * op(A)[m, k] * op(B)[k, n] + beta * Y   (+ bias[n] on every row)
//
// op(A) = A or A^T (A stored [k, m] when transposed), likewise B; lda/ldb/ldy are row strides in
// elements. A batch of `batch` independent products is given by element strides between
// consecutive A, B and Y matrices (attention: one product per (row, head)).
//
// Types: A and B share one type (fp32, bf16, fp16); Y is that type or fp32 (weight gradients are
// accumulated straight into the fp32 gradient buffer with beta = 1). Compute is fp32 (products
// accumulate in fp32 for half inputs); fp32 inputs use TF32 tensor cores only when the context
// allows it. The bias, when given, has Y's type and is applied by the BIAS epilogue; if cuBLASLt
// offers no algorithm with that epilogue for a shape, the product runs without it and a small
// kernel adds the bias.
//
// Why no GELU epilogue: cuBLASLt's GELU / GELU_AUX / DGELU epilogues are the tanh approximation,
// while BERT's "gelu" is the exact erf form (HF hidden_act="gelu"); the difference (~1e-3) would
// break fp32 parity with the CPU reference and with HF. GELU runs in kernels/gelu.cu instead.
//
// Algorithm choice, cached per (shape, types, strides, pointer alignment): cuBLASLt's heuristic
// offers up to 8 algorithms; its first is used unless tuning applies. Tuning (first use of a key,
// beta = 0, no batch, at least 2^30 multiply-adds, a context made with tune) times each
// offered algorithm that splits K the same way as the first -- those give bit-identical results
// (measured on the H200 for every bert-base product: only the split-K count changes the sums), so
// the choice only changes speed, never the numbers: runs and resumed runs stay bit-identical --
// in place on the call's own operands (beta = 0: the real call then overwrites Y) and keeps the
// fastest. Tuning waits for the stream (a host sync per new key) and stops after 2 s in all per
// context. The workspace is a slice of the backend's arena, never allocated here.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cuda_dtype.h"

namespace llmqs::kernels::cuda {

struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int m = 0, n = 0, k = 0;
  DType ab_type = DType::kF32;
  DType y_type = DType::kF32;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  void* y = nullptr;
  int64_t ldy = 0, stride_y = 0;
  int batch = 1;
  float alpha = 1.0f, beta = 0.0f;
  const void* bias = nullptr;  // [n], y_type, added to every row of Y
};

class MatmulContext {
 public:
  // workspace: device memory owned by the caller (the arena); 32 MiB is what Hopper wants.
  // tune: time the offered algorithms on first use (see above); the backend reads LLMQS_MATMUL_TUNING.
  MatmulContext(void* workspace, size_t workspace_bytes, bool allow_tf32, bool tune = true);
  ~MatmulContext();
  MatmulContext(const MatmulContext&) = delete;
  MatmulContext& operator=(const MatmulContext&) = delete;

  void gemm(const GemmArgs& args, cudaStream_t stream);

  size_t cached_algorithms() const { return cache_.size(); }
  int bias_fallbacks() const { return bias_fallbacks_; }
  int tuned_products() const { return tuned_; }       // keys whose algorithm was chosen by timing
  int tuned_changes() const { return tuned_changes_; }  // ... where that is not the heuristic's first

 private:
  struct Plan {
    bool found = false;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::vector<int64_t>;
  // `run` launches the product with a given algorithm (false: cuBLASLt refused it); tuning times it.
  static constexpr double kTuningBudgetMs = 2000.0;
  static std::pair<uint32_t, uint32_t> numerics_of(const cublasLtMatmulAlgo_t& algo);
  int fastest_same_numerics(const cublasLtMatmulHeuristicResult_t* results, int count, cudaStream_t stream,
                            const std::function<bool(const cublasLtMatmulAlgo_t&)>& run);
  Plan& plan_for(const Key& key, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a_layout,
                 cublasLtMatrixLayout_t b_layout, cublasLtMatrixLayout_t y_layout, const int alignment[3],
                 bool tunable, cudaStream_t stream, const std::function<bool(const cublasLtMatmulAlgo_t&)>& run);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  bool allow_tf32_ = false;
  std::map<Key, Plan> cache_;
  int bias_fallbacks_ = 0;
  bool tuning_ = true;             // false: the heuristic's first, always
  double tuning_ms_ = 0.0;         // GPU time spent timing candidates
  int tuned_ = 0, tuned_changes_ = 0;
};

// Convenience forms for torch.nn.Linear (weight [out, in], row-major activations [rows, in]).
// y[rows, out] = x[rows, in] W^T + bias            (bias may be null)
void linear_forward(MatmulContext& ctx, cudaStream_t stream, DType type, const void* x, const void* weight,
                    const void* bias, void* y, int rows, int in_features, int out_features);
// dx[rows, in] = dy[rows, out] W  + beta * dx      (beta = 1 adds to what dx holds)
void linear_backward_input(MatmulContext& ctx, cudaStream_t stream, DType type, const void* dy,
                           const void* weight, void* dx, int rows, int in_features, int out_features,
                           float beta);
// dweight[out, in] (fp32) += dy^T x
void linear_backward_weight(MatmulContext& ctx, cudaStream_t stream, DType type, const void* dy,
                            const void* x, float* dweight, int rows, int in_features, int out_features);

}  // namespace llmqs::kernels::cuda
