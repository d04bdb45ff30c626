// Where a training run stands: everything besides parameters and AdamW moments that an exact
// resume needs. The trainer owns and updates it; the checkpoint writer stores it under
// /trainer; resume reads it back.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llmqs::core {

struct TrainerState {
  int64_t global_step = 0;         // optimizer steps taken
  int64_t max_steps = 0;           // total optimizer steps this run will take
  double epoch = 0.0;              // fractional: completed epochs + position in the current one
  int64_t samples_seen = 0;        // global (all ranks) training examples consumed
  int64_t sampler_epoch = 0;       // epoch whose permutation the sampler is in
  int64_t sampler_position = 0;    // optimizer steps (global batches) already taken in the current epoch
  uint64_t seed = 42;              // the run's seed (dropout keys and permutations derive from it)
  float loss_scale = 1.0f;         // fp16 dynamic loss scale (1 otherwise)
  int64_t loss_scale_good_steps = 0;  // fp16: finite steps since the scale last changed (GradScaler's
                                      // growth tracker); the scale doubles when it reaches 2000
  int64_t skipped_steps = 0;       // fp16 overflow steps skipped
  int world_size = 1;
  int64_t global_batch_size = 0;   // per_device batch x accumulation x world size
  std::string precision = "fp32";
  double best_metric = 0.0;        // metric_for_best_model's best value so far
  std::string best_checkpoint;     // file name of the best checkpoint, "" if none yet
  std::vector<std::string> log_history;  // one JSON object per line, as in metrics.jsonl
};

}  // namespace llmqs::core
