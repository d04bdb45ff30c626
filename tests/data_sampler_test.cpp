// ShardedSampler: DistributedSampler semantics (disjoint, equal-sized, covering shards with
// padding; drop_last cuts), per-epoch permutations that are reproducible and unbiased, and the
// splitmix64 generator behind them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <vector>

#include "data/sharded_sampler.h"

using namespace llmqs::data;

namespace {

std::vector<std::vector<int64_t>> all_shards(int64_t n, int world, uint64_t seed, bool shuffle, bool drop_last,
                                             int64_t epoch) {
  std::vector<std::vector<int64_t>> shards;
  for (int rank = 0; rank < world; ++rank) shards.push_back(ShardedSampler(n, world, rank, seed, shuffle, drop_last).indices(epoch));
  return shards;
}

}  // namespace

TEST(SplitMix64, MatchesTheReferenceSequence) {
  // Published outputs of Vigna's splitmix64.c seeded with 0.
  SplitMix64 rng(0);
  EXPECT_EQ(rng.next(), 0xe220a8397b1dcdafull);
  EXPECT_EQ(rng.next(), 0x6e789e6aa1b965f4ull);
  EXPECT_EQ(rng.next(), 0x06c45d188009454full);
}

TEST(SplitMix64, BoundedDrawsStayInRangeAndHitEveryValue) {
  SplitMix64 rng(99);
  std::vector<int> hits(7, 0);
  for (int i = 0; i < 7000; ++i) {
    const uint64_t v = rng.below(7);
    ASSERT_LT(v, 7u);
    ++hits[v];
  }
  for (int h : hits) EXPECT_NEAR(h, 1000, 150);
  EXPECT_EQ(rng.below(1), 0u);
}

TEST(Permutation, IsAPermutationReproducibleAndEpochDependent) {
  for (int64_t n : {0, 1, 2, 5, 97, 1000}) {
    const auto p = permutation(n, 42, 0);
    std::vector<int64_t> sorted = p;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> identity(n);
    std::iota(identity.begin(), identity.end(), 0);
    EXPECT_EQ(sorted, identity) << "n " << n;
    EXPECT_EQ(p, permutation(n, 42, 0));
    if (n >= 97) {
      EXPECT_NE(p, permutation(n, 42, 1));
      EXPECT_NE(p, permutation(n, 43, 0));
      EXPECT_NE(p, identity);
      EXPECT_NE(permutation(n, 42, 1), permutation(n, 43, 0));
    }
  }
}

TEST(Permutation, EveryElementIsEquallyLikelyAtEveryPosition) {
  // 5 x 5 position counts over 20,000 (seed, epoch) pairs: a biased shuffle (modulo bias, or
  // Sattolo's j < i variant, which never leaves an element in place) fails the chi-square bound.
  constexpr int n = 5, trials = 20000;
  std::vector<std::vector<int>> counts(n, std::vector<int>(n, 0));
  for (int t = 0; t < trials; ++t) {
    const auto p = permutation(n, static_cast<uint64_t>(t / 4), t % 4);
    for (int pos = 0; pos < n; ++pos) ++counts[pos][p[pos]];
  }
  const double expected = static_cast<double>(trials) / n;
  double chi_square = 0;
  for (const auto& row : counts) {
    for (int c : row) chi_square += (c - expected) * (c - expected) / expected;
  }
  // 16 degrees of freedom: the 99.9% quantile is 39.25.
  EXPECT_LT(chi_square, 39.25);
}

TEST(ShardedSampler, UnshuffledShardsFollowDistributedSampler) {
  // torch.utils.data.DistributedSampler(range(10), num_replicas=3, shuffle=False):
  // padded order 0..9,0,1 split by stride 3.
  const auto shards = all_shards(10, 3, 0, false, false, 0);
  EXPECT_EQ(shards[0], (std::vector<int64_t>{0, 3, 6, 9}));
  EXPECT_EQ(shards[1], (std::vector<int64_t>{1, 4, 7, 0}));
  EXPECT_EQ(shards[2], (std::vector<int64_t>{2, 5, 8, 1}));
  const auto dropped = all_shards(10, 3, 0, false, true, 0);
  EXPECT_EQ(dropped[0], (std::vector<int64_t>{0, 3, 6}));
  EXPECT_EQ(dropped[1], (std::vector<int64_t>{1, 4, 7}));
  EXPECT_EQ(dropped[2], (std::vector<int64_t>{2, 5, 8}));
  // Fewer examples than ranks: padding repeats the order as often as needed.
  const auto tiny = all_shards(2, 5, 0, false, false, 0);
  for (int r = 0; r < 5; ++r) EXPECT_EQ(tiny[r], (std::vector<int64_t>{r % 2}));
  EXPECT_EQ(ShardedSampler(2, 5, 0, 0, false, true).num_samples(), 0);
}

TEST(ShardedSampler, ShardsAreEqualDisjointAndCoverTheData) {
  for (int world = 1; world <= 5; ++world) {
    for (int64_t n : {1, 3, 7, 13, 101, 999}) {
      for (bool shuffle : {false, true}) {
        for (bool drop_last : {false, true}) {
          SCOPED_TRACE("world " + std::to_string(world) + " n " + std::to_string(n) + " shuffle " +
                       std::to_string(shuffle) + " drop_last " + std::to_string(drop_last));
          const int64_t expected = drop_last ? n / world : (n + world - 1) / world;
          const auto shards = all_shards(n, world, 1234, shuffle, drop_last, 3);
          std::map<int64_t, int> seen;
          for (int r = 0; r < world; ++r) {
            ShardedSampler sampler(n, world, r, 1234, shuffle, drop_last);
            EXPECT_EQ(sampler.num_samples(), expected);
            ASSERT_EQ(static_cast<int64_t>(shards[r].size()), expected);
            for (int64_t i : shards[r]) {
              ASSERT_GE(i, 0);
              ASSERT_LT(i, n);
              ++seen[i];
            }
          }
          const int64_t total = expected * world;
          if (drop_last) {
            // No example twice, exactly world * floor(n / world) of them.
            EXPECT_EQ(static_cast<int64_t>(seen.size()), total);
            for (const auto& [index, times] : seen) EXPECT_EQ(times, 1) << "index " << index;
          } else {
            // Every example, and only the (total - n) padding slots repeat one.
            EXPECT_EQ(static_cast<int64_t>(seen.size()), n);
            int64_t repeats = 0;
            for (const auto& [index, times] : seen) repeats += times - 1;
            EXPECT_EQ(repeats, total - n);
            EXPECT_LT(total - n, world);
          }
        }
      }
    }
  }
}

TEST(ShardedSampler, EpochsDifferAndRepeatExactly) {
  for (int world : {1, 2, 3, 4, 5}) {
    for (int rank = 0; rank < world; ++rank) {
      ShardedSampler sampler(1001, world, rank, 42, true, false);
      const auto epoch0 = sampler.indices(0);
      EXPECT_EQ(epoch0, sampler.indices(0));
      EXPECT_EQ(epoch0, ShardedSampler(1001, world, rank, 42, true, false).indices(0));
      EXPECT_NE(epoch0, sampler.indices(1));
      EXPECT_NE(epoch0, ShardedSampler(1001, world, rank, 7, true, false).indices(0));
      // Without shuffle the epoch does not matter.
      ShardedSampler ordered(1001, world, rank, 42, false, false);
      EXPECT_EQ(ordered.indices(0), ordered.indices(5));
    }
  }
  // Shuffled shards are the shuffled order split by stride: rank r's k-th index is order[r + k * world].
  const auto order = permutation(1001, 42, 2);
  const auto shard = ShardedSampler(1001, 4, 3, 42, true, false).indices(2);
  for (size_t k = 0; k < shard.size(); ++k) {
    EXPECT_EQ(shard[k], order[(3 + k * 4) % 1001]) << "k " << k;
  }
}

TEST(ShardedSampler, RejectsImpossibleArguments) {
  EXPECT_THROW(ShardedSampler(10, 0, 0, 1, true, false), std::invalid_argument);
  EXPECT_THROW(ShardedSampler(10, 2, 2, 1, true, false), std::invalid_argument);
  EXPECT_THROW(ShardedSampler(10, 2, -1, 1, true, false), std::invalid_argument);
  EXPECT_THROW(ShardedSampler(-1, 2, 0, 1, true, false), std::invalid_argument);
  EXPECT_TRUE(ShardedSampler(0, 3, 1, 1, true, false).indices(0).empty());
}
