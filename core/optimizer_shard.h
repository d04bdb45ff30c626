// Which part of the flat parameter buffers a rank's optimizer owns: all of it (the default,
// every rank updates every parameter as DDP does) or, with ZeRO-1 (TrainConfig::zero_stage 1,
// `bench --zero-stage 1`), one of `world` equal shards.
//
// ZeRO-1 here: the flat parameter and gradient buffers (ParameterLayout order) are padded to
// world x count elements and rank r owns [r x count, (r + 1) x count). After the backward the
// gradients are reduce-scattered (rank r gets the sums of its shard only), the gradient norm is
// the sum of the shards' sums of squares, AdamW updates the shard's parameters from moments that
// exist only for the shard (count floats each instead of numel: the moments' memory is divided by
// world), and an all-gather of the fp32 parameters hands every rank the other shards' updates.
// The fp32 master weights stay whole on every rank: fp32/tf32 products read them directly, and a
// checkpoint needs them. The padding (fewer than world x kAlign elements) holds zeros throughout:
// its gradients are zero, its parameters zero, and AdamW keeps a zero parameter with a zero
// gradient at zero.
#pragma once
#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>

namespace llmqs::core {

struct OptimizerShard {
  // Shard sizes are multiples of this many elements: every shard starts 16-byte aligned (the
  // float4 paths) and on a whole word of the AdamW decay bitmask (32 elements a word).
  static constexpr size_t kAlign = 128;

  size_t numel = 0;         // parameters (ParameterLayout::total_numel)
  size_t padded_numel = 0;  // floats in the flat parameter and gradient buffers (== world x count when sharded)
  size_t begin = 0;         // first element this rank's optimizer owns
  size_t count = 0;         // elements it owns, padding included (its moments hold this many floats)
  int rank = 0;
  int world = 1;

  bool sharded() const { return world > 1; }
  // The owned elements that are parameters: [begin, owned_end()), empty when the shard is all padding.
  size_t owned_end() const { return std::max(begin, std::min(begin + count, numel)); }
  size_t owned_numel() const { return owned_end() - begin; }

  // Every element, no padding: what a backend without ZeRO holds.
  static OptimizerShard whole(size_t numel) {
    OptimizerShard s;
    s.numel = s.padded_numel = s.count = numel;
    return s;
  }
  // Rank `rank` of `world`; one rank owns everything (whole).
  static OptimizerShard of_rank(size_t numel, int rank, int world) {
    if (world < 1 || rank < 0 || rank >= world)
      throw std::invalid_argument("optimizer shard: rank " + std::to_string(rank) + " of " + std::to_string(world) +
                                  " ranks");
    if (world == 1) return whole(numel);
    const size_t w = static_cast<size_t>(world);
    OptimizerShard s;
    s.numel = numel;
    s.count = (numel + w * kAlign - 1) / (w * kAlign) * kAlign;
    s.padded_numel = s.count * w;
    s.begin = s.count * static_cast<size_t>(rank);
    s.rank = rank;
    s.world = world;
    return s;
  }
};

}  // namespace llmqs::core
