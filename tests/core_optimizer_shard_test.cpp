// ZeRO-1's shards (core/optimizer_shard.h) and the CPU backend's sharded optimizer: the shards
// tile the padded buffer, and a backend that owns one shard updates exactly those parameters,
// bit for bit as a backend that owns them all. The CUDA twin is in core_cuda_backend_test.cpp;
// the whole thing under mpirun in tests/trainer/compare_zero.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "core/cpu_backend.h"
#include "core/optimizer_shard.h"
#include "core/parameters.h"
#include "tests/support/tiny_bert.h"

namespace {

using llmqs::core::AdamWHyper;
using llmqs::core::BertConfig;
using llmqs::core::DropoutKey;
using llmqs::core::OptimizerShard;
using llmqs::core::ParameterLayout;

TEST(OptimizerShard, ShardsTileThePaddedBufferInAlignedEqualBlocks) {
  for (size_t numel : {size_t(1), size_t(127), size_t(5346), size_t(108314117)}) {
    for (int world : {1, 2, 3, 8}) {
      size_t next = 0, owned = 0;
      for (int rank = 0; rank < world; ++rank) {
        const OptimizerShard s = OptimizerShard::of_rank(numel, rank, world);
        EXPECT_EQ(s.numel, numel);
        EXPECT_EQ(s.begin, next) << numel << " " << world << " " << rank;
        EXPECT_EQ(s.padded_numel, s.count * static_cast<size_t>(world));
        EXPECT_GE(s.padded_numel, numel);
        if (world > 1) {
          EXPECT_EQ(s.count % OptimizerShard::kAlign, 0u);
          EXPECT_LT(s.padded_numel - numel, static_cast<size_t>(world) * OptimizerShard::kAlign);
        } else {
          EXPECT_EQ(s.padded_numel, numel);  // one rank: no padding at all
          EXPECT_FALSE(s.sharded());
        }
        EXPECT_LE(s.owned_numel(), s.count);
        if (s.owned_numel() > 0) {  // a shard past the end owns nothing
          EXPECT_LE(s.owned_end(), numel);
        }
        next = s.begin + s.count;
        owned += s.owned_numel();
      }
      EXPECT_EQ(owned, numel) << "every parameter has exactly one owner";
    }
  }
  EXPECT_THROW(OptimizerShard::of_rank(10, 2, 2), std::invalid_argument);
  EXPECT_THROW(OptimizerShard::of_rank(10, 0, 0), std::invalid_argument);
}

// One backend per shard of `world` and one that owns everything, all from the same parameters and
// moments, take the same gradients and one AdamW step (weight decay on): each shard's backend
// matches the whole one bitwise on the parameters and moments it owns and leaves the rest alone;
// the shards' gradient sums of squares add up to the whole one's.
TEST(CpuBackendShard, EachShardUpdatesItsOwnParametersExactlyAsTheWholeBackend) {
  const BertConfig config = llmqs::test_support::tiny_bert_config();
  const size_t numel = ParameterLayout::for_bert(config).total_numel();
  std::vector<float> params(numel), m(numel), v(numel);
  for (size_t i = 0; i < numel; ++i) {
    params[i] = 0.02f * static_cast<float>((i * 7919) % 101) / 101.0f - 0.01f;
    m[i] = 1e-3f * static_cast<float>((i * 31) % 17) - 8e-3f;
    v[i] = 1e-6f * static_cast<float>((i * 13) % 23 + 1);
  }
  AdamWHyper hyper;
  hyper.lr = 1e-2f;
  hyper.weight_decay = 0.1f;
  hyper.grad_scale = 0.75f;
  hyper.step = 3;
  DropoutKey key;
  key.seed = 9;

  auto step = [&](llmqs::core::Backend& backend) {
    backend.set_parameters(params.data());
    backend.set_optimizer_state(m.data(), v.data());
    backend.zero_gradients();
    backend.forward_backward(llmqs::test_support::tiny_bert_batch(), 0.5f, key);
    const double sq = backend.gradient_sq_norm();
    backend.adamw_step(hyper);
    return sq;
  };
  auto whole = llmqs::core::make_cpu_backend(config);
  const double whole_sq = step(*whole);
  std::vector<float> want_p(numel), want_m(numel), want_v(numel);
  whole->get_parameters(want_p.data());
  whole->get_optimizer_state(want_m.data(), want_v.data());

  for (int world : {2, 3}) {
    double shard_sq = 0.0;
    for (int rank = 0; rank < world; ++rank) {
      const OptimizerShard shard = OptimizerShard::of_rank(numel, rank, world);
      auto backend = llmqs::core::make_cpu_backend(config, shard);
      ASSERT_EQ(backend->optimizer_shard().begin, shard.begin);
      shard_sq += step(*backend);
      std::vector<float> got_p(numel), got_m(numel, -1.0f), got_v(numel, -1.0f);
      backend->get_parameters(got_p.data());
      backend->get_optimizer_state(got_m.data(), got_v.data());
      size_t wrong = 0;
      for (size_t i = 0; i < numel; ++i) {
        const bool owned = i >= shard.begin && i < shard.owned_end();
        if (owned) {
          wrong += std::memcmp(&got_p[i], &want_p[i], 4) != 0 || std::memcmp(&got_m[i], &want_m[i], 4) != 0 ||
                   std::memcmp(&got_v[i], &want_v[i], 4) != 0;
        } else {
          wrong += got_p[i] != params[i] || got_m[i] != -1.0f || got_v[i] != -1.0f;  // untouched
        }
      }
      EXPECT_EQ(wrong, 0u) << "rank " << rank << " of " << world;
      // The packed copy a checkpoint gathers: the owned moments, nothing else.
      std::vector<float> owned_m(shard.owned_numel()), owned_v(shard.owned_numel());
      backend->get_owned_optimizer_state(owned_m.data(), owned_v.data());
      EXPECT_TRUE(std::equal(owned_m.begin(), owned_m.end(), got_m.begin() + static_cast<std::ptrdiff_t>(shard.begin)));
      EXPECT_TRUE(std::equal(owned_v.begin(), owned_v.end(), got_v.begin() + static_cast<std::ptrdiff_t>(shard.begin)));
      // The padding stays zero through the step.
      const float* buffer = backend->parameter_buffer();
      for (size_t i = numel; i < shard.padded_numel; ++i) ASSERT_EQ(buffer[i], 0.0f) << i;
    }
    EXPECT_NEAR(shard_sq, whole_sq, 1e-12 * whole_sq) << world;
  }
  // A shard made for another model is refused.
  EXPECT_THROW(llmqs::core::make_cpu_backend(config, OptimizerShard::of_rank(numel + 1, 0, 2)), std::invalid_argument);
}

}  // namespace
