// cuBLASLt products in row-major terms; see matmul_cublaslt.h for the math and types.
// cuBLASLt is column-major: a row-major Y[m, n] is a column-major Y^T (n x m), and
// Y = op(A) op(B) becomes Y^T = op(B)^T op(A)^T, so cuBLASLt's first operand is our B with our
// trans_b flag, its second is our A with trans_a, and its (m, n) are our (n, m). The bias is a
// vector over our n = cuBLASLt's rows, which is what CUBLASLT_EPILOGUE_BIAS broadcasts.
// CPU twin: kernels/cpu/linear.* (the tests compare the two).
#include "kernels/matmul_cublaslt.h"

#include <string>
#include <utility>

#include "kernels/cuda_common.cuh"

namespace llmqs::kernels::cuda {

namespace {

cudaDataType_t cuda_type(DType type) {
  switch (type) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kF16: return CUDA_R_16F;
  }
  return CUDA_R_32F;
}

// Largest power of two (<= 256) dividing the address: cuBLASLt's heuristic must only return
// algorithms that work at this alignment.
int pointer_alignment(const void* p, int64_t batch_stride_bytes) {
  uint64_t bits = reinterpret_cast<uint64_t>(p);
  if (batch_stride_bytes) bits |= static_cast<uint64_t>(batch_stride_bytes);
  int alignment = 256;
  while (alignment > 1 && (bits % alignment) != 0) alignment >>= 1;
  return alignment;
}

template <typename T>
__global__ void add_bias_rows_kernel(T* y, const T* bias, int rows, int n, int64_t ldy) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= static_cast<int64_t>(rows) * n) return;
  const int64_t row = index / n, col = index % n;
  T& out = y[row * ldy + col];
  out = from_float<T>(to_float(out) + to_float(bias[col]));
}

struct LayoutGuard {
  cublasLtMatrixLayout_t layout = nullptr;
  ~LayoutGuard() {
    if (layout) cublasLtMatrixLayoutDestroy(layout);
  }
};

void make_layout(LayoutGuard& guard, DType type, int64_t rows, int64_t cols, int64_t ld, int batch,
                 int64_t stride) {
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&guard.layout, cuda_type(type), rows, cols, ld));
  if (batch > 1) {
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(guard.layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch,
                                                  sizeof(batch)));
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(guard.layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                  &stride, sizeof(stride)));
  }
}

std::string describe(const GemmArgs& a) {
  return "m=" + std::to_string(a.m) + " n=" + std::to_string(a.n) + " k=" + std::to_string(a.k) +
         " trans_a=" + std::to_string(a.trans_a) + " trans_b=" + std::to_string(a.trans_b) +
         " batch=" + std::to_string(a.batch) + " ab=" + dtype_name(a.ab_type) + " y=" + dtype_name(a.y_type) +
         " bias=" + std::to_string(a.bias != nullptr);
}

}  // namespace

MatmulContext::MatmulContext(void* workspace, size_t workspace_bytes, bool allow_tf32, bool tune)
    : workspace_(workspace), workspace_bytes_(workspace_bytes), allow_tf32_(allow_tf32), tuning_(tune) {
  CUBLAS_CHECK(cublasLtCreate(&handle_));
}

MatmulContext::~MatmulContext() {
  if (handle_) cublasLtDestroy(handle_);
}

MatmulContext::Plan& MatmulContext::plan_for(const Key& key, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a_layout, cublasLtMatrixLayout_t b_layout,
                                              cublasLtMatrixLayout_t y_layout, const int alignment[3],
                                              bool tunable, cudaStream_t stream,
                                              const std::function<bool(const cublasLtMatmulAlgo_t&)>& run) {
  auto it = cache_.find(key);
  if (it != cache_.end()) return it->second;
  cublasLtMatmulPreference_t preference = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  uint64_t max_workspace = workspace_bytes_;
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_workspace,
                                       sizeof(max_workspace));
  const uint32_t align_a = alignment[0], align_b = alignment[1], align_y = alignment[2];
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                       sizeof(align_a));
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                       sizeof(align_b));
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_y,
                                       sizeof(align_y));
  cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_y,
                                       sizeof(align_y));
  constexpr int kCandidates = 8;
  cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
  int returned = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle_, desc, a_layout, b_layout, y_layout, y_layout, preference, tuning_ && tunable ? kCandidates : 1, results,
      &returned);
  cublasLtMatmulPreferenceDestroy(preference);
  Plan plan;
  plan.found = status == CUBLAS_STATUS_SUCCESS && returned > 0;
  if (!plan.found) return cache_.emplace(key, plan).first->second;
  plan.algo = results[0].algo;
  if (returned > 1 && tuning_ms_ < kTuningBudgetMs) {
    const int index = fastest_same_numerics(results, returned, stream, run);
    ++tuned_;
    if (index != 0) ++tuned_changes_;
    plan.algo = results[index].algo;
  }
  return cache_.emplace(key, plan).first->second;
}

// How an algorithm splits the K sum: the split count and the reduction of the partial sums. The
// tile shape, stages, swizzle and kernel variant do not change the sums (checked bitwise on the
// H200 for bert-base's products; the GPU test MatmulTuningKeepsTheBits checks it where it runs).
std::pair<uint32_t, uint32_t> MatmulContext::numerics_of(const cublasLtMatmulAlgo_t& algo) {
  uint32_t split = 1, reduction = 0;
  size_t written = 0;
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &split, sizeof(split), &written);
  cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &reduction, sizeof(reduction),
                                       &written);
  return {split, split > 1 ? reduction : 0u};
}

int MatmulContext::fastest_same_numerics(const cublasLtMatmulHeuristicResult_t* results, int count,
                                         cudaStream_t stream,
                                         const std::function<bool(const cublasLtMatmulAlgo_t&)>& run) {
  cudaEvent_t start = nullptr, stop = nullptr;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  const auto numerics = numerics_of(results[0].algo);
  int best = 0;
  float best_ms = 0.0f;
  for (int i = 0; i < count; ++i) {
    if (numerics_of(results[i].algo) != numerics) continue;
    if (!run(results[i].algo)) continue;  // warm-up (and a check that cuBLASLt accepts it)
    constexpr int kReps = 3;
    float fastest = 0.0f;
    for (int r = 0; r < kReps; ++r) {
      CUDA_CHECK(cudaEventRecord(start, stream));
      run(results[i].algo);
      CUDA_CHECK(cudaEventRecord(stop, stream));
      CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0.0f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      tuning_ms_ += ms;
      if (r == 0 || ms < fastest) fastest = ms;
    }
    if (i == 0 || fastest < best_ms) {
      best = i;
      best_ms = fastest;
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return best;
}

void MatmulContext::gemm(const GemmArgs& args, cudaStream_t stream) {
  if (args.m <= 0 || args.n <= 0 || args.batch <= 0) return;
  if (args.bias && args.batch != 1) throw std::invalid_argument("gemm: a bias needs batch == 1 (" + describe(args) + ")");
  if (args.y_type != args.ab_type && args.y_type != DType::kF32)
    throw std::invalid_argument("gemm: Y must have the input type or fp32 (" + describe(args) + ")");

  const cublasComputeType_t compute = (args.ab_type == DType::kF32 && allow_tf32_) ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                                   : CUBLAS_COMPUTE_32F;
  // Column-major view (see the file comment): first operand = our B, second = our A.
  const int cm = args.n, cn = args.m, ck = args.k;
  const cublasOperation_t op_first = args.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = args.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;

  LayoutGuard first, second, out;
  make_layout(first, args.ab_type, args.trans_b ? ck : cm, args.trans_b ? cm : ck, args.ldb, args.batch, args.stride_b);
  make_layout(second, args.ab_type, args.trans_a ? cn : ck, args.trans_a ? ck : cn, args.lda, args.batch, args.stride_a);
  make_layout(out, args.y_type, cm, cn, args.ldy, args.batch, args.stride_y);

  auto run = [&](bool with_bias) -> bool {
    cublasLtMatmulDesc_t desc = nullptr;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F));
    struct DescGuard {
      cublasLtMatmulDesc_t d;
      ~DescGuard() { cublasLtMatmulDescDestroy(d); }
    } guard{desc};
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
    if (with_bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      const cudaDataType_t bias_type = cuda_type(args.y_type);
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &args.bias,
                                                  sizeof(args.bias)));
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                  sizeof(bias_type)));
    }
    const int es_ab = static_cast<int>(dtype_bytes(args.ab_type)), es_y = static_cast<int>(dtype_bytes(args.y_type));
    int alignment[3] = {pointer_alignment(args.b, args.stride_b * es_ab), pointer_alignment(args.a, args.stride_a * es_ab),
                        pointer_alignment(args.y, args.stride_y * es_y)};
    if (with_bias) alignment[2] = std::min(alignment[2], pointer_alignment(args.bias, 0));
    const Key key = {args.trans_a, args.trans_b, args.m, args.n, args.k, static_cast<int>(args.ab_type),
                     static_cast<int>(args.y_type), args.lda, args.ldb, args.ldy, args.stride_a, args.stride_b,
                     args.stride_y, args.batch, with_bias, alignment[0], alignment[1], alignment[2], compute};
    // Timed in place: with beta = 0 every run writes the same Y, which the real call then writes again.
    const bool tunable = args.beta == 0.0f && args.batch == 1 &&
                         double(args.m) * double(args.n) * double(args.k) >= double(1ull << 30);
    auto launch = [&](const cublasLtMatmulAlgo_t& algo) {
      return cublasLtMatmul(handle_, desc, &args.alpha, args.b, first.layout, args.a, second.layout, &args.beta,
                            args.y, out.layout, args.y, out.layout, &algo, workspace_, workspace_bytes_,
                            stream) == CUBLAS_STATUS_SUCCESS;
    };
    Plan& plan = plan_for(key, desc, first.layout, second.layout, out.layout, alignment, tunable, stream, launch);
    if (!plan.found) return false;
    CUBLAS_CHECK(cublasLtMatmul(handle_, desc, &args.alpha, args.b, first.layout, args.a, second.layout, &args.beta,
                                args.y, out.layout, args.y, out.layout, &plan.algo, workspace_, workspace_bytes_,
                                stream));
    return true;
  };

  if (args.bias && run(true)) return;
  if (!run(false))
    throw std::runtime_error("cuBLASLt found no algorithm for " + describe(args) +
                             " (check leading dimensions and alignment)");
  if (!args.bias) return;
  ++bias_fallbacks_;
  const int64_t total = static_cast<int64_t>(args.m) * args.n;
  LLMQS_DISPATCH_DTYPE(args.y_type, {
    add_bias_rows_kernel<scalar_t><<<ceil_div(total, 256), 256, 0, stream>>>(
        static_cast<scalar_t*>(args.y), static_cast<const scalar_t*>(args.bias), args.m, args.n, args.ldy);
  });
  CUDA_CHECK_LAUNCH("add_bias_rows_kernel");
}

void linear_forward(MatmulContext& ctx, cudaStream_t stream, DType type, const void* x, const void* weight,
                    const void* bias, void* y, int rows, int in_features, int out_features) {
  GemmArgs g;
  g.trans_a = false;
  g.trans_b = true;
  g.m = rows;
  g.n = out_features;
  g.k = in_features;
  g.ab_type = g.y_type = type;
  g.a = x;
  g.lda = in_features;
  g.b = weight;
  g.ldb = in_features;
  g.y = y;
  g.ldy = out_features;
  g.bias = bias;
  ctx.gemm(g, stream);
}

void linear_backward_input(MatmulContext& ctx, cudaStream_t stream, DType type, const void* dy,
                           const void* weight, void* dx, int rows, int in_features, int out_features, float beta) {
  GemmArgs g;
  g.m = rows;
  g.n = in_features;
  g.k = out_features;
  g.ab_type = g.y_type = type;
  g.a = dy;
  g.lda = out_features;
  g.b = weight;
  g.ldb = in_features;
  g.y = dx;
  g.ldy = in_features;
  g.beta = beta;
  ctx.gemm(g, stream);
}

void linear_backward_weight(MatmulContext& ctx, cudaStream_t stream, DType type, const void* dy, const void* x,
                            float* dweight, int rows, int in_features, int out_features) {
  GemmArgs g;
  g.trans_a = true;
  g.m = out_features;
  g.n = in_features;
  g.k = rows;
  g.ab_type = type;
  g.y_type = DType::kF32;
  g.a = dy;
  g.lda = out_features;
  g.b = x;
  g.ldb = in_features;
  g.y = dweight;
  g.ldy = in_features;
  g.beta = 1.0f;
  ctx.gemm(g, stream);
}

}  // namespace llmqs::kernels::cuda
