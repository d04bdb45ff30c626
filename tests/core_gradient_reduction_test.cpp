// GradientReduction (core/gradient_reduction.h) against a recording Communicator: where the
// communicator overlaps, the step's last backward starts one reduction per layer range, in the
// backward's order, on exactly the gradient buffer, and finish() only waits; otherwise finish()
// all-reduces the whole buffer once. The NCCL side runs on GPU machines (benchmarks/RESULTS.md).
#include <gtest/gtest.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/cpu_backend.h"
#include "core/gradient_reduction.h"
#include "core/parameters.h"
#include "tests/support/tiny_bert.h"

namespace {

using llmqs::core::BertConfig;
using llmqs::core::DropoutKey;
using llmqs::core::GradientReduction;
using llmqs::core::ParameterLayout;

struct Call {
  std::string what;  // all_reduce | start | wait | reduce_scatter | all_gather
  const float* data = nullptr;
  size_t count = 0;
};

class RecordingCommunicator final : public llmqs::comm::Communicator {
 public:
  explicit RecordingCommunicator(bool overlaps) : overlaps_(overlaps) {}
  const char* name() const override { return "recording"; }
  int rank() const override { return 0; }
  int world_size() const override { return 2; }
  int local_rank() const override { return 0; }
  void all_reduce_sum(float* data, size_t count) override { calls.push_back({"all_reduce", data, count}); }
  bool overlaps_all_reduce() const override { return overlaps_; }
  void start_all_reduce_sum(float* data, size_t count, void*) override { calls.push_back({"start", data, count}); }
  void wait_all_reduces(void*) override { calls.push_back({"wait", nullptr, 0}); }
  void reduce_scatter_sum(float* data, size_t count) override { calls.push_back({"reduce_scatter", data, count}); }
  void all_gather(float* data, size_t count) override { calls.push_back({"all_gather", data, count}); }
  void gather_host(float*, size_t, int) override {}
  void broadcast(void*, size_t, int) override {}
  void all_reduce_sum_host(double*, size_t) override {}
  void all_reduce_sum_host(int64_t*, size_t) override {}
  void broadcast_host(void*, size_t, int) override {}
  void barrier() override {}
  std::vector<Call> calls;

 private:
  bool overlaps_;
};

BertConfig tiny_config() { return llmqs::test_support::tiny_bert_config(); }
llmqs::data::Batch tiny_batch() { return llmqs::test_support::tiny_bert_batch(); }

// A CPU backend on the tiny config with every parameter at 0.01.
std::unique_ptr<llmqs::core::Backend> tiny_backend() {
  auto backend = llmqs::core::make_cpu_backend(tiny_config());
  std::vector<float> params(backend->layout().total_numel(), 0.01f);
  backend->set_parameters(params.data());
  return backend;
}

// Two micro-batches, as the trainer runs an accumulated step: arm() before the last one only.
std::vector<Call> run_step(RecordingCommunicator& comm, llmqs::core::Backend& backend) {
  GradientReduction reduction(backend, comm);
  DropoutKey key;
  backend.zero_gradients();
  backend.forward_backward(tiny_batch(), 0.25f, key);
  EXPECT_TRUE(comm.calls.empty()) << "nothing is reduced before the last micro-batch";
  reduction.arm();
  backend.forward_backward(tiny_batch(), 0.25f, key);
  reduction.finish();
  return comm.calls;
}

TEST(GradientReduction, OverlappedStartsEveryLayerRangeInBackwardOrderThenWaitsOnce) {
  auto backend = tiny_backend();
  RecordingCommunicator comm(/*overlaps=*/true);
  const std::vector<Call> calls = run_step(comm, *backend);
  const auto& ranges = backend->layout().backward_ranges();
  ASSERT_EQ(calls.size(), ranges.size() + 1);
  for (size_t i = 0; i < ranges.size(); ++i) {
    EXPECT_EQ(calls[i].what, "start") << i;
    EXPECT_EQ(calls[i].data, backend->gradient_buffer() + ranges[i].offset) << i;
    EXPECT_EQ(calls[i].count, ranges[i].count) << i;
  }
  EXPECT_EQ(calls.back().what, "wait");
  // The hook is gone after the step: a later backward reports nothing.
  comm.calls.clear();
  DropoutKey key;
  backend->forward_backward(tiny_batch(), 0.25f, key);
  EXPECT_TRUE(comm.calls.empty());
}

TEST(GradientReduction, WithoutOverlapOneAllReduceOfTheWholeBufferAfterTheBackward) {
  auto backend = tiny_backend();
  RecordingCommunicator comm(/*overlaps=*/false);
  const std::vector<Call> calls = run_step(comm, *backend);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].what, "all_reduce");
  EXPECT_EQ(calls[0].data, backend->gradient_buffer());
  EXPECT_EQ(calls[0].count, backend->layout().total_numel());
}

// ZeRO-1: one reduce-scatter of the padded buffer by shard (never the per-layer overlap), and the
// all-gather of the parameter buffer after AdamW; without ZeRO the gather is nothing.
TEST(GradientReduction, ShardedReducesScattersThenGathersTheParameters) {
  const size_t numel = llmqs::core::ParameterLayout::for_bert(tiny_config()).total_numel();
  const auto shard = llmqs::core::OptimizerShard::of_rank(numel, 0, 2);
  auto backend = llmqs::core::make_cpu_backend(tiny_config(), shard);
  RecordingCommunicator comm(/*overlaps=*/true);
  GradientReduction reduction(*backend, comm);
  EXPECT_FALSE(reduction.overlapped());
  std::vector<Call> calls = run_step(comm, *backend);
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].what, "reduce_scatter");
  EXPECT_EQ(calls[0].data, backend->gradient_buffer());
  EXPECT_EQ(calls[0].count, shard.count);
  EXPECT_EQ(2 * calls[0].count, shard.padded_numel);
  comm.calls.clear();
  reduction.share_updated_parameters();
  ASSERT_EQ(comm.calls.size(), 1u);
  EXPECT_EQ(comm.calls[0].what, "all_gather");
  EXPECT_EQ(comm.calls[0].data, backend->parameter_buffer());
  EXPECT_EQ(comm.calls[0].count, shard.count);

  auto whole = tiny_backend();
  RecordingCommunicator plain(/*overlaps=*/false);
  GradientReduction unsharded(*whole, plain);
  unsharded.share_updated_parameters();
  EXPECT_TRUE(plain.calls.empty());
}

// A shard made for another rank or world than the communicator's is a wiring error.
TEST(GradientReduction, AShardOfAnotherWorldIsAnError) {
  const size_t numel = llmqs::core::ParameterLayout::for_bert(tiny_config()).total_numel();
  auto backend = llmqs::core::make_cpu_backend(tiny_config(), llmqs::core::OptimizerShard::of_rank(numel, 1, 3));
  RecordingCommunicator comm(/*overlaps=*/false);  // rank 0 of 2
  EXPECT_THROW(GradientReduction(*backend, comm), std::logic_error);
}

// A backend that never reports its ranges (e.g. a wrapper that does not forward the hook) must not
// leave part of the buffer unreduced silently.
TEST(GradientReduction, ABackwardThatReportsTooLittleIsAnError) {
  auto backend = tiny_backend();
  RecordingCommunicator comm(/*overlaps=*/true);
  GradientReduction reduction(*backend, comm);
  reduction.arm();  // no forward_backward: nothing reported
  EXPECT_THROW(reduction.finish(), std::logic_error);
}

}  // namespace
