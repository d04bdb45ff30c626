// Which examples each rank trains on, epoch by epoch, with PyTorch DistributedSampler
// semantics:
//   order    = shuffle ? permutation(seed, epoch) : 0, 1, ..., n-1
//   drop_last = false: order is padded by repeating it from the start up to world * ceil(n / world)
//   drop_last = true : order is cut to world * floor(n / world)
//   rank r takes order[r], order[r + world], order[r + 2 world], ...
// The permutation is our own (splitmix64 + Fisher-Yates with unbiased bounded draws), so every
// platform and standard library gives the same shards for the same (seed, epoch).
#pragma once
#include <cstdint>
#include <vector>

namespace llmqs::data {

// splitmix64: a tiny, well-mixed, portable generator; also used to derive per-epoch streams.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next();
  uint64_t below(uint64_t bound);  // uniform in [0, bound), bound > 0, no modulo bias

 private:
  uint64_t state_;
};

// The permutation of 0..n-1 drawn from (seed, epoch); identical on every platform.
std::vector<int64_t> permutation(int64_t n, uint64_t seed, int64_t epoch);

class ShardedSampler {
 public:
  // Throws std::invalid_argument for world_size < 1, rank outside [0, world_size), or a negative size.
  ShardedSampler(int64_t dataset_size, int world_size, int rank, uint64_t seed, bool shuffle, bool drop_last);

  int64_t num_samples() const { return num_samples_; }  // per rank
  int64_t total_size() const { return num_samples_ * world_size_; }  // all ranks, padding included
  int64_t dataset_size() const { return dataset_size_; }
  int world_size() const { return world_size_; }
  int rank() const { return rank_; }
  uint64_t seed() const { return seed_; }
  bool shuffle() const { return shuffle_; }
  bool drop_last() const { return drop_last_; }

  // This rank's num_samples() example indices for `epoch`.
  std::vector<int64_t> indices(int64_t epoch) const;

 private:
  int64_t dataset_size_;
  int world_size_;
  int rank_;
  uint64_t seed_;
  bool shuffle_;
  bool drop_last_;
  int64_t num_samples_;
};

}  // namespace llmqs::data
