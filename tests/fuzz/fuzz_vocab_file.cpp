// libFuzzer target: WordPieceTokenizer::from_file on arbitrary bytes as vocab.txt (byte 0 even)
// or tokenizer.json (byte 0 odd). Either a tokenizer that can encode, or std::runtime_error.
#include <cstdint>
#include <stdexcept>

#include "data/wordpiece_tokenizer.h"
#include "tests/fuzz/fuzz_common.h"

using llmqs::data::WordPieceTokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool json = data[0] & 1;
  static const std::string txt_path = llmqs::fuzz::scratch_path("-vocab.txt");
  static const std::string json_path = llmqs::fuzz::scratch_path("-tokenizer.json");
  const std::string& path = json ? json_path : txt_path;
  llmqs::fuzz::write_file(path, data + 1, size - 1);
  try {
    WordPieceTokenizer tok = WordPieceTokenizer::from_file(path, (data[0] & 2) != 0);
    LLMQS_FUZZ_CHECK(tok.vocab_size() == static_cast<int>(tok.tokens().size()), "vocab_size == tokens");
    for (int32_t id : {tok.pad_id(), tok.unk_id(), tok.cls_id(), tok.sep_id()})
      LLMQS_FUZZ_CHECK(id >= 0 && id < tok.vocab_size(), "special ids inside the vocabulary");
    std::vector<int32_t> ids = tok.encode("Hello, world! unaffable [UNK] caf\xc3\xa9", 16);
    for (int32_t id : ids) LLMQS_FUZZ_CHECK(id >= 0 && id < tok.vocab_size(), "id inside the vocabulary");
  } catch (const std::runtime_error&) {
  }
  return 0;
}
