// Every CUDA kernel (kernels/*.cu) against its fp32 CPU twin (kernels/cpu/) on fresh random
// inputs: odd shapes, padded batches, dropout on. Tolerances, as max |gpu - cpu| / max |cpu|:
// fp32 2e-5 (different summation orders only), bf16/fp16 1e-2 (the CPU runs on the same
// rounded inputs, so what remains is output rounding and half-precision intermediates).
// Dropout masks must match bit for bit. Output buffers are poisoned with NaN before each run.
// Kernels with a packed and a scalar variant (LayerNorm, GELU, column sums; KernelVariants) run
// both, and the shapes include widths that the packed kernels hand to the scalar fallback.
// Without a CUDA device every test skips with "no CUDA device: ...".
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/cuda_backend.h"
#include "kernels/cpu/activations.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/embeddings.h"
#include "kernels/cpu/grad_norm.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/softmax_cross_entropy.h"
#include "kernels/cuda_check.h"
#include "kernels/cuda_kernels.h"
#include "kernels/matmul_cublaslt.h"

namespace kc = llmqs::kernels::cpu;
namespace cu = llmqs::kernels::cuda;
using llmqs::kernels::DropoutSite;
using llmqs::kernels::DType;

#define REQUIRE_CUDA()                                                           \
  do {                                                                           \
    std::string why_;                                                            \
    if (!llmqs::core::cuda_device_available(&why_)) GTEST_SKIP() << "no CUDA device: " << why_; \
  } while (0)

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<float> random_vector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(gen);
  return v;
}

double tolerance(DType type) { return type == DType::kF32 ? 2e-5 : 1e-2; }

// Device memory of n elements of `type`, filled and read through fp32 host vectors.
class DeviceArray {
 public:
  DeviceArray(size_t n, DType type) : n_(n), type_(type) {
    CUDA_CHECK(cudaMalloc(&ptr_, std::max<size_t>(n, 1) * llmqs::kernels::dtype_bytes(type)));
  }
  explicit DeviceArray(const std::vector<float>& host, DType type = DType::kF32) : DeviceArray(host.size(), type) {
    set(host);
  }
  ~DeviceArray() { cudaFree(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  void set(const std::vector<float>& host) {
    float* staging = nullptr;
    CUDA_CHECK(cudaMalloc(&staging, std::max<size_t>(n_, 1) * 4));
    CUDA_CHECK(cudaMemcpy(staging, host.data(), n_ * 4, cudaMemcpyHostToDevice));
    cu::convert(ptr_, type_, staging, DType::kF32, n_, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    cudaFree(staging);
  }
  std::vector<float> get() const {
    float* staging = nullptr;
    CUDA_CHECK(cudaMalloc(&staging, std::max<size_t>(n_, 1) * 4));
    cu::convert(staging, DType::kF32, ptr_, type_, n_, nullptr);
    std::vector<float> host(n_);
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(host.data(), staging, n_ * 4, cudaMemcpyDeviceToHost));
    cudaFree(staging);
    return host;
  }
  void poison() { set(std::vector<float>(n_, kNaN)); }
  void* ptr() const { return ptr_; }
  void* ptr_at(size_t element) const {
    return static_cast<char*>(ptr_) + element * llmqs::kernels::dtype_bytes(type_);
  }
  float* f32() const { return static_cast<float*>(ptr_); }
  int32_t* i32() const { return static_cast<int32_t*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  size_t n_;
  DType type_;
};

std::vector<float> rounded(const std::vector<float>& host, DType type) { return DeviceArray(host, type).get(); }

// q, k, v (or dq, dk, dv) on the device, either as three [tokens x C] arrays (ld = C) or packed as
// the column blocks of one [tokens x 3C] array (ld = 3C: the backend's fused QKV layout).
class QkvOnDevice {
 public:
  QkvOnDevice(const std::vector<std::vector<float>>& blocks, size_t tokens, int C, DType type, bool packed)
      : tokens_(tokens), C_(C), packed_(packed) {
    if (packed) {
      std::vector<float> all(tokens * 3 * C);
      for (size_t t = 0; t < tokens; ++t)
        for (int b = 0; b < 3; ++b)
          std::copy_n(blocks[b].begin() + t * C, C, all.begin() + (t * 3 + b) * C);
      arrays_.emplace_back(new DeviceArray(all, type));
    } else {
      for (int b = 0; b < 3; ++b) arrays_.emplace_back(new DeviceArray(blocks[b], type));
    }
  }
  QkvOnDevice(size_t tokens, int C, DType type, bool packed)
      : QkvOnDevice(std::vector<std::vector<float>>(3, std::vector<float>(tokens * C)), tokens, C, type, packed) {}
  int ld() const { return packed_ ? 3 * C_ : C_; }
  void* ptr(int block) const { return packed_ ? arrays_[0]->ptr_at(size_t(block) * C_) : arrays_[block]->ptr(); }
  std::vector<float> get(int block) const {
    if (!packed_) return arrays_[block]->get();
    const std::vector<float> all = arrays_[0]->get();
    std::vector<float> out(tokens_ * C_);
    for (size_t t = 0; t < tokens_; ++t)
      std::copy_n(all.begin() + (t * 3 + block) * C_, C_, out.begin() + t * C_);
    return out;
  }
  void poison() {
    for (auto& a : arrays_) a->poison();
  }

 private:
  size_t tokens_;
  int C_;
  bool packed_;
  std::vector<std::unique_ptr<DeviceArray>> arrays_;
};

DeviceArray* upload_ints(const std::vector<int32_t>& v) {
  auto* a = new DeviceArray(v.size(), DType::kF32);  // 4-byte elements
  CUDA_CHECK(cudaMemcpy(a->ptr(), v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  return a;
}

std::vector<int32_t> download_ints(const DeviceArray& a, size_t n) {
  std::vector<int32_t> v(n);
  CUDA_CHECK(cudaMemcpy(v.data(), a.ptr(), n * 4, cudaMemcpyDeviceToHost));
  return v;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& ref, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double max_ref = 0.0, max_diff = 0.0;
  size_t worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << ": element " << i << " is " << got[i] << " (not written?)";
    max_ref = std::max(max_ref, std::abs(static_cast<double>(ref[i])));
    const double diff = std::abs(static_cast<double>(got[i]) - ref[i]);
    if (diff > max_diff) {
      max_diff = diff;
      worst = i;
    }
  }
  ASSERT_GT(max_ref, 0.0) << what << ": the reference is all zeros";
  EXPECT_LE(max_diff / max_ref, tol) << what << ": worst element " << worst << " gpu " << got[worst] << " cpu "
                                     << ref[worst] << " (max |cpu| " << max_ref << ")";
}

struct Workspace {
  explicit Workspace(bool tune = true) : matmul{memory.ptr(), size_t(32) << 20, false, tune} {}
  DeviceArray memory{size_t(32) << 18, DType::kF32};  // 32 MiB
  cu::MatmulContext matmul;
};

DropoutSite make_site(uint32_t tensor_id, float p) {
  DropoutSite s;
  s.seed = 0x1234567890ULL;
  s.step = 3;
  s.rank = 1;
  s.micro_step = 2;
  s.tensor_id = tensor_id;
  s.p = p;
  return s;
}

class CudaKernels : public ::testing::TestWithParam<DType> {};

// Runs the test body under one kernel variant and restores the default afterwards.
class VariantScope {
 public:
  explicit VariantScope(const cu::KernelVariants& v) : saved_(cu::kernel_variants()) { cu::set_kernel_variants(v); }
  ~VariantScope() { cu::set_kernel_variants(saved_); }

 private:
  cu::KernelVariants saved_;
};

cu::KernelVariants variants(bool packed) {
  cu::KernelVariants v;
  v.packed_layernorm = v.packed_gelu = packed;
  return v;
}

std::string type_name(const ::testing::TestParamInfo<DType>& info) { return llmqs::kernels::dtype_name(info.param); }

// ---- matmul -----------------------------------------------------------------------------------
TEST_P(CudaKernels, LinearForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  const DType type = GetParam();
  Workspace ws;
  struct Shape {
    int n, in, out;
  };
  uint32_t seed = 10;
  for (const Shape s : {Shape{37, 19, 23}, Shape{256, 64, 96}, Shape{5, 768, 5}, Shape{130, 48, 3072}}) {
    const std::string what = "n=" + std::to_string(s.n) + " in=" + std::to_string(s.in) + " out=" + std::to_string(s.out);
    const auto x = rounded(random_vector(size_t(s.n) * s.in, ++seed), type);
    const auto w = rounded(random_vector(size_t(s.out) * s.in, ++seed, 0.1f), type);
    const auto b = rounded(random_vector(s.out, ++seed), type);
    const auto dy = rounded(random_vector(size_t(s.n) * s.out, ++seed), type);
    const auto dx0 = rounded(random_vector(size_t(s.n) * s.in, ++seed), type);
    const auto dw0 = random_vector(size_t(s.out) * s.in, ++seed);
    const auto db0 = random_vector(s.out, ++seed);

    std::vector<float> y_ref(size_t(s.n) * s.out), dx_ref = dx0, dw_ref = dw0, db_ref = db0;
    kc::matmul_forward(y_ref.data(), x.data(), w.data(), b.data(), s.n, s.in, s.out);
    kc::matmul_backward(dx_ref.data(), dw_ref.data(), db_ref.data(), dy.data(), x.data(), w.data(), s.n, s.in, s.out,
                        true);

    DeviceArray dx_(x, type), dw_(w, type), db_(b, type), ddy(dy, type), y(size_t(s.n) * s.out, type);
    DeviceArray dx(dx0, type), dw(dw0), db(db0), scratch(cu::column_reduce_scratch_floats(s.n, s.out), DType::kF32);
    y.poison();
    cu::linear_forward(ws.matmul, nullptr, type, dx_.ptr(), dw_.ptr(), db_.ptr(), y.ptr(), s.n, s.in, s.out);
    cu::linear_backward_input(ws.matmul, nullptr, type, ddy.ptr(), dw_.ptr(), dx.ptr(), s.n, s.in, s.out, 1.0f);
    cu::linear_backward_weight(ws.matmul, nullptr, type, ddy.ptr(), dx_.ptr(), dw.f32(), s.n, s.in, s.out);
    cu::linear_backward_bias(db.f32(), ddy.ptr(), type, s.n, s.out, scratch.f32(), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    expect_close(y.get(), y_ref, tolerance(type), "forward " + what);
    expect_close(dx.get(), dx_ref, tolerance(type), "dx (accumulated) " + what);
    expect_close(dw.get(), dw_ref, tolerance(type), "dweight (accumulated) " + what);
    expect_close(db.get(), db_ref, tolerance(type), "dbias (accumulated) " + what);
  }
}

// MatmulContext tunes a product by timing only algorithms that split K as the heuristic's first
// does, on the claim that those give the same bits (matmul_cublaslt.h): the bert-base products at
// 4096 rows, each with a fresh context, tuned and untuned, must agree bitwise.
TEST_P(CudaKernels, MatmulTuningKeepsTheBits) {
  REQUIRE_CUDA();
  const DType type = GetParam();
  if (type == DType::kF32) GTEST_SKIP() << "the half-precision products are the ones the trainer tunes";
  const int n = 4096;
  struct Shape {
    int in, out;
  };
  uint32_t seed = 70;
  int tuned = 0, changed = 0;
  for (const Shape s : {Shape{768, 2304}, Shape{768, 768}, Shape{768, 3072}, Shape{3072, 768}}) {
    const std::string what = "in=" + std::to_string(s.in) + " out=" + std::to_string(s.out);
    const auto x = rounded(random_vector(size_t(n) * s.in, ++seed), type);
    const auto w = rounded(random_vector(size_t(s.out) * s.in, ++seed, 0.1f), type);
    const auto b = rounded(random_vector(s.out, ++seed), type);
    const auto dy = rounded(random_vector(size_t(n) * s.out, ++seed), type);
    DeviceArray dx_(x, type), dw_(w, type), db_(b, type), ddy(dy, type);
    std::vector<float> results[2][2];  // [tuning off, on][forward, dx]
    for (const bool tuning : {false, true}) {
      Workspace ws(tuning);  // a fresh context: nothing cached
      DeviceArray y(size_t(n) * s.out, type), dx(size_t(n) * s.in, type);
      cu::linear_forward(ws.matmul, nullptr, type, dx_.ptr(), dw_.ptr(), db_.ptr(), y.ptr(), n, s.in, s.out);
      cu::linear_backward_input(ws.matmul, nullptr, type, ddy.ptr(), dw_.ptr(), dx.ptr(), n, s.in, s.out, 0.0f);
      CUDA_CHECK(cudaDeviceSynchronize());
      results[tuning][0] = y.get();
      results[tuning][1] = dx.get();
      if (tuning) {
        tuned += ws.matmul.tuned_products();
        changed += ws.matmul.tuned_changes();
      } else {
        EXPECT_EQ(ws.matmul.tuned_products(), 0) << what;
      }
    }
    EXPECT_EQ(results[1][0], results[0][0]) << "forward " << what;
    EXPECT_EQ(results[1][1], results[0][1]) << "dx " << what;
  }
  std::cout << "[ matmul tuning ] " << tuned << " products tuned, " << changed
            << " on another algorithm than the heuristic's first, same bits\n";
}

// ---- embeddings -------------------------------------------------------------------------------
TEST_P(CudaKernels, EmbeddingsMatchCpuAndSkipThePaddingRow) {
  REQUIRE_CUDA();
  const DType type = GetParam();
  const int rows = 3, seq = 11, C = 40, V = 17, P = 16, pad = 0;
  const std::vector<int> lengths = {11, 6, 1};
  std::mt19937 gen(5);
  std::vector<int32_t> ids(rows * seq);
  for (int r = 0; r < rows; ++r)
    for (int s = 0; s < seq; ++s) ids[r * seq + s] = s < lengths[r] ? 1 + int(gen() % (V - 1)) : pad;
  ids[3] = ids[4] = ids[5];  // repeated tokens in one row
  const auto word = random_vector(size_t(V) * C, 1), pos = random_vector(size_t(P) * C, 2), type0 = random_vector(C, 3);
  std::vector<float> out_ref(size_t(rows) * seq * C);
  kc::embeddings_forward(out_ref.data(), ids.data(), word.data(), pos.data(), type0.data(), rows, seq, C);
  const auto dout = rounded(random_vector(out_ref.size(), 4), type);
  auto dword_ref = random_vector(word.size(), 5), dpos_ref = random_vector(pos.size(), 6), dtype_ref = random_vector(C, 7);
  DeviceArray dword(dword_ref), dpos(dpos_ref), dtype0(dtype_ref);
  kc::embeddings_backward(dword_ref.data(), dpos_ref.data(), dtype_ref.data(), dout.data(), ids.data(), rows, seq, C, pad);

  std::unique_ptr<DeviceArray> d_ids(upload_ints(ids));
  DeviceArray d_word(word), d_pos(pos), d_type0(type0), out(out_ref.size(), type), d_dout(dout, type);
  out.poison();
  cu::embeddings_forward(out.ptr(), type, d_ids->i32(), d_word.f32(), d_pos.f32(), d_type0.f32(), rows, seq, C, nullptr);
  const cu::TokenGroupsHost groups = cu::group_tokens_by_id(ids.data(), ids.size(), pad);
  std::unique_ptr<DeviceArray> g_token(upload_ints(groups.token)), g_offset(upload_ints(groups.offset)),
      g_position(upload_ints(groups.position));
  DeviceArray scratch(cu::column_reduce_scratch_floats(rows * seq, C), DType::kF32);
  cu::embeddings_backward(dword.f32(), dpos.f32(), dtype0.f32(), d_dout.ptr(), type, g_token->i32(), g_offset->i32(),
                          g_position->i32(), int(groups.token.size()), rows, seq, C, scratch.f32(), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  expect_close(out.get(), out_ref, tolerance(type), "embeddings forward");
  const auto dword_got = dword.get();
  expect_close(dword_got, dword_ref, 2e-5, "dword");
  expect_close(dpos.get(), dpos_ref, 2e-5, "dposition");
  expect_close(dtype0.get(), dtype_ref, 2e-5, "dtoken_type0");
  // The padding row is untouched (nn.Embedding padding_idx): bit-identical to its start value.
  const auto start = random_vector(word.size(), 5);
  for (int c = 0; c < C; ++c) ASSERT_EQ(dword_got[pad * C + c], start[pad * C + c]);
}

// ---- layernorm --------------------------------------------------------------------------------
// Packed kernels take C % 8 == 0 (bf16/fp16) or C % 4 == 0 (fp32); C = 36 runs packed only in fp32,
// C = 50 always falls back to the scalar kernels. N = 300 spans three 128-row backward blocks.
// The backward's dbias_dropped is fused into the packed kernel where its third shared-memory slice
// fits the device without costing blocks per SM (every packed shape here on sm_90; on a T4 the
// wider ones take the column_sum_accumulate fallback, as does the scalar variant everywhere):
// each path is checked against the column sums of the dx_dropped the GPU stored.
TEST_P(CudaKernels, ResidualDropoutLayerNormMatchesCpu) {
  REQUIRE_CUDA();
  const DType type = GetParam();
  uint32_t seed = 100;
  struct Shape {
    int N, C;
  };
  for (const bool packed : {true, false})
  for (const Shape shape : {Shape{67, 16}, Shape{67, 36}, Shape{67, 40}, Shape{67, 50}, Shape{300, 768}, Shape{67, 1000},
                            Shape{20000, 64}}) {  // 20000 rows: 128-row backward blocks up to 156 SMs, the rest fewer
    for (const float p : {0.0f, 0.1f}) {
      const VariantScope scope(variants(packed));
      const int N = shape.N, C = shape.C;
      const std::string what = std::string(packed ? "packed" : "scalar") + " N=" + std::to_string(N) +
                               " C=" + std::to_string(C) + " p=" + std::to_string(p);
      const DropoutSite a_site = make_site(9, p), none;
      const auto a = rounded(random_vector(size_t(N) * C, ++seed), type);
      const auto b = rounded(random_vector(size_t(N) * C, ++seed), type);
      const auto gamma = random_vector(C, ++seed), beta = random_vector(C, ++seed);
      // CPU: dropout, then residual LayerNorm.
      std::vector<float> dropped(a.size()), out_ref(a.size()), sum_ref(a.size()), mean_ref(N), rstd_ref(N);
      kc::dropout_forward(dropped.data(), a.data(), a.size(), a_site);
      kc::residual_layernorm_forward(out_ref.data(), sum_ref.data(), mean_ref.data(), rstd_ref.data(), dropped.data(),
                                     b.data(), gamma.data(), beta.data(), N, C, 1e-12f);
      DeviceArray da(a, type), db(b, type), dg(gamma), dbeta(beta), out(a.size(), type), sum(a.size(), type),
          mean(N, DType::kF32), rstd(N, DType::kF32);
      out.poison();
      sum.poison();
      cu::layernorm_forward(out.ptr(), sum.ptr(), mean.f32(), rstd.f32(), da.ptr(), db.ptr(), dg.f32(), dbeta.f32(), type,
                            N, C, 1e-12f, a_site, none, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      expect_close(out.get(), out_ref, tolerance(type), "layernorm out " + what);
      expect_close(sum.get(), sum_ref, tolerance(type), "residual sum " + what);
      expect_close(mean.get(), mean_ref, type == DType::kF32 ? 2e-5 : 1e-2, "mean " + what);
      expect_close(rstd.get(), rstd_ref, type == DType::kF32 ? 2e-5 : 1e-2, "rstd " + what);

      // Backward from the GPU's own saved sum (the CPU runs on the same values).
      const auto x = sum.get();
      const auto dout = rounded(random_vector(x.size(), ++seed), type);
      std::vector<float> dx_ref(x.size()), dgamma_ref = random_vector(C, 7), dbeta_ref = random_vector(C, 8);
      DeviceArray ddgamma(dgamma_ref), ddbeta(dbeta_ref);
      std::vector<float> m2(N), r2(N), dummy(x.size());
      kc::layernorm_forward(dummy.data(), m2.data(), r2.data(), x.data(), gamma.data(), beta.data(), N, C, 1e-12f);
      kc::layernorm_backward(dx_ref.data(), dgamma_ref.data(), dbeta_ref.data(), dout.data(), x.data(), m2.data(),
                             r2.data(), gamma.data(), N, C);
      std::vector<float> dx_dropped_ref(x.size());
      kc::dropout_backward(dx_dropped_ref.data(), dx_ref.data(), x.size(), a_site);
      DeviceArray dx(x.size(), type), dx_dropped(x.size(), type), ddout(dout, type), dsum(x, type);
      dx.poison();
      dx_dropped.poison();
      const auto dbias_start = random_vector(C, 9);  // accumulated into, like a gradient buffer
      DeviceArray ddbias(dbias_start);
      DeviceArray scratch(cu::layernorm_backward_scratch_floats(N, C), DType::kF32);
      scratch.poison();  // the fused bias partials sit after the 2C ones: all must be written
      cu::layernorm_backward(dx.ptr(), dx_dropped.ptr(), ddgamma.f32(), ddbeta.f32(), ddbias.f32(), ddout.ptr(),
                             dsum.ptr(), mean.f32(), rstd.f32(), dg.f32(), type, N, C, a_site, none, scratch.f32(),
                             nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      expect_close(dx.get(), dx_ref, tolerance(type), "layernorm dx " + what);
      const auto dx_dropped_got = dx_dropped.get();
      expect_close(dx_dropped_got, dx_dropped_ref, tolerance(type), "layernorm dx through dropout " + what);
      // The same mask, bit for bit: a dropped element (0 on the CPU, where dx is never exactly 0) is
      // exactly 0, a kept one is not, unless it is small enough to round to 0 in fp16 (20000 rows
      // hold some below 1e-3 of the largest).
      double dx_dropped_max = 0.0;
      for (const float v : dx_dropped_ref) dx_dropped_max = std::max(dx_dropped_max, double(std::abs(v)));
      for (size_t i = 0; i < x.size(); ++i) {
        if (dx_dropped_ref[i] == 0.0f) {
          ASSERT_EQ(dx_dropped_got[i], 0.0f) << "dropout mask differs at " << i << " " << what;
        } else if (std::abs(dx_dropped_ref[i]) > 1e-3 * dx_dropped_max) {
          ASSERT_NE(dx_dropped_got[i], 0.0f) << "dropout mask differs at " << i << " " << what;
        }
      }
      expect_close(ddgamma.get(), dgamma_ref, tolerance(type), "dgamma " + what);
      expect_close(ddbeta.get(), dbeta_ref, tolerance(type), "dbeta " + what);
      // dbias_dropped = the column sums of the stored (rounded, dropped) values: what
      // linear_backward_bias would sum, so only the fp32 addition order differs.
      std::vector<double> dbias_sum(dbias_start.begin(), dbias_start.end());
      for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) dbias_sum[c] += dx_dropped_got[size_t(n) * C + c];
      const std::vector<float> dbias_ref(dbias_sum.begin(), dbias_sum.end());
      expect_close(ddbias.get(), dbias_ref, 1e-5, "dbias_dropped " + what);

      // The forward's recorded keep bits (where the packed kernels run) change nothing: the same
      // forward outputs, and a backward that re-applies the mask from them gives the same bits as
      // the one that draws it again.
      const size_t keep_words = cu::layernorm_keep_bits_words(N, C, type);
      EXPECT_EQ(keep_words, packed && C % (16 / int(llmqs::kernels::dtype_bytes(type))) == 0 ? size_t(N) * 32 : 0u) << what;
      if (keep_words == 0) {  // the scalar kernels: nothing recorded, nothing written
        DeviceArray bits(size_t(N) * 32, DType::kF32);
        bits.poison();
        const auto before = bits.get();
        EXPECT_FALSE(cu::layernorm_forward(out.ptr(), sum.ptr(), mean.f32(), rstd.f32(), da.ptr(), db.ptr(), dg.f32(),
                                           dbeta.f32(), type, N, C, 1e-12f, a_site, none, nullptr,
                                           static_cast<uint32_t*>(bits.ptr())))
            << what;
        CUDA_CHECK(cudaDeviceSynchronize());
        const auto after = bits.get();
        EXPECT_EQ(std::memcmp(before.data(), after.data(), before.size() * sizeof(float)), 0) << what;
        continue;
      }
      DeviceArray keep(keep_words, DType::kF32), out2(a.size(), type), sum2(a.size(), type), mean2(N, DType::kF32),
          rstd2(N, DType::kF32);
      keep.poison();
      uint32_t* keep_bits = static_cast<uint32_t*>(keep.ptr());
      EXPECT_TRUE(cu::layernorm_forward(out2.ptr(), sum2.ptr(), mean2.f32(), rstd2.f32(), da.ptr(), db.ptr(), dg.f32(),
                                        dbeta.f32(), type, N, C, 1e-12f, a_site, none, nullptr, keep_bits))
          << what;
      DeviceArray dgamma2(random_vector(C, 7)), dbeta2(random_vector(C, 8)), dbias2(dbias_start),
          dx2(x.size(), type), dx_dropped2(x.size(), type);
      cu::layernorm_backward(dx2.ptr(), dx_dropped2.ptr(), dgamma2.f32(), dbeta2.f32(), dbias2.f32(), ddout.ptr(),
                             dsum.ptr(), mean.f32(), rstd.f32(), dg.f32(), type, N, C, a_site, none, scratch.f32(),
                             nullptr, keep_bits);
      CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_TRUE(out2.get() == out.get() && sum2.get() == x && mean2.get() == mean.get() && rstd2.get() == rstd.get())
          << "forward with keep bits " << what;
      EXPECT_TRUE(dx2.get() == dx.get() && dx_dropped2.get() == dx_dropped_got) << "dx with keep bits " << what;
      EXPECT_TRUE(dgamma2.get() == ddgamma.get() && dbeta2.get() == ddbeta.get() && dbias2.get() == ddbias.get())
          << "parameter gradients with keep bits " << what;
      // The kernel without the fused bias slice (what a T4 runs at C = 768), with and without the bits.
      std::vector<std::vector<float>> plain;
      for (const uint32_t* bits : {static_cast<const uint32_t*>(nullptr), static_cast<const uint32_t*>(keep_bits)}) {
        DeviceArray g3(random_vector(C, 7)), b3(random_vector(C, 8)), dx3(x.size(), type), dxd3(x.size(), type);
        cu::layernorm_backward(dx3.ptr(), dxd3.ptr(), g3.f32(), b3.f32(), nullptr, ddout.ptr(), dsum.ptr(), mean.f32(),
                               rstd.f32(), dg.f32(), type, N, C, a_site, none, scratch.f32(), nullptr, bits);
        CUDA_CHECK(cudaDeviceSynchronize());
        std::vector<float> all = dx3.get();
        for (const auto& part : {dxd3.get(), g3.get(), b3.get()}) all.insert(all.end(), part.begin(), part.end());
        plain.push_back(std::move(all));
      }
      EXPECT_TRUE(plain[0] == plain[1]) << "backward without the bias slice, with keep bits " << what;
      EXPECT_EQ(std::memcmp(plain[0].data(), dx.get().data(), x.size() * sizeof(float)), 0) << what;
    }
  }
}

TEST_P(CudaKernels, LayerNormWithOutputDropoutMatchesCpuComposition) {
  REQUIRE_CUDA();
  const DType type = GetParam();
  for (const bool packed : {true, false}) {
    const VariantScope scope(variants(packed));
    const std::string what = packed ? " (packed)" : " (scalar)";
    const int N = 45, C = 96;
    const DropoutSite out_site = make_site(0, 0.1f), none;
    const auto x = rounded(random_vector(size_t(N) * C, 31), type);
    const auto gamma = random_vector(C, 32), beta = random_vector(C, 33);
    std::vector<float> ln(x.size()), out_ref(x.size()), mean_ref(N), rstd_ref(N);
    kc::layernorm_forward(ln.data(), mean_ref.data(), rstd_ref.data(), x.data(), gamma.data(), beta.data(), N, C, 1e-12f);
    kc::dropout_forward(out_ref.data(), ln.data(), ln.size(), out_site);
    const auto dout = rounded(random_vector(x.size(), 34), type);
    std::vector<float> g(x.size()), dx_ref(x.size()), dgamma_ref(C, 0.0f), dbeta_ref(C, 0.0f);
    kc::dropout_backward(g.data(), dout.data(), g.size(), out_site);
    kc::layernorm_backward(dx_ref.data(), dgamma_ref.data(), dbeta_ref.data(), g.data(), x.data(), mean_ref.data(),
                           rstd_ref.data(), gamma.data(), N, C);

    DeviceArray dxin(x, type), dg(gamma), db(beta), out(x.size(), type), mean(N, DType::kF32), rstd(N, DType::kF32);
    DeviceArray ddout(dout, type), dx(x.size(), type), dgamma(std::vector<float>(C, 0.0f)), dbeta(std::vector<float>(C, 0.0f));
    DeviceArray scratch(cu::layernorm_backward_scratch_floats(N, C), DType::kF32);
    out.poison();
    dx.poison();
    cu::layernorm_forward(out.ptr(), nullptr, mean.f32(), rstd.f32(), dxin.ptr(), nullptr, dg.f32(), db.f32(), type, N, C,
                          1e-12f, none, out_site, nullptr);
    cu::layernorm_backward(dx.ptr(), nullptr, dgamma.f32(), dbeta.f32(), nullptr, ddout.ptr(), dxin.ptr(), mean.f32(),
                           rstd.f32(), dg.f32(), type, N, C, none, out_site, scratch.f32(), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto out_got = out.get();
    expect_close(out_got, out_ref, tolerance(type), "layernorm + output dropout" + what);
    for (size_t i = 0; i < out_ref.size(); ++i)
      ASSERT_EQ(out_got[i] == 0.0f, out_ref[i] == 0.0f) << "output dropout mask differs at " << i << what;
    expect_close(dx.get(), dx_ref, tolerance(type), "dx" + what);
    expect_close(dgamma.get(), dgamma_ref, tolerance(type), "dgamma" + what);
    expect_close(dbeta.get(), dbeta_ref, tolerance(type), "dbeta" + what);
    // A bias sum over a dx_dropped that is not computed is a caller's mistake, not a silent no-op.
    EXPECT_THROW(cu::layernorm_backward(dx.ptr(), nullptr, dgamma.f32(), dbeta.f32(), dgamma.f32(), ddout.ptr(),
                                        dxin.ptr(), mean.f32(), rstd.f32(), dg.f32(), type, N, C, none, out_site,
                                        scratch.f32(), nullptr),
                 std::invalid_argument);
  }
}

// ---- attention --------------------------------------------------------------------------------
TEST_P(CudaKernels, AttentionWithPaddingAndDropoutMatchesCpu) {
  REQUIRE_CUDA();
  const DType type = GetParam();
  Workspace ws;
  struct Shape {
    int rows, seq, C, heads;
    std::vector<int32_t> lengths;
  };
  uint32_t seed = 200;
  for (const Shape& s : {Shape{3, 13, 16, 2, {13, 7, 1}}, Shape{2, 64, 96, 3, {64, 33}}, Shape{2, 128, 64, 4, {100, 128}}}) {
    for (const float p : {0.0f, 0.1f}) {
     for (const bool packed : {false, true}) {  // q, k, v as three arrays, or as the fused [tokens x 3C]
      const std::string what = "seq=" + std::to_string(s.seq) + " C=" + std::to_string(s.C) + " p=" + std::to_string(p) +
                               (packed ? " qkv packed" : "");
      const DropoutSite site = make_site(8, p);
      const size_t n = size_t(s.rows) * s.seq * s.C, np = size_t(s.rows) * s.heads * s.seq * s.seq;
      const auto q = rounded(random_vector(n, ++seed), type), k = rounded(random_vector(n, ++seed), type),
                 v = rounded(random_vector(n, ++seed), type), dctx = rounded(random_vector(n, ++seed), type);
      std::vector<float> ctx_ref(n), probs_ref(np), dq_ref(n), dk_ref(n), dv_ref(n);
      kc::attention_forward(ctx_ref.data(), probs_ref.data(), q.data(), k.data(), v.data(), s.lengths.data(), s.rows,
                            s.seq, s.C, s.heads, site);

      const size_t tokens = size_t(s.rows) * s.seq;
      QkvOnDevice qkv_in({q, k, v}, tokens, s.C, type, packed), dqkv(tokens, s.C, type, packed);
      DeviceArray ddctx(dctx, type), ctx(n, type), probs(np, type);
      std::unique_ptr<DeviceArray> lengths(upload_ints(s.lengths));
      std::vector<std::unique_ptr<DeviceArray>> heads;
      for (int i = 0; i < 7; ++i) heads.emplace_back(new DeviceArray(n, type));
      DeviceArray scores(np, DType::kF32), dropped(np, type);
      cu::AttentionScratch scratch{heads[0]->ptr(), heads[1]->ptr(), heads[2]->ptr(), heads[3]->ptr(),
                                   heads[4]->ptr(), heads[5]->ptr(), heads[6]->ptr(), scores.f32(), dropped.ptr()};
      ctx.poison();
      probs.poison();
      dqkv.poison();
      cu::attention_forward(ctx.ptr(), probs.ptr(), qkv_in.ptr(0), qkv_in.ptr(1), qkv_in.ptr(2), lengths->i32(), type,
                            s.rows, s.seq, s.C, s.heads, qkv_in.ld(), site, scratch, ws.matmul, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const auto probs_got = probs.get();
      expect_close(ctx.get(), ctx_ref, tolerance(type), "attention ctx " + what);
      expect_close(probs_got, probs_ref, tolerance(type), "attention probs " + what);
      // Backward from the GPU's probs, so only the backward is under test here.
      kc::attention_backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), dctx.data(), q.data(), k.data(), v.data(),
                             probs_got.data(), s.lengths.data(), s.rows, s.seq, s.C, s.heads, site);
      cu::attention_backward(dqkv.ptr(0), dqkv.ptr(1), dqkv.ptr(2), ddctx.ptr(), qkv_in.ptr(0), qkv_in.ptr(1),
                             qkv_in.ptr(2), probs.ptr(), lengths->i32(), type, s.rows, s.seq, s.C, s.heads, dqkv.ld(),
                             site, scratch, ws.matmul, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      expect_close(dqkv.get(0), dq_ref, tolerance(type), "attention dq " + what);
      expect_close(dqkv.get(1), dk_ref, tolerance(type), "attention dk " + what);
      expect_close(dqkv.get(2), dv_ref, tolerance(type), "attention dv " + what);
     }
    }
  }
}

// The fused tensor-core attention (bf16/fp16, head_dim 32 and 64) against the same CPU twin:
// padding rows, a length-1 row, seq not a multiple of the 64-row tiles, dropout on and off. Where
// this binary runs sm_90a code, head_dim 64 runs twice: on the Hopper (wgmma) kernels and on the
// mma.sync ones (KernelVariants::wgmma_attention off).
TEST_P(CudaKernels, FlashAttentionWithPaddingAndDropoutMatchesCpu) {
  REQUIRE_CUDA();
  const DType type = GetParam();
  struct Shape {
    int rows, seq, C, heads;
    std::vector<int32_t> lengths;
  };
  EXPECT_FALSE(cu::flash_attention_supported(DType::kF32, 128, 2));
  EXPECT_FALSE(cu::flash_attention_supported(type, 48, 3));  // head_dim 16: the unfused path
  if (type == DType::kF32) return;
  if (type == DType::kBF16 && cu::loaded_code_arch() < 800) {
    EXPECT_FALSE(cu::flash_attention_supported(type, 128, 2));
    GTEST_SKIP() << "bf16 fused attention needs sm_80 code; this binary runs compute_" << cu::loaded_code_arch() / 10
                 << " code here (the T4 build), where bf16 attention takes the unfused path";
  }
  uint32_t seed = 900;
  // seq 77 and 130 take the mask kernel's per-key Philox path (seq % 8 != 0), the others one
  // call per eight keys; 256 spans two 128-query forward blocks and four key tiles; 512 (eight
  // tiles, bert-base's length) cycles the Hopper kernels' three shared-memory stages more than once;
  // on the Hopper kernels seq <= 128 takes the short-row forward and the one-kernel backward (one
  // and two warpgroups: 50, 96, 128), with rows whose keys end inside, at and just past the first
  // 64-key tile.
  const bool hopper = cu::flash_attention_uses_wgmma(type, 128, 2);
  std::cout << "[ attention ] " << llmqs::kernels::dtype_name(type) << " head_dim 64 runs "
            << (hopper ? "the wgmma kernels, then the mma.sync ones" : "the mma.sync kernels (no sm_90a code here)")
            << "\n";
  // The one-kernel backward is persistent (a block takes row x heads blockIdx.x, + gridDim.x, ...,
  // alternating two shared-memory buffers); 150 x 2 and 160 x 2 rows x heads at seq 96 and 64 exceed
  // the resident blocks of a 132-SM H100/H200 (one and two per SM), so blocks take several.
  auto many_rows = [](int rows, int seq) {
    Shape s{rows, seq, 128, 2, {}};
    for (int r = 0; r < rows; ++r) s.lengths.push_back(std::max(1, seq - (r * 37) % seq));
    return s;
  };
  for (const Shape& s : {Shape{2, 128, 128, 2, {100, 128}}, Shape{3, 77, 96, 3, {77, 40, 1}},
                         Shape{1, 200, 256, 4, {131}}, Shape{2, 256, 128, 2, {256, 190}},
                         Shape{1, 130, 64, 2, {130}}, Shape{2, 512, 128, 2, {512, 301}},
                         Shape{3, 50, 128, 2, {50, 17, 1}}, Shape{4, 96, 128, 2, {96, 70, 64, 65}},
                         many_rows(150, 96), many_rows(160, 64)}) {
    ASSERT_TRUE(cu::flash_attention_supported(type, s.C, s.heads));
    for (const float p : {0.0f, 0.1f}) {
      const std::string base_what = "seq=" + std::to_string(s.seq) + " C=" + std::to_string(s.C) + " heads=" +
                                    std::to_string(s.heads) + " p=" + std::to_string(p);
      const DropoutSite site = make_site(16, p);
      const size_t n = size_t(s.rows) * s.seq * s.C, np = size_t(s.rows) * s.heads * s.seq * s.seq;
      const size_t nl = size_t(s.rows) * s.heads * s.seq;
      const auto q = rounded(random_vector(n, ++seed, 2.0f), type), k = rounded(random_vector(n, ++seed, 2.0f), type),
                 v = rounded(random_vector(n, ++seed), type), dctx = rounded(random_vector(n, ++seed), type);
      std::vector<float> ctx_ref(n), probs_ref(np), dq_ref(n), dk_ref(n), dv_ref(n);
      kc::attention_forward(ctx_ref.data(), probs_ref.data(), q.data(), k.data(), v.data(), s.lengths.data(), s.rows,
                            s.seq, s.C, s.heads, site);
      kc::attention_backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), dctx.data(), q.data(), k.data(), v.data(),
                             probs_ref.data(), s.lengths.data(), s.rows, s.seq, s.C, s.heads, site);

     for (const bool wgmma : {true, false}) {
      if (wgmma && !cu::flash_attention_uses_wgmma(type, s.C, s.heads)) continue;
      cu::KernelVariants kernels;
      kernels.wgmma_attention = wgmma;
      VariantScope scope(kernels);
     for (const bool packed : {false, true}) {  // q, k, v as three arrays, or as the fused [tokens x 3C]
      const std::string what = base_what + (packed ? " qkv packed" : "") + (wgmma ? " wgmma" : "");
      const size_t tokens = size_t(s.rows) * s.seq;
      QkvOnDevice qkv_in({q, k, v}, tokens, s.C, type, packed), dqkv(tokens, s.C, type, packed);
      DeviceArray ddctx(dctx, type), ctx(n, type), lse(nl, DType::kF32), delta(nl, DType::kF32);
      DeviceArray mask(cu::flash_attention_mask_words(s.rows, s.seq, s.heads), DType::kF32);  // uint32 words
      std::unique_ptr<DeviceArray> lengths(upload_ints(s.lengths));
      DeviceArray ds(cu::flash_attention_ds_elements(s.rows, s.seq, s.heads), type);
      DeviceArray bias_partials(cu::flash_attention_qkv_bias_partial_rows(s.rows, s.seq) * 3 * s.C, DType::kF32);
      ctx.poison();
      uint32_t* mask_words = static_cast<uint32_t*>(mask.ptr());
      cu::flash_attention_dropout_mask(mask_words, s.rows, s.seq, s.heads, site, nullptr);
      cu::flash_attention_forward(ctx.ptr(), lse.f32(), mask_words, qkv_in.ptr(0), qkv_in.ptr(1), qkv_in.ptr(2),
                                  lengths->i32(), type, s.rows, s.seq, s.C, s.heads, qkv_in.ld(), site, nullptr);
      if (p > 0.0f) {  // the keep bits are the CPU's Philox draws, element by element
        std::vector<uint32_t> bits(cu::flash_attention_mask_words(s.rows, s.seq, s.heads));
        CUDA_CHECK(cudaMemcpy(bits.data(), mask_words, bits.size() * 4, cudaMemcpyDeviceToHost));
        const size_t words_per_row = bits.size() / (size_t(s.rows) * s.heads * s.seq);
        size_t wrong = 0;
        for (int r = 0; r < s.rows; ++r)
          for (int h = 0; h < s.heads; ++h)
            for (int i = 0; i < s.seq; ++i)
              for (int j = 0; j < s.seq; ++j) {
                const size_t row = (size_t(r) * s.heads + h) * s.seq + i;
                const bool got = (bits[row * words_per_row + j / 32] >> (j % 32)) & 1u;
                wrong += got != llmqs::kernels::dropout_keep(site, row * s.seq + j);
              }
        EXPECT_EQ(wrong, 0u) << "flash dropout mask " << what;
      }
      expect_close(ctx.get(), ctx_ref, tolerance(type), "flash ctx " + what);
      // Both ways to dQ: from the dS the dK/dV kernel stores (poisoned first, so a read of a part
      // it did not write shows as NaN), and recomputed by a third kernel (ds_scratch null).
      std::vector<float> dk_first, dv_first, dq_first;
      for (const bool stored_ds : {true, false}) {
        const std::string how = what + (stored_ds ? " (dQ from stored dS)" : " (dQ recomputed)");
        dqkv.poison();
        ds.poison();
        bias_partials.poison();
        cu::flash_attention_backward(dqkv.ptr(0), dqkv.ptr(1), dqkv.ptr(2), ddctx.ptr(), ctx.ptr(), qkv_in.ptr(0),
                                     qkv_in.ptr(1), qkv_in.ptr(2), lse.f32(), mask_words, delta.f32(),
                                     stored_ds ? ds.ptr() : nullptr, bias_partials.f32(), lengths->i32(), type,
                                     s.rows, s.seq, s.C, s.heads, dqkv.ld(), site, nullptr);
        CUDA_CHECK(cudaDeviceSynchronize());
        // The backward reads the GPU's rounded ctx (through delta): allow twice the forward's error.
        expect_close(dqkv.get(0), dq_ref, 2 * tolerance(type), "flash dq " + how);
        expect_close(dqkv.get(1), dk_ref, 2 * tolerance(type), "flash dk " + how);
        expect_close(dqkv.get(2), dv_ref, tolerance(type), "flash dv " + how);
        // The QKV bias partials: where the kernels sum them, each is the column sum (in fp32) of the
        // values they stored over its 64 positions; elsewhere the buffer stays untouched (NaN).
        const auto partials = bias_partials.get();
        const bool sums = cu::flash_attention_backward_sums_qkv_bias(type, s.C, s.heads, s.seq, stored_ds);
        if (sums) {
          const int tiles = (s.seq + 63) / 64;
          size_t bad = 0;
          for (int part = 0; part < 3; ++part) {
            const auto stored = dqkv.get(part);
            for (int r = 0; r < s.rows; ++r)
              for (int i = 0; i < tiles; ++i)
                for (int c = 0; c < s.C; ++c) {
                  double sum = 0.0, magnitude = 0.0;
                  for (int pos = 64 * i; pos < std::min(64 * i + 64, s.seq); ++pos) {
                    const double x = stored[(size_t(r) * s.seq + pos) * s.C + c];
                    sum += x;
                    magnitude += std::fabs(x);
                  }
                  const float got = partials[(size_t(r) * tiles + i) * 3 * s.C + size_t(part) * s.C + c];
                  bad += !(std::fabs(got - sum) <= 1e-5 * magnitude + 1e-30);
                }
          }
          EXPECT_EQ(bad, 0u) << "flash QKV bias partials " << how;
        } else {
          size_t written = 0;
          for (const float x : partials) written += !std::isnan(x);
          EXPECT_EQ(written, 0u) << "flash QKV bias partials written where the kernels sum none, " << how;
        }
        // Keys past a row's length get exactly zero gradient (skipped tiles and masked keys alike).
        const auto dk_got = dqkv.get(1);
        for (int r = 0; r < s.rows; ++r)
          for (int j = s.lengths[r]; j < s.seq; ++j)
            for (int c = 0; c < s.C; ++c)
              ASSERT_EQ(dk_got[(size_t(r) * s.seq + j) * s.C + c], 0.0f) << how << " row " << r << " key " << j;
        // dK and dV come from the same kernel either way: storing dS must not change them. On the
        // Hopper kernels rows up to 128 tokens take the one-kernel backward both times, whose dQ
        // has one fixed summation order: the second call must give the same bits.
        const bool one_kernel = wgmma && s.seq <= 128;
        if (stored_ds) {
          dk_first = dk_got;
          dv_first = dqkv.get(2);
          if (one_kernel) dq_first = dqkv.get(0);
        } else {
          EXPECT_EQ(dk_got, dk_first) << how;
          EXPECT_EQ(dqkv.get(2), dv_first) << how;
          if (one_kernel) {
            EXPECT_EQ(dqkv.get(0), dq_first) << how;
          }
        }
      }
     }
     }
    }
  }
}

// ---- elementwise ------------------------------------------------------------------------------
TEST_P(CudaKernels, GeluTanhAndDropoutMatchCpu) {
  REQUIRE_CUDA();
  const DType type = GetParam();
  const size_t n = 10007;
  const auto x = rounded(random_vector(n, 41, 3.0f), type), dout = rounded(random_vector(n, 42), type);
  std::vector<float> gelu_ref(n), dgelu_ref(n), tanh_ref(n), dtanh_ref(n), drop_ref(n);
  kc::gelu_forward(gelu_ref.data(), x.data(), n);
  kc::gelu_backward(dgelu_ref.data(), x.data(), dout.data(), n);
  kc::tanh_forward(tanh_ref.data(), x.data(), n);
  const auto tanh_out = rounded(tanh_ref, type);
  kc::tanh_backward(dtanh_ref.data(), tanh_out.data(), dout.data(), n);
  const DropoutSite site = make_site(1, 0.25f);
  kc::dropout_forward(drop_ref.data(), x.data(), n, site);

  DeviceArray dx(x, type), ddout(dout, type), out(n, type), dtanh_in(tanh_out, type);
  auto run = [&](auto&& launch, const std::vector<float>& ref, const std::string& what) {
    out.poison();
    launch();
    CUDA_CHECK(cudaDeviceSynchronize());
    expect_close(out.get(), ref, tolerance(type), what);
  };
  for (const bool packed : {true, false}) {
    const VariantScope scope(variants(packed));
    const std::string v = packed ? " (packed + scalar tail)" : " (scalar)";
    run([&] { cu::gelu_forward(out.ptr(), dx.ptr(), type, n, nullptr); }, gelu_ref, "gelu" + v);
    run([&] { cu::gelu_backward(out.ptr(), dx.ptr(), ddout.ptr(), type, n, nullptr); }, dgelu_ref, "gelu backward" + v);
  }
  {
    // One element in: unaligned pointers take the scalar kernels; element 0 must stay untouched.
    // (The dropout kernel packs whenever both pointers are aligned, so the aligned call below is packed.)
    const size_t es = llmqs::kernels::dtype_bytes(type);
    auto shifted = [&](const DeviceArray& a) { return static_cast<char*>(a.ptr()) + es; };
    auto expect_shifted = [&](const std::vector<float>& ref, const std::string& what) {
      CUDA_CHECK(cudaDeviceSynchronize());
      auto got = out.get();
      ASSERT_TRUE(std::isnan(got[0])) << what << ": element before the range was written";
      got.erase(got.begin());
      expect_close(got, std::vector<float>(ref.begin() + 1, ref.end()), tolerance(type), what);
    };
    out.poison();
    cu::gelu_forward(shifted(out), shifted(dx), type, n - 1, nullptr);
    expect_shifted(gelu_ref, "gelu, unaligned");
    out.poison();
    cu::gelu_backward(shifted(out), shifted(dx), shifted(ddout), type, n - 1, nullptr);
    expect_shifted(dgelu_ref, "gelu backward, unaligned");
    std::vector<float> drop_shifted_ref(n);  // the mask of elements 0 .. n - 2 of the shifted range
    kc::dropout_forward(drop_shifted_ref.data() + 1, x.data() + 1, n - 1, site);
    out.poison();
    cu::dropout_forward(shifted(out), shifted(dx), type, n - 1, site, nullptr);
    expect_shifted(drop_shifted_ref, "dropout, unaligned");
  }
  run([&] { cu::tanh_forward(out.ptr(), dx.ptr(), type, n, nullptr); }, tanh_ref, "tanh");
  run([&] { cu::tanh_backward(out.ptr(), dtanh_in.ptr(), ddout.ptr(), type, n, nullptr); }, dtanh_ref, "tanh backward");
  out.poison();
  cu::dropout_forward(out.ptr(), dx.ptr(), type, n, site, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto dropped = out.get();
  size_t zeros = 0;
  for (size_t i = 0; i < n; ++i) {
    // Same mask bit for bit: an element is zero on the GPU exactly where the CPU dropped it.
    ASSERT_EQ(dropped[i] == 0.0f, drop_ref[i] == 0.0f) << "dropout mask differs at element " << i;
    zeros += dropped[i] == 0.0f;
  }
  EXPECT_NEAR(double(zeros) / n, 0.25, 0.02);
  expect_close(dropped, drop_ref, tolerance(type), "dropout values");
}

// Bias-gradient column sums (packed and scalar kernels) and the fused dGELU + FFN1 bias pass,
// against the CPU, and packed == scalar bit for bit (the same addition order by construction).
// cols 72 runs packed for every type, 36 only in fp32, 37 never; 300 rows = three row chunks,
// which the packed kernels also sum with two blocks along the rows (one of them takes chunks 0 and 2).
TEST_P(CudaKernels, ColumnSumsAndFusedGeluBiasGradMatchCpuAndTheScalarBits) {
  REQUIRE_CUDA();
  const DType type = GetParam();
  const int rows = 300;
  for (const int cols : {72, 36, 37}) {
    const std::string what = "cols=" + std::to_string(cols);
    const size_t n = size_t(rows) * cols;
    const auto x = rounded(random_vector(n, 51 + cols, 2.0f), type), dout = rounded(random_vector(n, 52 + cols), type);
    const auto start = random_vector(cols, 53);
    std::vector<float> dgelu_ref(n);
    kc::gelu_backward(dgelu_ref.data(), x.data(), dout.data(), n);
    const auto dgelu_stored = rounded(dgelu_ref, type);  // what the GPU stores and then sums
    std::vector<float> dbias_ref = start, sum_ref = start;
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) {
        dbias_ref[c] += dgelu_stored[size_t(r) * cols + c];
        sum_ref[c] += dout[size_t(r) * cols + c];
      }
    DeviceArray dx(x, type), ddout(dout, type), dinp(n, type);
    DeviceArray scratch(cu::column_reduce_scratch_floats(rows, cols), DType::kF32);
    std::vector<float> bits[3][2];  // [scalar, packed, packed over two row blocks][column sum, fused dbias]
    for (const int variant : {1, 2, 0}) {
      const bool packed = variant > 0;
      const VariantScope scope([&] {
        cu::KernelVariants v = variants(packed);
        v.packed_column_sums = packed;
        v.column_sum_chunk_blocks = variant == 2 ? 2 : 0;
        return v;
      }());
      const std::string how = what + (packed ? " packed" : " scalar") + (variant == 2 ? " (2 row blocks)" : "");
      DeviceArray sum(start), dbias(start);
      cu::linear_backward_bias(sum.f32(), ddout.ptr(), type, rows, cols, scratch.f32(), nullptr);
      dinp.poison();
      cu::gelu_backward_bias_grad(dinp.ptr(), dbias.f32(), dx.ptr(), ddout.ptr(), type, rows, cols, scratch.f32(),
                                  nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      expect_close(dinp.get(), dgelu_ref, tolerance(type), "fused dGELU values " + how);
      bits[variant][0] = sum.get();
      bits[variant][1] = dbias.get();
      expect_close(bits[variant][0], sum_ref, 2e-5, "bias column sums " + how);
      // Half types: a stored dGELU value may round the other way than the CPU's (1 ulp, fast-math expf).
      expect_close(bits[variant][1], dbias_ref, type == DType::kF32 ? 2e-5 : 2e-3, "fused dGELU bias gradient " + how);
    }
    for (int variant : {1, 2})
      for (int k = 0; k < 2; ++k)
        for (int c = 0; c < cols; ++c)
          ASSERT_EQ(bits[variant][k][c], bits[0][k][c])
              << (k ? "fused dbias" : "column sum") << " column " << c << " " << what << " variant " << variant;
  }
}

TEST_P(CudaKernels, SoftmaxCrossEntropyMatchesCpu) {
  REQUIRE_CUDA();
  const DType type = GetParam();
  for (const int C : {2, 5, 37}) {
    const int rows = 29;
    const auto logits = random_vector(size_t(rows) * C, 50 + C, 3.0f);
    std::vector<int32_t> labels(rows);
    for (int r = 0; r < rows; ++r) labels[r] = (r * 7 + 3) % C;
    std::vector<float> loss_ref(rows), probs(logits.size()), dlogits_ref(logits.size());
    std::vector<int32_t> pred_ref(rows);
    kc::softmax_cross_entropy_forward(loss_ref.data(), probs.data(), pred_ref.data(), logits.data(), labels.data(), rows, C);
    kc::softmax_cross_entropy_backward(dlogits_ref.data(), probs.data(), labels.data(), rows, C, 0.125f);
    DeviceArray dlog(logits), loss(rows, DType::kF32), pred(rows, DType::kF32), dlogits(logits.size(), type);
    std::unique_ptr<DeviceArray> dlabels(upload_ints(labels));
    loss.poison();
    dlogits.poison();
    cu::softmax_cross_entropy(loss.f32(), pred.i32(), dlogits.ptr(), type, dlog.f32(), dlabels->i32(), rows, C, 0.125f,
                              nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    expect_close(loss.get(), loss_ref, 2e-5, "cross-entropy loss C=" + std::to_string(C));
    expect_close(dlogits.get(), dlogits_ref, tolerance(type), "dlogits C=" + std::to_string(C));
    EXPECT_EQ(download_ints(pred, rows), pred_ref) << "predictions C=" << C;
  }
}

// ---- optimizer and norm (fp32 only: master weights) -------------------------------------------
TEST(CudaKernelsFp32, AdamWMatchesCpuAndWritesTheLowPrecisionCopy) {
  REQUIRE_CUDA();
  const size_t n = 5003;
  auto params = random_vector(n, 60), grads = random_vector(n, 61), m = random_vector(n, 62, 0.01f);
  auto v = random_vector(n, 63, 0.01f);
  for (float& x : v) x = x * x;
  DeviceArray dp(params), dg(grads), dm(m), dv(v), low(n, DType::kBF16);
  for (int64_t step = 1; step <= 3; ++step) {
    kc::AdamWScalars s;
    s.lr = 1e-3f;
    s.weight_decay = step == 2 ? 0.0f : 0.01f;
    s.grad_scale = 0.5f;
    s.step = step;
    kc::adamw_update(params.data(), grads.data(), m.data(), v.data(), n, s);
    cu::AdamWScalars c;
    c.lr = s.lr;
    c.weight_decay = s.weight_decay;
    c.grad_scale = s.grad_scale;
    c.step = step;
    cu::adamw_update(dp.f32(), dg.f32(), dm.f32(), dv.f32(), nullptr, n, c, low.ptr(), DType::kBF16, nullptr);
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  expect_close(dp.get(), params, 1e-6, "params after 3 AdamW steps");
  expect_close(dm.get(), m, 1e-6, "exp_avg");
  expect_close(dv.get(), v, 1e-6, "exp_avg_sq");
  expect_close(low.get(), params, 1e-2, "bf16 copy");
}

// The backend's one launch over the whole flat buffer: decay where the bitmask says so, checked
// bit for bit against the CPU twin applied tensor by tensor (the CPU backend's loop). Spans of odd
// sizes put decay/no-decay boundaries inside 32-bit mask words and inside float4 chunks; one span
// has more elements than 4 x a full wave of H200 threads (132 x 2048), so even the float4 loop
// (4 elements a thread) turns, and
// a weight decay of 0.05 moves every decayed weight by more than an ulp, so an ignored or misread
// mask changes bits. Placements: everything
// 16-byte aligned (float4 path, n % 4 = 3 tail elements), everything one element off, and only
// the low copy one element off (both the scalar path). A guard element beside the range must stay.
TEST(CudaKernelsFp32, AdamWOneLaunchWithDecayMaskIsBitIdenticalToCpuPerTensor) {
  REQUIRE_CUDA();
  struct Span {
    size_t numel;
    bool decay;
  };
  const std::vector<Span> spans = {{37, true}, {1, false}, {771, true}, {5, false}, {64, true}, {2, false},
                                   {31, false}, {33, true}, {3, false}, {2049, true}, {29, false}, {1, true},
                                   {1500001, true}, {768, false}, {127, true}, {13, false}};
  size_t n = 0;
  for (const Span& s : spans) n += s.numel;
  ASSERT_EQ(n % 4, 3u);
  std::vector<uint32_t> mask(cu::adamw_decay_mask_words(n), 0u);
  for (size_t first = 0, k = 0; k < spans.size(); first += spans[k].numel, ++k)
    for (size_t i = first; spans[k].decay && i < first + spans[k].numel; ++i) mask[i / 32] |= 1u << (i % 32);
  DeviceArray dmask(mask.size(), DType::kF32);  // 4-byte words
  CUDA_CHECK(cudaMemcpy(dmask.ptr(), mask.data(), mask.size() * 4, cudaMemcpyHostToDevice));

  auto same_bits = [](const std::vector<float>& got, const std::vector<float>& ref, size_t from, const std::string& what) {
    size_t wrong = 0, first_wrong = 0;
    for (size_t i = 0; i < ref.size(); ++i)
      if (std::memcmp(&got[from + i], &ref[i], sizeof(float)) != 0 && wrong++ == 0) first_wrong = i;
    EXPECT_EQ(wrong, 0u) << what << ": " << wrong << " of " << ref.size() << " elements differ, first " << first_wrong
                         << " gpu " << got[from + first_wrong] << " cpu " << ref[first_wrong];
  };
  struct Placement {
    size_t at, low_at;  // element offsets of the range in the fp32 buffers and in the low copy
  };
  for (const DType low_type : {DType::kF32, DType::kBF16, DType::kF16}) {
    const bool with_low = low_type != DType::kF32;  // fp32 runs pass no copy, as the backend does
    for (const Placement place : {Placement{0, 0}, Placement{1, 1}, Placement{0, 1}}) {
      const std::string what = std::string(with_low ? llmqs::kernels::dtype_name(low_type) : "no") + " copy, range at " +
                               std::to_string(place.at) + "/" + std::to_string(place.low_at);
      auto params = random_vector(n, 80), grads = random_vector(n, 81), m = random_vector(n, 82, 0.01f);
      auto v = random_vector(n, 83, 0.01f);
      for (float& x : v) x = x * x;
      // Device buffers of n + 1 elements: the range at `at`, a guard value in the element left over.
      auto with_guard = [n](const std::vector<float>& x, size_t at) {
        std::vector<float> out(n + 1, 123.0f);
        std::copy(x.begin(), x.end(), out.begin() + at);
        return out;
      };
      DeviceArray dp(with_guard(params, place.at)), dg(with_guard(grads, place.at)), dm(with_guard(m, place.at)),
          dv(with_guard(v, place.at)), low(n + 1, with_low ? low_type : DType::kF32);
      low.poison();
      for (int64_t step = 1; step <= 3; ++step) {
        kc::AdamWScalars s;
        s.lr = 1e-3f;
        s.weight_decay = step == 2 ? 0.0f : 0.05f;
        s.grad_scale = 0.5f;
        s.step = step;
        for (size_t first = 0, k = 0; k < spans.size(); first += spans[k].numel, ++k) {
          kc::AdamWScalars t = s;
          t.weight_decay = spans[k].decay ? s.weight_decay : 0.0f;
          kc::adamw_update(params.data() + first, grads.data() + first, m.data() + first, v.data() + first,
                           spans[k].numel, t);
        }
        cu::AdamWScalars c;
        c.lr = s.lr;
        c.weight_decay = s.weight_decay;
        c.grad_scale = s.grad_scale;
        c.step = step;
        void* low_range = with_low ? static_cast<char*>(low.ptr()) + place.low_at * llmqs::kernels::dtype_bytes(low_type)
                                   : nullptr;
        cu::adamw_update(dp.f32() + place.at, dg.f32() + place.at, dm.f32() + place.at, dv.f32() + place.at,
                         static_cast<const uint32_t*>(dmask.ptr()), n, c, low_range, low_type, nullptr);
      }
      CUDA_CHECK(cudaDeviceSynchronize());
      const size_t guard = place.at == 0 ? n : 0;
      const auto p_got = dp.get(), m_got = dm.get(), v_got = dv.get(), g_got = dg.get();
      same_bits(p_got, params, place.at, what + ": params after 3 steps");
      same_bits(m_got, m, place.at, what + ": exp_avg");
      same_bits(v_got, v, place.at, what + ": exp_avg_sq");
      same_bits(g_got, grads, place.at, what + ": grads (read only)");
      EXPECT_EQ(p_got[guard], 123.0f) << what << ": params guard";
      EXPECT_EQ(m_got[guard], 123.0f) << what << ": exp_avg guard";
      EXPECT_EQ(v_got[guard], 123.0f) << what << ": exp_avg_sq guard";
      if (with_low) {
        const auto low_got = low.get();
        same_bits(low_got, rounded(params, low_type), place.low_at, what + ": low copy");
        EXPECT_TRUE(std::isnan(low_got[place.low_at == 0 ? n : 0])) << what << ": low copy guard written";
      } else {
        for (const float x : low.get()) ASSERT_TRUE(std::isnan(x)) << what << ": no copy asked for, one was written";
      }
    }
  }
}

// The packed path (16-byte-aligned buffer: float4 packs, the n % 4 tail in block 0) and the scalar
// path (an unaligned buffer: the same data one element further in) against the CPU.
TEST(CudaKernelsFp32, SumOfSquaresMatchesCpuAndIsDeterministic) {
  REQUIRE_CUDA();
  for (const size_t n : {size_t(1), size_t(3), size_t(4097), size_t(3000001), size_t(3000003)}) {
    auto g = random_vector(n + 1, 70 + uint32_t(n % 1000));
    DeviceArray dg(g), partial(cu::kGradNormBlocks * 2, DType::kF32);
    const double ref_aligned = kc::sum_of_squares(g.data(), n);
    const double ref_shifted = kc::sum_of_squares(g.data() + 1, n);
    for (const bool shifted : {false, true}) {
      const float* data = dg.f32() + (shifted ? 1 : 0);
      const double ref = shifted ? ref_shifted : ref_aligned;
      const double a = cu::sum_of_squares(data, n, reinterpret_cast<double*>(partial.ptr()), nullptr);
      const double b = cu::sum_of_squares(data, n, reinterpret_cast<double*>(partial.ptr()), nullptr);
      EXPECT_NEAR(a, ref, 1e-10 * ref) << "n=" << n << (shifted ? " unaligned" : " aligned");
      EXPECT_EQ(a, b) << "two runs differ, n=" << n;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, CudaKernels, ::testing::Values(DType::kF32, DType::kBF16, DType::kF16), type_name);

}  // namespace
