// BatchLoader: batch plan (plain or HF length-grouped), padding, and a bounded read-ahead
// queue filled by one background thread.
#include "data/batch_loader.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace llmqs::data {

namespace {

int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

// HF get_length_grouped_indices: mega-batches of min(n / (4 batch), 50) batches (at least one),
// each sorted by length, longest first; then the overall longest example is swapped to the very
// front so a too-large batch fails at step 1, not hours in.
std::vector<int64_t> length_grouped_order(const std::vector<int64_t>& shard, const std::vector<int32_t>& lengths,
                                          int batch_size) {
  const int64_t n = static_cast<int64_t>(shard.size());
  const int64_t mega_batch_mult = std::max<int64_t>(1, std::min<int64_t>(n / (4 * int64_t{batch_size}), 50));
  const int64_t mega_batch_size = mega_batch_mult * batch_size;
  std::vector<int64_t> order = shard;
  int64_t longest_mega_start = 0;
  for (int64_t begin = 0; begin < n; begin += mega_batch_size) {
    const auto first = order.begin() + begin;
    const auto last = order.begin() + std::min(n, begin + mega_batch_size);
    std::stable_sort(first, last, [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
    if (lengths[*first] > lengths[order[longest_mega_start]]) longest_mega_start = begin;
  }
  if (n > 0) std::swap(order[0], order[longest_mega_start]);
  return order;
}

}  // namespace

int64_t count_batches(int64_t num_samples, int batch_size, bool drop_last_batch) {
  if (batch_size < 1) throw std::invalid_argument("batch size " + std::to_string(batch_size) + " < 1");
  return drop_last_batch ? num_samples / batch_size : (num_samples + batch_size - 1) / batch_size;
}

std::vector<std::vector<int64_t>> plan_batches(const std::vector<int64_t>& shard, const std::vector<int32_t>& lengths,
                                               int batch_size, bool group_by_length, bool drop_last_batch) {
  const int64_t n = static_cast<int64_t>(shard.size());
  const int64_t batches = count_batches(n, batch_size, drop_last_batch);
  for (int64_t index : shard) {
    if (index < 0 || index >= static_cast<int64_t>(lengths.size())) {
      throw std::out_of_range("batch plan: example index " + std::to_string(index) + " outside the dataset (" +
                              std::to_string(lengths.size()) + " examples)");
    }
  }
  const std::vector<int64_t> order = group_by_length ? length_grouped_order(shard, lengths, batch_size) : shard;
  std::vector<std::vector<int64_t>> plan(static_cast<size_t>(batches));
  for (int64_t b = 0; b < batches; ++b) {
    const int64_t begin = b * batch_size;
    const int64_t end = std::min(n, begin + batch_size);
    plan[b].assign(order.begin() + begin, order.begin() + end);
  }
  return plan;
}

namespace {

std::vector<int64_t> checked_shard(const TokenizedDataset& dataset, const ShardedSampler& sampler, int64_t epoch) {
  if (sampler.dataset_size() != dataset.size()) {
    throw std::invalid_argument("BatchLoader: the sampler was made for " + std::to_string(sampler.dataset_size()) +
                                " examples but the dataset has " + std::to_string(dataset.size()));
  }
  return sampler.indices(epoch);
}

}  // namespace

BatchLoader::BatchLoader(TokenizedDataset& dataset, const ShardedSampler& sampler, int64_t epoch, int batch_size,
                         int32_t pad_id, const BatchLoaderOptions& options)
    : BatchLoader(dataset, checked_shard(dataset, sampler, epoch), epoch, batch_size, pad_id, options) {}

BatchLoader::BatchLoader(TokenizedDataset& dataset, std::vector<int64_t> shard, int64_t epoch, int batch_size,
                         int32_t pad_id, const BatchLoaderOptions& options)
    : dataset_(dataset), epoch_(epoch), batch_size_(batch_size), pad_id_(pad_id), options_(options) {
  if (batch_size < 1) throw std::invalid_argument("BatchLoader: batch size " + std::to_string(batch_size) + " < 1");
  if (options.prefetch < 1) throw std::invalid_argument("BatchLoader: prefetch " + std::to_string(options.prefetch) + " < 1");
  if (options.pad_to_multiple_of < 1) {
    throw std::invalid_argument("BatchLoader: pad_to_multiple_of " + std::to_string(options.pad_to_multiple_of) + " < 1");
  }
  if (options.max_positions < 0)
    throw std::invalid_argument("BatchLoader: max_positions " + std::to_string(options.max_positions) + " < 0");
  const int max_length = dataset.info().max_length;
  max_seq_len_ = max_length > 0 ? static_cast<int>(round_up(max_length, options.pad_to_multiple_of)) : 0;
  if (options.max_positions > 0)
    max_seq_len_ = max_seq_len_ > 0 ? std::min(max_seq_len_, options.max_positions) : options.max_positions;
  plan_ = plan_batches(shard, dataset.lengths(), batch_size, options.group_by_length,
                       options.drop_last_batch);
  if (options.start_batch < 0 || options.start_batch > num_batches()) {
    throw std::invalid_argument("BatchLoader: start_batch " + std::to_string(options.start_batch) + " outside 0.." +
                                std::to_string(num_batches()) + " (batches in epoch " + std::to_string(epoch) + ")");
  }
  next_to_deliver_ = options.start_batch;
  producer_ = std::thread(&BatchLoader::produce, this);
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (producer_.joinable()) producer_.join();
}

void BatchLoader::produce() {
  std::vector<std::vector<int32_t>> rows;
  for (int64_t b = options_.start_batch; b < num_batches(); ++b) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return stopping_ || static_cast<int>(ready_.size()) < options_.prefetch; });
      if (stopping_) return;
    }
    Batch batch;
    try {
      build_batch(b, batch, rows);
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        error_ = std::current_exception();
        producer_done_ = true;
      }
      changed_.notify_all();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ready_.push_back(std::move(batch));
    }
    changed_.notify_all();
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    producer_done_ = true;
  }
  changed_.notify_all();
}

void BatchLoader::build_batch(int64_t batch_index, Batch& batch, std::vector<std::vector<int32_t>>& rows) {
  const std::vector<int64_t>& indices = plan_[static_cast<size_t>(batch_index)];
  rows.clear();
  dataset_.read(indices, rows);
  if (rows.size() != indices.size()) {
    throw std::runtime_error("BatchLoader: dataset returned " + std::to_string(rows.size()) + " rows for " +
                             std::to_string(indices.size()) + " requested examples");
  }
  const TokenCacheInfo& info = dataset_.info();
  size_t longest = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    if (info.max_length > 0 && rows[r].size() > static_cast<size_t>(info.max_length)) {
      throw std::runtime_error((info.source_file.empty() ? std::string("dataset") : info.source_file) + ": example " +
                               std::to_string(indices[r]) + " has " + std::to_string(rows[r].size()) +
                               " tokens, more than max_length " + std::to_string(info.max_length));
    }
    if (options_.max_positions > 0 && rows[r].size() > static_cast<size_t>(options_.max_positions)) {
      throw std::runtime_error((info.source_file.empty() ? std::string("dataset") : info.source_file) + ": example " +
                               std::to_string(indices[r]) + " has " + std::to_string(rows[r].size()) +
                               " tokens, more than the model's max_position_embeddings " +
                               std::to_string(options_.max_positions));
    }
    longest = std::max(longest, rows[r].size());
  }
  const int64_t seq_len = round_up(static_cast<int64_t>(longest), options_.pad_to_multiple_of);

  batch.rows = static_cast<int>(rows.size());
  batch.seq_len = static_cast<int>(max_seq_len_ > 0 ? std::min<int64_t>(seq_len, max_seq_len_) : seq_len);
  batch.input_ids.assign(static_cast<size_t>(batch.rows) * batch.seq_len, pad_id_);
  batch.lengths.resize(rows.size());
  batch.labels.resize(rows.size());
  batch.example_index = indices;
  const std::vector<int32_t>& labels = dataset_.labels();
  for (size_t r = 0; r < rows.size(); ++r) {
    std::copy(rows[r].begin(), rows[r].end(), batch.input_ids.begin() + static_cast<int64_t>(r) * batch.seq_len);
    batch.lengths[r] = static_cast<int32_t>(rows[r].size());
    batch.labels[r] = labels[static_cast<size_t>(indices[r])];
  }
}

bool BatchLoader::next(Batch& batch) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return !ready_.empty() || producer_done_; });
  if (!ready_.empty()) {
    batch = std::move(ready_.front());
    ready_.pop_front();
    ++next_to_deliver_;
    lock.unlock();
    changed_.notify_all();
    return true;
  }
  if (error_) std::rethrow_exception(error_);
  return false;
}

}  // namespace llmqs::data
