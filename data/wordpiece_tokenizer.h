// The BERT WordPiece tokenizer: text -> [CLS] wordpiece ids [SEP], exactly as HF BertTokenizerFast
// (BertNormalizer + BertPreTokenizer + WordPiece) computes them, with the same special tokens
// ([CLS], [SEP], [UNK], [PAD], [MASK]) recognised when they appear literally in the text.
// One tokenizer for the whole program: `tokenize`, `prepare`, `predict` and checkpoints all use it.
// Thread-safe after construction (encode is const and allocates nothing shared).
// docs/tokenizer.md records the choices and the Unicode-version corrections that HF parity needs.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace llmqs::data {

class WordPieceTokenizer {
 public:
  // vocab.txt (one token per line, id = line index) or a HF tokenizer.json (model.vocab; WordPiece only).
  // Throws std::runtime_error naming the file for: missing/unreadable file, empty vocabulary, missing
  // [UNK]/[CLS]/[SEP]/[PAD], duplicate tokens (name the line), non-WordPiece tokenizer.json.
  static WordPieceTokenizer from_file(const std::string& path, bool do_lower_case);
  // A vocabulary already in memory (e.g. the one a checkpoint carries), taken as vocab.txt would be
  // (id = index, [PAD]/[UNK]/[CLS]/[SEP]/[MASK] matched verbatim in the text) but without a file.
  // `source_name` stands for the file in error messages (duplicate tokens name it and the id + 1).
  static WordPieceTokenizer from_tokens(std::vector<std::string> tokens, bool do_lower_case, std::string source_name);
  // [CLS] wordpieces [SEP], truncated (dropping trailing wordpieces) so the result has at most max_length ids.
  std::vector<int32_t> encode(std::string_view text, int max_length) const;
  void encode_into(std::string_view text, int max_length, std::vector<int32_t>& out) const;  // clears out first
  std::vector<std::string> wordpieces(std::string_view text) const;  // no specials, no truncation (debugging)
  int vocab_size() const;
  int32_t pad_id() const;
  int32_t unk_id() const;
  int32_t cls_id() const;
  int32_t sep_id() const;
  bool do_lower_case() const;
  uint64_t vocab_hash() const;  // FNV-1a 64 over the tokens in id order, each followed by '\n' (stable, documented)
  const std::vector<std::string>& tokens() const;  // id -> token
  const std::string& source_path() const;

 private:
  // Open-addressing table from token text (bytes in arena_) to id. Offsets instead of pointers
  // keep the tokenizer copyable.
  struct TokenTable {
    struct Slot {
      uint32_t offset = 0;
      uint32_t length = 0;
      int32_t id = -1;  // -1: empty slot
    };
    std::string arena;
    std::vector<Slot> slots;
    uint64_t mask = 0;
    size_t max_length_bytes = 0;
    void build(const std::vector<std::pair<std::string_view, int32_t>>& entries);
    int32_t find(std::string_view key) const;  // -1 when absent
  };
  struct AddedToken {
    std::string content;
    int32_t id;
  };

  WordPieceTokenizer() = default;
  void finish_construction();  // lookup tables, special ids, hash; throws naming the file
  void register_vocab_txt_specials();  // BertWordPieceTokenizer's added special tokens
  void index_added_tokens();           // added_first_byte_ from added_tokens_
  // Runs normalizer + pre-tokenizer + WordPiece over text, appending ids to out until out holds
  // `limit` ids (limit < 0: no limit).
  void append_wordpiece_ids(std::string_view text, int64_t limit, std::vector<int32_t>& out) const;
  void append_segment_ids(std::string_view segment, int64_t limit, std::vector<int32_t>& out, std::string& word) const;
  void append_word_ids(std::string_view word, int64_t char_count, std::vector<int32_t>& out) const;

  std::vector<std::string> tokens_;
  std::string source_path_;
  bool do_lower_case_ = false;
  std::string unk_token_ = "[UNK]";
  std::string continuing_prefix_ = "##";
  int64_t max_input_chars_per_word_ = 100;
  std::vector<AddedToken> added_tokens_;  // matched verbatim in the raw text, before normalization
  bool added_first_byte_[256] = {};
  int32_t pad_id_ = -1, unk_id_ = -1, cls_id_ = -1, sep_id_ = -1;
  uint64_t vocab_hash_ = 0;
  TokenTable word_start_;    // every token, for the first piece of a word
  TokenTable continuation_;  // tokens that start with continuing_prefix_, keyed without it
};

}  // namespace llmqs::data
