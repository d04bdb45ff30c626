// The training loop on a tiny synthetic sentiment task (CPU backend, one process): the loss
// falls, metrics.jsonl carries HF log_history keys and fractional epochs, the learning rate
// follows the schedule, gradient accumulation 2 x batch B equals one batch of 2B, evaluation
// counts every example exactly once however it is sharded, and macro-F1 is scikit-learn's.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/checkpoint.h"
#include "core/cpu_backend.h"
#include "core/evaluate.h"
#include "core/progress_log.h"
#include "core/train_config.h"
#include "core/trainer.h"
#include "data/dataset_reader.h"
#include "data/tokenized_dataset.h"
#include "data/wordpiece_tokenizer.h"

namespace fs = std::filesystem;
using namespace llmqs;

namespace {

// A communicator of `world` ranks seen from `rank`, with nobody on the other end: reductions
// leave the data as it is. world = 1 is an exact single-process run; world > 1 lets a test
// look at what one rank computes on its own.
class LoneCommunicator final : public comm::Communicator {
 public:
  LoneCommunicator(int world = 1, int rank = 0) : world_(world), rank_(rank) {}
  const char* name() const override { return "lone"; }
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }
  int local_rank() const override { return rank_; }
  void all_reduce_sum(float*, size_t) override {}
  void broadcast(void*, size_t, int) override {}
  void all_reduce_sum_host(double*, size_t) override {}
  void all_reduce_sum_host(int64_t*, size_t) override {}
  void broadcast_host(void*, size_t, int) override {}
  void barrier() override {}

 private:
  int world_;
  int rank_;
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
