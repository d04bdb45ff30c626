#include "core/gradient_reduction.h"

#include <stdexcept>
#include <string>

namespace llmqs::core {

GradientReduction::GradientReduction(Backend& backend, comm::Communicator& comm)
    : backend_(backend),
      comm_(comm),
      sharded_(backend.optimizer_shard().sharded()),
      overlap_(!sharded_ && comm.world_size() > 1 && comm.overlaps_all_reduce()) {
  const OptimizerShard& shard = backend.optimizer_shard();
  if (sharded_ && (shard.world != comm.world_size() || shard.rank != comm.rank()))
    throw std::logic_error("gradient reduction: the backend's optimizer shard is rank " + std::to_string(shard.rank) +
                           " of " + std::to_string(shard.world) + ", the communicator's rank " +
                           std::to_string(comm.rank()) + " of " + std::to_string(comm.world_size()));
}

GradientReduction::~GradientReduction() { backend_.set_gradient_ready_hook({}); }

void GradientReduction::arm() {
  armed_ = true;
  reported_ = 0;
  if (!overlap_) return;
  backend_.set_gradient_ready_hook([this](const ParameterLayout::Range& range) {
    comm_.start_all_reduce_sum(backend_.gradient_buffer() + range.offset, range.count, backend_.device_stream());
    reported_ += range.count;
  });
}

void GradientReduction::finish() {
  backend_.set_gradient_ready_hook({});
  const size_t total = backend_.layout().total_numel();
  const bool overlapped_step = armed_ && overlap_;
  armed_ = false;
  if (overlapped_step) {
    if (reported_ != total)
      throw std::logic_error("gradient reduction: the backward reported " + std::to_string(reported_) + " of " +
                             std::to_string(total) + " gradient values");
    comm_.wait_all_reduces(backend_.device_stream());
    return;
  }
  if (sharded_) {
    comm_.reduce_scatter_sum(backend_.gradient_buffer(), backend_.optimizer_shard().count);
    return;
  }
  comm_.all_reduce_sum(backend_.gradient_buffer(), total);
}

double GradientReduction::gradient_sq_norm() {
  double sq = backend_.gradient_sq_norm();
  if (sharded_) comm_.all_reduce_sum_host(&sq, 1);
  return sq;
}

void GradientReduction::share_updated_parameters() {
  if (!sharded_) return;
  comm_.all_gather(backend_.parameter_buffer(), backend_.optimizer_shard().count);
  backend_.parameters_gathered();
}

}  // namespace llmqs::core
