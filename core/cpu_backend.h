// The `cpu` backend: the fp32 reference implementation of core/backend.h, built on
// BertCpuModel<float> (core/bert_cpu_model.h) and the kernels of kernels/cpu/. Parameters,
// gradients and AdamW moments are flat host buffers in ParameterLayout order, so
// gradient_buffer() is host memory that the MPI communicator all-reduces in place.
// OpenMP threads follow OMP_NUM_THREADS; results do not depend on the thread count.
#pragma once
#include <memory>
#include <vector>

#include "core/backend.h"
#include "core/model_config.h"
#include "data/batch.h"

namespace llmqs::core {

// Parameters start at init_bert_parameters(config, layout, seed 0); callers normally overwrite
// them with set_parameters (checkpoint, HF import, or their own seeded init).
std::unique_ptr<Backend> make_cpu_backend(const BertConfig& config);
// The same with ZeRO-1's optimizer shard (OptimizerShard::of_rank; throws std::invalid_argument
// when it is for another parameter count).
std::unique_ptr<Backend> make_cpu_backend(const BertConfig& config, const OptimizerShard& shard);

// Encoder output (HF last_hidden_state, [rows x seq_len x hidden], dropout off) of the model
// with the given flat parameters: for import checks against HF hidden states.
std::vector<float> cpu_last_hidden_state(const BertConfig& config, const float* params, const data::Batch& batch);

}  // namespace llmqs::core
