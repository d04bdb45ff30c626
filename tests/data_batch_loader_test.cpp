// BatchLoader: padding to a multiple of 8, rows/lengths/labels, HF length grouping (less padding,
// same examples), resume with start_batch, drop_last_batch, clean shutdown mid-epoch and read
// errors surfacing in next().
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <iostream>
#include <map>
#include <thread>

#include "data/batch_loader.h"
#include "data/token_cache.h"

using namespace llmqs::data;

namespace {

constexpr int32_t kPad = 7777;  // not a token id below, so padding is visible

// Lengths 2..max_length skewed short like reviews, ids 1000..1999, labels 0..4.
RaggedTokens synthetic(int64_t examples, int max_length, uint64_t seed) {
  SplitMix64 rng(seed);
  RaggedTokens data;
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < examples; ++i) {
    const uint64_t a = rng.below(static_cast<uint64_t>(max_length) - 1), b = rng.below(static_cast<uint64_t>(max_length) - 1);
    const auto length = static_cast<int32_t>(2 + std::min(a, b));
    ids.resize(length);
    for (auto& id : ids) id = 1000 + static_cast<int32_t>(rng.below(1000));
    data.append(ids.data(), length, static_cast<int32_t>(rng.below(5)));
  }
  return data;
}

TokenCacheInfo info_for(int max_length) {
  TokenCacheInfo info;
  info.max_length = max_length;
  info.num_labels = 5;
  return info;
}

std::vector<Batch> drain(BatchLoader& loader) {
  std::vector<Batch> batches;
  Batch batch;
  while (loader.next(batch)) batches.push_back(batch);
  return batches;
}

int64_t padded_tokens(const std::vector<Batch>& batches) {
  int64_t total = 0;
  for (const auto& b : batches) total += static_cast<int64_t>(b.rows) * b.seq_len - b.real_tokens();
  return total;
}

std::multiset<int64_t> examples_of(const std::vector<Batch>& batches) {
  std::multiset<int64_t> all;
  for (const auto& b : batches) all.insert(b.example_index.begin(), b.example_index.end());
  return all;
}

// Reads through to another dataset, optionally slowly, optionally failing at a given call.
class InstrumentedDataset final : public TokenizedDataset {
 public:
  explicit InstrumentedDataset(TokenizedDataset& inner) : inner_(inner) {}
  int64_t size() const override { return inner_.size(); }
  const std::vector<int32_t>& lengths() const override { return inner_.lengths(); }
  const std::vector<int32_t>& labels() const override { return inner_.labels(); }
  const TokenCacheInfo& info() const override { return inner_.info(); }
  void read(const std::vector<int64_t>& indices, std::vector<std::vector<int32_t>>& out) override {
    const int call = calls++;
    if (call == fail_at_call) throw std::runtime_error("disk on fire while reading batch " + std::to_string(call));
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    inner_.read(indices, out);
  }
  std::atomic<int> calls{0};
  int fail_at_call = -1;
  int delay_ms = 0;

 private:
  TokenizedDataset& inner_;
};

// Runs `action` on another thread; a hang fails the test and ends the process instead of
// blocking the suite.
void expect_finishes_within(std::chrono::seconds limit, std::function<void()> action) {
  auto done = std::make_shared<std::promise<void>>();
  auto finished = done->get_future();
  std::thread([action = std::move(action), done] {
    action();
    done->set_value();
  }).detach();
  if (finished.wait_for(limit) != std::future_status::ready) {
    std::cerr << "BatchLoader shutdown hung for more than " << limit.count() << " s\n";
    std::_Exit(3);
  }
}

}  // namespace

TEST(BatchLoader, PadsToMultipleOfEightWithTheRightRowsLengthsAndLabels) {
  const RaggedTokens data = synthetic(203, 61, 1);
  auto dataset = make_in_memory_dataset(data, info_for(61));
  ShardedSampler sampler(203, 2, 1, 42, true, false);
  BatchLoader loader(*dataset, sampler, 0, 16, kPad);
  EXPECT_EQ(loader.num_batches(), 7);  // ceil(102 / 16)
  const auto batches = drain(loader);
  ASSERT_EQ(batches.size(), 7u);

  std::vector<int64_t> seen;
  for (const auto& b : batches) {
    ASSERT_EQ(b.rows, static_cast<int>(b.example_index.size()));
    int longest = 0;
    for (int r = 0; r < b.rows; ++r) longest = std::max(longest, data.length(b.example_index[r]));
    EXPECT_EQ(b.seq_len % 8, 0);
    EXPECT_EQ(b.seq_len, (longest + 7) / 8 * 8);
    EXPECT_LE(b.seq_len, 64);  // max_length 61 rounded up
    ASSERT_EQ(b.input_ids.size(), static_cast<size_t>(b.rows) * b.seq_len);
    for (int r = 0; r < b.rows; ++r) {
      const int64_t i = b.example_index[r];
      EXPECT_EQ(b.lengths[r], data.length(i));
      EXPECT_EQ(b.labels[r], data.labels[i]);
      for (int t = 0; t < b.seq_len; ++t) {
        const int32_t expected = t < data.length(i) ? data.tokens[data.offsets[i] + t] : kPad;
        ASSERT_EQ(b.input_ids[static_cast<size_t>(r) * b.seq_len + t], expected) << "row " << r << " pos " << t;
      }
    }
    seen.insert(seen.end(), b.example_index.begin(), b.example_index.end());
  }
  EXPECT_EQ(batches.back().rows, 102 - 6 * 16);
  EXPECT_EQ(seen, sampler.indices(0));  // in sampler order, nothing lost or added
}

TEST(BatchLoader, GroupByLengthPadsLessAndKeepsEveryExample) {
  const RaggedTokens data = synthetic(4000, 256, 2);
  auto dataset = make_in_memory_dataset(data, info_for(256));
  ShardedSampler sampler(4000, 1, 0, 42, true, false);
  BatchLoaderOptions grouped_options;
  grouped_options.group_by_length = true;
  BatchLoader random_loader(*dataset, sampler, 1, 16, kPad);
  BatchLoader grouped_loader(*dataset, sampler, 1, 16, kPad, grouped_options);
  const auto random_batches = drain(random_loader);
  const auto grouped = drain(grouped_loader);
  ASSERT_EQ(grouped.size(), random_batches.size());
  EXPECT_EQ(examples_of(grouped), examples_of(random_batches));
  EXPECT_LT(padded_tokens(grouped), padded_tokens(random_batches) / 4)
      << "grouped " << padded_tokens(grouped) << " random " << padded_tokens(random_batches);

  // The longest example leads; inside each mega-batch (50 batches of 16) lengths fall.
  int32_t longest = 0;
  for (int32_t l : dataset->lengths()) longest = std::max(longest, l);
  EXPECT_EQ(grouped[0].lengths[0], longest);
  std::vector<int32_t> flat;
  for (const auto& b : grouped) flat.insert(flat.end(), b.lengths.begin(), b.lengths.end());
  for (size_t mega = 0; mega < flat.size(); mega += 800) {
    const size_t end = std::min(flat.size(), mega + 800);
    // Position `mega` may hold the example swapped out of the front, so the order is checked after it.
    for (size_t k = mega + 2; k < end; ++k) ASSERT_GE(flat[k - 1], flat[k]) << "position " << k;
  }

  // Deterministic from (seed, epoch); another epoch groups differently.
  BatchLoader again(*dataset, sampler, 1, 16, kPad, grouped_options);
  const auto repeat = drain(again);
  for (size_t b = 0; b < grouped.size(); ++b) ASSERT_EQ(repeat[b].example_index, grouped[b].example_index);
  BatchLoader other_epoch(*dataset, sampler, 2, 16, kPad, grouped_options);
  EXPECT_NE(drain(other_epoch)[0].example_index, grouped[0].example_index);
}

TEST(BatchLoader, StartBatchResumesWithExactlyTheRemainingBatches) {
  const RaggedTokens data = synthetic(777, 100, 3);
  auto dataset = make_in_memory_dataset(data, info_for(100));
  ShardedSampler sampler(777, 3, 2, 5, true, false);
  for (bool grouped : {false, true}) {
    BatchLoaderOptions options;
    options.group_by_length = grouped;
    BatchLoader full_loader(*dataset, sampler, 4, 8, kPad, options);
    const auto full = drain(full_loader);
    ASSERT_EQ(static_cast<int64_t>(full.size()), full_loader.num_batches());
    for (int64_t start : {int64_t{0}, int64_t{1}, int64_t{13}, full_loader.num_batches()}) {
      options.start_batch = start;
      BatchLoader resumed_loader(*dataset, sampler, 4, 8, kPad, options);
      EXPECT_EQ(resumed_loader.num_batches(), full_loader.num_batches());
      const auto resumed = drain(resumed_loader);
      ASSERT_EQ(static_cast<int64_t>(resumed.size()), full_loader.num_batches() - start);
      EXPECT_EQ(resumed_loader.batches_delivered(), full_loader.num_batches());
      for (size_t k = 0; k < resumed.size(); ++k) {
        EXPECT_EQ(resumed[k].example_index, full[start + k].example_index);
        EXPECT_EQ(resumed[k].input_ids, full[start + k].input_ids);
      }
    }
    options.start_batch = full_loader.num_batches() + 1;
    EXPECT_THROW(BatchLoader(*dataset, sampler, 4, 8, kPad, options), std::invalid_argument);
  }
}

TEST(BatchLoader, DropLastBatchKeepsOnlyFullBatches) {
  auto dataset = make_in_memory_dataset(synthetic(100, 30, 4), info_for(30));
  ShardedSampler sampler(100, 1, 0, 1, false, false);
  BatchLoaderOptions options;
  options.drop_last_batch = true;
  BatchLoader loader(*dataset, sampler, 0, 16, kPad, options);
  EXPECT_EQ(loader.num_batches(), 6);
  const auto batches = drain(loader);
  ASSERT_EQ(batches.size(), 6u);
  for (const auto& b : batches) EXPECT_EQ(b.rows, 16);
  EXPECT_EQ(batches.back().example_index.back(), 95);
  EXPECT_EQ(count_batches(100, 16, false), 7);
  EXPECT_EQ(count_batches(96, 16, true), 6);
}

TEST(BatchLoader, ReadsFromATokenCacheLikeFromMemory) {
  const auto dir = std::filesystem::temp_directory_path() / ("llmqs_batch_loader_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "cache.h5").string();
  const RaggedTokens data = synthetic(500, 64, 5);
  write_token_cache(path, info_for(64), data);
  auto cached = open_token_cache(path);
  auto in_memory = make_in_memory_dataset(data, info_for(64));
  ShardedSampler sampler(500, 4, 1, 9, true, false);
  BatchLoaderOptions options;
  options.group_by_length = true;
  BatchLoader from_cache(*cached, sampler, 2, 12, kPad, options);
  BatchLoader from_memory(*in_memory, sampler, 2, 12, kPad, options);
  const auto a = drain(from_cache), b = drain(from_memory);
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    EXPECT_EQ(a[k].input_ids, b[k].input_ids);
    EXPECT_EQ(a[k].labels, b[k].labels);
    EXPECT_EQ(a[k].lengths, b[k].lengths);
  }
  std::filesystem::remove_all(dir);
}

TEST(BatchLoader, ReadErrorSurfacesInNextAfterTheGoodBatches) {
  auto inner = make_in_memory_dataset(synthetic(200, 20, 6), info_for(20));
  InstrumentedDataset dataset(*inner);
  dataset.fail_at_call = 3;
  ShardedSampler sampler(200, 1, 0, 1, true, false);
  BatchLoader loader(dataset, sampler, 0, 10, kPad);
  Batch batch;
  for (int k = 0; k < 3; ++k) ASSERT_TRUE(loader.next(batch)) << "batch " << k;
  try {
    loader.next(batch);
    FAIL() << "the read error was swallowed";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "disk on fire while reading batch 3");
  }
  EXPECT_THROW(loader.next(batch), std::runtime_error);  // and stays an error
}

TEST(BatchLoader, DestructorMidEpochDoesNotHang) {
  auto inner = make_in_memory_dataset(synthetic(2000, 20, 7), info_for(20));
  InstrumentedDataset dataset(*inner);
  dataset.delay_ms = 2;
  ShardedSampler sampler(2000, 1, 0, 1, true, false);
  for (int prefetch : {1, 4}) {
    BatchLoaderOptions options;
    options.prefetch = prefetch;
    expect_finishes_within(std::chrono::seconds(20), [&] {
      {
        BatchLoader untouched(dataset, sampler, 0, 8, kPad, options);  // producer blocked on a full queue
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
      }
      BatchLoader loader(dataset, sampler, 0, 8, kPad, options);
      Batch batch;
      ASSERT_TRUE(loader.next(batch));
      ASSERT_TRUE(loader.next(batch));
    });
  }
  // The reader stopped early: far fewer reads than the 2 x 250 batches of two full epochs.
  EXPECT_LT(dataset.calls.load(), 60);
}

TEST(BatchLoader, RejectsBadSettings) {
  auto dataset = make_in_memory_dataset(synthetic(10, 8, 8), info_for(8));
  ShardedSampler sampler(10, 1, 0, 1, false, false);
  BatchLoaderOptions options;
  EXPECT_THROW(BatchLoader(*dataset, sampler, 0, 0, kPad, options), std::invalid_argument);
  options.prefetch = 0;
  EXPECT_THROW(BatchLoader(*dataset, sampler, 0, 4, kPad, options), std::invalid_argument);
  options.prefetch = 1;
  ShardedSampler wrong_size(11, 1, 0, 1, false, false);
  EXPECT_THROW(BatchLoader(*dataset, wrong_size, 0, 4, kPad, options), std::invalid_argument);
}
