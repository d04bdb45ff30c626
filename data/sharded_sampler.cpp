// ShardedSampler: per-epoch permutation, padding or cutting to a multiple of the world size,
// strided split across ranks (PyTorch DistributedSampler semantics, portable generator).
#include "data/sharded_sampler.h"

#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>

namespace llmqs::data {

uint64_t SplitMix64::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::below(uint64_t bound) {
  // Reject the lowest (2^64 mod bound) values so every residue is equally likely.
  const uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    const uint64_t r = next();
    if (r >= threshold) return r % bound;
  }
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  // Seed and epoch go through one mixing step each so that (seed, epoch) and (seed + 1, epoch - 1)
  // start unrelated streams.
  SplitMix64 mix(seed);
  const uint64_t seed_key = mix.next();
  SplitMix64 epoch_mix(seed_key ^ static_cast<uint64_t>(epoch));
  SplitMix64 rng(epoch_mix.next());
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

ShardedSampler::ShardedSampler(int64_t dataset_size, int world_size, int rank, uint64_t seed, bool shuffle,
                               bool drop_last)
    : dataset_size_(dataset_size),
      world_size_(world_size),
      rank_(rank),
      seed_(seed),
      shuffle_(shuffle),
      drop_last_(drop_last) {
  if (world_size < 1) throw std::invalid_argument("ShardedSampler: world_size " + std::to_string(world_size) + " < 1");
  if (rank < 0 || rank >= world_size) {
    throw std::invalid_argument("ShardedSampler: rank " + std::to_string(rank) + " outside 0.." +
                                std::to_string(world_size - 1));
  }
  if (dataset_size < 0) throw std::invalid_argument("ShardedSampler: negative dataset size");
  num_samples_ = drop_last ? dataset_size / world_size : (dataset_size + world_size - 1) / world_size;
}

std::vector<int64_t> ShardedSampler::indices(int64_t epoch) const {
  std::vector<int64_t> order;
  if (shuffle_) {
    order = permutation(dataset_size_, seed_, epoch);
  } else {
    order.resize(static_cast<size_t>(dataset_size_));
    std::iota(order.begin(), order.end(), int64_t{0});
  }
  const int64_t total = total_size();
  std::vector<int64_t> mine;
  mine.reserve(static_cast<size_t>(num_samples_));
  // Position p of the padded order is order[p mod n]: padding repeats from the start, as often
  // as needed when the dataset is smaller than the world.
  for (int64_t p = rank_; p < total; p += world_size_) mine.push_back(order[static_cast<size_t>(p % dataset_size_)]);
  return mine;
}

}  // namespace llmqs::data
