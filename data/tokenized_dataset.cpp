// TokenizedDataset implementations: in memory (tokenized at start-up or synthetic) and backed
// by an HDF5 token cache; plus the parallel tokenization that `prepare` and the in-memory path
// share, so a cache and a CSV give the same ids.
#include "data/tokenized_dataset.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include "data/dataset_reader.h"
#include "data/wordpiece_tokenizer.h"

namespace llmqs::data {

namespace {

void check_indices(const std::vector<int64_t>& indices, int64_t size, const char* what) {
  for (int64_t index : indices) {
    if (index < 0 || index >= size) {
      throw std::out_of_range(std::string(what) + ": example index " + std::to_string(index) + " outside 0.." +
                              std::to_string(size - 1));
    }
  }
}

class InMemoryTokenizedDataset final : public TokenizedDataset {
 public:
  InMemoryTokenizedDataset(RaggedTokens data, TokenCacheInfo info) : data_(std::move(data)), info_(std::move(info)) {
    if (data_.offsets.size() != data_.labels.size() + 1 || data_.offsets.front() != 0 ||
        data_.offsets.back() != static_cast<int64_t>(data_.tokens.size())) {
      throw std::invalid_argument("in-memory dataset: offsets must rise from 0 to the token count, one more than labels");
    }
    lengths_.resize(data_.labels.size());
    for (size_t i = 0; i < lengths_.size(); ++i) {
      const int64_t length = data_.offsets[i + 1] - data_.offsets[i];
      if (length < 0) throw std::invalid_argument("in-memory dataset: offsets decrease at example " + std::to_string(i));
      lengths_[i] = static_cast<int32_t>(length);
    }
    info_.num_examples = data_.size();
    info_.num_tokens = static_cast<int64_t>(data_.tokens.size());
  }

  int64_t size() const override { return data_.size(); }
  const std::vector<int32_t>& lengths() const override { return lengths_; }
  const std::vector<int32_t>& labels() const override { return data_.labels; }
  const TokenCacheInfo& info() const override { return info_; }

  void read(const std::vector<int64_t>& indices, std::vector<std::vector<int32_t>>& out) override {
    check_indices(indices, size(), info_.source_file.empty() ? "in-memory dataset" : info_.source_file.c_str());
    out.reserve(out.size() + indices.size());
    for (int64_t index : indices) {
      out.emplace_back(data_.tokens.begin() + data_.offsets[index], data_.tokens.begin() + data_.offsets[index + 1]);
    }
  }

 private:
  RaggedTokens data_;
  TokenCacheInfo info_;
  std::vector<int32_t> lengths_;
};

class CachedTokenizedDataset final : public TokenizedDataset {
 public:
  explicit CachedTokenizedDataset(const std::string& path) : reader_(path) {}

  int64_t size() const override { return reader_.info().num_examples; }
  const std::vector<int32_t>& lengths() const override { return reader_.lengths(); }
  const std::vector<int32_t>& labels() const override { return reader_.labels(); }
  const TokenCacheInfo& info() const override { return reader_.info(); }
  void read(const std::vector<int64_t>& indices, std::vector<std::vector<int32_t>>& out) override {
    reader_.read(indices, out);
  }
  TokenCacheReader& reader() { return reader_; }

 private:
  TokenCacheReader reader_;
};

std::string file_name_of(const std::string& path) { return std::filesystem::path(path).filename().string(); }

}  // namespace

RaggedTokens tokenize_rows(const Dataset& data, const WordPieceTokenizer& tokenizer, int max_length,
                           TokenizeStats* stats, const TokenizeProgress& progress) {
  // 1 << 20 keeps max_length + 1 (asked of the tokenizer below) far from overflow.
  if (max_length < 2 || max_length > (1 << 20)) {
    throw std::invalid_argument("max_length " + std::to_string(max_length) +
                                " is outside 2..1048576 ([CLS] and [SEP] alone take 2)");
  }
  const auto start_time = std::chrono::steady_clock::now();
  const int64_t n = static_cast<int64_t>(data.rows.size());
  std::vector<std::vector<int32_t>> per_example(static_cast<size_t>(n));
  int64_t truncated = 0;
  std::exception_ptr first_error;

  // Blocks give the calling thread a moment to report progress without locks in the loop.
  constexpr int64_t kBlock = 16384;
  for (int64_t block_begin = 0; block_begin < n; block_begin += kBlock) {
    const int64_t block_end = std::min(n, block_begin + kBlock);
#pragma omp parallel reduction(+ : truncated)
    {
      std::vector<int32_t> ids;
#pragma omp for schedule(dynamic, 64)
      for (int64_t i = block_begin; i < block_end; ++i) {
        try {
          // One id more than allowed tells whether truncation happened: then the last wordpiece
          // before [SEP] goes, which is exactly encode(text, max_length).
          tokenizer.encode_into(data.rows[i].text, max_length + 1, ids);
          if (static_cast<int64_t>(ids.size()) > max_length) {
            ++truncated;
            ids.erase(ids.begin() + (max_length - 1));
          }
          per_example[i].assign(ids.begin(), ids.end());
        } catch (...) {
#pragma omp critical(llmqs_tokenize_error)
          if (!first_error) first_error = std::current_exception();
        }
      }
    }
    if (first_error) std::rethrow_exception(first_error);
    if (progress) progress(block_end, n);
  }

  RaggedTokens result;
  result.offsets.assign(static_cast<size_t>(n) + 1, 0);
  int32_t longest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto length = static_cast<int32_t>(per_example[i].size());
    result.offsets[i + 1] = result.offsets[i] + length;
    longest = std::max(longest, length);
  }
  result.tokens.resize(static_cast<size_t>(result.offsets[n]));
  result.labels.resize(static_cast<size_t>(n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    std::copy(per_example[i].begin(), per_example[i].end(), result.tokens.begin() + result.offsets[i]);
    std::vector<int32_t>().swap(per_example[i]);
    result.labels[i] = data.rows[i].label;
  }

  if (stats) {
    stats->examples = n;
    stats->tokens = result.offsets[n];
    stats->truncated = truncated;
    stats->longest = longest;
    stats->threads = omp_get_max_threads();
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_time).count();
  }
  return result;
}

TokenCacheInfo describe_tokenization(const Dataset& data, const WordPieceTokenizer& tokenizer, int max_length,
                                     int num_labels) {
  TokenCacheInfo info;
  info.vocab_hash = tokenizer.vocab_hash();
  info.vocab_size = tokenizer.vocab_size();
  info.do_lower_case = tokenizer.do_lower_case();
  info.max_length = max_length;
  info.num_examples = static_cast<int64_t>(data.rows.size());
  info.num_labels = num_labels > 0 ? num_labels : data.num_labels_seen;
  info.label_offset = data.label_offset;
  info.source_file = file_name_of(data.path);
  info.tokenizer_file = file_name_of(tokenizer.source_path());
  return info;
}

std::unique_ptr<TokenizedDataset> make_in_memory_dataset(RaggedTokens tokens, TokenCacheInfo info) {
  return std::make_unique<InMemoryTokenizedDataset>(std::move(tokens), std::move(info));
}

std::unique_ptr<TokenizedDataset> tokenize_in_memory(const Dataset& data, const WordPieceTokenizer& tokenizer,
                                                     int max_length) {
  return make_in_memory_dataset(tokenize_rows(data, tokenizer, max_length),
                                describe_tokenization(data, tokenizer, max_length, 0));
}

std::unique_ptr<TokenizedDataset> open_token_cache(const std::string& path) {
  return std::make_unique<CachedTokenizedDataset>(path);
}

bool is_token_cache_path(const std::string& path) {
  std::string extension = std::filesystem::path(path).extension().string();
  std::transform(extension.begin(), extension.end(), extension.begin(), [](unsigned char c) { return std::tolower(c); });
  if (extension == ".h5" || extension == ".hdf5" || extension == ".hdf") return true;
  // A cache renamed to something else still starts with the HDF5 signature.
  static const char kSignature[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  char head[8] = {};
  std::ifstream in(path, std::ios::binary);
  return in.read(head, sizeof head) && std::memcmp(head, kSignature, sizeof head) == 0;
}

std::unique_ptr<TokenizedDataset> load_tokenized(const std::string& path, const ReadOptions& options,
                                                 const WordPieceTokenizer& tokenizer, int max_length) {
  if (!is_token_cache_path(path)) {
    Dataset data = read_dataset(path, options);
    return make_in_memory_dataset(tokenize_rows(data, tokenizer, max_length),
                                  describe_tokenization(data, tokenizer, max_length, options.num_labels));
  }
  auto dataset = std::make_unique<CachedTokenizedDataset>(path);
  const TokenCacheInfo& info = dataset->info();
  check_token_cache_matches(path, info, tokenizer.vocab_hash(), tokenizer.do_lower_case(), max_length,
                            tokenizer.source_path());
  // Before training starts (and writes its first output): an id the embedding table does not
  // have would otherwise stop the run at the batch that holds it.
  dataset->reader().check_token_ids(tokenizer.vocab_size(), tokenizer.source_path());
  if (options.label_offset >= 0 && options.label_offset != info.label_offset) {
    throw std::runtime_error(path + ": token cache labels were shifted by label_offset " +
                             std::to_string(info.label_offset) + " but this run asks for label_offset " +
                             std::to_string(options.label_offset) + "; rebuild it with llmqs-dist prepare --label_offset " +
                             std::to_string(options.label_offset));
  }
  if (options.num_labels > 0) {
    const auto& labels = dataset->labels();
    const auto largest = labels.empty() ? 0 : *std::max_element(labels.begin(), labels.end());
    if (largest >= options.num_labels) {
      throw std::runtime_error(path + ": token cache has label " + std::to_string(largest) + " but num_labels is " +
                               std::to_string(options.num_labels) + " (labels must be 0.." +
                               std::to_string(options.num_labels - 1) + ")");
    }
  }
  return dataset;
}

}  // namespace llmqs::data
