// The bundled Yelp-like sample dataset: a deterministic generator of star-rated reviews (five classes,
// learnable but noisy) and a lower-cased WordPiece vocabulary that covers every word it writes, so the
// README's first command trains without downloading anything.
//
// Determinism: integer-only arithmetic (xoshiro256** seeded through splitmix64, lengths from a fixed
// log-normal quantile table), so a seed gives byte-identical files on every platform and compiler.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llmqs::data {

struct SampleOptions {
  int64_t train_size = 5000;
  int64_t test_size = 1000;
  uint64_t seed = 42;
};

// Writes <dir>/train.csv and <dir>/test.csv in the distributed YelpReviewFull format (no header, label
// 1-5, both fields quoted, `""` escapes, LF line ends) and <dir>/vocab.txt (see sample_vocabulary()).
// Creates dir if needed; each file is written to a temporary name and renamed, so it is complete or
// absent. The test split comes from its own random stream: it does not change with train_size.
void write_sample_dataset(const std::string& dir, const SampleOptions& options);

// The vocabulary written to vocab.txt, id = index: [PAD] [UNK] [CLS] [SEP] [MASK], ASCII punctuation,
// digits and letters, their ##-continuations, ##-suffix pieces, then the generator's whole words
// (lower-cased, accents stripped). Inflected forms whose stem is in the vocabulary (servers, seated,
// friendly) are left out on purpose so that WordPiece really splits them.
std::vector<std::string> sample_vocabulary();

// Review length in words as the generator measures it: runs of non-blank bytes, where the literal
// two-character sequence `\n` (a paragraph break in YelpReviewFull) also separates words.
int64_t count_review_words(const std::string& text);

}  // namespace llmqs::data
