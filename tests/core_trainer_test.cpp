// The training loop on a tiny synthetic sentiment task (CPU backend, one process): the loss
// falls, metrics.jsonl carries HF log_history keys and fractional epochs, the learning rate
// follows the schedule, gradient accumulation 2 x batch B equals one batch of 2B, evaluation
// counts every example exactly once however it is sharded, and macro-F1 is scikit-learn's.
// Then what a backend with hooks can provoke on the CPU: fp16 loss scaling (exact when nothing
// overflows, a skipped step when something does), numerical faults, metric_for_best_model with
// checkpoint rotation; and device selection, checkpoint vocabularies, the position limit.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "tests/support/lone_communicator.h"
#include "core/checkpoint.h"
#include "core/cpu_backend.h"
#include "core/cuda_backend.h"
#include "core/evaluate.h"
#include "core/progress_log.h"
#include "core/train_config.h"
#include "core/trainer.h"
#include "data/batch_loader.h"
#include "data/dataset_reader.h"
#include "data/sharded_sampler.h"
#include "data/tokenized_dataset.h"
#include "data/wordpiece_tokenizer.h"

namespace fs = std::filesystem;
using namespace llmqs;

namespace {

// A communicator of `world` ranks seen from `rank`, with nobody on the other end: reductions
// leave the data as it is. world = 1 is an exact single-process run; world > 1 lets a test
// look at what one rank computes on its own.
using llmqs::test_support::LoneCommunicator;

// The CPU backend with hooks: after each forward_backward (the gradients of micro-batch `call`,
// 0-based, in layout order, and its stats) and after each forward (evaluation batches).
class HookedBackend final : public core::Backend {
 public:
  explicit HookedBackend(std::unique_ptr<core::Backend> inner) : inner_(std::move(inner)) {}
  std::function<void(int64_t call, core::BatchStats& stats, float* gradients, size_t n)> after_backward;
  std::function<void(int64_t call, core::BatchStats& stats)> after_forward;

  std::string name() const override { return inner_->name(); }
  const core::BertConfig& config() const override { return inner_->config(); }
  const core::ParameterLayout& layout() const override { return inner_->layout(); }
  const core::OptimizerShard& optimizer_shard() const override { return inner_->optimizer_shard(); }
  void set_parameters(const float* host) override { inner_->set_parameters(host); }
  void get_parameters(float* host) const override { inner_->get_parameters(host); }
  void set_optimizer_state(const float* m, const float* v) override { inner_->set_optimizer_state(m, v); }
  void get_optimizer_state(float* m, float* v) const override { inner_->get_optimizer_state(m, v); }
  void get_owned_optimizer_state(float* m, float* v) const override { inner_->get_owned_optimizer_state(m, v); }
  void get_gradients(float* host) const override { inner_->get_gradients(host); }
  void zero_gradients() override { inner_->zero_gradients(); }
  core::BatchStats forward_backward(const data::Batch& batch, float loss_weight, const core::DropoutKey& key) override {
    core::BatchStats stats = inner_->forward_backward(batch, loss_weight, key);
    if (after_backward) after_backward(backward_calls_, stats, inner_->gradient_buffer(), layout().total_numel());
    ++backward_calls_;
    return stats;
  }
  core::BatchStats forward(const data::Batch& batch, float* logits) override {
    core::BatchStats stats = inner_->forward(batch, logits);
    if (after_forward) after_forward(forward_calls_, stats);
    ++forward_calls_;
    return stats;
  }
  float* gradient_buffer() override { return inner_->gradient_buffer(); }
  double gradient_sq_norm() override { return inner_->gradient_sq_norm(); }
  void adamw_step(const core::AdamWHyper& hyper) override { inner_->adamw_step(hyper); }
  float* parameter_buffer() override { return inner_->parameter_buffer(); }
  void parameters_gathered() override { inner_->parameters_gathered(); }

 private:
  std::unique_ptr<core::Backend> inner_;
  int64_t backward_calls_ = 0;
  int64_t forward_calls_ = 0;
};

// Deterministic tiny PRNG so the data set is identical everywhere.
struct Lcg {
  uint64_t state;
  uint32_t next() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(state >> 33);
  }
};

// Two classes: a review holds filler words and one sentiment word that decides its label
// (1 = negative, 2 = positive, as YelpReviewFull's 1-based labels).
class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("llmqs_trainer_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream vocab(dir_ / "vocab.txt");
    for (const char* token : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "food", "was", "and", "service",
                              "place", "very", "good", "great", "bad", "awful", "."})
      vocab << token << "\n";
    vocab.close();
    write_reviews(dir_ / "train.csv", 64, 7);
    write_reviews(dir_ / "test.csv", 40, 99);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static void write_reviews(const fs::path& path, int count, uint64_t seed) {
    const char* filler[] = {"the", "food", "was", "and", "service", "place", "very", "."};
    const char* positive[] = {"good", "great"};
    const char* negative[] = {"bad", "awful"};
    Lcg rng{seed};
    std::ofstream out(path);
    for (int i = 0; i < count; ++i) {
      const int label = i % 2 ? 2 : 1;
      const int words = 3 + static_cast<int>(rng.next() % 8);
      const int sentiment_at = static_cast<int>(rng.next() % words);
      std::string text;
      for (int w = 0; w < words; ++w) {
        if (!text.empty()) text += " ";
        text += w == sentiment_at ? (label == 2 ? positive : negative)[rng.next() % 2] : filler[rng.next() % 8];
      }
      out << label << ",\"" << text << "\"\n";
    }
  }

  core::TrainConfig tiny_config(const std::string& run) const {
    core::TrainConfig c;
    c.train_file = (dir_ / "train.csv").string();
    c.validation_file = (dir_ / "test.csv").string();
    c.output_dir = (dir_ / run).string();
    c.vocab = (dir_ / "vocab.txt").string();
    c.do_lower_case = true;
    c.max_length = 16;
    c.model.num_labels = 2;
    c.model.hidden_size = 16;
    c.model.num_hidden_layers = 1;
    c.model.num_attention_heads = 2;
    c.model.intermediate_size = 32;
    c.model.max_position_embeddings = 16;
    c.model.hidden_dropout_prob = 0.0f;
    c.model.attention_probs_dropout_prob = 0.0f;
    c.per_device_train_batch_size = 8;
    c.per_device_eval_batch_size = 8;
    c.learning_rate = 3e-3f;
    c.num_train_epochs = 3;
    c.logging_steps = 1;
    c.seed = 7;
    c.device = "cpu";
    return c;
  }

  static std::vector<nlohmann::json> read_jsonl(const fs::path& path) {
    std::vector<nlohmann::json> lines;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) lines.push_back(nlohmann::json::parse(line));
    return lines;
  }

  static std::vector<nlohmann::json> training_entries(const std::vector<nlohmann::json>& lines) {
    std::vector<nlohmann::json> out;
    for (const auto& j : lines)
      if (j.contains("loss")) out.push_back(j);
    return out;
  }

  // A hooked CPU replica of config.model (vocab_size must be set: the vocabulary has 17 tokens).
  static std::unique_ptr<HookedBackend> hooked(const core::TrainConfig& config) {
    return std::make_unique<HookedBackend>(core::make_cpu_backend(config.model));
  }

  static std::vector<float> parameters_of(core::Trainer& trainer) {
    std::vector<float> p(trainer.backend().layout().total_numel());
    trainer.backend().get_parameters(p.data());
    return p;
  }

  fs::path dir_;
};

}  // namespace

TEST_F(TrainerTest, LossFallsAndMetricsFileHasHfKeysAndFractionalEpochs) {
  LoneCommunicator comm;
  core::TrainConfig config = tiny_config("run");
  config.eval_strategy = "epoch";
  config.learning_rate = 1e-2f;
  config.num_train_epochs = 6;
  core::Trainer trainer(config, comm);
  ASSERT_EQ(trainer.batches_per_epoch(), 8);  // 64 examples / batch 8
  ASSERT_EQ(trainer.steps_per_epoch(), 8);
  const core::TrainSummary summary = trainer.train();
  EXPECT_EQ(summary.steps, 48);

  const auto lines = read_jsonl(fs::path(config.output_dir) / "metrics.jsonl");
  const auto train = training_entries(lines);
  ASSERT_EQ(train.size(), 48u);
  for (size_t i = 0; i < train.size(); ++i) {
    for (const char* key : {"step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_s"})
      ASSERT_TRUE(train[i].contains(key)) << key << " missing in " << train[i].dump();
    EXPECT_EQ(train[i]["step"].get<int64_t>(), static_cast<int64_t>(i + 1));
    // step s of 8 per epoch is epoch s / 8: 0.125, 0.25, ... never rounded down to 0.
    EXPECT_NEAR(train[i]["epoch"].get<double>(), (i + 1) / 8.0, 1e-12);
    EXPECT_GT(train[i]["grad_norm"].get<double>(), 0.0);
    EXPECT_GT(train[i]["tokens_per_s"].get<double>(), 0.0);
  }
  // The mean loss of the sixth epoch is well below the first epoch's (ln 2 = 0.693 at chance).
  double first_epoch = 0, last_epoch = 0;
  for (int i = 0; i < 8; ++i) {
    first_epoch += train[i]["loss"].get<double>() / 8;
    last_epoch += train[40 + i]["loss"].get<double>() / 8;
  }
  EXPECT_LT(last_epoch, 0.6 * first_epoch) << "first epoch " << first_epoch << ", last epoch " << last_epoch;

  // One evaluation per epoch, at its last step, over all 40 validation reviews.
  std::vector<nlohmann::json> evals;
  for (const auto& j : lines)
    if (j.contains("eval_loss")) evals.push_back(j);
  ASSERT_EQ(evals.size(), 6u);
  for (int e = 0; e < 6; ++e) {
    EXPECT_EQ(evals[e]["step"].get<int64_t>(), 8 * (e + 1));
    EXPECT_NEAR(evals[e]["epoch"].get<double>(), e + 1.0, 1e-12);
    EXPECT_EQ(evals[e]["eval_samples"].get<int64_t>(), 40);
    for (const char* key : {"eval_accuracy", "eval_macro_f1"}) ASSERT_TRUE(evals[e].contains(key));
  }
  EXPECT_GT(evals[5]["eval_accuracy"].get<double>(), 0.9);
  ASSERT_TRUE(summary.has_eval);
  EXPECT_DOUBLE_EQ(summary.final_eval.accuracy, evals[5]["eval_accuracy"].get<double>());

  // The final checkpoint carries the run position and the same log history.
  const std::string checkpoint = core::checkpoint_path(config.output_dir, 48);
  ASSERT_EQ(summary.checkpoint, checkpoint);
  const core::Checkpoint saved = core::read_checkpoint(checkpoint);
  EXPECT_EQ(saved.trainer.global_step, 48);
  EXPECT_DOUBLE_EQ(saved.trainer.epoch, 6.0);
  EXPECT_EQ(saved.trainer.samples_seen, 48 * 8);
  ASSERT_EQ(saved.trainer.log_history.size(), lines.size());
  EXPECT_EQ(nlohmann::json::parse(saved.trainer.log_history.back()), lines.back());
  EXPECT_EQ(saved.tokenizer.vocab.size(), 17u);
  EXPECT_EQ(saved.tokenizer.label_offset, 1);

  // `eval` of that checkpoint reproduces the trainer's final evaluation.
  core::TrainConfig eval_config;
  eval_config.validation_file = config.validation_file;
  eval_config.per_device_eval_batch_size = 5;  // another batching: same sums
  const core::EvalMetrics again = core::evaluate_checkpoint(checkpoint, eval_config, {}, comm);
  EXPECT_EQ(again.examples, 40);
  EXPECT_DOUBLE_EQ(again.accuracy, summary.final_eval.accuracy);
  EXPECT_NEAR(again.loss, summary.final_eval.loss, 1e-6 * summary.final_eval.loss);
}

// A collective that hangs past the timeout: the watchdog runs the communicator's abort (NCCL:
// ncclCommAbort, so the rank's collectives in flight return) before it ends the job.
TEST_F(TrainerTest, WatchdogTimeoutAbortsTheCommunicatorsCollectives) {
  LoneCommunicator comm;
  core::TrainConfig config = tiny_config("watchdog");
  config.validation_file.clear();
  config.max_steps = 1;
  core::Trainer trainer(config, comm);
  std::string message;
  trainer.watchdog().set_abort_for_test([&](const std::string& m) { message = m; });
  EXPECT_EQ(comm.aborts, 0);
  EXPECT_THROW(trainer.watchdog().abort_job("the gradient all-reduce did not complete"), std::runtime_error);
  EXPECT_EQ(comm.aborts, 1);
  EXPECT_EQ(message, "the gradient all-reduce did not complete");
}

TEST_F(TrainerTest, LearningRateFollowsWarmupAndLinearDecay) {
  LoneCommunicator comm;
  core::TrainConfig config = tiny_config("schedule");
  config.validation_file.clear();
  config.max_steps = 10;
  config.warmup_steps = 3;
  config.learning_rate = 1e-3f;
  core::Trainer trainer(config, comm);
  trainer.train();
  const auto train = training_entries(read_jsonl(fs::path(config.output_dir) / "metrics.jsonl"));
  ASSERT_EQ(train.size(), 10u);
  for (int s = 1; s <= 10; ++s) {
    // The step with 0-based index k = s - 1 uses base * k / 3 during warmup, then
    // base * (10 - k) / (10 - 3) (HF get_linear_schedule_with_warmup).
    const int k = s - 1;
    const double expected = k < 3 ? 1e-3 * k / 3.0 : 1e-3 * (10.0 - k) / 7.0;
    EXPECT_NEAR(train[s - 1]["learning_rate"].get<double>(), expected, 1e-9) << "step " << s;
  }
  // Epoch stays fractional for a run shorter than one epoch's 8 steps... and beyond it.
  EXPECT_NEAR(train[2]["epoch"].get<double>(), 3.0 / 8.0, 1e-12);
  EXPECT_NEAR(train[9]["epoch"].get<double>(), 10.0 / 8.0, 1e-12);
}

TEST_F(TrainerTest, AccumulatingTwoBatchesOfBEqualsOneBatchOf2B) {
  LoneCommunicator comm;
  core::TrainConfig accumulated = tiny_config("accumulated");
  accumulated.validation_file.clear();
  accumulated.per_device_train_batch_size = 4;
  accumulated.gradient_accumulation_steps = 2;
  accumulated.max_steps = 12;  // crosses an epoch boundary (8 steps per epoch)
  accumulated.weight_decay = 0.01f;
  core::TrainConfig single = accumulated;
  single.output_dir = (dir_ / "single").string();
  single.per_device_train_batch_size = 8;
  single.gradient_accumulation_steps = 1;

  core::Trainer a(accumulated, comm);
  core::Trainer b(single, comm);
  EXPECT_EQ(a.steps_per_epoch(), 8);
  EXPECT_EQ(b.steps_per_epoch(), 8);
  a.train();
  b.train();
  const auto la = training_entries(read_jsonl(fs::path(accumulated.output_dir) / "metrics.jsonl"));
  const auto lb = training_entries(read_jsonl(fs::path(single.output_dir) / "metrics.jsonl"));
  ASSERT_EQ(la.size(), 12u);
  ASSERT_EQ(lb.size(), 12u);
  for (size_t i = 0; i < la.size(); ++i) {
    const double loss_a = la[i]["loss"].get<double>(), loss_b = lb[i]["loss"].get<double>();
    EXPECT_NEAR(loss_a, loss_b, 1e-5 * loss_b) << "step " << i + 1;
    const double norm_a = la[i]["grad_norm"].get<double>(), norm_b = lb[i]["grad_norm"].get<double>();
    EXPECT_NEAR(norm_a, norm_b, 1e-5 * norm_b) << "step " << i + 1;
  }
  const size_t n = a.backend().layout().total_numel();
  std::vector<float> pa(n), pb(n);
  a.backend().get_parameters(pa.data());
  b.backend().get_parameters(pb.data());
  double scale = 0, worst = 0;
  for (size_t i = 0; i < n; ++i) {
    scale = std::max(scale, std::fabs(static_cast<double>(pb[i])));
    worst = std::max(worst, std::fabs(static_cast<double>(pa[i]) - pb[i]));
  }
  EXPECT_LT(worst, 1e-5 * scale) << "largest parameter difference " << worst << " (max |p| " << scale << ")";
}

TEST_F(TrainerTest, EvaluationShardsCountEveryExampleOnce) {
  // 40 examples over 3 ranks: slices of 13, 13, 14; no example twice, none dropped.
  const auto tokenizer = data::WordPieceTokenizer::from_file((dir_ / "vocab.txt").string(), true);
  data::ReadOptions options;
  auto dataset = data::load_tokenized((dir_ / "test.csv").string(), options, tokenizer, 16);
  core::TrainConfig config = tiny_config("unused");
  config.resolve_vocab_size(tokenizer.vocab_size());
  auto backend = core::make_cpu_backend(config.model);

  LoneCommunicator whole;
  const core::EvalMetrics all = core::evaluate(*backend, whole, *dataset, 8, tokenizer.pad_id());
  EXPECT_EQ(all.examples, 40);
  int64_t examples = 0;
  double loss_sum = 0;
  std::vector<int64_t> confusion(4, 0);
  for (int rank = 0; rank < 3; ++rank) {
    LoneCommunicator part(3, rank);
    const core::EvalMetrics m = core::evaluate(*backend, part, *dataset, 8, tokenizer.pad_id());
    EXPECT_EQ(m.examples, rank == 2 ? 14 : 13) << "rank " << rank;
    examples += m.examples;
    loss_sum += m.loss * m.examples;
    for (size_t i = 0; i < 4; ++i) confusion[i] += m.confusion[i];
  }
  EXPECT_EQ(examples, 40);
  EXPECT_NEAR(loss_sum / 40, all.loss, 1e-6 * all.loss);
  EXPECT_EQ(confusion, all.confusion);
}

TEST(MacroF1, MatchesScikitLearnDefinition) {
  // [true][predicted]: class 0 F1 = 2*3/(4+5) = 2/3, class 1 F1 = 2*4/(6+5) = 8/11.
  EXPECT_NEAR(core::macro_f1_from_confusion({3, 1, 2, 4}, 2), (2.0 / 3 + 8.0 / 11) / 2, 1e-12);
  // A class that is neither a label nor a prediction is left out of the mean.
  EXPECT_NEAR(core::macro_f1_from_confusion({3, 1, 0, 2, 4, 0, 0, 0, 0}, 3), (2.0 / 3 + 8.0 / 11) / 2, 1e-12);
  // A class that is predicted but never a label counts with F1 = 0.
  EXPECT_NEAR(core::macro_f1_from_confusion({2, 0, 1, 0, 2, 1, 0, 0, 0}, 3), (4.0 / 5 + 4.0 / 5 + 0.0) / 3, 1e-12);
  EXPECT_EQ(core::macro_f1_from_confusion({0, 0, 0, 0}, 2), 0.0);
}

TEST(ProgressFormat, EpochIsNeverShownAsZeroOnceTrainingMoved) {
  EXPECT_EQ(core::format_epoch(0.0), "0.00");
  EXPECT_EQ(core::format_epoch(0.37), "0.37");
  EXPECT_EQ(core::format_epoch(2.999), "3.00");
  // 60 steps into an epoch of 50,000 steps.
  EXPECT_EQ(core::format_epoch(60.0 / 50000.0), "0.0012");
  EXPECT_EQ(core::format_duration(3723), "1h02m03s");
  EXPECT_EQ(core::format_duration(125), "2m05s");
  EXPECT_EQ(core::format_rate(123456), "123.5K");
}

TEST_F(TrainerTest, ResumeFromAMidRunCheckpointContinuesExactly) {
  LoneCommunicator comm;
  core::TrainConfig straight = tiny_config("straight");
  straight.validation_file.clear();
  straight.max_steps = 12;
  straight.save_steps = 5;  // checkpoint-5 and checkpoint-10 mid-run (mid-epoch: 8 steps per epoch)
  straight.warmup_steps = 2;
  straight.model.hidden_dropout_prob = 0.1f;  // dropout keys must line up after the resume too
  core::Trainer a(straight, comm);
  a.train();
  ASSERT_TRUE(fs::exists(core::checkpoint_path(straight.output_dir, 5)));

  core::TrainConfig resumed = straight;
  resumed.output_dir = (dir_ / "resumed").string();
  fs::create_directories(resumed.output_dir);
  fs::copy_file(core::checkpoint_path(straight.output_dir, 5), core::checkpoint_path(resumed.output_dir, 5));
  resumed.resume_from_checkpoint = "auto";
  core::Trainer b(resumed, comm);
  b.train();
  EXPECT_EQ(b.state().global_step, 12);

  const size_t n = a.backend().layout().total_numel();
  std::vector<float> pa(n), pb(n);
  a.backend().get_parameters(pa.data());
  b.backend().get_parameters(pb.data());
  EXPECT_EQ(pa, pb) << "resumed run ends with other weights";
  const auto la = training_entries(read_jsonl(fs::path(straight.output_dir) / "metrics.jsonl"));
  const auto lb = training_entries(read_jsonl(fs::path(resumed.output_dir) / "metrics.jsonl"));
  ASSERT_EQ(la.size(), 12u);
  ASSERT_EQ(lb.size(), 12u);  // steps 1-5 from the checkpoint's history, 6-12 trained again
  for (size_t i = 0; i < la.size(); ++i) {
    EXPECT_EQ(la[i]["loss"], lb[i]["loss"]) << "step " << i + 1;
    EXPECT_EQ(la[i]["epoch"], lb[i]["epoch"]) << "step " << i + 1;
  }
}

// ---- device selection -------------------------------------------------------------------------

TEST(DeviceSelection, AutoFallsBackToCpuWithTheReasonAndCudaWithoutAGpuIsRefused) {
  std::string why;
  if (core::cuda_device_available(&why)) {
    EXPECT_EQ(core::resolve_device("auto"), "cuda");
    EXPECT_EQ(core::resolve_device("cuda"), "cuda");
    return;
  }
  std::string note;
  EXPECT_EQ(core::resolve_device("auto", &note), "cpu");
  EXPECT_NE(note.find(why), std::string::npos) << note;
  EXPECT_NE(note.find("falling back to cpu"), std::string::npos) << note;
  try {
    core::resolve_device("cuda");
    FAIL() << "device cuda accepted without a GPU";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind("device: cuda", 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
  }
  EXPECT_EQ(core::resolve_precision("cpu", "auto"), "fp32");
  EXPECT_THROW(core::resolve_precision("cpu", "tf32"), std::invalid_argument);
  EXPECT_THROW(core::resolve_precision("cpu", "fp8"), std::invalid_argument);
  EXPECT_EQ(core::describe_device("cpu", "fp32"), "device: cpu (fp32)");
}

TEST(DeviceSelection, BackendIsSizedForTheLargestBatchAndPaddedLengthWithinThePositions) {
  core::TrainConfig c;
  c.per_device_train_batch_size = 16;
  c.per_device_eval_batch_size = 64;
  c.max_length = 500;
  c.model.max_position_embeddings = 512;
  EXPECT_EQ(core::backend_max_rows(c), 64);
  EXPECT_EQ(core::backend_max_seq_len(c), 504);
  c.max_length = 20;
  c.model.max_position_embeddings = 20;
  EXPECT_EQ(core::backend_max_seq_len(c), 20);  // not 24: there are no positions 20..23
}

// ---- checkpoint vocabularies and the position limit -------------------------------------------

TEST_F(TrainerTest, TokenizerFromTokensEncodesLikeTheSameVocabTxtAndNamesItsSource) {
  const auto from_file = data::WordPieceTokenizer::from_file((dir_ / "vocab.txt").string(), true);
  const auto from_tokens = data::WordPieceTokenizer::from_tokens(from_file.tokens(), true, "run/checkpoint-8.h5");
  for (const char* text : {"The food was GREAT!", "service [SEP] very bad.", "unknownword and [MASK]", ""})
    EXPECT_EQ(from_tokens.encode(text, 16), from_file.encode(text, 16)) << text;
  EXPECT_EQ(from_tokens.vocab_hash(), from_file.vocab_hash());
  EXPECT_EQ(from_tokens.pad_id(), 0);
  std::vector<std::string> duplicate = from_file.tokens();
  duplicate.push_back("good");
  try {
    data::WordPieceTokenizer::from_tokens(duplicate, true, "run/checkpoint-8.h5");
    FAIL() << "duplicate token accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("run/checkpoint-8.h5:18: duplicate token 'good'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(data::WordPieceTokenizer::from_tokens({"[PAD]", "[CLS]", "[SEP]"}, true, "x"), std::runtime_error);  // no [UNK]
}

TEST_F(TrainerTest, BatchesNeverPadBeyondTheModelsPositions) {
  // Reviews of 16..22 words: with max_length 20 many hit 20 tokens, which rounds up to 24.
  {
    std::ofstream out(dir_ / "long.csv");
    Lcg rng{3};
    for (int i = 0; i < 32; ++i) {
      std::string text = i % 2 ? "good" : "bad";
      const int words = 16 + static_cast<int>(rng.next() % 7);
      for (int w = 1; w < words; ++w) text += " food";
      out << (i % 2 ? 2 : 1) << ",\"" << text << "\"\n";
    }
  }
  const auto tokenizer = data::WordPieceTokenizer::from_file((dir_ / "vocab.txt").string(), true);
  auto dataset = data::load_tokenized((dir_ / "long.csv").string(), data::ReadOptions{}, tokenizer, 20);
  data::ShardedSampler sampler(dataset->size(), 1, 0, 1, true, false);
  data::BatchLoaderOptions options;
  options.max_positions = 20;
  data::BatchLoader loader(*dataset, sampler, 0, 8, tokenizer.pad_id(), options);
  data::Batch batch;
  int full = 0;
  while (loader.next(batch)) {
    EXPECT_LE(batch.seq_len, 20);
    full += batch.seq_len == 20;
  }
  EXPECT_EQ(full, 4);  // every batch holds a 20-token review

  core::TrainConfig config = tiny_config("positions");
  config.train_file = (dir_ / "long.csv").string();
  config.validation_file = (dir_ / "long.csv").string();
  config.max_length = 20;
  config.model.max_position_embeddings = 20;
  config.max_steps = 2;
  LoneCommunicator comm;
  core::Trainer trainer(config, comm);
  EXPECT_NO_THROW(trainer.train());  // the CPU model refuses seq_len 24 > 20 positions
  EXPECT_EQ(trainer.state().global_step, 2);
}

// ---- fp16 dynamic loss scaling ------------------------------------------------------------------

TEST(DynamicLossScaler, DoublesAfter2000GoodStepsHalvesOnOverflowAndGivesUpAfter30InARow) {
  core::DynamicLossScaler scaler;
  EXPECT_EQ(scaler.scale(), 65536.0f);
  for (int step = 1; step < 2000; ++step) ASSERT_TRUE(scaler.update(true, step));
  EXPECT_EQ(scaler.scale(), 65536.0f);
  EXPECT_TRUE(scaler.update(true, 2000));
  EXPECT_EQ(scaler.scale(), 131072.0f);
  EXPECT_EQ(scaler.good_steps(), 0);
  for (int step = 1; step <= 1500; ++step) scaler.update(true, step);
  EXPECT_FALSE(scaler.update(false, 1501));  // an overflow also restarts the growth count
  EXPECT_EQ(scaler.scale(), 65536.0f);
  EXPECT_EQ(scaler.good_steps(), 0);
  for (int i = 1; i < 29; ++i) EXPECT_FALSE(scaler.update(false, 1501 + i));
  try {
    scaler.update(false, 1530);
    FAIL() << "30 overflows in a row accepted";
  } catch (const core::NumericalFault& e) {
    EXPECT_NE(std::string(e.what()).find("step 1530"), std::string::npos) << e.what();
  }
}

TEST_F(TrainerTest, Fp16LossScalingWithoutOverflowIsExactlyTheFp32Run) {
  // The scale is a power of two: scaling the loss and unscaling through grad_scale changes no
  // bit of an fp32 computation, so on the CPU backend the two runs must agree exactly.
  LoneCommunicator comm;
  core::TrainConfig fp32 = tiny_config("fp32");
  fp32.validation_file.clear();
  fp32.max_steps = 6;
  fp32.model.vocab_size = 17;
  core::TrainConfig fp16 = fp32;
  fp16.output_dir = (dir_ / "fp16").string();
  fp16.precision = "fp16";
  core::Trainer a(fp32, comm);
  core::Trainer b(fp16, comm, hooked(fp16));
  a.train();
  b.train();
  EXPECT_EQ(parameters_of(a), parameters_of(b));
  const auto la = training_entries(read_jsonl(fs::path(fp32.output_dir) / "metrics.jsonl"));
  const auto lb = training_entries(read_jsonl(fs::path(fp16.output_dir) / "metrics.jsonl"));
  ASSERT_EQ(lb.size(), 6u);
  for (size_t i = 0; i < la.size(); ++i) {
    EXPECT_EQ(la[i]["loss"], lb[i]["loss"]);
    EXPECT_EQ(la[i]["grad_norm"], lb[i]["grad_norm"]) << "the logged norm is unscaled";
    EXPECT_FALSE(la[i].contains("loss_scale"));
    EXPECT_EQ(lb[i]["loss_scale"].get<double>(), 65536.0);
  }
  EXPECT_EQ(b.state().loss_scale, 65536.0f);
  EXPECT_EQ(b.state().skipped_steps, 0);
}

TEST_F(TrainerTest, Fp16OverflowSkipsTheUpdateHalvesTheScaleAndTheScheduleStillAdvances) {
  LoneCommunicator comm;
  core::TrainConfig two = tiny_config("two");
  two.validation_file.clear();
  two.lr_scheduler_type = "constant";
  two.max_steps = 2;
  two.model.vocab_size = 17;
  two.precision = "fp16";
  core::TrainConfig three = two;
  three.output_dir = (dir_ / "three").string();
  three.max_steps = 3;
  auto backend = hooked(three);
  backend->after_backward = [](int64_t call, core::BatchStats&, float* gradients, size_t) {
    if (call == 2) gradients[0] = std::numeric_limits<float>::infinity();  // step 3 overflows
  };
  core::Trainer a(two, comm, hooked(two));
  core::Trainer b(three, comm, std::move(backend));
  a.train();
  const core::TrainSummary summary = b.train();
  EXPECT_EQ(b.state().global_step, 3);
  EXPECT_EQ(parameters_of(a), parameters_of(b)) << "the overflowing step changed the weights";
  EXPECT_EQ(b.state().skipped_steps, 1);
  EXPECT_EQ(b.state().loss_scale, 32768.0f);
  const auto entries = training_entries(read_jsonl(fs::path(three.output_dir) / "metrics.jsonl"));
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[1]["loss_scale"].get<double>(), 65536.0);
  EXPECT_EQ(entries[2]["loss_scale"].get<double>(), 32768.0);
  EXPECT_NE(summary.message.find("1 overflow steps skipped"), std::string::npos) << summary.message;
  // The checkpoint: AdamW took 2 steps of the 3, the scale and the skip count are kept.
  const core::CheckpointSummary saved = core::read_checkpoint_summary(summary.checkpoint);
  EXPECT_EQ(saved.optimizer_step, 2);
  EXPECT_EQ(saved.trainer.skipped_steps, 1);
  EXPECT_EQ(saved.trainer.loss_scale, 32768.0f);
}

TEST_F(TrainerTest, Fp16ResumeDoublesTheLossScaleAtTheSameStepAsAnUninterruptedRun) {
  // GradScaler doubles the scale after 2000 finite steps in a row. A run resumed at step 1000
  // must carry the 1000 already counted, or its scale doubles 1000 steps late and every later
  // fp16 step (and the checkpoint's loss_scale) differs from the uninterrupted run.
  LoneCommunicator comm;
  core::TrainConfig straight = tiny_config("straight");
  straight.validation_file.clear();
  straight.max_steps = 2005;
  straight.save_steps = 1000;
  straight.logging_steps = 1000;
  straight.per_device_train_batch_size = 2;
  straight.model.vocab_size = 17;
  straight.precision = "fp16";
  core::Trainer a(straight, comm, hooked(straight));
  const core::TrainSummary done = a.train();
  EXPECT_EQ(a.state().loss_scale, 131072.0f) << "no doubling after 2000 good steps";
  EXPECT_EQ(a.state().loss_scale_good_steps, 5);
  const core::CheckpointSummary at_1000 =
      core::read_checkpoint_summary(core::checkpoint_path(straight.output_dir, 1000));
  EXPECT_EQ(at_1000.trainer.loss_scale, 65536.0f);
  EXPECT_EQ(at_1000.trainer.loss_scale_good_steps, 1000);

  core::TrainConfig resumed = straight;
  resumed.output_dir = (dir_ / "resumed").string();
  resumed.resume_from_checkpoint = "auto";
  fs::create_directories(resumed.output_dir);
  fs::copy_file(core::checkpoint_path(straight.output_dir, 1000), core::checkpoint_path(resumed.output_dir, 1000));
  core::Trainer b(resumed, comm, hooked(resumed));
  const core::TrainSummary again = b.train();
  EXPECT_EQ(b.state().loss_scale, 131072.0f) << "the resumed run lost the growth count";
  EXPECT_EQ(b.state().loss_scale_good_steps, 5);
  EXPECT_EQ(parameters_of(a), parameters_of(b));
  const core::CheckpointSummary end_a = core::read_checkpoint_summary(done.checkpoint);
  const core::CheckpointSummary end_b = core::read_checkpoint_summary(again.checkpoint);
  EXPECT_EQ(end_a.trainer.loss_scale, end_b.trainer.loss_scale);
  EXPECT_EQ(end_a.trainer.loss_scale_good_steps, end_b.trainer.loss_scale_good_steps);
  const auto la = training_entries(read_jsonl(fs::path(straight.output_dir) / "metrics.jsonl"));
  const auto lb = training_entries(read_jsonl(fs::path(resumed.output_dir) / "metrics.jsonl"));
  ASSERT_EQ(la.size(), lb.size());
  for (size_t i = 0; i < la.size(); ++i) EXPECT_EQ(la[i]["loss_scale"], lb[i]["loss_scale"]) << "entry " << i;
}

// ---- a full disk at save time ---------------------------------------------------------------------

TEST_F(TrainerTest, ASaveThatFailsStopsTheRunNamesTheLastCheckpointAndResumeFinishesTheSame) {
  // The file size limit (EFBIG) stands in for a full disk (ENOSPC): both are write() errors.
  LoneCommunicator comm;
  core::TrainConfig config = tiny_config("full");
  config.validation_file.clear();
  config.max_steps = 10;
  config.save_steps = 2;
  config.model.vocab_size = 17;
  core::TrainConfig reference = config;
  reference.output_dir = (dir_ / "reference").string();
  core::Trainer straight(reference, comm);
  straight.train();

  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto backend = hooked(config);
  backend->after_backward = [&](int64_t call, core::BatchStats&, float*, size_t) {
    if (call != 4) return;  // step 5: the disk "fills up" after checkpoint-4.h5
    struct rlimit low = saved;
    low.rlim_cur = 20'000;
    ::setrlimit(RLIMIT_FSIZE, &low);
  };
  core::Trainer full(config, comm, std::move(backend));
  std::string message;
  try {
    full.train();
  } catch (const core::OutputFault& e) {
    message = e.what();
  }
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &saved), 0);
  const std::string six = core::checkpoint_path(config.output_dir, 6), four = core::checkpoint_path(config.output_dir, 4);
  EXPECT_NE(message.find(six + ": cannot write the checkpoint"), std::string::npos) << message;
  EXPECT_NE(message.find("File too large"), std::string::npos) << message;
  EXPECT_NE(message.find("training stopped at step 6, the last complete checkpoint is " + four), std::string::npos)
      << message;
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(config.output_dir))
    if (entry.is_regular_file()) files.push_back(entry.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"checkpoint-2.h5", "checkpoint-4.h5", "metrics.jsonl"}));
  EXPECT_EQ(core::read_checkpoint_summary(four).trainer.global_step, 4);

  // Space again: resume auto continues from checkpoint-4.h5 to the uninterrupted run's weights.
  core::TrainConfig again = config;
  again.resume_from_checkpoint = "auto";
  core::Trainer resumed(again, comm);
  resumed.train();
  EXPECT_EQ(resumed.state().global_step, 10);
  EXPECT_EQ(parameters_of(straight), parameters_of(resumed));
}

// ---- numerical faults -----------------------------------------------------------------------------

TEST_F(TrainerTest, NanGradientStopsAtItsStepAndKeepsTheLastGoodCheckpoint) {
  LoneCommunicator comm;
  core::TrainConfig config = tiny_config("nan");
  config.validation_file.clear();
  config.max_steps = 10;
  config.save_steps = 2;
  config.model.vocab_size = 17;
  auto backend = hooked(config);
  backend->after_backward = [](int64_t call, core::BatchStats&, float* gradients, size_t n) {
    if (call == 4) gradients[n / 2] = std::nanf("");  // step 5
  };
  core::Trainer trainer(config, comm, std::move(backend));
  try {
    trainer.train();
    FAIL() << "a NaN gradient was trained on";
  } catch (const core::NumericalFault& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("step 5: the gradient norm is not finite"), std::string::npos) << message;
    EXPECT_NE(message.find("checkpoint-4.h5"), std::string::npos) << message;
  }
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(config.output_dir))
    if (entry.path().extension() == ".h5" || entry.path().string().find(".tmp") != std::string::npos)
      files.push_back(entry.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"checkpoint-2.h5", "checkpoint-4.h5"}));
  EXPECT_EQ(trainer.state().global_step, 4);
  // The weights are those of step 4: the bad step changed nothing.
  const core::Checkpoint last = core::read_checkpoint(core::checkpoint_path(config.output_dir, 4));
  EXPECT_EQ(last.parameters, parameters_of(trainer));
}

TEST_F(TrainerTest, InfiniteLossStopsTooAndSaysItWasTheLoss) {
  LoneCommunicator comm;
  core::TrainConfig config = tiny_config("inf");
  config.validation_file.clear();
  config.max_steps = 10;
  config.model.vocab_size = 17;
  auto backend = hooked(config);
  backend->after_backward = [](int64_t call, core::BatchStats& stats, float*, size_t) {
    if (call == 2) stats.loss_sum = std::numeric_limits<double>::infinity();
  };
  core::Trainer trainer(config, comm, std::move(backend));
  try {
    trainer.train();
    FAIL() << "an infinite loss was trained on";
  } catch (const core::NumericalFault& e) {
    EXPECT_NE(std::string(e.what()).find("step 3: the loss is not finite"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("no checkpoint was written"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(core::checkpoint_path(config.output_dir, 3)));
}

// ---- metric_for_best_model ------------------------------------------------------------------------

TEST_F(TrainerTest, BestCheckpointIsWrittenWhenTheMetricImprovesAndSurvivesRotation) {
  LoneCommunicator comm;
  core::TrainConfig config = tiny_config("best");
  config.eval_strategy = "epoch";
  config.num_train_epochs = 3;  // evaluations at steps 8, 16, 24
  config.metric_for_best_model = "eval_loss";
  config.save_total_limit = 1;
  config.model.vocab_size = 17;
  auto backend = hooked(config);
  // 40 validation reviews in batches of 8: 5 forwards per evaluation. The second evaluation is
  // made to look best, whatever training does.
  backend->after_forward = [](int64_t call, core::BatchStats& stats) {
    if (call / 5 == 1) stats.loss_sum *= 0.01;
  };
  core::Trainer trainer(config, comm, std::move(backend));
  const core::TrainSummary summary = trainer.train();
  std::vector<double> eval_losses;
  for (const auto& j : read_jsonl(fs::path(config.output_dir) / "metrics.jsonl"))
    if (j.contains("eval_loss")) eval_losses.push_back(j["eval_loss"].get<double>());
  ASSERT_EQ(eval_losses.size(), 3u);
  ASSERT_LT(eval_losses[1], eval_losses[0]);
  ASSERT_LT(eval_losses[1], eval_losses[2]);

  // save_steps 0 and a limit of 1: the best step's checkpoint was written for it and kept
  // beside the newest; step 8's (the best until step 16) was rotated away.
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(config.output_dir))
    if (entry.path().extension() == ".h5") files.push_back(entry.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"checkpoint-16.h5", "checkpoint-24.h5"}));
  const core::CheckpointSummary final_state = core::read_checkpoint_summary(summary.checkpoint);
  EXPECT_EQ(final_state.trainer.best_checkpoint, "checkpoint-16.h5");
  EXPECT_DOUBLE_EQ(final_state.trainer.best_metric, eval_losses[1]);
  const core::CheckpointSummary best = core::read_checkpoint_summary(core::checkpoint_path(config.output_dir, 16));
  EXPECT_EQ(best.trainer.best_checkpoint, "checkpoint-16.h5");
  EXPECT_EQ(best.trainer.global_step, 16);
}
