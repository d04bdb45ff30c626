// Parity with PyTorch + transformers: tests/fixtures/tiny_bert_parity.h5 (written by
// tests/fixtures/make_torch_parity_fixture.py with torch 2.11 / transformers 5.17, fp32, eager
// attention, dropout 0) holds a tiny BertForSequenceClassification, a padded batch, HF's logits,
// loss and gradients, and three clipped AdamW steps under a linear warmup schedule. The `cpu`
// backend and core/optimizer.h replay all of it here. Also HF's schedule and clipping formulas.
//
// Tolerances (float32 on both sides, different summation orders):
//   logits, loss             1e-5 relative (logits: relative to the largest |logit|)
//   gradients                1e-4 of the tensor's largest |gradient| (floor: 1e-8 absolute)
//   per-step loss, grad norm 1e-5 relative;  lr 1e-7 relative
//   final parameters         1e-5 absolute (each step moves a parameter by about 1e-3), except
//                            the attention key biases, whose gradient is round-off (see below)
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/cpu_backend.h"
#include "core/optimizer.h"
#include "core/parameters.h"

using llmqs::core::BertConfig;
using llmqs::core::LrSchedulerType;

namespace {

const std::string kFixture = std::string(LLMQS_TEST_DATA_DIR) + "/fixtures/tiny_bert_parity.h5";

class H5File {
 public:
  explicit H5File(const std::string& path) : id_(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT)) {
    if (id_ < 0) throw std::runtime_error(path + ": cannot open as HDF5");
  }
  ~H5File() { H5Fclose(id_); }
  H5File(const H5File&) = delete;
  H5File& operator=(const H5File&) = delete;

  template <typename T>
  std::vector<T> read(const std::string& name, std::vector<hsize_t>* dims_out = nullptr) const {
    const hid_t ds = H5Dopen2(id_, name.c_str(), H5P_DEFAULT);
    if (ds < 0) throw std::runtime_error(kFixture + ": no dataset " + name);
    const hid_t space = H5Dget_space(ds);
    const int rank = H5Sget_simple_extent_ndims(space);
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    H5Sget_simple_extent_dims(space, dims.data(), nullptr);
    size_t n = 1;
    for (hsize_t d : dims) n *= d;
    std::vector<T> out(n);
    const hid_t type = std::is_same<T, float>::value    ? H5T_NATIVE_FLOAT
                       : std::is_same<T, double>::value ? H5T_NATIVE_DOUBLE
                                                        : H5T_NATIVE_INT32;
    const herr_t status = H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data());
    H5Sclose(space);
    H5Dclose(ds);
    if (status < 0) throw std::runtime_error(kFixture + ": cannot read " + name);
    if (dims_out) *dims_out = dims;
    return out;
  }

  double attribute(const std::string& name) const {
    const hid_t group = H5Gopen2(id_, "config", H5P_DEFAULT);
    const hid_t attr = H5Aopen(group, name.c_str(), H5P_DEFAULT);
    if (attr < 0) throw std::runtime_error(kFixture + ": no attribute config/" + name);
    double value = 0.0;
    const herr_t status = H5Aread(attr, H5T_NATIVE_DOUBLE, &value);
    H5Aclose(attr);
    H5Gclose(group);
    if (status < 0) throw std::runtime_error(kFixture + ": cannot read attribute config/" + name);
    return value;
  }

 private:
  hid_t id_;
};

struct Fixture {
  BertConfig config;
  std::vector<float> params;
  llmqs::data::Batch batch;
};

Fixture load_fixture(const H5File& f) {
  Fixture fx;
  BertConfig& c = fx.config;
  c.vocab_size = static_cast<int>(f.attribute("vocab_size"));
  c.hidden_size = static_cast<int>(f.attribute("hidden_size"));
  c.num_hidden_layers = static_cast<int>(f.attribute("num_hidden_layers"));
  c.num_attention_heads = static_cast<int>(f.attribute("num_attention_heads"));
  c.intermediate_size = static_cast<int>(f.attribute("intermediate_size"));
  c.max_position_embeddings = static_cast<int>(f.attribute("max_position_embeddings"));
  c.type_vocab_size = static_cast<int>(f.attribute("type_vocab_size"));
  c.num_labels = static_cast<int>(f.attribute("num_labels"));
  c.pad_token_id = static_cast<int>(f.attribute("pad_token_id"));
  c.layer_norm_eps = static_cast<float>(f.attribute("layer_norm_eps"));
  c.initializer_range = static_cast<float>(f.attribute("initializer_range"));
  c.hidden_dropout_prob = static_cast<float>(f.attribute("hidden_dropout_prob"));
  c.attention_probs_dropout_prob = static_cast<float>(f.attribute("attention_probs_dropout_prob"));
  const auto layout = llmqs::core::ParameterLayout::for_bert(c);
  fx.params.resize(layout.total_numel());
  for (const auto& info : layout.parameters()) {
    std::vector<hsize_t> dims;
    const auto values = f.read<float>("params/" + info.name, &dims);
    EXPECT_EQ(std::vector<int64_t>(dims.begin(), dims.end()), info.shape) << info.name;
    std::copy(values.begin(), values.end(), fx.params.begin() + info.offset);
  }
  std::vector<hsize_t> dims;
  const auto ids = f.read<int32_t>("batch/input_ids", &dims);
  const auto mask = f.read<int32_t>("batch/attention_mask");
  fx.batch.rows = static_cast<int>(dims[0]);
  fx.batch.seq_len = static_cast<int>(dims[1]);
  fx.batch.input_ids = ids;
  fx.batch.labels = f.read<int32_t>("batch/labels");
  for (int r = 0; r < fx.batch.rows; ++r) {
    int length = 0;
    for (int s = 0; s < fx.batch.seq_len; ++s) length += mask[r * fx.batch.seq_len + s];
    for (int s = 0; s < fx.batch.seq_len; ++s)
      EXPECT_EQ(mask[r * fx.batch.seq_len + s], s < length ? 1 : 0) << "the mask must be a prefix";
    fx.batch.lengths.push_back(length);
  }
  return fx;
}

llmqs::core::DropoutKey no_dropout() {
  llmqs::core::DropoutKey key;
  key.enabled = false;
  return key;
}

}  // namespace

TEST(TorchParity, FixtureHasAPaddedBatchAndEveryParameter) {
  H5File f(kFixture);
  const Fixture fx = load_fixture(f);
  EXPECT_EQ(fx.config.intermediate_size, 37);
  EXPECT_EQ(fx.batch.lengths, (std::vector<int32_t>{11, 7, 3, 9}));
  const auto layout = llmqs::core::ParameterLayout::for_bert(fx.config);
  EXPECT_EQ(layout.parameters().size(), 41u);
}

TEST(TorchParity, LogitsLossAndEveryGradientMatchHf) {
  H5File f(kFixture);
  const Fixture fx = load_fixture(f);
  auto backend = llmqs::core::make_cpu_backend(fx.config);
  backend->set_parameters(fx.params.data());
  const int rows = fx.batch.rows, labels = fx.config.num_labels;

  std::vector<float> logits(static_cast<size_t>(rows) * labels);
  const auto stats = backend->forward(fx.batch, logits.data());
  const auto hf_logits = f.read<float>("forward/logits");
  float max_logit = 0.0f;
  for (float v : hf_logits) max_logit = std::max(max_logit, std::abs(v));
  for (size_t i = 0; i < logits.size(); ++i) EXPECT_NEAR(logits[i], hf_logits[i], 1e-5 * max_logit) << "logit " << i;
  const double hf_loss = f.read<float>("forward/loss")[0];
  EXPECT_NEAR(stats.loss_sum / rows, hf_loss, 1e-5 * hf_loss);

  backend->zero_gradients();
  backend->forward_backward(fx.batch, 1.0f / rows, no_dropout());  // HF's mean over rows
  std::vector<float> grads(fx.params.size());
  backend->get_gradients(grads.data());
  for (const auto& info : backend->layout().parameters()) {
    const auto hf = f.read<float>("grads/" + info.name);
    double max_abs = 0.0, max_err = 0.0;
    for (size_t i = 0; i < info.numel; ++i) {
      max_abs = std::max(max_abs, static_cast<double>(std::abs(hf[i])));
      max_err = std::max(max_err, static_cast<double>(std::abs(hf[i] - grads[info.offset + i])));
    }
    EXPECT_LE(max_err, std::max(1e-4 * max_abs, 1e-8)) << info.name << " (largest |grad| " << max_abs << ")";
  }
}

TEST(TorchParity, ThreeClippedAdamWStepsWithLinearWarmupMatchTorch) {
  H5File f(kFixture);
  const Fixture fx = load_fixture(f);
  auto backend = llmqs::core::make_cpu_backend(fx.config);
  backend->set_parameters(fx.params.data());
  const int rows = fx.batch.rows;
  const auto hf_loss = f.read<double>("steps/loss");
  const auto hf_norm = f.read<double>("steps/grad_norm");
  const auto hf_lr = f.read<double>("steps/lr");
  const int64_t total = static_cast<int64_t>(f.attribute("total_steps"));
  const int64_t warmup = llmqs::core::resolve_warmup_steps(total, static_cast<int64_t>(f.attribute("warmup_steps")), 0.0);
  const float base_lr = static_cast<float>(f.attribute("lr"));
  const float max_norm = static_cast<float>(f.attribute("max_grad_norm"));
  ASSERT_EQ(hf_loss.size(), static_cast<size_t>(total));
  for (int64_t step = 0; step < total; ++step) {
    backend->zero_gradients();
    const auto stats = backend->forward_backward(fx.batch, 1.0f / rows, no_dropout());
    EXPECT_NEAR(stats.loss_sum / rows, hf_loss[step], 1e-5 * hf_loss[step]) << "step " << step;
    const double norm = std::sqrt(backend->gradient_sq_norm());
    EXPECT_NEAR(norm, hf_norm[step], 1e-5 * hf_norm[step]) << "step " << step;
    const float lr = llmqs::core::learning_rate_at(LrSchedulerType::kLinear, base_lr, step, warmup, total);
    EXPECT_NEAR(lr, hf_lr[step], 1e-7 * base_lr) << "step " << step;
    llmqs::core::AdamWHyper hyper;
    hyper.lr = lr;
    hyper.beta1 = static_cast<float>(f.attribute("beta1"));
    hyper.beta2 = static_cast<float>(f.attribute("beta2"));
    hyper.eps = static_cast<float>(f.attribute("eps"));
    hyper.weight_decay = static_cast<float>(f.attribute("weight_decay"));
    hyper.grad_scale = llmqs::core::clip_coefficient(norm, max_norm);
    EXPECT_LT(hyper.grad_scale, 1.0f) << "the fixture is meant to clip on every step";
    hyper.step = step + 1;
    backend->adamw_step(hyper);
  }
  std::vector<float> params(fx.params.size());
  backend->get_parameters(params.data());
  double moved = 0.0;
  for (const auto& info : backend->layout().parameters()) {
    const auto hf = f.read<float>("final/" + info.name);
    double max_err = 0.0;
    for (size_t i = 0; i < info.numel; ++i) {
      max_err = std::max(max_err, static_cast<double>(std::abs(hf[i] - params[info.offset + i])));
      moved = std::max(moved, static_cast<double>(std::abs(params[info.offset + i] - fx.params[info.offset + i])));
    }
    if (info.name.find("attention.self.key.bias") != std::string::npos) {
      // This gradient is zero in exact arithmetic (softmax ignores a shift shared by all keys),
      // so both sides hold round-off, which Adam normalises into steps of up to lr in either
      // direction: only the bound of the update size can be compared.
      EXPECT_LE(max_err, 2.0 * (hf_lr[0] + hf_lr[1] + hf_lr[2]) + 1e-5) << info.name;
      continue;
    }
    EXPECT_LE(max_err, 1e-5) << info.name;
  }
  EXPECT_GT(moved, 1e-3) << "the parameters should have moved by about lr per step";
}

TEST(Optimizer, HfScheduleFactors) {
  using llmqs::core::learning_rate_at;
  const float lr = 2e-5f;
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kLinear, lr, 0, 10, 100), 0.0f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kLinear, lr, 5, 10, 100), 1e-5f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kLinear, lr, 10, 10, 100), lr);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kLinear, lr, 55, 10, 100), 1e-5f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kLinear, lr, 100, 10, 100), 0.0f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kLinear, lr, 150, 10, 100), 0.0f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kLinear, lr, 0, 0, 4), lr);  // no warmup: full lr first
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kCosine, lr, 50, 0, 100), 1e-5f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kCosine, lr, 25, 0, 100),
                  static_cast<float>(2e-5 * 0.5 * (1 + std::cos(M_PI / 4))));
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kCosine, lr, 2, 4, 100), 1e-5f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kConstant, lr, 0, 10, 100), lr);  // ignores warmup, as HF
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kConstantWithWarmup, lr, 2, 4, 100), 1e-5f);
  EXPECT_FLOAT_EQ(learning_rate_at(LrSchedulerType::kConstantWithWarmup, lr, 99, 4, 100), lr);
}

TEST(Optimizer, WarmupClippingAndNames) {
  EXPECT_EQ(llmqs::core::resolve_warmup_steps(1000, 0, 0.1), 100);
  EXPECT_EQ(llmqs::core::resolve_warmup_steps(1000, 5, 0.1), 5);
  EXPECT_EQ(llmqs::core::resolve_warmup_steps(7, 0, 0.5), 4);  // ceil(3.5)
  EXPECT_EQ(llmqs::core::resolve_warmup_steps(7, 0, 0.0), 0);
  EXPECT_THROW(llmqs::core::resolve_warmup_steps(7, 0, 1.5), std::invalid_argument);
  EXPECT_FLOAT_EQ(llmqs::core::clip_coefficient(10.0, 1.0f), 1.0f / (10.0f + 1e-6f));
  EXPECT_EQ(llmqs::core::clip_coefficient(0.5, 1.0f), 1.0f);
  EXPECT_EQ(llmqs::core::clip_coefficient(1e9, 0.0f), 1.0f);
  for (const char* name : {"linear", "cosine", "constant", "constant_with_warmup"})
    EXPECT_EQ(llmqs::core::lr_scheduler_name(llmqs::core::parse_lr_scheduler_type(name)), name);
  try {
    llmqs::core::parse_lr_scheduler_type("polynomial");
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("polynomial"), std::string::npos);
  }
}
