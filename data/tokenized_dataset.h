// The one interface through which training and evaluation read examples: token ids, lengths
// and labels, whether they come from an HDF5 token cache (read lazily, per batch) or from a
// CSV/JSONL tokenized in memory at start-up. Both give identical ids for the same input.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/token_cache.h"

namespace llmqs::data {

struct Dataset;         // data/dataset_reader.h
struct ReadOptions;     // data/dataset_reader.h
class WordPieceTokenizer;  // data/wordpiece_tokenizer.h

class TokenizedDataset {
 public:
  virtual ~TokenizedDataset() = default;
  virtual int64_t size() const = 0;
  virtual const std::vector<int32_t>& lengths() const = 0;  // tokens per example (incl. [CLS]/[SEP])
  virtual const std::vector<int32_t>& labels() const = 0;   // 0-based
  // Appends the tokens of the examples (any order of indices, duplicates allowed) to out, one
  // vector per index, in the given order. Throws std::out_of_range for an index outside [0, size).
  virtual void read(const std::vector<int64_t>& indices, std::vector<std::vector<int32_t>>& out) = 0;
  virtual const TokenCacheInfo& info() const = 0;  // vocab hash, lower-casing, max_length, ...
};

// What tokenizing a dataset did (for `prepare`'s summary).
struct TokenizeStats {
  int64_t examples = 0;
  int64_t tokens = 0;
  int64_t truncated = 0;    // examples that had more than max_length ids before truncation
  int32_t longest = 0;      // most ids in one example after truncation
  int threads = 1;
  double seconds = 0.0;
};

// Called from the calling thread between blocks of examples: (examples done, total).
using TokenizeProgress = std::function<void(int64_t done, int64_t total)>;

// Tokenizes every row on all cores (OpenMP, dynamic schedule): [CLS] pieces [SEP] truncated to
// max_length, exactly WordPieceTokenizer::encode. Labels are copied (already 0-based).
RaggedTokens tokenize_rows(const Dataset& data, const WordPieceTokenizer& tokenizer, int max_length,
                           TokenizeStats* stats = nullptr, const TokenizeProgress& progress = {});

// The cache record describing `tokenize_rows(data, tokenizer, max_length)`; num_labels is
// `num_labels` if > 0, else the dataset's num_labels_seen.
TokenCacheInfo describe_tokenization(const Dataset& data, const WordPieceTokenizer& tokenizer, int max_length,
                                     int num_labels);

// A dataset held in memory (synthetic data in tests, or a tokenized CSV).
std::unique_ptr<TokenizedDataset> make_in_memory_dataset(RaggedTokens tokens, TokenCacheInfo info);

std::unique_ptr<TokenizedDataset> tokenize_in_memory(const Dataset& data, const WordPieceTokenizer& tokenizer,
                                                     int max_length);  // all cores (OpenMP)
std::unique_ptr<TokenizedDataset> open_token_cache(const std::string& path);  // HDF5, reads lazily

// True for the file names load_tokenized opens as a token cache (.h5, .hdf5).
bool is_token_cache_path(const std::string& path);

// Opens `path` as a token cache if it is .h5/.hdf5 (checking it matches the tokenizer, its
// lower-casing and max_length, else an error saying how to rebuild it; also that its labels fit
// options.num_labels and its label_offset agrees with an explicit options.label_offset), else
// reads the CSV/JSONL with read_dataset and tokenizes it in memory.
std::unique_ptr<TokenizedDataset> load_tokenized(const std::string& path, const ReadOptions& options,
                                                 const WordPieceTokenizer& tokenizer, int max_length);

}  // namespace llmqs::data
