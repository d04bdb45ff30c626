#include "core/gradient_reduction.h"

#include <stdexcept>
#include <string>

namespace llmqs::core {

GradientReduction::GradientReduction(Backend& backend, comm::Communicator& comm)
    : backend_(backend), comm_(comm), overlap_(comm.world_size() > 1 && comm.overlaps_all_reduce()) {}

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
  comm_.all_reduce_sum(backend_.gradient_buffer(), total);
}

}  // namespace llmqs::core
