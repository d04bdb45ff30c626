// The HDF5 token cache that `llmqs-dist prepare` writes and training reads: a dataset
// tokenized once, stored ragged (no padding on disk), read per batch with hyperslabs.
//
//   /tokens   int32 [num_tokens]       every example's ids back to back ([CLS] ... [SEP])
//   /offsets  int64 [num_examples + 1] example i = tokens[offsets[i] .. offsets[i+1])
//   /labels   int32 [num_examples]     0-based class index
//   attributes on /: see TokenCacheInfo (and docs/token_cache.md).
//
// Every function here turns HDF5 failures into std::runtime_error naming the file; HDF5's
// own error-stack printing is switched off.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace llmqs::data {

inline constexpr const char* kTokenCacheSchema = "llmqs-token-cache";
inline constexpr int kTokenCacheSchemaVersion = 1;

// What a set of token ids was made from. Stored as attributes of the cache's root group; an
// in-memory tokenization carries the same record so both kinds of dataset answer alike.
struct TokenCacheInfo {
  std::string schema = kTokenCacheSchema;
  int schema_version = kTokenCacheSchemaVersion;
  uint64_t vocab_hash = 0;     // WordPieceTokenizer::vocab_hash()
  int vocab_size = 0;
  bool do_lower_case = false;
  int max_length = 0;          // truncation length the ids were made with (incl. [CLS]/[SEP])
  int64_t num_examples = 0;
  int64_t num_tokens = 0;
  int num_labels = 0;          // --num_labels if given, else (largest label + 1)
  int label_offset = 0;        // what was subtracted from the file's labels
  std::string source_file;     // file name (no directory) of the CSV/JSONL
  std::string tokenizer_file;  // file name (no directory) of vocab.txt / tokenizer.json
};

// Ragged token ids in memory, the exact layout of the cache's three datasets.
struct RaggedTokens {
  std::vector<int32_t> tokens;
  std::vector<int64_t> offsets{0};  // size = examples + 1
  std::vector<int32_t> labels;

  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int32_t length(int64_t i) const { return static_cast<int32_t>(offsets[i + 1] - offsets[i]); }
  void append(const int32_t* ids, int32_t count, int32_t label);
};

struct TokenCacheWriteOptions {
  int compression_level = 0;   // 0 = none (fastest random reads), 1..9 = deflate with byte shuffle
  int64_t chunk_tokens = 1 << 16;  // /tokens chunk size; 256 KiB keeps random batch reads cheap
};

// Writes `path` complete or not at all: everything goes to `<path>.tmp.<pid>`, which is renamed
// to `path` only after a clean close (and removed on any failure). `info.num_examples` and
// `info.num_tokens` are taken from `data`. Throws std::runtime_error naming the file.
void write_token_cache(const std::string& path, TokenCacheInfo info, const RaggedTokens& data,
                       const TokenCacheWriteOptions& options = {});

// An open cache: attributes, offsets and labels are read (and checked) at open; token ids are
// read on demand with hyperslab selections, so a rank touches only the examples it trains on.
class TokenCacheReader {
 public:
  // Throws std::runtime_error naming `path` if it is missing, not HDF5, truncated, of another
  // schema or version, or if a dataset's size disagrees with the attributes.
  explicit TokenCacheReader(const std::string& path);
  ~TokenCacheReader();
  TokenCacheReader(const TokenCacheReader&) = delete;
  TokenCacheReader& operator=(const TokenCacheReader&) = delete;

  const std::string& path() const { return path_; }
  const TokenCacheInfo& info() const { return info_; }
  const std::vector<int64_t>& offsets() const { return offsets_; }
  const std::vector<int32_t>& labels() const { return labels_; }
  const std::vector<int32_t>& lengths() const { return lengths_; }

  // Appends one vector per requested index (any order, duplicates allowed) to `out`. Requested
  // examples are merged into runs of consecutive ids and read as a union of hyperslabs.
  void read(const std::vector<int64_t>& indices, std::vector<std::vector<int32_t>>& out);

  // Reads every id once (sequentially, 4 MiB at a time) and throws std::runtime_error naming the
  // file, the example and the id when one is outside [0, vocab_size). A cache whose vocabulary
  // hash matches still needs this: the hash covers the vocabulary, not the ids stored with it.
  void check_token_ids(int32_t vocab_size, const std::string& vocab_name);

 private:
  struct Handles;
  std::string path_;
  TokenCacheInfo info_;
  std::vector<int64_t> offsets_;
  std::vector<int32_t> labels_;
  std::vector<int32_t> lengths_;
  std::unique_ptr<Handles> handles_;
};

// Refuses (std::runtime_error) a cache whose ids were not made by the tokenizer and max_length
// now in use; the message says what differs and the `prepare` command that rebuilds it.
// `vocab_path` is the vocabulary now in use (only for the message).
void check_token_cache_matches(const std::string& cache_path, const TokenCacheInfo& info,
                               uint64_t vocab_hash, bool do_lower_case, int max_length,
                               const std::string& vocab_path);

// "0x" + 16 lower-case hex digits, as the cache documentation and error messages show hashes.
std::string format_vocab_hash(uint64_t hash);

}  // namespace llmqs::data
