// Sharded, duplicate-free evaluation: loss, accuracy, macro-F1 (see evaluate.h).
#include "core/evaluate.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>

#include "data/tokenized_dataset.h"

namespace llmqs::core {

double macro_f1_from_confusion(const std::vector<int64_t>& confusion, int num_labels) {
  if (confusion.size() != static_cast<size_t>(num_labels) * num_labels)
    throw std::invalid_argument("macro_f1_from_confusion: matrix is not num_labels x num_labels");
  double f1_sum = 0.0;
  int classes = 0;
  for (int c = 0; c < num_labels; ++c) {
    int64_t true_positive = confusion[static_cast<size_t>(c) * num_labels + c];
    int64_t labelled = 0, predicted = 0;
    for (int k = 0; k < num_labels; ++k) {
      labelled += confusion[static_cast<size_t>(c) * num_labels + k];
      predicted += confusion[static_cast<size_t>(k) * num_labels + c];
    }
    if (labelled == 0 && predicted == 0) continue;  // absent class: not part of the average
    ++classes;
    // 2TP + FP + FN = labelled + predicted
    f1_sum += 2.0 * static_cast<double>(true_positive) / static_cast<double>(labelled + predicted);
  }
  return classes > 0 ? f1_sum / classes : 0.0;
}

data::Batch make_padded_batch(const std::vector<std::vector<int32_t>>& token_rows,
                              const std::vector<int32_t>& labels, int32_t pad_id, int max_seq_len) {
  data::Batch batch;
  batch.rows = static_cast<int>(token_rows.size());
  size_t longest = 0;
  for (const auto& row : token_rows) longest = std::max(longest, row.size());
  if (static_cast<int>(longest) > max_seq_len)
    throw std::invalid_argument("make_padded_batch: a row of " + std::to_string(longest) +
                                " tokens is longer than max_position_embeddings " + std::to_string(max_seq_len));
  // Multiples of 8 keep GEMM shapes aligned; never past what the position embeddings cover.
  const int rounded = static_cast<int>((longest + 7) / 8 * 8);
  batch.seq_len = std::max(static_cast<int>(longest), std::min(rounded, max_seq_len));
  batch.input_ids.assign(static_cast<size_t>(batch.rows) * batch.seq_len, pad_id);
  batch.lengths.resize(batch.rows);
  batch.labels = labels;
  for (int r = 0; r < batch.rows; ++r) {
    std::copy(token_rows[r].begin(), token_rows[r].end(), batch.input_ids.begin() + static_cast<size_t>(r) * batch.seq_len);
    batch.lengths[r] = static_cast<int32_t>(token_rows[r].size());
  }
  return batch;
}

EvalMetrics evaluate(Backend& backend, comm::Communicator& comm, data::TokenizedDataset& dataset, int batch_size,
                     int32_t pad_id) {
  if (batch_size < 1) throw std::invalid_argument("per_device_eval_batch_size must be at least 1");
  const int num_labels = backend.config().num_labels;
  const int64_t n = dataset.size();
  const int world = comm.world_size();
  const int rank = comm.rank();
  const int64_t begin = n * rank / world;
  const int64_t end = n * (rank + 1) / world;

  // Longest first, so batches hold reviews of similar length and padding stays small.
  std::vector<int64_t> order(static_cast<size_t>(end - begin));
  std::iota(order.begin(), order.end(), begin);
  const auto& lengths = dataset.lengths();
  const auto& all_labels = dataset.labels();
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });

  double loss_sum = 0.0;
  std::vector<int64_t> counts(2 + static_cast<size_t>(num_labels) * num_labels, 0);  // correct, rows, confusion
  std::vector<float> logits;
  std::vector<std::vector<int32_t>> rows;
  for (size_t first = 0; first < order.size(); first += batch_size) {
    const size_t last = std::min(order.size(), first + batch_size);
    std::vector<int64_t> indices(order.begin() + first, order.begin() + last);
    rows.clear();
    dataset.read(indices, rows);
    std::vector<int32_t> labels(indices.size());
    for (size_t i = 0; i < indices.size(); ++i) {
      labels[i] = all_labels[indices[i]];
      if (labels[i] < 0 || labels[i] >= num_labels)
        throw std::runtime_error("evaluation: example " + std::to_string(indices[i]) + " has label " +
                                 std::to_string(labels[i]) + ", outside the model's " + std::to_string(num_labels) +
                                 " labels");
    }
    data::Batch batch = make_padded_batch(rows, labels, pad_id, backend.config().max_position_embeddings);
    batch.example_index = indices;
    logits.resize(static_cast<size_t>(batch.rows) * num_labels);
    const BatchStats stats = backend.forward(batch, logits.data());
    loss_sum += stats.loss_sum;
    counts[0] += stats.correct;
    counts[1] += stats.rows;
    for (int r = 0; r < batch.rows; ++r) {
      const float* row = logits.data() + static_cast<size_t>(r) * num_labels;
      const int predicted = static_cast<int>(std::max_element(row, row + num_labels) - row);
      ++counts[2 + static_cast<size_t>(labels[r]) * num_labels + predicted];
    }
  }
  comm.all_reduce_sum_host(&loss_sum, 1);
  comm.all_reduce_sum_host(counts.data(), counts.size());

  EvalMetrics metrics;
  metrics.num_labels = num_labels;
  metrics.examples = counts[1];
  metrics.confusion.assign(counts.begin() + 2, counts.end());
  if (metrics.examples > 0) {
    metrics.loss = loss_sum / static_cast<double>(metrics.examples);
    metrics.accuracy = static_cast<double>(counts[0]) / static_cast<double>(metrics.examples);
  }
  metrics.macro_f1 = macro_f1_from_confusion(metrics.confusion, num_labels);
  return metrics;
}

}  // namespace llmqs::core
