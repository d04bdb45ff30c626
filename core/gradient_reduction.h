// Sums a backend's gradient buffer over the ranks after a step's micro-batches. Where the
// communicator overlaps (NCCL, more than one rank, LLMQS_ALLREDUCE_OVERLAP=1), each layer's range of the buffer is
// reduced as soon as the last micro-batch's backward has issued the work that finishes it, on the
// communicator's own stream, while the backward goes on (as DDP's gradient buckets do, here one
// bucket per encoder layer: ParameterLayout::backward_ranges). Otherwise one all-reduce runs over
// the whole buffer after the backward. With ZeRO-1 (the backend's optimizer_shard() is sharded,
// core/optimizer_shard.h) it is one reduce-scatter instead (no overlap), the norm adds the ranks'
// shards, and share_updated_parameters() all-gathers the parameters after AdamW.
// The trainer and `llmqs-dist bench` both step through it.
#pragma once
#include <cstddef>

#include "comm/communicator.h"
#include "core/backend.h"

namespace llmqs::core {

class GradientReduction {
 public:
  GradientReduction(Backend& backend, comm::Communicator& comm);
  ~GradientReduction();  // removes the hook (also when forward_backward threw)
  GradientReduction(const GradientReduction&) = delete;
  GradientReduction& operator=(const GradientReduction&) = delete;

  bool overlapped() const { return overlap_; }
  // Before the step's last forward_backward: reduce each range as the backward finishes it.
  void arm();
  // After it: with arm() and overlap, orders the backend's later work after every started
  // reduction (throws std::logic_error if the backward did not report the whole buffer);
  // otherwise all-reduces the whole buffer.
  void finish();
  // After finish(): the sum of squares of the reduced gradients (every rank gets the same value).
  double gradient_sq_norm();
  // After the backend's adamw_step: ZeRO-1 hands every rank the other shards' updated parameters;
  // nothing to do otherwise (each rank updated all of them).
  void share_updated_parameters();

 private:
  Backend& backend_;
  comm::Communicator& comm_;
  bool sharded_ = false;  // ZeRO-1
  bool overlap_ = false;
  bool armed_ = false;
  size_t reported_ = 0;  // floats started by the hook this step
};

}  // namespace llmqs::core
