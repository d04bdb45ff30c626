// The CPU reference kernels (kernels/cpu/): every backward against central finite differences
// in double on odd shapes and padded batches, forward values against direct formulas, Philox
// against Random123's known answers, and dropout mask statistics and determinism.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "kernels/cpu/activations.h"
#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/dropout.h"
#include "kernels/cpu/embeddings.h"
#include "kernels/cpu/grad_norm.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/softmax_cross_entropy.h"
#include "kernels/philox.h"

namespace kc = llmqs::kernels::cpu;
using llmqs::kernels::DropoutSite;

namespace {

std::vector<double> random_vector(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = normal(gen);
  return v;
}

std::vector<float> to_float(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Compares analytic[i] with the fourth-order central difference of loss() in x[i] (truncation
// O(h^4), so h = 1e-4 keeps both truncation and round-off near 1e-11), for every element (or
// every `stride`-th). Relative error against max(|analytic|, |numeric|, 1e-3 * max |analytic|).
void expect_gradient_matches(std::vector<double>& x, const std::vector<double>& analytic,
                             const std::function<double()>& loss, const char* what, double tol = 1e-6,
                             size_t stride = 1) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  const double h = 1e-4;
  double max_abs = 0.0;
  for (double a : analytic) max_abs = std::max(max_abs, std::abs(a));
  ASSERT_GT(max_abs, 0.0) << what << ": the analytic gradient is identically zero";
  int checked = 0;
  for (size_t i = 0; i < x.size(); i += stride) {
    const double saved = x[i];
    auto at = [&](double offset) {
      x[i] = saved + offset;
      return loss();
    };
    const double numeric = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h);
    x[i] = saved;
    const double scale = std::max({std::abs(analytic[i]), std::abs(numeric), 1e-3 * max_abs});
    EXPECT_LT(std::abs(analytic[i] - numeric) / scale, tol)
        << what << "[" << i << "]: analytic " << analytic[i] << " numeric " << numeric;
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

// One of Random123's kat_vectors: counter c0..c3 and key k0, k1 in, the four output words.
struct PhiloxKnownAnswer {
  uint32_t in[6];
  uint32_t out[4];
};
using PhiloxFunction = llmqs::kernels::Philox4x32 (*)(uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t);
void expect_known_answers(PhiloxFunction philox, const PhiloxKnownAnswer (&answers)[3], const char* what) {
  for (int a = 0; a < 3; ++a) {
    const uint32_t* in = answers[a].in;
    const auto r = philox(in[0], in[1], in[2], in[3], in[4], in[5]);
    for (int w = 0; w < 4; ++w) EXPECT_EQ(r.v[w], answers[a].out[w]) << what << " vector " << a << " word " << w;
  }
}
}  // namespace

// 10 rounds (parameter initialisation) and 7 (every dropout site), against Random123's vectors.
TEST(Philox, MatchesRandom123KnownAnswers) {
  constexpr uint32_t kOnes = 0xffffffffu;
  constexpr uint32_t kPi[6] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u};
  const PhiloxKnownAnswer ten[3] = {
      {{0, 0, 0, 0, 0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{kOnes, kOnes, kOnes, kOnes, kOnes, kOnes}, {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{kPi[0], kPi[1], kPi[2], kPi[3], kPi[4], kPi[5]}, {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}};
  const PhiloxKnownAnswer seven[3] = {
      {{0, 0, 0, 0, 0, 0}, {0x5f6fb709u, 0x0d893f64u, 0x4f121f81u, 0x4f730a48u}},
      {{kOnes, kOnes, kOnes, kOnes, kOnes, kOnes}, {0x5207ddc2u, 0x45165e59u, 0x4d8ee751u, 0x8c52f662u}},
      {{kPi[0], kPi[1], kPi[2], kPi[3], kPi[4], kPi[5]}, {0x4dfccabau, 0x190a87f0u, 0xc47362bau, 0xb6b5242au}}};
  expect_known_answers(llmqs::kernels::philox4x32_10, ten, "philox4x32-10");
  expect_known_answers(llmqs::kernels::philox4x32_7, seven, "philox4x32-7");
}

namespace {
// A site with every counter field set to a distinct value (the layout tests below check each one).
DropoutSite layout_site(uint32_t tensor_id) {
  DropoutSite site;
  site.seed = 0x0123456789abcdefull;
  site.step = 77;
  site.rank = 3;
  site.micro_step = 5;
  site.tensor_id = tensor_id;
  site.p = 0.1f;
  return site;
}
}  // namespace

// Every site's counter: c0 = element >> 3, c1 = tensor id, c2 = step, c3 = rank << 16 | micro-step,
// key = the seed's halves (here a hidden-state site: the same layout as the attention sites').
TEST(Philox, DropoutCounterLayoutIsAsDocumented) {
  const DropoutSite site = layout_site(17);
  const auto words = llmqs::kernels::philox4x32_7(1000, 17, 77, (3u << 16) | 5u, 0x89abcdefu, 0x01234567u);
  EXPECT_EQ(llmqs::kernels::dropout_keep(site, 8 * 1000 + 5), (words.v[2] >> 16) >= 6554u);
  const auto neighbours = llmqs::kernels::philox4x32_7(1001, 17, 77, (3u << 16) | 5u, 0x89abcdefu, 0x01234567u);
  EXPECT_EQ(llmqs::kernels::dropout_keep(site, 8 * 1001), (neighbours.v[0] & 0xFFFFu) >= 6554u);
}

// Element 8 g + 2 k + h is half h (low first) of word k of the call with c0 = g, kept when that
// 16-bit value >= round(p * 65536); the kept share matches 1 - p.
TEST(Philox, DropoutUsesSixteenBitHalvesEightPerCall) {
  DropoutSite site = layout_site(8);
  EXPECT_EQ(llmqs::kernels::dropout_threshold(0.1f), 6554u);
  EXPECT_EQ(llmqs::kernels::dropout_threshold(1.0f), 65536u);  // nothing kept
  const auto words = llmqs::kernels::philox4x32_7(1000, 8, 77, (3u << 16) | 5u, 0x89abcdefu, 0x01234567u);
  for (int k = 0; k < 4; ++k)
    for (int h = 0; h < 2; ++h) {
      const uint32_t half = h ? words.v[k] >> 16 : words.v[k] & 0xFFFFu;
      EXPECT_EQ(llmqs::kernels::dropout_keep(site, 8 * 1000 + 2 * k + h), half >= 6554u) << k << " " << h;
    }
  size_t kept = 0;
  const size_t n = 1 << 20;
  for (size_t e = 0; e < n; ++e) kept += llmqs::kernels::dropout_keep(site, e);
  EXPECT_NEAR(static_cast<double>(kept) / n, 0.9, 0.002);
  site.p = 0.0f;
  EXPECT_TRUE(llmqs::kernels::dropout_keep(site, 12345));
}

TEST(Dropout, MaskStatisticsScaleAndBackward) {
  const size_t n = 200003;  // odd: the last Philox group is partial
  DropoutSite site;
  site.seed = 42;
  site.step = 3;
  site.tensor_id = llmqs::kernels::bert_dropout_tensor_id(1, llmqs::kernels::LayerDropoutSite::kAttentionOutput);
  site.p = 0.1f;
  std::vector<float> ones(n, 1.0f), out(n), back(n);
  kc::dropout_forward(out.data(), ones.data(), n, site);
  size_t kept = 0;
  for (float v : out) {
    if (v != 0.0f) {
      ++kept;
      EXPECT_FLOAT_EQ(v, 1.0f / 0.9f);
    }
  }
  const double keep_rate = static_cast<double>(kept) / n;
  EXPECT_NEAR(keep_rate, 0.9, 0.004);  // 6 standard deviations of a binomial with n = 200003
  // The backward recomputes the same mask.
  kc::dropout_backward(back.data(), ones.data(), n, site);
  EXPECT_EQ(back, out);
  // In place gives the same result.
  std::vector<float> inplace(n, 1.0f);
  kc::dropout_forward(inplace.data(), inplace.data(), n, site);
  EXPECT_EQ(inplace, out);
}

TEST(Dropout, SameKeySameMaskOtherKeyOtherMask) {
  const size_t n = 10000;
  DropoutSite base;
  base.seed = 7;
  base.step = 11;
  base.rank = 1;
  base.micro_step = 2;
  base.tensor_id = 9;
  base.p = 0.5f;
  std::vector<float> ones(n, 1.0f);
  auto mask = [&](const DropoutSite& s) {
    std::vector<float> out(n);
    kc::dropout_forward(out.data(), ones.data(), n, s);
    return out;
  };
  const std::vector<float> reference = mask(base);
  EXPECT_EQ(mask(base), reference);
  auto agreement = [&](const std::vector<float>& other) {
    size_t same = 0;
    for (size_t i = 0; i < n; ++i) same += (other[i] != 0.0f) == (reference[i] != 0.0f);
    return static_cast<double>(same) / n;
  };
  for (int field = 0; field < 5; ++field) {
    DropoutSite s = base;
    if (field == 0) s.seed += 1;
    if (field == 1) s.step += 1;
    if (field == 2) s.rank += 1;
    if (field == 3) s.micro_step += 1;
    if (field == 4) s.tensor_id += 1;
    // Independent masks with p = 0.5 agree on about half the elements.
    EXPECT_NEAR(agreement(mask(s)), 0.5, 0.04) << "field " << field;
  }
  DropoutSite off = base;
  off.p = 0.0f;
  EXPECT_EQ(mask(off), ones);
}

TEST(Matmul, ForwardMatchesDirectSumOnOddAndTileCrossingShapes) {
  struct Shape { int N, IN, OUT; };
  for (Shape s : {Shape{1, 1, 1}, Shape{37, 19, 23}, Shape{300, 270, 261}}) {
    const auto x = random_vector(static_cast<size_t>(s.N) * s.IN, 1), w = random_vector(static_cast<size_t>(s.OUT) * s.IN, 2);
    const auto b = random_vector(s.OUT, 3);
    std::vector<float> out(static_cast<size_t>(s.N) * s.OUT), out_nobias(out.size());
    const auto xf = to_float(x), wf = to_float(w), bf = to_float(b);
    kc::matmul_forward(out.data(), xf.data(), wf.data(), bf.data(), s.N, s.IN, s.OUT);
    kc::matmul_forward(out_nobias.data(), xf.data(), wf.data(), static_cast<const float*>(nullptr), s.N, s.IN, s.OUT);
    for (int n = 0; n < s.N; ++n)
      for (int o = 0; o < s.OUT; ++o) {
        double ref = 0.0;
        for (int i = 0; i < s.IN; ++i) ref += static_cast<double>(xf[n * s.IN + i]) * wf[o * s.IN + i];
        ASSERT_NEAR(out_nobias[n * s.OUT + o], ref, 1e-4 * (1 + std::sqrt(static_cast<double>(s.IN))));
        ASSERT_NEAR(out[n * s.OUT + o], ref + bf[o], 1e-4 * (1 + std::sqrt(static_cast<double>(s.IN))));
      }
  }
}

TEST(Matmul, BackwardMatchesFiniteDifferences) {
  const int N = 7, IN = 5, OUT = 9;
  auto x = random_vector(N * IN, 4), w = random_vector(OUT * IN, 5), b = random_vector(OUT, 6);
  const auto proj = random_vector(N * OUT, 7);
  std::vector<double> out(N * OUT);
  auto loss = [&] {
    kc::matmul_forward(out.data(), x.data(), w.data(), b.data(), N, IN, OUT);
    return dot(out, proj);
  };
  // Pre-filled gradients check that dW/db accumulate and dinp overwrites (or accumulates on request).
  std::vector<double> dx(N * IN, 0.5), dw(OUT * IN, 0.25), db(OUT, -1.0);
  kc::matmul_backward(dx.data(), dw.data(), db.data(), proj.data(), x.data(), w.data(), N, IN, OUT, false);
  for (double& v : dw) v -= 0.25;
  for (double& v : db) v += 1.0;
  expect_gradient_matches(x, dx, loss, "dinp");
  expect_gradient_matches(w, dw, loss, "dweight");
  expect_gradient_matches(b, db, loss, "dbias");
  std::vector<double> dx_acc(N * IN, 0.5);
  kc::matmul_backward(dx_acc.data(), static_cast<double*>(nullptr), static_cast<double*>(nullptr), proj.data(),
                      x.data(), w.data(), N, IN, OUT, true);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx_acc[i], dx[i] + 0.5, 1e-12);
}

TEST(Matmul, BitwiseIndependentOfThreadCount) {
  const int N = 203, IN = 300, OUT = 270;
  const auto x = to_float(random_vector(N * IN, 8)), w = to_float(random_vector(OUT * IN, 9));
  const auto dy = to_float(random_vector(N * OUT, 10));
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> y(N * OUT), dx(N * IN), dw(OUT * IN, 0.0f), db(OUT, 0.0f);
    kc::matmul_forward(y.data(), x.data(), w.data(), static_cast<const float*>(nullptr), N, IN, OUT);
    kc::matmul_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), N, IN, OUT, false);
    y.insert(y.end(), dx.begin(), dx.end());
    y.insert(y.end(), dw.begin(), dw.end());
    y.insert(y.end(), db.begin(), db.end());
    return y;
  };
  const auto one = run(1), two = run(2), three = run(3);
  omp_set_num_threads(omp_get_num_procs());
  EXPECT_EQ(one, two);
  EXPECT_EQ(one, three);
}

TEST(LayerNorm, ForwardNormalisesAndBackwardMatchesFiniteDifferences) {
  const int N = 6, C = 13;
  auto x = random_vector(N * C, 11, 2.0), gamma = random_vector(C, 12), beta = random_vector(C, 13);
  for (double& v : x) v += 3.0;  // a mean far from zero
  const auto proj = random_vector(N * C, 14);
  std::vector<double> out(N * C), mean(N), rstd(N);
  kc::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), N, C, 1e-5f);
  for (int n = 0; n < N; ++n) {
    double mu = 0.0, var = 0.0;
    for (int c = 0; c < C; ++c) mu += x[n * C + c] / C;
    for (int c = 0; c < C; ++c) var += (x[n * C + c] - mu) * (x[n * C + c] - mu) / C;
    EXPECT_NEAR(mean[n], mu, 1e-12);
    EXPECT_NEAR(rstd[n], 1.0 / std::sqrt(var + 1e-5), 1e-9);
    EXPECT_NEAR(out[n * C + 4], (x[n * C + 4] - mu) / std::sqrt(var + 1e-5) * gamma[4] + beta[4], 1e-10);
  }
  auto loss = [&] {
    kc::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), gamma.data(), beta.data(), N, C, 1e-5f);
    return dot(out, proj);
  };
  loss();
  std::vector<double> dx(N * C), dgamma(C, 0.0), dbeta(C, 0.0);
  kc::layernorm_backward(dx.data(), dgamma.data(), dbeta.data(), proj.data(), x.data(), mean.data(), rstd.data(),
                         gamma.data(), N, C);
  expect_gradient_matches(x, dx, loss, "dx");
  expect_gradient_matches(gamma, dgamma, loss, "dgamma");
  expect_gradient_matches(beta, dbeta, loss, "dbeta");
}

TEST(LayerNorm, ResidualVariantStoresTheSumAndFlowsGradientToBothInputs) {
  const int N = 5, C = 11;
  auto a = random_vector(N * C, 15), b = random_vector(N * C, 16);
  const auto gamma = random_vector(C, 17), beta = random_vector(C, 18), proj = random_vector(N * C, 19);
  std::vector<double> out(N * C), sum(N * C), mean(N), rstd(N);
  auto loss = [&] {
    kc::residual_layernorm_forward(out.data(), sum.data(), mean.data(), rstd.data(), a.data(), b.data(),
                                   gamma.data(), beta.data(), N, C, 1e-12f);
    return dot(out, proj);
  };
  loss();
  for (int i = 0; i < N * C; ++i) ASSERT_EQ(sum[i], a[i] + b[i]);
  std::vector<double> dsum(N * C), dgamma(C, 0.0), dbeta(C, 0.0);
  kc::layernorm_backward(dsum.data(), dgamma.data(), dbeta.data(), proj.data(), sum.data(), mean.data(), rstd.data(),
                         gamma.data(), N, C);
  expect_gradient_matches(a, dsum, loss, "da");
  expect_gradient_matches(b, dsum, loss, "db");
}

TEST(Embeddings, ForwardSumsAndBackwardSkipsThePaddingRow) {
  const int rows = 3, seq = 5, C = 7, V = 6, P = 8, pad = 0;
  const std::vector<int32_t> ids = {1, 4, 4, 2, 0, 3, 5, 0, 0, 0, 2, 2, 2, 1, 4};
  auto word = random_vector(V * C, 20), pos = random_vector(P * C, 21), type0 = random_vector(C, 22);
  const auto proj = random_vector(rows * seq * C, 23);
  std::vector<double> out(rows * seq * C);
  auto loss = [&] {
    kc::embeddings_forward(out.data(), ids.data(), word.data(), pos.data(), type0.data(), rows, seq, C);
    return dot(out, proj);
  };
  loss();
  EXPECT_DOUBLE_EQ(out[(1 * seq + 2) * C + 3], word[0 * C + 3] + type0[3] + pos[2 * C + 3]);
  std::vector<double> dword(V * C, 0.0), dpos(P * C, 0.0), dtype(C, 0.0);
  kc::embeddings_backward(dword.data(), dpos.data(), dtype.data(), proj.data(), ids.data(), rows, seq, C, pad);
  for (int c = 0; c < C; ++c) EXPECT_EQ(dword[pad * C + c], 0.0) << "padding row got a gradient";
  for (int c = 0; c < C; ++c) EXPECT_EQ(dpos[(P - 1) * C + c], 0.0) << "unused position got a gradient";
  // Finite differences agree everywhere but on the padding row (nn.Embedding drops it on purpose).
  std::vector<double> word_rest(word.begin() + C, word.end()), dword_rest(dword.begin() + C, dword.end());
  auto loss_rest = [&] {
    std::copy(word_rest.begin(), word_rest.end(), word.begin() + C);
    return loss();
  };
  expect_gradient_matches(word_rest, dword_rest, loss_rest, "dword");
  expect_gradient_matches(pos, dpos, loss, "dposition");
  expect_gradient_matches(type0, dtype, loss, "dtoken_type0");
}

TEST(Attention, PaddedKeysGetZeroProbabilityAndRowsSumToOne) {
  const int rows = 3, seq = 6, heads = 2, C = 6;
  const std::vector<int32_t> lengths = {6, 2, 4};
  const auto q = random_vector(rows * seq * C, 24), k = random_vector(rows * seq * C, 25), v = random_vector(rows * seq * C, 26);
  std::vector<double> ctx(rows * seq * C), probs(rows * heads * seq * seq);
  kc::attention_forward(ctx.data(), probs.data(), q.data(), k.data(), v.data(), lengths.data(), rows, seq, C, heads,
                        DropoutSite{});
  const double scale = 1.0 / std::sqrt(3.0);
  for (int r = 0; r < rows; ++r)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < seq; ++i) {
        const double* p = probs.data() + ((r * heads + h) * seq + i) * seq;
        double total = 0.0;
        for (int j = 0; j < seq; ++j) {
          if (j >= lengths[r]) {
            EXPECT_EQ(p[j], 0.0);
          }
          total += p[j];
        }
        EXPECT_NEAR(total, 1.0, 1e-14);
        // Direct check of one probability ratio: p_0 / p_1 = exp(s_0 - s_1).
        auto score = [&](int j) {
          double s = 0.0;
          for (int e = 0; e < 3; ++e) s += q[(r * seq + i) * C + h * 3 + e] * k[(r * seq + j) * C + h * 3 + e];
          return s * scale;
        };
        EXPECT_NEAR(p[0] / p[1], std::exp(score(0) - score(1)), 1e-10);
      }
}

TEST(Attention, BackwardMatchesFiniteDifferencesWithPaddingAndDropout) {
  const int rows = 3, seq = 7, heads = 2, C = 6;  // head_dim 3
  const std::vector<int32_t> lengths = {5, 2, 7};
  for (float p : {0.0f, 0.3f}) {
    DropoutSite site;
    site.seed = 99;
    site.tensor_id = 8;
    site.p = p;
    auto q = random_vector(rows * seq * C, 27), k = random_vector(rows * seq * C, 28), v = random_vector(rows * seq * C, 29);
    const auto proj = random_vector(rows * seq * C, 30);
    std::vector<double> ctx(rows * seq * C), probs(rows * heads * seq * seq);
    auto loss = [&] {
      kc::attention_forward(ctx.data(), probs.data(), q.data(), k.data(), v.data(), lengths.data(), rows, seq, C,
                            heads, site);
      return dot(ctx, proj);
    };
    loss();
    std::vector<double> dq(q.size(), 9.0), dk(k.size(), 9.0), dv(v.size(), 9.0);  // overwritten
    kc::attention_backward(dq.data(), dk.data(), dv.data(), proj.data(), q.data(), k.data(), v.data(), probs.data(),
                           lengths.data(), rows, seq, C, heads, site);
    // Padded keys/values get exactly zero gradient.
    for (int j = 2; j < seq; ++j)
      for (int c = 0; c < C; ++c) {
        EXPECT_EQ(dk[(1 * seq + j) * C + c], 0.0);
        EXPECT_EQ(dv[(1 * seq + j) * C + c], 0.0);
      }
    expect_gradient_matches(q, dq, loss, p > 0 ? "dq (dropout)" : "dq");
    expect_gradient_matches(k, dk, loss, p > 0 ? "dk (dropout)" : "dk");
    expect_gradient_matches(v, dv, loss, p > 0 ? "dv (dropout)" : "dv");
  }
}

TEST(Activations, GeluAndTanhValuesAndDerivatives) {
  double x1 = 1.0, y1 = 0.0;
  kc::gelu_forward(&y1, &x1, 1);
  EXPECT_NEAR(y1, 0.8413447460685429, 1e-15);  // 1 * Phi(1)
  double xm = -2.0, ym = 0.0;
  kc::gelu_forward(&ym, &xm, 1);
  EXPECT_NEAR(ym, -2.0 * 0.022750131948179195, 1e-15);
  auto x = random_vector(41, 31, 2.0);
  const auto proj = random_vector(41, 32);
  std::vector<double> y(41), dx(41);
  auto gelu_loss = [&] {
    kc::gelu_forward(y.data(), x.data(), x.size());
    return dot(y, proj);
  };
  kc::gelu_backward(dx.data(), x.data(), proj.data(), x.size());
  expect_gradient_matches(x, dx, gelu_loss, "gelu");
  auto tanh_loss = [&] {
    kc::tanh_forward(y.data(), x.data(), x.size());
    return dot(y, proj);
  };
  tanh_loss();
  kc::tanh_backward(dx.data(), y.data(), proj.data(), x.size());
  expect_gradient_matches(x, dx, tanh_loss, "tanh");
}

TEST(SoftmaxCrossEntropy, LossPredictionAndGradient) {
  const int rows = 4, C = 5;
  std::vector<double> logits(rows * C, 0.0), probs(rows * C), loss(rows);
  std::vector<int32_t> labels = {0, 3, 4, 1}, pred(rows);
  kc::softmax_cross_entropy_forward(loss.data(), probs.data(), pred.data(), logits.data(), labels.data(), rows, C);
  for (int r = 0; r < rows; ++r) {
    EXPECT_NEAR(loss[r], std::log(5.0), 1e-14);
    EXPECT_EQ(pred[r], 0);  // ties: the first maximum, as torch.argmax
  }
  logits = random_vector(rows * C, 33, 3.0);
  logits[1 * C + 2] = 50.0;  // a large logit: the max-shift keeps exp finite
  const double weight = 0.37;
  auto total = [&] {
    kc::softmax_cross_entropy_forward(loss.data(), probs.data(), pred.data(), logits.data(), labels.data(), rows, C);
    return weight * (loss[0] + loss[1] + loss[2] + loss[3]);
  };
  total();
  EXPECT_EQ(pred[1], 2);
  EXPECT_NEAR(loss[1], 50.0 - logits[1 * C + 3], 1e-9);
  std::vector<double> dlogits(rows * C);
  kc::softmax_cross_entropy_backward(dlogits.data(), probs.data(), labels.data(), rows, C, weight);
  expect_gradient_matches(logits, dlogits, total, "dlogits");
}

TEST(AdamW, OneStepByHandAndDecayOnlyWhereAsked) {
  kc::AdamWScalars s;
  s.lr = 0.1f;
  s.weight_decay = 0.01f;
  s.step = 1;
  float p = 1.0f, g = 0.5f, m = 0.0f, v = 0.0f;
  kc::adamw_update(&p, &g, &m, &v, 1, s);
  // p = 1 * (1 - 0.001) - (0.1 / 0.1) * 0.05 / (sqrt(0.00025) / sqrt(0.001) + 1e-8) = 0.999 - 0.1
  // Tolerances: the hyperparameters are floats (1 - 0.999f = 0.00099998713), torch's are doubles.
  EXPECT_NEAR(p, 0.899f, 1e-6);
  EXPECT_NEAR(m, 0.05f, 2e-5 * 0.05);
  EXPECT_NEAR(v, 0.00025f, 2e-5 * 0.00025);
  // Second step, no decay, grad_scale 2: g = 1.
  s.weight_decay = 0.0f;
  s.grad_scale = 2.0f;
  s.step = 2;
  kc::adamw_update(&p, &g, &m, &v, 1, s);
  const double m2 = 0.9 * 0.05 + 0.1 * 1.0, v2 = 0.999 * 0.00025 + 0.001 * 1.0;
  const double bc1 = 1 - 0.81, bc2 = 1 - 0.999 * 0.999;
  EXPECT_NEAR(m, m2, 2e-5 * m2);
  EXPECT_NEAR(v, v2, 2e-5 * v2);
  EXPECT_NEAR(p, 0.899 - 0.1 / bc1 * m2 / (std::sqrt(v2) / std::sqrt(bc2) + 1e-8), 2e-6);
}

TEST(GradNorm, SumOfSquaresIsExactEnoughAndThreadIndependent) {
  const size_t n = 100001;
  const auto g = to_float(random_vector(n, 34));
  double ref = 0.0;
  for (float x : g) ref += static_cast<double>(x) * x;
  omp_set_num_threads(1);
  const double one = kc::sum_of_squares(g.data(), n);
  omp_set_num_threads(3);
  const double three = kc::sum_of_squares(g.data(), n);
  omp_set_num_threads(omp_get_num_procs());
  EXPECT_NEAR(one, ref, 1e-9 * ref);
  EXPECT_EQ(one, three);
}
