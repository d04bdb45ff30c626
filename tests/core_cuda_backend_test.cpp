// The `cuda` backend against the fp32 CPU reference backend on a tiny BERT (odd FFN width,
// padded rows, dropout on): loss, accuracy, EVERY parameter gradient, the gradient norm, and the
// weights and moments after AdamW steps. Tolerances: fp32 1e-5 on losses/weights and 1e-4 on
// gradients (relative to each tensor's max |cpu|), AdamW updates 1e-3 norm-relative per tensor;
// bf16/fp16 compare norm-relative errors ||gpu - cpu|| / ||cpu|| per tensor: gradients 3e-2
// (half-precision activations through 2 layers; fp16 with a loss scale of 1024, as training
// runs it). Half-precision AdamW updates are logged, not checked (see run_parity).
// The device-memory plan tests need no GPU; the rest skip with "no CUDA device: ...".
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/cpu_backend.h"
#include "core/cuda_backend.h"
#include "core/bench.h"
#include "core/device_memory.h"
#include "core/parameters.h"
#include "kernels/cuda_check.h"
#include "kernels/cuda_kernels.h"

using namespace llmqs;
using core::BertConfig;

#define REQUIRE_CUDA()                                                                           \
  do {                                                                                           \
    std::string why_;                                                                            \
    if (!core::cuda_device_available(&why_)) GTEST_SKIP() << "no CUDA device: " << why_;         \
  } while (0)

namespace {

BertConfig tiny_config() {
  BertConfig c;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.intermediate_size = 37;
  c.max_position_embeddings = 40;
  c.num_labels = 5;
  c.hidden_dropout_prob = 0.1f;
  c.attention_probs_dropout_prob = 0.1f;
  return c;
}

data::Batch make_batch(const BertConfig& c, int rows, int seq, uint32_t seed) {
  std::mt19937 gen(seed);
  data::Batch b;
  b.rows = rows;
  b.seq_len = seq;
  b.input_ids.assign(size_t(rows) * seq, c.pad_token_id);
  for (int r = 0; r < rows; ++r) {
    const int len = r == 0 ? seq : r == rows - 1 ? 1 : 1 + int(gen() % seq);
    b.lengths.push_back(len);
    b.labels.push_back(int(gen() % c.num_labels));
    for (int s = 0; s < len; ++s) b.input_ids[size_t(r) * seq + s] = 1 + int(gen() % (c.vocab_size - 1));
  }
  return b;
}

struct Diff {
  double max_rel = 0.0;   // max |a - b| / max |b|
  double norm_rel = 0.0;  // ||a - b|| / ||b||
};

// `floor` keeps tensors whose true gradient is zero (attention key biases: softmax ignores a
// constant added to every score of a row) from dividing rounding noise by noise.
Diff compare(const float* got, const float* ref, size_t n, double floor = 0.0) {
  double max_ref = 0, max_diff = 0, sq_diff = 0, sq_ref = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(got[i])) return Diff{INFINITY, INFINITY};
    const double d = double(got[i]) - ref[i];
    max_ref = std::max(max_ref, std::abs(double(ref[i])));
    max_diff = std::max(max_diff, std::abs(d));
    sq_diff += d * d;
    sq_ref += double(ref[i]) * ref[i];
  }
  Diff r;
  r.max_rel = max_diff / std::max(max_ref, std::max(floor, 1e-30));
  r.norm_rel = std::sqrt(sq_diff) / std::max(std::sqrt(sq_ref), std::max(floor * std::sqrt(double(n)), 1e-30));
  return r;
}

// Checks every parameter tensor of two flat buffers; prints the worst tensor for the log. Errors
// are relative to the tensor's own scale, floored at floor_fraction of the buffer's largest entry.
void expect_tensors_close(const core::ParameterLayout& layout, const std::vector<float>& got,
                          const std::vector<float>& ref, bool fp32, double tol, const std::string& what,
                          double floor_fraction = 1e-3) {
  double worst = 0, global_max = 0;
  std::string worst_name;
  for (float x : ref) global_max = std::max(global_max, std::abs(double(x)));
  for (const auto& p : layout.parameters()) {
    const Diff d = compare(got.data() + p.offset, ref.data() + p.offset, p.numel, floor_fraction * global_max);
    const double e = fp32 ? d.max_rel : d.norm_rel;
    EXPECT_LE(e, tol) << what << " " << p.name;
    if (e > worst) {
      worst = e;
      worst_name = p.name;
    }
  }
  std::cout << "[ cuda-vs-cpu ] " << what << ": worst " << (fp32 ? "max-relative" : "norm-relative") << " error "
            << worst << " (" << worst_name << ")\n";
}

void run_parity(const std::string& precision, double loss_tol, double grad_tol, double weight_tol,
                const BertConfig& c = tiny_config()) {
  const bool fp32 = precision == "fp32";
  // fp16 needs loss scaling, as the trainer applies it: small attention gradients are subnormal
  // in fp16 otherwise. The scale is a power of two, so unscaling is exact.
  const float loss_scale = precision == "fp16" ? 1024.0f : 1.0f;
  auto cpu = core::make_cpu_backend(c);
  auto gpu = core::make_cuda_backend(c, precision, 4, 16);
  EXPECT_EQ(gpu->name(), "cuda");
  const auto& layout = cpu->layout();
  const size_t n = layout.total_numel();
  std::vector<float> params(n);
  core::init_bert_parameters(c, layout, 7, params.data());
  cpu->set_parameters(params.data());
  gpu->set_parameters(params.data());

  for (int64_t step = 1; step <= 2; ++step) {
    cpu->zero_gradients();
    gpu->zero_gradients();
    // Two micro-batches of different shapes accumulate into one step.
    for (uint32_t micro = 0; micro < 2; ++micro) {
      const data::Batch batch = make_batch(c, micro == 0 ? 3 : 4, micro == 0 ? 16 : 9, 100 * step + micro);
      core::DropoutKey key;
      key.seed = 42;
      key.step = uint64_t(step - 1);
      key.micro_step = micro;
      const float weight = 1.0f / (2.0f * batch.rows);
      const core::BatchStats a = cpu->forward_backward(batch, weight, key);
      const core::BatchStats b = gpu->forward_backward(batch, weight * loss_scale, key);
      EXPECT_NEAR(b.loss_sum, a.loss_sum, loss_tol * a.loss_sum) << precision << " step " << step << " micro " << micro;
      if (fp32) {
        EXPECT_EQ(b.correct, a.correct);
      }
      EXPECT_EQ(b.rows, a.rows);
      std::cout << "[ cuda-vs-cpu ] " << precision << " step " << step << " micro " << micro << ": loss cpu "
                << a.loss_sum << " gpu " << b.loss_sum << "\n";
    }
    std::vector<float> g_cpu(n), g_gpu(n);
    cpu->get_gradients(g_cpu.data());
    gpu->get_gradients(g_gpu.data());
    for (float& g : g_gpu) g /= loss_scale;
    expect_tensors_close(layout, g_gpu, g_cpu, fp32, grad_tol, precision + " gradients, step " + std::to_string(step));
    const double norm_cpu = cpu->gradient_sq_norm(),
                 norm_gpu = gpu->gradient_sq_norm() / (double(loss_scale) * loss_scale);
    EXPECT_NEAR(norm_gpu, norm_cpu, (fp32 ? 1e-4 : 5e-2) * norm_cpu);

    std::vector<float> before_cpu(n), before_gpu(n);
    cpu->get_parameters(before_cpu.data());
    gpu->get_parameters(before_gpu.data());
    core::AdamWHyper h;
    h.lr = 1e-3f;
    h.weight_decay = 0.01f;
    h.grad_scale = 0.7f;
    h.step = step;
    cpu->adamw_step(h);
    h.grad_scale = 0.7f / loss_scale;
    gpu->adamw_step(h);
    std::vector<float> p_cpu(n), p_gpu(n), m_cpu(n), v_cpu(n), m_gpu(n), v_gpu(n);
    cpu->get_parameters(p_cpu.data());
    gpu->get_parameters(p_gpu.data());
    // AdamW turns every gradient into a step of about lr, so an entry whose gradient is tiny on
    // both sides can move differently: compare the updates norm-relative per tensor.
    std::vector<float> u_cpu(n), u_gpu(n);
    for (size_t i = 0; i < n; ++i) {
      u_cpu[i] = p_cpu[i] - before_cpu[i];
      u_gpu[i] = p_gpu[i] - before_gpu[i];
    }
    // In half precision the gradients differ by ~1e-2, and AdamW's early steps are close to
    // lr * sign(g): entries with small gradients flip, so only fp32 compares updates here (the
    // AdamW kernel itself is checked bit-close in kernels_cuda_test).
    // The floor is 5% of the largest update: a zero-gradient tensor (key biases) moves by
    // lr * noise / eps, noise that differs between any two summation orders.
    if (fp32)
      expect_tensors_close(layout, u_gpu, u_cpu, false, weight_tol, precision + " AdamW updates, step " + std::to_string(step),
                           5e-2);
    else
      expect_tensors_close(layout, u_gpu, u_cpu, false, 1e30, precision + " AdamW updates (logged only), step " + std::to_string(step));
    cpu->get_optimizer_state(m_cpu.data(), v_cpu.data());
    gpu->get_optimizer_state(m_gpu.data(), v_gpu.data());
    if (fp32) expect_tensors_close(layout, m_gpu, m_cpu, fp32, grad_tol, "fp32 exp_avg after step " + std::to_string(step));
  }

  // Evaluation: dropout off, logits to the host.
  const data::Batch eval = make_batch(c, 4, 12, 999);
  std::vector<float> l_cpu(size_t(eval.rows) * c.num_labels), l_gpu(l_cpu.size(), NAN);
  const core::BatchStats a = cpu->forward(eval, l_cpu.data());
  const core::BatchStats b = gpu->forward(eval, l_gpu.data());
  EXPECT_NEAR(b.loss_sum, a.loss_sum, loss_tol * a.loss_sum);
  const Diff d = compare(l_gpu.data(), l_cpu.data(), l_cpu.size());
  EXPECT_LE(fp32 ? d.max_rel : d.norm_rel, fp32 ? 1e-5 : 3e-2) << precision << " eval logits";
  std::cout << "[ cuda-vs-cpu ] " << precision << " eval logits max-relative error " << d.max_rel << "\n";
}

TEST(CudaBackend, Fp32TrainingStepsMatchTheCpuBackend) {
  REQUIRE_CUDA();
  run_parity("fp32", 1e-5, 1e-4, 1e-3);
}

TEST(CudaBackend, Bf16TrainingStepsTrackTheCpuBackend) {
  REQUIRE_CUDA();
  run_parity("bf16", 1e-2, 3e-2, 0.0);
}

TEST(CudaBackend, Fp16TrainingStepsTrackTheCpuBackend) {
  REQUIRE_CUDA();
  run_parity("fp16", 1e-2, 3e-2, 0.0);
}

// tiny_config's FFN width (37) sends GELU and the FFN1 bias sums to the scalar fallback; 72 takes
// the packed kernels and the fused dGELU + bias-gradient pass in every precision.
TEST(CudaBackend, PackedFfnWidthTrainingStepsMatchTheCpuBackend) {
  REQUIRE_CUDA();
  BertConfig c = tiny_config();
  c.intermediate_size = 72;
  run_parity("fp32", 1e-5, 1e-4, 1e-3, c);
  run_parity("bf16", 1e-2, 3e-2, 0.0, c);
}

// The validation switches (core/cuda_backend.cpp): the first, scalar LayerNorm and GELU kernels
// and batch copies straight from the vectors must give the same CPU parity as the defaults
// (packed kernels, pinned staging, token groups uploaded after the forward is enqueued).
TEST(CudaBackend, ScalarKernelsAndPageableUploadMatchTheCpuBackend) {
  REQUIRE_CUDA();
  ::setenv("LLMQS_LAYERNORM", "scalar", 1);
  ::setenv("LLMQS_GELU", "scalar", 1);
  ::setenv("LLMQS_UPLOAD", "pageable", 1);
  {
    const BertConfig c = tiny_config();
    auto probe = core::make_cuda_backend(c, "fp32", 1, 4);
    EXPECT_FALSE(kernels::cuda::kernel_variants().packed_layernorm);
    EXPECT_FALSE(kernels::cuda::kernel_variants().packed_gelu);
  }
  run_parity("fp32", 1e-5, 1e-4, 1e-3);
  run_parity("bf16", 1e-2, 3e-2, 0.0);
  ::unsetenv("LLMQS_LAYERNORM");
  ::unsetenv("LLMQS_GELU");
  ::unsetenv("LLMQS_UPLOAD");
  auto packed = core::make_cuda_backend(tiny_config(), "fp32", 1, 4);
  EXPECT_TRUE(kernels::cuda::kernel_variants().packed_layernorm);
  EXPECT_TRUE(kernels::cuda::kernel_variants().packed_gelu);
}

// head_dim 32: bf16/fp16 run the fused tensor-core attention (kernels/flash_attention.cu).
BertConfig tiny_fused_attention_config() {
  BertConfig c = tiny_config();
  c.hidden_size = 64;
  c.num_attention_heads = 2;
  return c;
}

TEST(CudaBackend, Bf16FusedAttentionTrainingStepsTrackTheCpuBackend) {
  REQUIRE_CUDA();
  if (kernels::cuda::loaded_code_arch() < 800)
    GTEST_SKIP() << "bf16 fused attention needs sm_80 code; this binary runs compute_"
                 << kernels::cuda::loaded_code_arch() / 10 << " code here (the T4 build)";
  ::setenv("LLMQS_ATTENTION", "fused", 1);
  ASSERT_TRUE(core::fused_attention_planned(tiny_fused_attention_config(), "bf16"));
  run_parity("bf16", 1e-2, 3e-2, 0.0, tiny_fused_attention_config());
  ::unsetenv("LLMQS_ATTENTION");
}

TEST(CudaBackend, Fp16FusedAttentionTrainingStepsTrackTheCpuBackend) {
  REQUIRE_CUDA();
  ::setenv("LLMQS_ATTENTION", "fused", 1);
  ASSERT_TRUE(core::fused_attention_planned(tiny_fused_attention_config(), "fp16"));
  run_parity("fp16", 1e-2, 3e-2, 0.0, tiny_fused_attention_config());
  ::unsetenv("LLMQS_ATTENTION");
}

// The per-layer gradient all-reduce starts a range on the communicator's stream after an event on
// device_stream() at the hook: so at the hook, every kernel that writes the range must already be
// issued. Synchronising the stream there and copying the range must give its final value; the
// ranges come in backward_ranges() order, as on the CPU backend (bf16 fused attention included).
TEST(CudaBackend, ReportsEachLayersGradientsOnceTheirKernelsAreIssued) {
  REQUIRE_CUDA();
  for (const std::string precision : {"fp32", "bf16"}) {
    if (precision == "bf16" && kernels::cuda::loaded_code_arch() < 800) continue;
    const BertConfig c = precision == "bf16" ? tiny_fused_attention_config() : tiny_config();
    if (precision == "bf16") ::setenv("LLMQS_ATTENTION", "fused", 1);
    auto gpu = core::make_cuda_backend(c, precision, 4, 16);
    ::unsetenv("LLMQS_ATTENTION");
    std::vector<float> params(gpu->layout().total_numel());
    core::init_bert_parameters(c, gpu->layout(), 3, params.data());
    gpu->set_parameters(params.data());
    ASSERT_NE(gpu->device_stream(), nullptr);
    std::vector<core::ParameterLayout::Range> reported;
    std::vector<std::vector<float>> at_report;
    gpu->set_gradient_ready_hook([&](const core::ParameterLayout::Range& r) {
      reported.push_back(r);
      CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(gpu->device_stream())));
      std::vector<float> now(r.count);
      CUDA_CHECK(cudaMemcpy(now.data(), gpu->gradient_buffer() + r.offset, r.count * sizeof(float),
                            cudaMemcpyDeviceToHost));
      at_report.push_back(std::move(now));
    });
    core::DropoutKey key;
    key.seed = 11;
    gpu->zero_gradients();
    gpu->forward_backward(make_batch(c, 4, 16, 5), 0.25f, key);
    gpu->set_gradient_ready_hook({});
    std::vector<float> final_grads(gpu->layout().total_numel());
    gpu->get_gradients(final_grads.data());
    const auto& expected = gpu->layout().backward_ranges();
    ASSERT_EQ(reported.size(), expected.size()) << precision;
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(reported[i].offset, expected[i].offset) << precision << " range " << i;
      ASSERT_EQ(reported[i].count, expected[i].count) << precision << " range " << i;
      const std::vector<float> after(final_grads.begin() + static_cast<std::ptrdiff_t>(expected[i].offset),
                                     final_grads.begin() + static_cast<std::ptrdiff_t>(expected[i].offset + expected[i].count));
      EXPECT_EQ(at_report[i], after) << precision << ": range " << i << " changed after it was reported";
    }
  }
}

// ZeRO-1 (core/optimizer_shard.h): a backend that owns one of `world` shards updates exactly the
// parameters and moments a whole backend updates there, bit for bit, and leaves the rest alone;
// once the other shards' parameters are written into its fp32 buffer (the all-gather) and
// parameters_gathered() refreshes the bf16 copy, its forward gives the whole backend's logits.
TEST(CudaBackend, EachShardUpdatesItsOwnParametersExactlyAsTheWholeBackend) {
  REQUIRE_CUDA();
  const BertConfig c = tiny_config();
  const size_t numel = core::ParameterLayout::for_bert(c).total_numel();
  std::vector<float> params(numel), m(numel), v(numel);
  core::init_bert_parameters(c, core::ParameterLayout::for_bert(c), 4, params.data());
  for (size_t i = 0; i < numel; ++i) {
    m[i] = 1e-3f * static_cast<float>((i * 31) % 17) - 8e-3f;
    v[i] = 1e-6f * static_cast<float>((i * 13) % 23 + 1);
  }
  core::AdamWHyper hyper;
  hyper.lr = 1e-2f;
  hyper.weight_decay = 0.1f;
  hyper.grad_scale = 0.75f;
  hyper.step = 3;
  core::DropoutKey key;
  key.seed = 21;
  const data::Batch batch = make_batch(c, 4, 16, 8);
  for (const std::string precision : {"fp32", "bf16"}) {
    if (precision == "bf16" && kernels::cuda::loaded_code_arch() < 800) continue;
    auto step = [&](core::Backend& backend) {
      backend.set_parameters(params.data());
      backend.set_optimizer_state(m.data(), v.data());
      backend.zero_gradients();
      backend.forward_backward(batch, 0.25f, key);
      const double sq = backend.gradient_sq_norm();
      backend.adamw_step(hyper);
      return sq;
    };
    auto whole = core::make_cuda_backend(c, precision, 4, 16);
    const double whole_sq = step(*whole);
    std::vector<float> want_p(numel), want_m(numel), want_v(numel), want_logits(4 * c.num_labels);
    whole->get_parameters(want_p.data());
    whole->get_optimizer_state(want_m.data(), want_v.data());
    whole->forward(batch, want_logits.data());
    for (int world : {2, 3}) {
      double shard_sq = 0.0;
      for (int rank = 0; rank < world; ++rank) {
        const auto shard = core::OptimizerShard::of_rank(numel, rank, world);
        auto gpu = core::make_cuda_backend(c, precision, 4, 16, shard);
        shard_sq += step(*gpu);
        std::vector<float> got_p(numel), got_m(numel, -1.0f), got_v(numel, -1.0f);
        gpu->get_parameters(got_p.data());
        gpu->get_optimizer_state(got_m.data(), got_v.data());
        size_t wrong = 0;
        for (size_t i = 0; i < numel; ++i) {
          if (i >= shard.begin && i < shard.owned_end())
            wrong += got_p[i] != want_p[i] || got_m[i] != want_m[i] || got_v[i] != want_v[i];
          else
            wrong += got_p[i] != params[i] || got_m[i] != -1.0f || got_v[i] != -1.0f;
        }
        EXPECT_EQ(wrong, 0u) << precision << " rank " << rank << " of " << world;
        std::vector<float> owned_m(shard.owned_numel()), owned_v(shard.owned_numel());
        gpu->get_owned_optimizer_state(owned_m.data(), owned_v.data());
        EXPECT_TRUE(std::equal(owned_m.begin(), owned_m.end(), got_m.begin() + static_cast<std::ptrdiff_t>(shard.begin)));
        EXPECT_TRUE(std::equal(owned_v.begin(), owned_v.end(), got_v.begin() + static_cast<std::ptrdiff_t>(shard.begin)));
        std::vector<float> padding(shard.padded_numel - numel, 1.0f);
        CUDA_CHECK(cudaMemcpy(padding.data(), gpu->parameter_buffer() + numel, padding.size() * sizeof(float),
                              cudaMemcpyDeviceToHost));
        EXPECT_EQ(std::count(padding.begin(), padding.end(), 0.0f), static_cast<std::ptrdiff_t>(padding.size()));
        // The all-gather's effect, then the refresh: the forward sees the whole update.
        CUDA_CHECK(cudaMemcpy(gpu->parameter_buffer(), want_p.data(), numel * sizeof(float), cudaMemcpyHostToDevice));
        gpu->parameters_gathered();
        std::vector<float> logits(4 * c.num_labels);
        gpu->forward(batch, logits.data());
        EXPECT_EQ(logits, want_logits) << precision << " rank " << rank << " of " << world;
      }
      EXPECT_NEAR(shard_sq, whole_sq, 1e-12 * whole_sq) << precision << " world " << world;
    }
  }
}

// CUDA graphs (core/cuda_backend.cpp, StepGraphs): a shape's first training micro-batch runs
// kernel by kernel, later ones replay graphs captured with that micro-batch's dropout keys, loss
// weight and token groups. Against a backend with LLMQS_CUDA_GRAPHS=0, over two batch shapes
// interleaved, gradient accumulation, AdamW steps and an evaluation in between: every loss,
// gradient, parameter, moment and logit is bit-identical.
TEST(CudaBackend, GraphReplayIsBitIdenticalToKernelByKernelLaunches) {
  REQUIRE_CUDA();
  auto same_bits = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  for (const std::string precision : {"fp32", "bf16"}) {
    if (precision == "bf16" && kernels::cuda::loaded_code_arch() < 800) continue;
    const BertConfig c = precision == "bf16" ? tiny_fused_attention_config() : tiny_config();
    if (precision == "bf16") ::setenv("LLMQS_ATTENTION", "fused", 1);
    ::setenv("LLMQS_CUDA_GRAPHS", "0", 1);
    auto eager = core::make_cuda_backend(c, precision, 4, 16);
    ::unsetenv("LLMQS_CUDA_GRAPHS");
    auto graphs = core::make_cuda_backend(c, precision, 4, 16);
    ::unsetenv("LLMQS_ATTENTION");
    const size_t numel = eager->layout().total_numel();
    std::vector<float> params(numel);
    core::init_bert_parameters(c, eager->layout(), 5, params.data());
    eager->set_parameters(params.data());
    graphs->set_parameters(params.data());
    const data::Batch shapes[2] = {make_batch(c, 4, 16, 31), make_batch(c, 3, 12, 32)};
    const data::Batch eval = make_batch(c, 4, 16, 33);
    for (int step = 1; step <= 4; ++step) {
      const std::string what = precision + " step " + std::to_string(step);
      eager->zero_gradients();
      graphs->zero_gradients();
      for (int m = 0; m < 2; ++m) {
        core::DropoutKey key;
        key.seed = 77;
        key.step = static_cast<uint64_t>(step);
        key.micro_step = static_cast<uint32_t>(m);
        const data::Batch& batch = shapes[(step + m) % 2];
        const float weight = m == 0 ? 0.5f : 0.25f;
        const core::BatchStats a = eager->forward_backward(batch, weight, key);
        const core::BatchStats b = graphs->forward_backward(batch, weight, key);
        EXPECT_EQ(a.loss_sum, b.loss_sum) << what << " micro " << m;
        EXPECT_EQ(a.correct, b.correct) << what << " micro " << m;
      }
      std::vector<float> ga(numel), gb(numel);
      eager->get_gradients(ga.data());
      graphs->get_gradients(gb.data());
      EXPECT_TRUE(same_bits(ga, gb)) << what << ": gradients";
      EXPECT_EQ(eager->gradient_sq_norm(), graphs->gradient_sq_norm()) << what;
      core::AdamWHyper h;
      h.lr = 1e-3f;
      h.weight_decay = 0.01f;
      h.step = step;
      eager->adamw_step(h);
      graphs->adamw_step(h);
      if (step == 2) {  // an evaluation (eager, dropout off) between training steps
        std::vector<float> la(size_t(eval.rows) * c.num_labels), lb(la.size());
        eager->forward(eval, la.data());
        graphs->forward(eval, lb.data());
        EXPECT_TRUE(same_bits(la, lb)) << what << ": eval logits";
      }
    }
    std::vector<float> pa(numel), pb(numel), ma(numel), mb(numel), va(numel), vb(numel);
    eager->get_parameters(pa.data());
    graphs->get_parameters(pb.data());
    eager->get_optimizer_state(ma.data(), va.data());
    graphs->get_optimizer_state(mb.data(), vb.data());
    EXPECT_TRUE(same_bits(pa, pb)) << precision << ": parameters";
    EXPECT_TRUE(same_bits(ma, mb) && same_bits(va, vb)) << precision << ": AdamW moments";
    // 8 micro-batches of two shapes: each shape's first is eager, the other 6 replay.
    EXPECT_EQ(core::cuda_graph_replays(*graphs), 6) << precision;
    EXPECT_EQ(core::cuda_graph_replays(*eager), 0) << precision;
  }
}

TEST(CudaBackend, RefusesBatchesBeyondItsArenaAndBadTokens) {
  REQUIRE_CUDA();
  const BertConfig c = tiny_config();
  auto gpu = core::make_cuda_backend(c, "fp32", 2, 8);
  core::DropoutKey key;
  data::Batch too_long = make_batch(c, 2, 16, 1);
  EXPECT_THROW(gpu->forward_backward(too_long, 1.0f, key), std::invalid_argument);
  data::Batch bad = make_batch(c, 2, 8, 2);
  bad.input_ids[3] = c.vocab_size;
  try {
    gpu->forward(bad, nullptr);
    FAIL() << "a token outside the vocabulary was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("batch row 0 position 3"), std::string::npos) << e.what();
  }
}

// Throughput of whole training steps on bert-base (random full-length rows), printed for the
// log; runs only when LLMQS_CUDA_BENCH=1 (a measurement, not a check; skipped in CI).
TEST(CudaBackend, BertBaseStepThroughput) {
  REQUIRE_CUDA();
  if (!std::getenv("LLMQS_CUDA_BENCH")) GTEST_SKIP() << "set LLMQS_CUDA_BENCH=1 to measure";
  const BertConfig c;  // bert-base-cased
  struct Case {
    const char* precision;
    int rows, seq;
  };
  for (const Case k : {Case{"bf16", 64, 512}, Case{"bf16", 256, 128}, Case{"fp16", 16, 512}, Case{"fp32", 16, 512}}) {
    auto gpu = core::make_cuda_backend(c, k.precision, k.rows, k.seq);
    data::Batch batch = make_batch(c, k.rows, k.seq, 5);
    for (auto& l : batch.lengths) l = k.seq;
    for (auto& id : batch.input_ids) id = 1 + int(uint32_t(id * 2654435761u) % uint32_t(c.vocab_size - 1));
    core::DropoutKey key;
    core::AdamWHyper h;
    auto step = [&](int64_t i) {
      key.step = uint64_t(i);
      gpu->zero_gradients();
      gpu->forward_backward(batch, 1.0f / k.rows, key);
      h.step = i + 1;
      const double norm = gpu->gradient_sq_norm();
      gpu->adamw_step(h);
      return norm;
    };
    for (int i = 0; i < 2; ++i) step(i);
    const int steps = 5;
    const auto start = std::chrono::steady_clock::now();
    double norm = 0;
    for (int i = 0; i < steps; ++i) norm = step(2 + i);
    gpu->get_parameters(std::vector<float>(gpu->layout().total_numel()).data());  // waits for the last update
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / steps;
    const double tokens = double(k.rows) * k.seq;
    const double nonembed = double(gpu->layout().total_numel()) -
                            double(c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * c.hidden_size;
    const double flops = tokens * (6.0 * nonembed + 12.0 * c.num_hidden_layers * k.seq * c.hidden_size);
    std::cout << "[ bench ] bert-base " << k.precision << " " << k.rows << "x" << k.seq << ": " << seconds * 1e3
              << " ms/step, " << tokens / seconds / 1e3 << "K tokens/s, " << flops / seconds / 1e12
              << " TFLOP/s, grad sq-norm " << norm << "\n";
    EXPECT_TRUE(std::isfinite(norm));
  }
}

// ---- `llmqs-dist bench`: batch shapes and a cpu-backend run, host only -------------------------
TEST(Bench, YelpLengthsFollowTheReferenceLogNormalAndPaddingRules) {
  core::BenchConfig c;
  c.lengths = "yelp";
  c.seq = 512;
  c.batch = 64;
  double sum = 0, rows = 0, at_cap = 0, padded_max = 0, padded_longest = 0, padded_grouped = 0;
  for (const char* padding : {"max_length", "longest", "grouped"}) {
    c.padding = padding;
    const auto shapes = core::bench_batch_shapes(c);
    ASSERT_EQ(shapes.size(), 64u) << padding;
    for (const auto& s : shapes) {
      ASSERT_EQ(s.lengths.size(), 64u);
      const int longest = *std::max_element(s.lengths.begin(), s.lengths.end());
      EXPECT_GE(s.width, longest);
      EXPECT_LE(s.width, 512);
      EXPECT_EQ(s.width % 8, 0);
      if (c.padding != "max_length") {
        EXPECT_LT(s.width, longest + 8);
      }
      double& padded = c.padding == "max_length" ? padded_max : c.padding == "longest" ? padded_longest : padded_grouped;
      padded += double(s.width) * s.lengths.size();
      for (int32_t l : s.lengths) {
        ASSERT_GE(l, 8);
        ASSERT_LE(l, 512);
        if (c.padding == "max_length") {
          sum += l, rows += 1, at_cap += l == 512;
        }
      }
    }
  }
  // log-normal(4.846, 0.826) clamped to 8..512: mean ~166, ~4.4% at the cap (MISSION.md: ~170, 4.6%).
  EXPECT_NEAR(sum / rows, 166.0, 8.0);
  EXPECT_NEAR(at_cap / rows, 0.044, 0.012);
  EXPECT_DOUBLE_EQ(padded_max, 64.0 * 64 * 512);
  // A random batch of 64 almost always holds a review near 512, so `longest` saves little;
  // grouping sorts mega-batches and pads about a third as much (numpy, same model: 0.34-0.37).
  EXPECT_LE(padded_longest, padded_max);
  EXPECT_GT(padded_longest, 0.95 * padded_max);
  EXPECT_GT(padded_grouped, 0.25 * padded_longest);
  EXPECT_LT(padded_grouped, 0.45 * padded_longest);
  c.padding = "shortest";
  EXPECT_THROW(core::bench_batch_shapes(c), std::invalid_argument);
  c.padding = "grouped";
  c.lengths = "zipf";
  EXPECT_THROW(core::bench_batch_shapes(c), std::invalid_argument);
}

TEST(Bench, CpuBackendRunReportsConsistentThroughput) {
  core::BenchConfig c;
  c.backend = "cpu";
  c.model = tiny_config();
  c.seq = 16;
  c.batch = 3;
  c.steps = 2;
  c.warmup = 1;
  c.peak_tflops = 1.0;
  const core::BenchResult r = core::run_training_bench(c, std::chrono::steady_clock::now());
  EXPECT_EQ(r.dtype, "fp32");
  EXPECT_GT(r.ms_per_step, 0.0);
  EXPECT_NEAR(r.tok_per_s, 3.0 * 16 / (r.ms_per_step / 1e3), 1e-6 * r.tok_per_s);
  EXPECT_DOUBLE_EQ(r.tok_per_s, r.useful_tok_per_s);  // full lengths: no padding
  // Non-embedding parameters of the tiny config: every tensor but the three tables and their LayerNorm.
  const auto layout = core::ParameterLayout::for_bert(c.model);
  const int64_t embed = int64_t(c.model.vocab_size + c.model.max_position_embeddings + c.model.type_vocab_size + 2) *
                        c.model.hidden_size;
  EXPECT_EQ(r.non_embedding_params, int64_t(layout.total_numel()) - embed);
  const double flops_tok = 6.0 * r.non_embedding_params + 12.0 * c.model.num_hidden_layers * 16 * c.model.hidden_size;
  EXPECT_NEAR(r.model_tflops, r.tok_per_s * flops_tok / 1e12, 1e-9);
  EXPECT_NEAR(r.mfu, r.model_tflops / 1.0, 1e-12);
  EXPECT_TRUE(std::isfinite(r.final_loss));
  EXPECT_NEAR(r.final_loss, std::log(5.0), 0.5);  // random init: about ln(num_labels)
  const std::string json = core::bench_result_json(r);
  for (const char* key : {"\"system\":\"llmqs-dist\"", "\"tok_per_s\":", "\"useful_tok_per_s\":", "\"mfu\":",
                          "\"yelp_epoch_s\":null", "\"peak_mem_gib\":", "\"launch_to_first_step_s\":"})
    EXPECT_NE(json.find(key), std::string::npos) << key << " in " << json;
}

// ---- the memory plan: host arithmetic, runs everywhere ----------------------------------------
TEST(DeviceMemoryPlan, GrowsWithTheBatchAndShrinksWithHalfPrecision) {
  BertConfig base;  // bert-base-cased
  const size_t fp32_16 = core::estimate_device_bytes(base, 16, 512, "fp32");
  const size_t fp16_16 = core::estimate_device_bytes(base, 16, 512, "fp16");
  const size_t fp16_32 = core::estimate_device_bytes(base, 32, 512, "fp16");
  EXPECT_LT(fp16_16, fp32_16);
  EXPECT_GT(fp16_32, fp16_16);
  // Parameters, gradients and two moments in fp32 are a floor: 16 bytes per parameter.
  const size_t params = core::ParameterLayout::for_bert(base).total_numel();
  EXPECT_GT(fp16_16, params * 16 + params * 2);
  // The notebook's T4 setup (batch 16 x 512, fp16) must fit a 16 GB card.
  EXPECT_LT(fp16_16, size_t(15) << 30) << fp16_16;
  std::cout << "[ memory ] bert-base 16x512: fp32 " << fp32_16 / double(1 << 30) << " GiB, fp16 "
            << fp16_16 / double(1 << 30) << " GiB; 32x512 fp16 " << fp16_32 / double(1 << 30) << " GiB\n";
  const core::DeviceMemoryPlan plan = core::plan_device_memory(base, 16, 512, "bf16");
  EXPECT_EQ(plan.layers.size(), 12u);
  EXPECT_EQ(plan.params_low - plan.adam_v, params * 4 + (256 - params * 4 % 256) % 256);
  EXPECT_EQ(plan.arena_bytes % 256, 0u);
  // The attention scratch is sized in the kernels' layouts (the backend refuses a plan that is not).
  EXPECT_EQ(plan.attn_ds_bytes, llmqs::kernels::cuda::flash_attention_ds_elements(16, 512, 12) * 2);
  EXPECT_EQ(plan.att_bias_partials_bytes,
            llmqs::kernels::cuda::flash_attention_qkv_bias_partial_rows(16, 512) * 3 * 768 * 4);
}

// ZeRO-1 divides the moments' 8 bytes per parameter by the ranks and pads the rest a little.
TEST(DeviceMemoryPlan, ZeroStage1DividesTheMomentsByTheRanks) {
  BertConfig base;  // bert-base-cased
  const size_t params = core::ParameterLayout::for_bert(base).total_numel();
  const core::DeviceMemoryPlan whole = core::plan_device_memory(base, 16, 512, "bf16");
  EXPECT_EQ(whole.shard.count, params);
  for (int world : {2, 4, 8}) {
    const auto shard = core::OptimizerShard::of_rank(params, world - 1, world);
    const core::DeviceMemoryPlan plan = core::plan_device_memory(base, 16, 512, "bf16", true, shard);
    EXPECT_EQ(plan.adam_v - plan.adam_m, shard.count * 4 + (256 - shard.count * 4 % 256) % 256);
    const double saved = double(whole.arena_bytes) - double(plan.arena_bytes);
    const double expected = 8.0 * params * (1.0 - 1.0 / world);
    EXPECT_NEAR(saved, expected, 0.001 * expected) << world;
  }
  EXPECT_THROW(core::plan_device_memory(base, 16, 512, "bf16", true, core::OptimizerShard::of_rank(params + 1, 0, 2)),
               std::invalid_argument);
}

TEST(DeviceMemoryPlan, AdamWDecayMaskHasOneBitPerParameterSetWhereTheTensorDecays) {
  const BertConfig c = tiny_config();
  const auto layout = core::ParameterLayout::for_bert(c);
  const size_t params = layout.total_numel();
  const std::vector<uint32_t> mask = core::build_adamw_decay_mask(layout);
  ASSERT_EQ(mask.size(), (params + 31) / 32);
  ASSERT_EQ(mask.size(), kernels::cuda::adamw_decay_mask_words(params));
  size_t decayed = 0, tensors_with_a_split_word = 0;
  for (const core::ParameterInfo& p : layout.parameters()) {
    for (size_t i = p.offset; i < p.offset + p.numel; ++i) {
      const bool bit = (mask[i / 32] >> (i % 32)) & 1u;
      ASSERT_EQ(bit, p.weight_decay) << p.name << " element " << i - p.offset;
      decayed += bit;
    }
    tensors_with_a_split_word += p.offset % 32 != 0;
  }
  for (size_t i = params; i < mask.size() * 32; ++i) EXPECT_EQ((mask[i / 32] >> (i % 32)) & 1u, 0u) << "bit " << i;
  EXPECT_GT(decayed, 0u);
  EXPECT_LT(decayed, params);
  EXPECT_GT(tensors_with_a_split_word, 0u);  // the tiny config's odd sizes put boundaries inside words
  // In the arena after the grad-norm partials; the parameter buffers stay 256-byte aligned, so the
  // AdamW kernel's float4 path covers them.
  for (const char* precision : {"fp32", "bf16"}) {
    const core::DeviceMemoryPlan plan = core::plan_device_memory(c, 3, 16, precision);
    EXPECT_EQ(plan.adamw_decay_mask - plan.grad_norm_partial, 1024u * 8) << precision;
    EXPECT_GE(plan.ids - plan.adamw_decay_mask, mask.size() * 4) << precision;
    for (const size_t offset : {plan.params, plan.grads, plan.adam_m, plan.adam_v, plan.params_low})
      EXPECT_EQ(offset % 256, 0u) << precision;
  }
}

TEST(DeviceMemoryPlan, ShortfallNamesTheEstimateAndWhatToChange) {
  BertConfig base;
  try {
    core::check_device_memory_fits(base, 64, 512, "fp32", size_t(8) << 30);
    FAIL() << "64 x 512 fp32 bert-base was accepted in 8 GiB";
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("needs about"), std::string::npos) << m;
    EXPECT_NE(m.find("8.00 GiB"), std::string::npos) << m;
    EXPECT_NE(m.find("per_device_train_batch_size"), std::string::npos) << m;
    EXPECT_NE(m.find("bf16"), std::string::npos) << m;
  }
  EXPECT_NO_THROW(core::check_device_memory_fits(base, 1, 128, "bf16", size_t(8) << 30));
  EXPECT_THROW(core::plan_device_memory(base, 16, 512, "auto"), std::invalid_argument);
}

TEST(CudaBackend, ReportsAMissingDeviceOrAUsableOne) {
  std::string why;
  const bool available = core::cuda_device_available(&why);
  if (!available) {
    EXPECT_FALSE(why.empty());
    EXPECT_THROW(core::make_cuda_backend(tiny_config(), "fp32", 2, 8), std::runtime_error);
    GTEST_SKIP() << "no CUDA device: " << why;
  }
  EXPECT_EQ(core::resolve_cuda_precision("fp32", 0), "fp32");
  const std::string automatic = core::resolve_cuda_precision("auto", 0);
  EXPECT_TRUE(automatic == "bf16" || automatic == "fp16") << automatic;
  EXPECT_THROW(core::resolve_cuda_precision("fp8", 0), std::invalid_argument);
}

}  // namespace
