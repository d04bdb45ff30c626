// Turns one rank's shard of one epoch into padded Batches, read ahead on a background thread.
//
//   shard   = sampler.indices(epoch)                       (this rank's examples, in order)
//   batches = consecutive groups of batch_size from the shard; with group_by_length (HF
//             semantics) the shard is cut into mega-batches of 50 batches, each sorted by length
//             descending before it is cut, and the batch holding the longest example goes first
//   padding = each Batch is padded to its longest row rounded up to pad_to_multiple_of (never
//             beyond max_length rounded up, nor beyond the model's max_positions), padding
//             positions hold pad_id
// The batch list depends only on (sampler, epoch, batch_size, options), so `start_batch` resumes
// mid-epoch with exactly the batches that were left.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "data/batch.h"
#include "data/sharded_sampler.h"
#include "data/tokenized_dataset.h"

namespace llmqs::data {

struct BatchLoaderOptions {
  int pad_to_multiple_of = 8;
  bool group_by_length = false;
  bool drop_last_batch = false;  // drop this rank's last, smaller batch of the epoch
  int prefetch = 2;              // batches read ahead by the background thread, >= 1
  int64_t start_batch = 0;       // resume: skip this many batches of the epoch
  // The model's max_position_embeddings: no batch is padded beyond it (max_length 20 with 20
  // positions pads to 20, not 24) and a longer row is an error naming the example. 0: no limit.
  int max_positions = 0;
};

// Batches of one epoch for `num_samples` examples (the count before start_batch is applied).
int64_t count_batches(int64_t num_samples, int batch_size, bool drop_last_batch);

// The example indices of each batch of the epoch, in order (before start_batch); what the
// loader reads. Exposed for tests and for planning (e.g. tokens per step).
std::vector<std::vector<int64_t>> plan_batches(const std::vector<int64_t>& shard, const std::vector<int32_t>& lengths,
                                               int batch_size, bool group_by_length, bool drop_last_batch);

class BatchLoader {
 public:
  // `dataset` must outlive the loader and must not be read by anyone else meanwhile. Throws
  // std::invalid_argument for batch_size < 1, prefetch < 1, pad_to_multiple_of < 1, max_positions < 0,
  // a start_batch outside 0..num_batches, or a sampler made for another dataset size.
  BatchLoader(TokenizedDataset& dataset, const ShardedSampler& sampler, int64_t epoch, int batch_size, int32_t pad_id,
              const BatchLoaderOptions& options = {});
  // Over an explicit shard (this rank's example indices, in order) instead of a sampler's: the
  // trainer uses it for the rest of an epoch re-sharded over another number of ranks.
  BatchLoader(TokenizedDataset& dataset, std::vector<int64_t> shard, int64_t epoch, int batch_size, int32_t pad_id,
              const BatchLoaderOptions& options = {});
  ~BatchLoader();  // stops and joins the reader thread, even mid-epoch
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // Fills `batch` with the next batch and returns true, or returns false at the end of the
  // epoch. A read error on the background thread is rethrown here.
  bool next(Batch& batch);

  int64_t num_batches() const { return static_cast<int64_t>(plan_.size()); }  // whole epoch
  int64_t batches_delivered() const { return next_to_deliver_; }               // including start_batch
  int64_t epoch() const { return epoch_; }

 private:
  void produce();
  void build_batch(int64_t batch_index, Batch& batch, std::vector<std::vector<int32_t>>& rows);

  TokenizedDataset& dataset_;
  int64_t epoch_;
  int batch_size_;
  int32_t pad_id_;
  BatchLoaderOptions options_;
  int max_seq_len_;  // min(max_length rounded up to pad_to_multiple_of, max_positions); 0: no limit known
  std::vector<std::vector<int64_t>> plan_;
  int64_t next_to_deliver_;

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Batch> ready_;
  std::exception_ptr error_;
  bool producer_done_ = false;
  bool stopping_ = false;
  std::thread producer_;
};

}  // namespace llmqs::data
