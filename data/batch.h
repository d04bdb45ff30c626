// One micro-batch of tokenized reviews, padded only to the longest row (rounded up to a
// multiple of 8). This is the unit that flows from data/ into a Backend.
//
//   input_ids  [rows x seq_len]  row-major, padding positions hold pad_id (0 for BERT vocabularies)
//   lengths    [rows]            real tokens in each row ([CLS] .. [SEP]); attention mask = pos < length
//   labels     [rows]            class index 0 .. num_labels-1
// token_type_ids are all zero for single-text classification, so they are not stored.
#pragma once
#include <cstdint>
#include <vector>

namespace llmqs::data {

struct Batch {
  int rows = 0;
  int seq_len = 0;
  std::vector<int32_t> input_ids;
  std::vector<int32_t> lengths;
  std::vector<int32_t> labels;
  std::vector<int64_t> example_index;  // position of each row in the source dataset / cache

  int64_t real_tokens() const {
    int64_t n = 0;
    for (int32_t l : lengths) n += l;
    return n;
  }
};

}  // namespace llmqs::data
