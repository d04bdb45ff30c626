// The CPU model as a whole: every parameter tensor's analytic gradient against finite
// differences in double (the float64 check path), the fp32 model against the double one,
// padding and batching invariance, the `cpu` Backend contract, and ParameterLayout / init.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "core/bert_cpu_model.h"
#include "core/cpu_backend.h"
#include "core/parameters.h"

using llmqs::core::BatchStats;
using llmqs::core::BertConfig;
using llmqs::core::BertCpuModel;
using llmqs::core::DropoutKey;
using llmqs::core::ParameterInfo;
using llmqs::core::ParameterLayout;
using llmqs::data::Batch;

namespace {

BertConfig tiny_config() {
  BertConfig c;
  c.vocab_size = 50;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.intermediate_size = 33;  // odd on purpose
  c.max_position_embeddings = 16;
  c.num_labels = 3;
  c.initializer_range = 0.2f;  // larger than HF's 0.02 so every layer is visibly non-linear
  c.hidden_dropout_prob = 0.0f;
  c.attention_probs_dropout_prob = 0.0f;
  return c;
}

Batch tiny_batch() {
  Batch b;
  b.rows = 3;
  b.seq_len = 8;
  b.lengths = {8, 5, 2};
  b.labels = {2, 0, 1};
  b.input_ids = {2, 17, 33, 4, 49, 8, 9, 3,  //
                 2, 11, 40, 11, 3, 0, 0, 0,  //
                 2, 3, 0, 0, 0, 0, 0, 0};
  return b;
}

// HF init, then noise on biases and LayerNorm parameters so none of them is trivially 0 or 1.
std::vector<float> tiny_parameters(const BertConfig& c, uint64_t seed) {
  const ParameterLayout layout = ParameterLayout::for_bert(c);
  std::vector<float> p(layout.total_numel());
  llmqs::core::init_bert_parameters(c, layout, seed, p.data());
  std::mt19937 gen(static_cast<uint32_t>(seed));
  std::normal_distribution<float> noise(0.0f, 0.1f);
  for (const auto& info : layout.parameters())
    if (info.name.find(".bias") != std::string::npos || info.name.find("LayerNorm") != std::string::npos)
      for (size_t i = 0; i < info.numel; ++i) p[info.offset + i] += noise(gen);
  return p;
}

// Finite differences (fourth order, h = 1e-4) of loss_weight * sum CE in double, for the
// largest-gradient element and 7 random elements of every tensor.
void check_every_tensor(const BertConfig& c, const DropoutKey& key) {
  BertCpuModel<double> model(c);
  const auto pf = tiny_parameters(c, 5);
  std::vector<double> params(pf.begin(), pf.end()), grads(params.size(), 0.0);
  const Batch batch = tiny_batch();
  const double weight = 0.37;
  model.forward(params.data(), batch, key);
  model.backward(params.data(), grads.data(), weight);
  auto loss = [&] { return weight * model.forward(params.data(), batch, key).loss_sum; };
  std::mt19937 gen(11);
  double worst = 0.0;
  for (const auto& info : model.layout().parameters()) {
    double max_abs = 0.0;
    size_t argmax = 0;
    for (size_t i = 0; i < info.numel; ++i)
      if (std::abs(grads[info.offset + i]) > max_abs) {
        max_abs = std::abs(grads[info.offset + i]);
        argmax = i;
      }
    if (info.name == "bert.embeddings.token_type_embeddings.weight") {
      // Only row 0 is used (single-text classification): row 1 must get exactly nothing.
      for (int ch = 0; ch < c.hidden_size; ++ch) EXPECT_EQ(grads[info.offset + c.hidden_size + ch], 0.0);
    }
    if (info.name.find("attention.self.key.bias") != std::string::npos) {
      // Softmax ignores a shift shared by all keys: q . (k_j + b) moves every score of a query
      // by the same q . b, so this gradient is exactly zero in exact arithmetic.
      EXPECT_LT(max_abs, 1e-14) << info.name;
      continue;
    }
    ASSERT_GT(max_abs, 1e-6) << info.name << " gets no gradient";
    std::vector<size_t> sample = {argmax};
    std::uniform_int_distribution<size_t> pick(0, info.numel - 1);
    for (int s = 0; s < 7; ++s) sample.push_back(pick(gen));
    for (size_t i : sample) {
      double& x = params[info.offset + i];
      const double saved = x, h = 1e-4;
      auto at = [&](double offset) {
        x = saved + offset;
        return loss();
      };
      const double numeric = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h);
      x = saved;
      const double analytic = grads[info.offset + i];
      const double rel = std::abs(analytic - numeric) / std::max({std::abs(analytic), std::abs(numeric), 1e-3 * max_abs});
      worst = std::max(worst, rel);
      EXPECT_LT(rel, 1e-6) << info.name << "[" << i << "]: analytic " << analytic << " numeric " << numeric;
    }
  }
  ::testing::Test::RecordProperty("worst_relative_error", std::to_string(worst));
}

}  // namespace

TEST(GradCheck, EveryParameterTensorMatchesFiniteDifferencesInDouble) {
  DropoutKey off;
  off.enabled = false;
  check_every_tensor(tiny_config(), off);
}

TEST(GradCheck, EveryParameterTensorMatchesFiniteDifferencesWithDropoutOn) {
  // The masks are a pure function of the key, so the loss stays differentiable in the parameters.
  BertConfig c = tiny_config();
  c.hidden_dropout_prob = 0.2f;
  c.attention_probs_dropout_prob = 0.25f;
  c.classifier_dropout = 0.3f;
  DropoutKey key;
  key.seed = 1234;
  key.step = 5;
  key.rank = 1;
  key.micro_step = 2;
  check_every_tensor(c, key);
}

TEST(GradCheck, Fp32ModelAgreesWithDoubleModel) {
  const BertConfig c = tiny_config();
  const auto pf = tiny_parameters(c, 9);
  std::vector<double> pd(pf.begin(), pf.end());
  BertCpuModel<float> mf(c);
  BertCpuModel<double> md(c);
  DropoutKey off;
  off.enabled = false;
  const Batch batch = tiny_batch();
  const BatchStats sf = mf.forward(pf.data(), batch, off);
  const BatchStats sd = md.forward(pd.data(), batch, off);
  EXPECT_NEAR(sf.loss_sum, sd.loss_sum, 1e-5 * std::abs(sd.loss_sum));
  for (size_t i = 0; i < md.logits().size(); ++i)
    EXPECT_NEAR(mf.logits()[i], md.logits()[i], 1e-5 * (1 + std::abs(md.logits()[i]))) << "logit " << i;
  std::vector<float> gf(pf.size(), 0.0f);
  std::vector<double> gd(pd.size(), 0.0);
  mf.backward(pf.data(), gf.data(), 1.0f);
  md.backward(pd.data(), gd.data(), 1.0);
  for (const auto& info : mf.layout().parameters()) {
    double max_abs = 0.0, max_err = 0.0;
    for (size_t i = info.offset; i < info.offset + info.numel; ++i) {
      max_abs = std::max(max_abs, std::abs(gd[i]));
      max_err = std::max(max_err, std::abs(gd[i] - gf[i]));
    }
    // Tolerance: 1e-5 of the tensor's largest gradient; the key bias's gradient is zero in exact
    // arithmetic (see above), so there only float round-off is left.
    if (info.name.find("attention.self.key.bias") != std::string::npos)
      EXPECT_LT(max_err, 1e-7) << info.name;
    else
      EXPECT_LT(max_err, 1e-5 * max_abs) << info.name;
  }
}

TEST(CpuModel, PaddingAndBatchmatesDoNotChangeARowsLogits) {
  const BertConfig c = tiny_config();
  const auto p = tiny_parameters(c, 3);
  BertCpuModel<float> model(c);
  DropoutKey off;
  off.enabled = false;
  const Batch batch = tiny_batch();
  model.forward(p.data(), batch, off);
  const std::vector<float> together = model.logits();
  Batch noisy = batch;  // garbage in the padded positions must not matter
  for (int r = 0; r < noisy.rows; ++r)
    for (int s = noisy.lengths[r]; s < noisy.seq_len; ++s) noisy.input_ids[r * noisy.seq_len + s] = 40 + s;
  model.forward(p.data(), noisy, off);
  EXPECT_EQ(model.logits(), together);
  for (int r = 0; r < batch.rows; ++r) {
    Batch alone;
    alone.rows = 1;
    alone.seq_len = batch.lengths[r];
    alone.lengths = {batch.lengths[r]};
    alone.labels = {batch.labels[r]};
    alone.input_ids.assign(batch.input_ids.begin() + r * batch.seq_len,
                           batch.input_ids.begin() + r * batch.seq_len + batch.lengths[r]);
    model.forward(p.data(), alone, off);
    for (int k = 0; k < c.num_labels; ++k)
      EXPECT_EQ(model.logits()[k], together[r * c.num_labels + k]) << "row " << r << " label " << k;
  }
}

TEST(CpuModel, RejectsMalformedBatchesNamingTheRow) {
  const BertConfig c = tiny_config();
  const auto p = tiny_parameters(c, 3);
  BertCpuModel<float> model(c);
  DropoutKey off;
  Batch b = tiny_batch();
  b.input_ids[9] = 50;
  try {
    model.forward(p.data(), b, off);
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("row 1 position 1"), std::string::npos) << e.what();
  }
  b = tiny_batch();
  b.labels[2] = 3;
  EXPECT_THROW(model.forward(p.data(), b, off), std::invalid_argument);
  b = tiny_batch();
  b.lengths[0] = 0;
  EXPECT_THROW(model.forward(p.data(), b, off), std::invalid_argument);
  b = tiny_batch();
  b.seq_len = 17;
  EXPECT_THROW(model.forward(p.data(), b, off), std::invalid_argument);
}

TEST(CpuBackend, AccumulatesScalesAndKeepsDropoutKeyed) {
  BertConfig c = tiny_config();
  c.hidden_dropout_prob = 0.1f;
  c.attention_probs_dropout_prob = 0.1f;
  auto backend = llmqs::core::make_cpu_backend(c);
  EXPECT_EQ(backend->name(), "cpu");
  const auto p = tiny_parameters(c, 4);
  backend->set_parameters(p.data());
  std::vector<float> back(p.size());
  backend->get_parameters(back.data());
  EXPECT_EQ(back, p);
  const Batch batch = tiny_batch();
  DropoutKey key;
  key.seed = 42;
  key.step = 3;
  const size_t n = p.size();
  auto grads_of = [&](float weight, const DropoutKey& k, int times) {
    backend->zero_gradients();
    for (int t = 0; t < times; ++t) backend->forward_backward(batch, weight, k);
    std::vector<float> g(n);
    backend->get_gradients(g.data());
    return g;
  };
  const auto once = grads_of(1.0f, key, 1);
  EXPECT_EQ(grads_of(1.0f, key, 1), once) << "same key, same masks, same bits";
  const auto twice = grads_of(1.0f, key, 2);
  const auto half = grads_of(0.5f, key, 1);
  double sq = 0.0, max_abs = 0.0;
  for (float g : once) max_abs = std::max(max_abs, static_cast<double>(std::abs(g)));
  for (size_t i = 0; i < n; ++i) {
    // Accumulation adds the second micro-batch term by term into the first, so the sum is not
    // bitwise 2x; power-of-two scaling of the loss commutes with rounding, so half is exact.
    ASSERT_NEAR(twice[i], 2.0f * once[i], 1e-6 * max_abs) << i;
    ASSERT_EQ(half[i], 0.5f * once[i]) << i;
    sq += static_cast<double>(half[i]) * half[i];
  }
  EXPECT_NEAR(backend->gradient_sq_norm(), sq, 1e-12 * sq);
  EXPECT_EQ(backend->gradient_buffer()[7], half[7]);
  DropoutKey other = key;
  other.step = 4;
  EXPECT_NE(grads_of(1.0f, other, 1), once) << "another step must draw other masks";
  DropoutKey off = key;
  off.enabled = false;
  backend->zero_gradients();
  const BatchStats train_stats = backend->forward_backward(batch, 1.0f, off);
  std::vector<float> logits(batch.rows * c.num_labels);
  const BatchStats eval_stats = backend->forward(batch, logits.data());
  EXPECT_EQ(train_stats.loss_sum, eval_stats.loss_sum);
  EXPECT_EQ(eval_stats.rows, 3);
  int correct = 0;
  for (int r = 0; r < batch.rows; ++r) {
    int best = 0;
    for (int k = 1; k < c.num_labels; ++k)
      if (logits[r * c.num_labels + k] > logits[r * c.num_labels + best]) best = k;
    correct += best == batch.labels[r];
  }
  EXPECT_EQ(eval_stats.correct, correct);
}

TEST(CpuBackend, AdamWDecaysOnlyDecayedTensorsAndRoundTripsMoments) {
  const BertConfig c = tiny_config();
  auto backend = llmqs::core::make_cpu_backend(c);
  const auto p = tiny_parameters(c, 6);
  backend->set_parameters(p.data());
  backend->zero_gradients();
  llmqs::core::AdamWHyper hyper;
  hyper.lr = 0.1f;
  hyper.weight_decay = 0.5f;
  hyper.step = 1;
  backend->adamw_step(hyper);  // zero gradients: only the decoupled decay moves parameters
  std::vector<float> after(p.size());
  backend->get_parameters(after.data());
  for (const auto& info : backend->layout().parameters()) {
    const float factor = info.weight_decay ? static_cast<float>(1.0 - 0.1 * 0.5) : 1.0f;
    for (size_t i = info.offset; i < info.offset + info.numel; i += 5) ASSERT_EQ(after[i], p[i] * factor) << info.name;
  }
  std::vector<float> m(p.size()), v(p.size()), m2(p.size()), v2(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    m[i] = 0.001f * static_cast<float>(i % 17);
    v[i] = 0.002f * static_cast<float>(i % 13);
  }
  backend->set_optimizer_state(m.data(), v.data());
  backend->get_optimizer_state(m2.data(), v2.data());
  EXPECT_EQ(m, m2);
  EXPECT_EQ(v, v2);
}

TEST(ParameterLayout, BertBaseHasHfNamesShapesAndCount) {
  BertConfig base;  // bert-base-cased, 5 labels
  const ParameterLayout layout = ParameterLayout::for_bert(base);
  EXPECT_EQ(layout.total_numel(), 108314117u);  // 108,310,272 (BertModel) + 768 * 5 + 5
  EXPECT_EQ(layout.parameters().size(), 5u + 16u * 12u + 4u);
  EXPECT_EQ(layout.parameters().front().name, "bert.embeddings.word_embeddings.weight");
  const auto& inter = layout.find("bert.encoder.layer.11.intermediate.dense.weight");
  EXPECT_EQ(inter.shape, (std::vector<int64_t>{3072, 768}));
  EXPECT_TRUE(inter.weight_decay);
  EXPECT_FALSE(layout.find("bert.encoder.layer.3.attention.output.LayerNorm.weight").weight_decay);
  EXPECT_FALSE(layout.find("classifier.bias").weight_decay);
  EXPECT_TRUE(layout.find("bert.embeddings.position_embeddings.weight").weight_decay);
  EXPECT_EQ(layout.find("classifier.bias").offset + 5, layout.total_numel());
  EXPECT_TRUE(layout.contains("bert.pooler.dense.bias"));
  EXPECT_FALSE(layout.contains("bert.pooler.dense.gamma"));
  EXPECT_THROW(layout.find("bert.pooler.dense.gamma"), std::out_of_range);
}

// The list is in HF order; the offsets tile the buffer exactly once, with each layer's query, key,
// value weights as one [3H x H] block followed by their biases as one [3H] block (the CUDA
// backend's fused QKV product depends on it).
TEST(ParameterLayout, OffsetsTileTheBufferWithEachLayersQkvAdjacent) {
  for (const BertConfig& c : {BertConfig{}, tiny_config()}) {
    const ParameterLayout layout = ParameterLayout::for_bert(c);
    std::vector<std::pair<size_t, size_t>> spans;
    for (const ParameterInfo& p : layout.parameters()) spans.emplace_back(p.offset, p.numel);
    std::sort(spans.begin(), spans.end());
    size_t next = 0;
    for (const auto& [offset, numel] : spans) {
      ASSERT_EQ(offset, next);
      next += numel;
    }
    EXPECT_EQ(next, layout.total_numel());
    const size_t H = static_cast<size_t>(c.hidden_size);
    for (int l = 0; l < c.num_hidden_layers; ++l) {
      const std::string p = "bert.encoder.layer." + std::to_string(l) + ".attention.self.";
      const size_t base = layout.find(p + "query.weight").offset;
      EXPECT_EQ(layout.find(p + "key.weight").offset, base + H * H) << l;
      EXPECT_EQ(layout.find(p + "value.weight").offset, base + 2 * H * H) << l;
      EXPECT_EQ(layout.find(p + "query.bias").offset, base + 3 * H * H) << l;
      EXPECT_EQ(layout.find(p + "key.bias").offset, base + 3 * H * H + H) << l;
      EXPECT_EQ(layout.find(p + "value.bias").offset, base + 3 * H * H + 2 * H) << l;
    }
  }
}

// The backward's order: the last layer with the pooler and classifier, each earlier layer, then the
// embeddings, as contiguous ranges that tile the buffer once (the per-layer gradient all-reduce).
TEST(ParameterLayout, BackwardRangesTileTheBufferFromTheLastLayerDown) {
  for (const BertConfig& c : {BertConfig{}, tiny_config()}) {
    const ParameterLayout layout = ParameterLayout::for_bert(c);
    const auto& ranges = layout.backward_ranges();
    ASSERT_EQ(ranges.size(), static_cast<size_t>(c.num_hidden_layers) + 1);
    size_t end = layout.total_numel();
    for (const ParameterLayout::Range& r : ranges) {  // descending and adjacent: an exact tiling
      ASSERT_GT(r.count, 0u);
      EXPECT_EQ(r.offset + r.count, end);
      end = r.offset;
    }
    EXPECT_EQ(end, 0u);
    for (const ParameterInfo& p : layout.parameters()) {  // every tensor inside its owner's range
      size_t owner = ranges.size() - 1;  // embeddings
      const std::string layer_prefix = "bert.encoder.layer.";
      if (p.name.rfind(layer_prefix, 0) == 0)
        owner = static_cast<size_t>(c.num_hidden_layers - 1 - std::stoi(p.name.substr(layer_prefix.size())));
      else if (p.name.rfind("bert.pooler.", 0) == 0 || p.name.rfind("classifier.", 0) == 0)
        owner = 0;
      const ParameterLayout::Range& r = ranges[owner];
      EXPECT_GE(p.offset, r.offset) << p.name;
      EXPECT_LE(p.offset + p.numel, r.offset + r.count) << p.name;
    }
  }
}

// The hook reports each range once, in backward_ranges() order, and only when the backward has
// finished it: what the range holds at that moment is what it holds after forward_backward.
TEST(CpuBackend, ReportsEachLayersGradientsWhenTheyAreFinal) {
  BertConfig c = tiny_config();
  auto backend = llmqs::core::make_cpu_backend(c);
  const auto p = tiny_parameters(c, 5);
  backend->set_parameters(p.data());
  std::vector<ParameterLayout::Range> reported;
  std::vector<std::vector<float>> at_report;
  backend->set_gradient_ready_hook([&](const ParameterLayout::Range& r) {
    reported.push_back(r);
    const float* g = backend->gradient_buffer() + r.offset;
    at_report.emplace_back(g, g + r.count);
  });
  DropoutKey key;
  key.seed = 7;
  backend->zero_gradients();
  backend->forward_backward(tiny_batch(), 0.5f, key);
  const auto& expected = backend->layout().backward_ranges();
  ASSERT_EQ(reported.size(), expected.size());
  std::vector<float> final_grads(backend->layout().total_numel());
  backend->get_gradients(final_grads.data());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(reported[i].offset, expected[i].offset) << i;
    ASSERT_EQ(reported[i].count, expected[i].count) << i;
    const std::vector<float> now(final_grads.begin() + static_cast<std::ptrdiff_t>(expected[i].offset),
                                 final_grads.begin() + static_cast<std::ptrdiff_t>(expected[i].offset + expected[i].count));
    EXPECT_EQ(at_report[i], now) << "range " << i << " changed after it was reported";
    EXPECT_TRUE(std::any_of(now.begin(), now.end(), [](float x) { return x != 0.0f; })) << i;
  }
  backend->set_gradient_ready_hook({});  // no calls without a hook
  backend->forward_backward(tiny_batch(), 0.5f, key);
  EXPECT_EQ(reported.size(), expected.size());
}

TEST(ParameterLayout, InitIsHfShapedDeterministicAndSeeded) {
  BertConfig c = tiny_config();
  c.vocab_size = 500;
  c.initializer_range = 0.02f;
  const ParameterLayout layout = ParameterLayout::for_bert(c);
  std::vector<float> a(layout.total_numel()), b(a.size()), other(a.size());
  llmqs::core::init_bert_parameters(c, layout, 17, a.data());
  llmqs::core::init_bert_parameters(c, layout, 17, b.data());
  llmqs::core::init_bert_parameters(c, layout, 18, other.data());
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other);
  const auto& word = layout.find("bert.embeddings.word_embeddings.weight");
  double sum = 0.0, sq = 0.0;
  size_t count = 0;
  for (size_t i = word.offset + c.hidden_size; i < word.offset + word.numel; ++i, ++count) {
    sum += a[i];
    sq += static_cast<double>(a[i]) * a[i];
  }
  const double mean = sum / count, stddev = std::sqrt(sq / count - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.02 * 5 / std::sqrt(static_cast<double>(count)));
  EXPECT_NEAR(stddev, 0.02, 0.02 * 0.03);
  for (int ch = 0; ch < c.hidden_size; ++ch) EXPECT_EQ(a[word.offset + ch], 0.0f) << "padding row";
  for (size_t i = 0; i < layout.find("bert.encoder.layer.1.output.LayerNorm.weight").numel; ++i)
    EXPECT_EQ(a[layout.find("bert.encoder.layer.1.output.LayerNorm.weight").offset + i], 1.0f);
  const auto& bias = layout.find("bert.encoder.layer.0.intermediate.dense.bias");
  for (size_t i = 0; i < bias.numel; ++i) EXPECT_EQ(a[bias.offset + i], 0.0f);
}
