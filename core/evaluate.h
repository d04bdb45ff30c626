// Evaluation of a classifier on a tokenized dataset, sharded across ranks without duplicates:
// rank r takes the contiguous slice [r*n/W, (r+1)*n/W) of the n examples (no padding, so
// every real example is counted exactly once), forwards it in length-sorted batches (less
// padding; the metrics are sums, so order does not matter), and the sums are all-reduced.
//
//   eval_loss      mean cross-entropy over the n examples
//   eval_accuracy  correct / n
//   eval_macro_f1  mean over classes of F1 = 2 TP / (2 TP + FP + FN), over the classes that
//                  occur as a label or a prediction (scikit-learn's f1_score(average="macro"))
#pragma once
#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "core/backend.h"

namespace llmqs::data {
class TokenizedDataset;
}

namespace llmqs::core {

struct EvalMetrics {
  double loss = 0.0;
  double accuracy = 0.0;
  double macro_f1 = 0.0;
  int64_t examples = 0;
  int num_labels = 0;
  std::vector<int64_t> confusion;  // [true label][predicted label], num_labels x num_labels
};

// Macro-F1 of a confusion matrix (see above); 0 when it is empty.
double macro_f1_from_confusion(const std::vector<int64_t>& confusion, int num_labels);

// Pads rows to the longest rounded up to a multiple of 8 (at most max_position_embeddings).
// Same layout as data::BatchLoader's batches.
data::Batch make_padded_batch(const std::vector<std::vector<int32_t>>& token_rows,
                              const std::vector<int32_t>& labels, int32_t pad_id, int max_seq_len);

// Collective: every rank of `comm` must call it with the same dataset and batch size.
EvalMetrics evaluate(Backend& backend, comm::Communicator& comm, data::TokenizedDataset& dataset,
                     int batch_size, int32_t pad_id);

}  // namespace llmqs::core
