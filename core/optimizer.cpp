// Learning-rate schedules, warmup and clipping with HF / torch semantics. See optimizer.h.
#include "core/optimizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace llmqs::core {

LrSchedulerType parse_lr_scheduler_type(const std::string& name) {
  if (name == "linear") return LrSchedulerType::kLinear;
  if (name == "cosine") return LrSchedulerType::kCosine;
  if (name == "constant") return LrSchedulerType::kConstant;
  if (name == "constant_with_warmup") return LrSchedulerType::kConstantWithWarmup;
  throw std::invalid_argument("lr_scheduler_type '" + name +
                              "' is not supported (use linear, cosine, constant or constant_with_warmup)");
}

std::string lr_scheduler_name(LrSchedulerType type) {
  switch (type) {
    case LrSchedulerType::kLinear: return "linear";
    case LrSchedulerType::kCosine: return "cosine";
    case LrSchedulerType::kConstant: return "constant";
    case LrSchedulerType::kConstantWithWarmup: return "constant_with_warmup";
  }
  return "linear";
}

int64_t resolve_warmup_steps(int64_t total_steps, int64_t warmup_steps, double warmup_ratio) {
  if (warmup_steps > 0) return warmup_steps;
  if (warmup_ratio < 0.0 || warmup_ratio > 1.0)
    throw std::invalid_argument("warmup_ratio must be in [0, 1], got " + std::to_string(warmup_ratio));
  return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * warmup_ratio));
}

float learning_rate_at(LrSchedulerType type, float base_lr, int64_t step, int64_t warmup_steps, int64_t total_steps) {
  // Python-float (double) arithmetic as in transformers.optimization's lambdas.
  const double s = static_cast<double>(step), warmup = static_cast<double>(warmup_steps);
  const double total = static_cast<double>(total_steps);
  double factor = 1.0;
  if (type != LrSchedulerType::kConstant && step < warmup_steps) {
    factor = s / std::max(1.0, warmup);
  } else if (type == LrSchedulerType::kLinear) {
    factor = std::max(0.0, (total - s) / std::max(1.0, total - warmup));
  } else if (type == LrSchedulerType::kCosine) {
    const double progress = (s - warmup) / std::max(1.0, total - warmup);
    factor = std::max(0.0, 0.5 * (1.0 + std::cos(3.14159265358979323846 * 2.0 * 0.5 * progress)));
  }
  return static_cast<float>(static_cast<double>(base_lr) * factor);
}

float clip_coefficient(double total_norm, float max_norm) {
  if (!(max_norm > 0.0f)) return 1.0f;
  // torch computes the coefficient in the gradients' dtype (float32) and clamps it at 1.
  const float coef = max_norm / (static_cast<float>(total_norm) + 1e-6f);
  return std::min(coef, 1.0f);
}

}  // namespace llmqs::core
