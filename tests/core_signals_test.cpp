// SIGTERM / SIGINT during `train` (CPU backend, one process): the step in flight finishes, a
// checkpoint of that step is written, train() returns with the signal, and resuming from the
// checkpoint ends with exactly the weights of an uninterrupted run; a second signal ends the
// process at once. The same through mpirun (a signal to one rank of two) is
// tests/faults/training_faults.py signal.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "tests/support/lone_communicator.h"
#include "core/checkpoint.h"
#include "core/cpu_backend.h"
#include "core/trainer.h"

namespace fs = std::filesystem;
using namespace llmqs;

namespace {

using llmqs::test_support::LoneCommunicator;

// The CPU backend, calling `during_backward(call)` inside each forward_backward (0-based count):
// where a real signal lands, in the middle of a step.
class SignallingBackend final : public core::Backend {
 public:
  SignallingBackend(std::unique_ptr<core::Backend> inner, std::function<void(int64_t)> during_backward)
      : inner_(std::move(inner)), during_backward_(std::move(during_backward)) {}
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
  core::BatchStats forward_backward(const data::Batch& batch, float weight, const core::DropoutKey& key) override {
    during_backward_(calls_++);
    return inner_->forward_backward(batch, weight, key);
  }
  core::BatchStats forward(const data::Batch& batch, float* logits) override { return inner_->forward(batch, logits); }
  float* gradient_buffer() override { return inner_->gradient_buffer(); }
  double gradient_sq_norm() override { return inner_->gradient_sq_norm(); }
  void adamw_step(const core::AdamWHyper& hyper) override { inner_->adamw_step(hyper); }
  float* parameter_buffer() override { return inner_->parameter_buffer(); }
  void parameters_gathered() override { inner_->parameters_gathered(); }

 private:
  std::unique_ptr<core::Backend> inner_;
  std::function<void(int64_t)> during_backward_;
  int64_t calls_ = 0;
};

class SignalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("llmqs_signals_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream vocab(dir_ / "vocab.txt");
    for (const char* token : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "food", "was", "good", "bad"})
      vocab << token << "\n";
    vocab.close();
    std::ofstream data(dir_ / "train.csv");
    const char* filler[] = {"the", "food", "was"};
    for (int i = 0; i < 48; ++i) {
      std::string text = i % 2 ? "good" : "bad";
      for (int w = 0; w < 2 + i % 5; ++w) text += std::string(" ") + filler[(i + w) % 3];
      data << (i % 2 ? 2 : 1) << ",\"" << text << "\"\n";
    }
  }
  void TearDown() override { fs::remove_all(dir_); }

  core::TrainConfig config(const std::string& run) const {
    core::TrainConfig c;
    c.train_file = (dir_ / "train.csv").string();
    c.output_dir = (dir_ / run).string();
    c.vocab = (dir_ / "vocab.txt").string();
    c.do_lower_case = true;
    c.max_length = 16;
    c.model.vocab_size = 10;
    c.model.num_labels = 2;
    c.model.hidden_size = 16;
    c.model.num_hidden_layers = 1;
    c.model.num_attention_heads = 2;
    c.model.intermediate_size = 32;
    c.model.max_position_embeddings = 16;
    c.model.hidden_dropout_prob = 0.1f;  // dropout keys must line up after the resume
    c.per_device_train_batch_size = 8;
    c.learning_rate = 3e-3f;
    c.max_steps = 10;
    c.logging_steps = 1;
    c.seed = 11;
    c.device = "cpu";
    return c;
  }

  static std::vector<float> parameters_of(core::Trainer& trainer) {
    std::vector<float> p(trainer.backend().layout().total_numel());
    trainer.backend().get_parameters(p.data());
    return p;
  }

  fs::path dir_;
};

}  // namespace

TEST_F(SignalTest, SigtermFinishesTheStepWritesItsCheckpointAndResumeEndsWithTheSameWeights) {
  LoneCommunicator comm;
  core::TrainConfig straight = config("straight");
  core::Trainer a(straight, comm);
  a.train();

  core::TrainConfig stopped = config("stopped");
  // Inside the backward of step 4 (6 steps per epoch: mid-epoch): the step completes, step 5
  // never starts.
  auto backend = std::make_unique<SignallingBackend>(core::make_cpu_backend(stopped.model), [](int64_t call) {
    if (call == 3) std::raise(SIGTERM);
  });
  core::Trainer b(stopped, comm, std::move(backend));
  const core::TrainSummary summary = b.train();
  EXPECT_EQ(summary.stop_signal, SIGTERM);
  EXPECT_EQ(summary.steps, 4);
  const std::string checkpoint = core::checkpoint_path(stopped.output_dir, 4);
  EXPECT_EQ(summary.checkpoint, checkpoint);
  EXPECT_EQ(summary.message, "stopped by SIGTERM at step 4; checkpoint " + checkpoint +
                                 "; resume with --resume_from_checkpoint auto");
  const core::Checkpoint saved = core::read_checkpoint(checkpoint);
  EXPECT_EQ(saved.trainer.global_step, 4);
  EXPECT_EQ(saved.trainer.sampler_position, 4);  // optimizer steps into epoch 0
  EXPECT_EQ(saved.parameters, parameters_of(b));
  // The flag stays up after train() (the handlers are gone) and is cleared when the next starts.
  EXPECT_EQ(core::pending_stop_signal(), SIGTERM);

  core::TrainConfig resumed = config("stopped");
  resumed.resume_from_checkpoint = "auto";
  core::Trainer c(resumed, comm);
  const core::TrainSummary finished = c.train();
  EXPECT_EQ(finished.stop_signal, 0);
  EXPECT_EQ(c.state().global_step, 10);
  EXPECT_EQ(parameters_of(a), parameters_of(c)) << "the interrupted and resumed run ends with other weights";
}

TEST_F(SignalTest, SigintIsReportedAsSigint) {
  LoneCommunicator comm;
  core::TrainConfig c = config("sigint");
  auto backend = std::make_unique<SignallingBackend>(core::make_cpu_backend(c.model), [](int64_t call) {
    if (call == 0) std::raise(SIGINT);
  });
  core::Trainer trainer(c, comm, std::move(backend));
  const core::TrainSummary summary = trainer.train();
  EXPECT_EQ(summary.stop_signal, SIGINT);
  EXPECT_EQ(summary.steps, 1);
  EXPECT_TRUE(fs::exists(core::checkpoint_path(c.output_dir, 1)));
}

TEST_F(SignalTest, ASecondSignalEndsTheProcessAtOnce) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        LoneCommunicator comm;
        core::TrainConfig c = config("twice");
        auto backend = std::make_unique<SignallingBackend>(core::make_cpu_backend(c.model), [](int64_t call) {
          if (call == 2) {
            std::raise(SIGTERM);
            std::raise(SIGTERM);  // the impatient user
          }
        });
        core::Trainer trainer(c, comm, std::move(backend));
        trainer.train();
        std::exit(0);  // not reached
      },
      ::testing::KilledBySignal(SIGTERM), "");
  EXPECT_FALSE(fs::exists(core::checkpoint_path(config("twice").output_dir, 3)));
}

TEST(CollectiveWatchdog, ATimedOutCollectiveIsReportedWithItsStep) {
  core::CollectiveWatchdog watchdog(0.2, 0);
  std::string reported;
  std::mutex mutex;
  watchdog.set_abort_for_test([&](const std::string& message) {
    std::lock_guard<std::mutex> lock(mutex);
    reported = message;
  });
  watchdog.enter("the gradient all-reduce", 37);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  watchdog.leave();  // completed in time: nothing
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  {
    std::lock_guard<std::mutex> lock(mutex);
    EXPECT_EQ(reported, "");
  }
  watchdog.enter("the gradient all-reduce", 38);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  watchdog.leave();
  std::lock_guard<std::mutex> lock(mutex);
  EXPECT_NE(reported.find("the gradient all-reduce of step 38 has not completed after 0.2 s (collective_timeout_s)"),
            std::string::npos)
      << reported;
}

TEST(CollectiveWatchdog, WithoutMpiItExitsWithStatus1FromItsOwnThreadAfterTheHook) {
  // The watchdog thread may not call MPI below MPI_THREAD_MULTIPLE (here: MPI is not even
  // initialised): it prints, runs the abort hook (ncclCommAbort in a CUDA run) and _exit(1)s,
  // instead of std::abort()ing with a core dump.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        core::CollectiveWatchdog watchdog(0.2, 3);
        watchdog.set_abort_hook([] { std::fprintf(stderr, "abort hook ran\n"); });
        watchdog.enter("the gradient all-reduce", 38);
        std::this_thread::sleep_for(std::chrono::seconds(5));
        std::exit(0);  // not reached: the watchdog ends the process first
      },
      ::testing::ExitedWithCode(1),
      "error on rank 3: the gradient all-reduce of step 38 has not completed after 0.2 s(.|\n)*abort hook ran");
}
