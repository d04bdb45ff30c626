// A three-layer BERT of width 16 and one two-row batch (one row padded), for in-process tests of
// the CPU backend's plumbing (gradient reduction, optimizer shards), where the model's size does
// not matter but every parameter kind must be there.
#pragma once
#include "core/model_config.h"
#include "data/batch.h"

namespace llmqs::test_support {

inline core::BertConfig tiny_bert_config() {
  core::BertConfig c;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 2;
  c.intermediate_size = 32;
  c.max_position_embeddings = 16;
  c.num_labels = 3;
  return c;
}

inline data::Batch tiny_bert_batch() {
  data::Batch b;
  b.rows = 2;
  b.seq_len = 6;
  b.lengths = {6, 3};
  b.labels = {1, 2};
  b.input_ids = {2, 17, 33, 4, 9, 3,  //
                 2, 11, 3, 0, 0, 0};
  return b;
}

}  // namespace llmqs::test_support
