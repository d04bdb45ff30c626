// data/wordpiece_tokenizer: the BERT pipeline step by step on a small vocabulary written here
// (specials, ## splitting, [UNK] rules, truncation, punctuation, CJK, accents, both lowercase
// modes, literal special tokens), vocab_hash stability, every load error naming the file, and
// the `llmqs-dist tokenize` subcommand. Exact parity with HF on real text is checked by
// tests/tokenizer_parity/check_parity.py (CTest tokenizer_hf_parity).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/wordpiece_tokenizer.h"

namespace fs = std::filesystem;
using llmqs::data::WordPieceTokenizer;

namespace {

// id = index. Chosen so each behaviour has exactly one right answer.
const std::vector<std::string> kVocab = {
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",                    // 0-4
    "the", "quick", "brown", "fox", "un", "##aff", "##able", "##s",  // 5-12
    "!", ",", ".", "hello", "world", "cafe", "Café", "a", "##a",     // 13-21
    "東", "京", "とう", "きょう", "i", "straße", "$", "«", "»",          // 22-30
    "HELLO", "mask", "[", "]", "x", "##x", "##é", "e",               // 31-38
};

int id_of(const std::string& token) {
  for (size_t i = 0; i < kVocab.size(); ++i) {
    if (kVocab[i] == token) return static_cast<int>(i);
  }
  throw std::logic_error("test vocabulary has no " + token);
}

class TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("llmqs_tokenizer_test_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    vocab_path_ = write("vocab.txt", join(kVocab));
  }
  void TearDown() override { fs::remove_all(dir_); }

  static std::string join(const std::vector<std::string>& lines) {
    std::string s;
    for (const auto& l : lines) s += l + "\n";
    return s;
  }
  std::string write(const std::string& name, const std::string& content) {
    const fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }
  WordPieceTokenizer lower() const { return WordPieceTokenizer::from_file(vocab_path_, true); }
  WordPieceTokenizer cased() const { return WordPieceTokenizer::from_file(vocab_path_, false); }

  // The message of the runtime_error that loading `path` throws ("" when it loads).
  static std::string load_error(const std::string& path) {
    try {
      WordPieceTokenizer::from_file(path, true);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "";
  }

  fs::path dir_;
  std::string vocab_path_;
};

std::vector<int32_t> ids(std::initializer_list<const char*> tokens) {
  std::vector<int32_t> out;
  for (const char* t : tokens) out.push_back(id_of(t));
  return out;
}

}  // namespace

TEST_F(TokenizerTest, SpecialIdsAndSizes) {
  const auto tok = lower();
  EXPECT_EQ(tok.vocab_size(), static_cast<int>(kVocab.size()));
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_EQ(tok.unk_id(), 1);
  EXPECT_EQ(tok.cls_id(), 2);
  EXPECT_EQ(tok.sep_id(), 3);
  EXPECT_TRUE(tok.do_lower_case());
  EXPECT_FALSE(cased().do_lower_case());
  EXPECT_EQ(tok.tokens(), kVocab);
  EXPECT_EQ(tok.source_path(), vocab_path_);
  EXPECT_EQ(tok.encode("", 512), ids({"[CLS]", "[SEP]"}));
}

TEST_F(TokenizerTest, WholeWordsAndContinuationPieces) {
  const auto tok = lower();
  EXPECT_EQ(tok.encode("the quick brown fox", 512), ids({"[CLS]", "the", "quick", "brown", "fox", "[SEP]"}));
  // Greedy longest match first: un + ##aff + ##able (+ ##s), never a shorter split.
  EXPECT_EQ(tok.wordpieces("unaffable"), (std::vector<std::string>{"un", "##aff", "##able"}));
  EXPECT_EQ(tok.wordpieces("unaffables"), (std::vector<std::string>{"un", "##aff", "##able", "##s"}));
  // A word with an unmatchable rest is one [UNK], not "un ##aff ##able [UNK]".
  EXPECT_EQ(tok.wordpieces("unaffablez fox"), (std::vector<std::string>{"[UNK]", "fox"}));
  // "##" pieces are never used at the start of a word.
  EXPECT_EQ(tok.wordpieces("aff"), (std::vector<std::string>{"[UNK]"}));
}

TEST_F(TokenizerTest, WordsLongerThan100CharactersAreUnknown) {
  const auto tok = lower();
  const auto hundred = tok.wordpieces(std::string(100, 'a'));
  ASSERT_EQ(hundred.size(), 100u);
  EXPECT_EQ(hundred.front(), "a");
  EXPECT_EQ(hundred.back(), "##a");
  EXPECT_EQ(tok.wordpieces(std::string(101, 'a')), (std::vector<std::string>{"[UNK]"}));
  // The limit counts code points (not bytes): 99 x + "é" is 100 characters in 101 bytes.
  std::string word = std::string(99, 'x') + "\xC3\xA9";  // 99 x + é
  const auto cased_pieces = cased().wordpieces(word);
  ASSERT_EQ(cased_pieces.size(), 100u);
  EXPECT_EQ(cased_pieces.back(), "##é");
  EXPECT_EQ(cased().wordpieces(std::string(100, 'x') + "\xC3\xA9"), (std::vector<std::string>{"[UNK]"}));
}

TEST_F(TokenizerTest, TruncationKeepsClsAndSep) {
  const auto tok = lower();
  EXPECT_EQ(tok.encode("the quick brown fox", 4), ids({"[CLS]", "the", "quick", "[SEP]"}));
  EXPECT_EQ(tok.encode("the quick brown fox", 2), ids({"[CLS]", "[SEP]"}));
  EXPECT_EQ(tok.encode("the quick brown fox", 6), ids({"[CLS]", "the", "quick", "brown", "fox", "[SEP]"}));
  // Truncation drops trailing wordpieces, even inside a word.
  EXPECT_EQ(tok.encode("unaffable", 4), ids({"[CLS]", "un", "##aff", "[SEP]"}));
  EXPECT_THROW(tok.encode("the", 1), std::invalid_argument);
  std::vector<int32_t> out = {99, 98, 97, 96, 95, 94, 93};
  tok.encode_into("fox", 512, out);  // clears out first
  EXPECT_EQ(out, ids({"[CLS]", "fox", "[SEP]"}));
}

TEST_F(TokenizerTest, PunctuationIsAWordOfItsOwn) {
  const auto tok = lower();
  EXPECT_EQ(tok.wordpieces("hello,world!"), (std::vector<std::string>{"hello", ",", "world", "!"}));
  EXPECT_EQ(tok.wordpieces("$hello."), (std::vector<std::string>{"$", "hello", "."}));  // ASCII symbols split too
  EXPECT_EQ(tok.wordpieces("\xC2\xABhello\xC2\xBB"), (std::vector<std::string>{"«", "hello", "»"}));  // Pi/Pf
  // '^' is ASCII punctuation but not in the vocabulary: its own [UNK], neighbours intact.
  EXPECT_EQ(tok.wordpieces("hello^world"), (std::vector<std::string>{"hello", "[UNK]", "world"}));
}

TEST_F(TokenizerTest, ChineseIdeographsSplitKanaDoesNot) {
  const auto tok = lower();
  EXPECT_EQ(tok.wordpieces("東京"), (std::vector<std::string>{"東", "京"}));
  EXPECT_EQ(tok.wordpieces("x東京x"), (std::vector<std::string>{"x", "東", "京", "x"}));
  EXPECT_EQ(tok.wordpieces("とう"), (std::vector<std::string>{"とう"}));
  EXPECT_EQ(tok.wordpieces("とうきょう"), (std::vector<std::string>{"[UNK]"}));  // no ##きょう: one word, unknown
}

TEST_F(TokenizerTest, LowercaseStripsAccentsCasedKeepsThem) {
  // "Café" precomposed and decomposed (e + U+0301) normalize alike when lowercasing.
  EXPECT_EQ(lower().wordpieces("Caf\xC3\xA9 CAFE\xCC\x81 HELLO"),
            (std::vector<std::string>{"cafe", "cafe", "hello"}));
  EXPECT_EQ(cased().wordpieces("Caf\xC3\xA9 HELLO hello"), (std::vector<std::string>{"Café", "HELLO", "hello"}));
  EXPECT_EQ(cased().wordpieces("cafe\xCC\x81"), (std::vector<std::string>{"[UNK]"}));  // no NFD without lowercase
  // Turkish dotted capital I: NFD gives I + U+0307, the mark is stripped, then "i".
  EXPECT_EQ(lower().wordpieces("\xC4\xB0"), (std::vector<std::string>{"i"}));
  EXPECT_EQ(cased().wordpieces("\xC4\xB0"), (std::vector<std::string>{"[UNK]"}));
  // ß has no single-character lowercase change (Rust to_lowercase keeps it); ẞ lowercases to ß.
  EXPECT_EQ(lower().wordpieces("STRA\xE1\xBA\x9E" "E stra\xC3\x9F" "e"),
            (std::vector<std::string>{"straße", "straße"}));
}

TEST_F(TokenizerTest, CleaningDropsControlsAndSplitsOnUnicodeSpaces) {
  const auto tok = lower();
  // NUL, U+FFFD, zero-width space (Cf) and soft hyphen vanish and join their neighbours.
  EXPECT_EQ(tok.wordpieces(std::string("hel\0lo", 6)), (std::vector<std::string>{"hello"}));
  EXPECT_EQ(tok.wordpieces("hel\xEF\xBF\xBDlo wor\xE2\x80\x8B" "ld"), (std::vector<std::string>{"hello", "world"}));
  // Tab, CR, no-break space, ideographic space, line separator: word boundaries.
  EXPECT_EQ(tok.wordpieces("hello\tworld\rfox\xC2\xA0the\xE3\x80\x80" "fox\xE2\x80\xA8the"),
            (std::vector<std::string>{"hello", "world", "fox", "the", "fox", "the"}));
  // Invalid UTF-8 is dropped like U+FFFD.
  EXPECT_EQ(tok.wordpieces("hel\xFFlo"), (std::vector<std::string>{"hello"}));
}

TEST_F(TokenizerTest, LiteralSpecialTokensAreMatchedBeforeNormalization) {
  EXPECT_EQ(lower().encode("hello [MASK] world", 512), ids({"[CLS]", "hello", "[MASK]", "world", "[SEP]"}));
  EXPECT_EQ(lower().encode("x[SEP]x", 512), ids({"[CLS]", "x", "[SEP]", "x", "[SEP]"}));
  // Only the exact spelling: lowercase [mask] is ordinary text.
  EXPECT_EQ(lower().wordpieces("[mask]"), (std::vector<std::string>{"[", "mask", "]"}));
  EXPECT_EQ(lower().wordpieces("[MASK"), (std::vector<std::string>{"[", "mask"}));
}

TEST_F(TokenizerTest, TokenizerJsonLoadsTheSameVocabulary) {
  std::string vocab_object;
  for (size_t i = 0; i < kVocab.size(); ++i) {
    vocab_object += (i ? ", \"" : "\"") + kVocab[i] + "\": " + std::to_string(i);
  }
  const std::string json = write(
      "tokenizer.json",
      R"({"version": "1.0", "added_tokens": [{"id": 4, "content": "[MASK]", "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": true}],
          "normalizer": {"type": "BertNormalizer", "lowercase": true}, "pre_tokenizer": {"type": "BertPreTokenizer"},
          "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                    "max_input_chars_per_word": 100, "vocab": {)" + vocab_object + "}}}");
  const auto from_json = WordPieceTokenizer::from_file(json, true);
  const auto from_txt = lower();
  EXPECT_EQ(from_json.tokens(), from_txt.tokens());
  EXPECT_EQ(from_json.vocab_hash(), from_txt.vocab_hash());
  const std::string text = "Hello, [MASK] unaffables CAF\xC3\x89 東京!";
  EXPECT_EQ(from_json.encode(text, 512), from_txt.encode(text, 512));
  EXPECT_EQ(from_json.encode(text, 512),
            ids({"[CLS]", "hello", ",", "[MASK]", "un", "##aff", "##able", "##s", "cafe", "東", "京", "!", "[SEP]"}));
}

TEST_F(TokenizerTest, VocabHashIsFnv1aOverTokensAndNewlines) {
  const auto tok = lower();
  uint64_t expected = 0xCBF29CE484222325ull;
  for (const auto& t : kVocab) {
    for (unsigned char c : t + "\n") expected = (expected ^ c) * 0x100000001B3ull;
  }
  EXPECT_EQ(tok.vocab_hash(), expected);
  // Stability across releases: checkpoints and token caches store this number.
  const auto tiny = WordPieceTokenizer::from_file(write("tiny.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\n"), true);
  EXPECT_EQ(tiny.vocab_hash(), 0xD7BFF3DD9EBB7A78ull);
  // CRLF line ends and trailing spaces are not part of tokens (as in HF), so the hash is unchanged.
  const auto crlf = WordPieceTokenizer::from_file(write("crlf.txt", "[PAD]\r\n[UNK] \r\n[CLS]\r\n[SEP]"), true);
  EXPECT_EQ(crlf.vocab_hash(), tiny.vocab_hash());
  const auto swapped = WordPieceTokenizer::from_file(write("swapped.txt", "[UNK]\n[PAD]\n[CLS]\n[SEP]\n"), true);
  EXPECT_NE(swapped.vocab_hash(), tiny.vocab_hash());
}

TEST_F(TokenizerTest, CopiesAreIndependentOfTheOriginal) {
  std::vector<int32_t> expected;
  WordPieceTokenizer copy = [&] {
    const auto original = lower();
    expected = original.encode("the unaffable fox", 512);
    return WordPieceTokenizer(original);
  }();
  EXPECT_EQ(copy.encode("the unaffable fox", 512), expected);
}

TEST_F(TokenizerTest, LoadErrorsNameTheFile) {
  const std::string missing = (dir_ / "no_such_vocab.txt").string();
  EXPECT_NE(load_error(missing).find(missing), std::string::npos) << load_error(missing);

  const std::string empty = write("empty.txt", "");
  EXPECT_NE(load_error(empty).find(empty + ": empty vocabulary"), std::string::npos) << load_error(empty);

  for (const char* special : {"[UNK]", "[CLS]", "[SEP]", "[PAD]"}) {
    std::vector<std::string> without;
    for (const auto& t : kVocab) {
      if (t != special) without.push_back(t);
    }
    const std::string path = write(std::string("without_") + special + ".txt", join(without));
    const std::string message = load_error(path);
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(std::string("no ") + special), std::string::npos) << message;
  }

  const std::string duplicate = write("duplicate.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\nfox\nthe\nfox\n");
  EXPECT_NE(load_error(duplicate).find(duplicate + ":7: duplicate token 'fox' (first on line 5)"), std::string::npos)
      << load_error(duplicate);

  const std::string bpe = write("bpe.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})");
  EXPECT_NE(load_error(bpe).find(bpe + ": model.type is 'BPE'"), std::string::npos) << load_error(bpe);

  const std::string broken = write("broken.json", R"({"model": {"type": "WordPiece", "vocab": {)");
  EXPECT_NE(load_error(broken).find(broken + ": not a valid tokenizer.json"), std::string::npos) << load_error(broken);

  const std::string gap = write("gap.json", R"({"model": {"type": "WordPiece", "vocab": {"[PAD]": 0, "[UNK]": 5}}})");
  EXPECT_NE(load_error(gap).find(gap + ": model.vocab['[UNK]'] = 5 is outside"), std::string::npos) << load_error(gap);
}

TEST_F(TokenizerTest, TokenizeSubcommandPrintsOneLineOfIdsPerInputLine) {
  const std::string input = write("input.txt", "the quick brown fox\n\nhello [MASK] world!\nunaffable\n");
  const std::string output = (dir_ / "output.txt").string();
  const std::string command = std::string(LLMQS_BINARY) + " tokenize --vocab " + vocab_path_ +
                              " --do_lower_case true --max_length 5 < " + input + " > " + output;
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  std::ifstream in(output);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "2 5 6 7 3\n2 3\n2 16 4 17 3\n2 9 10 11 3\n");

  const std::string missing = (dir_ / "missing_vocab.txt").string();
  const std::string failing = std::string(LLMQS_BINARY) + " tokenize --vocab " + missing +
                              " --do_lower_case true < " + input + " > " + output + " 2>&1";
  const int status = std::system(failing.c_str());
  EXPECT_NE(status, 0);
  std::ifstream err(output);
  std::string message((std::istreambuf_iterator<char>(err)), std::istreambuf_iterator<char>());
  EXPECT_NE(message.find(missing), std::string::npos) << message;
}
