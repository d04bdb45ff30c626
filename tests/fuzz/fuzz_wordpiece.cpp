// libFuzzer target: data/wordpiece_tokenizer.h encode / wordpieces on arbitrary bytes (invalid
// UTF-8, NULs, huge words, literal special tokens). The tokenizer is built once from the bundled
// sample's vocabulary (tests/fuzz/vocab.txt), cased and uncased. Byte 0 picks lower-casing and
// max_length. encode must never throw or crash and must return [CLS] ... [SEP] with at most
// max_length ids, all inside the vocabulary; encode_into must agree with encode.
#include <cstdint>
#include <memory>
#include <string_view>

#include "data/wordpiece_tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

#ifndef LLMQS_FUZZ_VOCAB
#error "build with -DLLMQS_FUZZ_VOCAB=\"path/to/vocab.txt\" (tests/fuzz/build.sh does)"
#endif

using llmqs::data::WordPieceTokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const WordPieceTokenizer uncased = WordPieceTokenizer::from_file(LLMQS_FUZZ_VOCAB, true);
  static const WordPieceTokenizer cased = WordPieceTokenizer::from_file(LLMQS_FUZZ_VOCAB, false);
  if (size < 1) return 0;
  const WordPieceTokenizer& tok = (data[0] & 1) ? uncased : cased;
  const int max_length = 2 + (data[0] >> 1);  // 2 .. 129
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  std::vector<int32_t> ids = tok.encode(text, max_length);
  LLMQS_FUZZ_CHECK(ids.size() >= 2 && ids.size() <= static_cast<size_t>(max_length), "length in [2, max_length]");
  LLMQS_FUZZ_CHECK(ids.front() == tok.cls_id() && ids.back() == tok.sep_id(), "[CLS] ... [SEP]");
  for (int32_t id : ids) LLMQS_FUZZ_CHECK(id >= 0 && id < tok.vocab_size(), "id inside the vocabulary");
  std::vector<int32_t> again{7, 7, 7};
  tok.encode_into(text, max_length, again);
  LLMQS_FUZZ_CHECK(again == ids, "encode_into == encode");

  std::vector<std::string> pieces = tok.wordpieces(text);
  // Untruncated pieces: the truncated encoding is their prefix, with the specials around it.
  const size_t shown = ids.size() - 2;
  LLMQS_FUZZ_CHECK(pieces.size() >= shown, "encode keeps a prefix of wordpieces");
  if (pieces.size() + 2 <= static_cast<size_t>(max_length))
    LLMQS_FUZZ_CHECK(shown == pieces.size(), "nothing is dropped when everything fits");
  return 0;
}
