// The optimizer-side math the trainer calls between steps, with Hugging Face semantics:
// learning-rate schedules (transformers.get_scheduler's LambdaLR factors), warmup resolution
// and the gradient-clipping coefficient of torch.nn.utils.clip_grad_norm_. The AdamW update
// itself is Backend::adamw_step (kernels/cpu/adamw.h and its CUDA twin).
#pragma once
#include <cstdint>
#include <string>

namespace llmqs::core {

enum class LrSchedulerType { kLinear, kCosine, kConstant, kConstantWithWarmup };

// HF names: linear, cosine, constant, constant_with_warmup. Throws std::invalid_argument
// naming the value and the accepted names.
LrSchedulerType parse_lr_scheduler_type(const std::string& name);
std::string lr_scheduler_name(LrSchedulerType type);

// HF TrainingArguments.get_warmup_steps: warmup_steps if > 0, else ceil(total_steps * warmup_ratio).
int64_t resolve_warmup_steps(int64_t total_steps, int64_t warmup_steps, double warmup_ratio);

// The lr of the optimizer step with 0-based index `step` (HF LambdaLR: lr = base_lr * factor(step)),
// so with warmup the first step uses lr 0. Factors:
//   warmup (step < warmup_steps):  step / max(1, warmup_steps)          (all but constant)
//   linear:    max(0, (total - step) / max(1, total - warmup))
//   cosine:    max(0, 0.5 * (1 + cos(pi * (step - warmup) / max(1, total - warmup))))
//   constant, constant_with_warmup after warmup: 1
float learning_rate_at(LrSchedulerType type, float base_lr, int64_t step, int64_t warmup_steps,
                       int64_t total_steps);

// torch.nn.utils.clip_grad_norm_: min(1, max_norm / (total_norm + 1e-6)); max_norm <= 0 -> 1.
float clip_coefficient(double total_norm, float max_norm);

}  // namespace llmqs::core
