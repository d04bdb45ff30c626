// Tests of data/sample_generator and `llmqs-dist sample`: byte-for-byte determinism, sizes, class
// balance, the length distribution, CSV quirks present, vocabulary coverage (a small greedy WordPiece
// written here as the oracle), and that the classes are learnable but not trivially so.
#include <gtest/gtest.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

#include "data/dataset_reader.h"
#include "data/sample_generator.h"

namespace fs = std::filesystem;
using namespace llmqs::data;

namespace {

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class SampleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("llmqs_sample_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path make(const std::string& name, int64_t train, int64_t test, uint64_t seed) {
    SampleOptions o;
    o.train_size = train;
    o.test_size = test;
    o.seed = seed;
    write_sample_dataset((dir_ / name).string(), o);
    return dir_ / name;
  }

  fs::path dir_;
};

// The default-size dataset is generated once per process and shared by the statistics tests.
bool default_sample_made = false;
const fs::path& default_sample() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("llmqs_sample_default_" + std::to_string(::getpid()));
    write_sample_dataset(d.string(), SampleOptions{});
    default_sample_made = true;
    return d;
  }();
  return dir;
}

struct CleanupDefault : ::testing::Environment {
  void TearDown() override {
    if (default_sample_made) fs::remove_all(default_sample());
  }
};
const auto* const cleanup_default = ::testing::AddGlobalTestEnvironment(new CleanupDefault);

// ---- a small uncased BERT tokenizer, the oracle for vocabulary coverage -----------------------------

std::vector<std::string> basic_tokens(const std::string& text) {
  utf8proc_uint8_t* mapped = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.c_str()), 0, &mapped,
                              static_cast<utf8proc_option_t>(UTF8PROC_NULLTERM | UTF8PROC_STABLE | UTF8PROC_DECOMPOSE |
                                                             UTF8PROC_STRIPMARK | UTF8PROC_CASEFOLD));
  EXPECT_GE(n, 0);
  const std::string folded(reinterpret_cast<const char*>(mapped), static_cast<size_t>(std::max<long>(n, 0)));
  std::free(mapped);
  std::vector<std::string> tokens;
  std::string cur;
  for (char ch : folded) {
    const auto c = static_cast<unsigned char>(ch);
    const bool punct = (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || punct) {
      if (!cur.empty()) tokens.push_back(cur);
      cur.clear();
      if (punct) tokens.emplace_back(1, ch);
    } else {
      cur.push_back(ch);
    }
  }
  if (!cur.empty()) tokens.push_back(cur);
  return tokens;
}

// Greedy longest-match-first WordPiece; returns the pieces, or {"[UNK]"} when a word cannot be covered.
std::vector<std::string> wordpiece(const std::string& word, const std::set<std::string>& vocab) {
  std::vector<std::string> pieces;
  size_t start = 0;
  while (start < word.size()) {
    size_t end = word.size();
    std::string found;
    for (; end > start; --end) {
      const std::string candidate = (start ? "##" : "") + word.substr(start, end - start);
      if (vocab.count(candidate)) {
        found = candidate;
        break;
      }
    }
    if (found.empty()) return {"[UNK]"};
    pieces.push_back(found);
    start = end;
  }
  return pieces;
}

}  // namespace

TEST_F(SampleTest, SameSeedGivesIdenticalBytes) {
  const fs::path a = make("a", 300, 100, 7), b = make("b", 300, 100, 7), c = make("c", 300, 100, 8);
  for (const char* file : {"train.csv", "test.csv", "vocab.txt"}) {
    const std::string bytes = slurp(a / file);
    EXPECT_GT(bytes.size(), 1000u) << file;
    EXPECT_TRUE(bytes == slurp(b / file)) << file;
  }
  EXPECT_FALSE(slurp(a / "train.csv") == slurp(c / "train.csv"));
  EXPECT_FALSE(slurp(a / "test.csv") == slurp(c / "test.csv"));
  EXPECT_FALSE(slurp(a / "train.csv") == slurp(a / "test.csv"));
  EXPECT_TRUE(slurp(a / "vocab.txt") == slurp(c / "vocab.txt"));  // the vocabulary does not depend on the seed
  // Only the three files, no temporaries left behind.
  int files = 0;
  for (const auto& entry : fs::directory_iterator(a)) files += entry.is_regular_file();
  EXPECT_EQ(files, 3);
}

TEST_F(SampleTest, TestSplitDoesNotDependOnTrainSize) {
  const fs::path small = make("small", 100, 50, 42), large = make("large", 200, 50, 42);
  EXPECT_TRUE(slurp(small / "test.csv") == slurp(large / "test.csv"));
  const std::string train_small = slurp(small / "train.csv"), train_large = slurp(large / "train.csv");
  EXPECT_GT(train_large.size(), train_small.size());
  EXPECT_EQ(train_large.compare(0, train_small.size(), train_small), 0);  // same stream: a prefix
}

TEST_F(SampleTest, SizesAndFormatReadBackAsDistributedYelp) {
  const fs::path d = make("d", 123, 45, 1);
  const Dataset train = read_dataset((d / "train.csv").string(), {});
  const Dataset test = read_dataset((d / "test.csv").string(), {});
  EXPECT_EQ(train.rows.size(), 123u);
  EXPECT_EQ(test.rows.size(), 45u);
  EXPECT_EQ(train.label_offset, 1);  // headerless, stars 1-5
  ReadOptions five;
  five.num_labels = 5;
  EXPECT_NO_THROW(read_dataset((d / "train.csv").string(), five));
  // one record per line: a CSV line count equal to the number of reviews means no raw newlines in text
  const std::string bytes = slurp(d / "train.csv");
  EXPECT_EQ(std::count(bytes.begin(), bytes.end(), '\n'), 123);
  EXPECT_EQ(bytes.substr(0, 1), "\"");
  EXPECT_EQ(train.rows.back().line, 123);
}

TEST_F(SampleTest, RejectsEmptySplits) {
  SampleOptions o;
  o.train_size = 0;
  EXPECT_THROW(write_sample_dataset((dir_ / "x").string(), o), std::invalid_argument);
  o.train_size = 10;
  o.test_size = 0;
  EXPECT_THROW(write_sample_dataset((dir_ / "x").string(), o), std::invalid_argument);
}

TEST(SampleStatistics, ClassesAreBalanced) {
  const Dataset train = read_dataset((default_sample() / "train.csv").string(), {});
  ASSERT_EQ(train.rows.size(), 5000u);
  EXPECT_EQ(train.num_labels_seen, 5);
  int count[5] = {0, 0, 0, 0, 0};
  for (const auto& r : train.rows) ++count[r.label];
  for (int c = 0; c < 5; ++c) {
    EXPECT_GT(count[c], 900) << "class " << c;  // expected 1000, sd ~28
    EXPECT_LT(count[c], 1100) << "class " << c;
  }
}

TEST(SampleStatistics, LengthDistributionLooksLikeYelp) {
  const Dataset train = read_dataset((default_sample() / "train.csv").string(), {});
  std::vector<int64_t> words;
  for (const auto& r : train.rows) words.push_back(count_review_words(r.text));
  std::sort(words.begin(), words.end());
  double mean = 0;
  for (auto w : words) mean += static_cast<double>(w);
  mean /= static_cast<double>(words.size());
  const double over_400 =
      static_cast<double>(words.end() - std::upper_bound(words.begin(), words.end(), int64_t{400})) / words.size();
  EXPECT_GT(mean, 115.0);
  EXPECT_LT(mean, 150.0);
  EXPECT_GT(over_400, 0.01);
  EXPECT_LT(over_400, 0.07);
  const int64_t median = words[words.size() / 2];
  EXPECT_GT(median, 80);  // log-normal: the median sits well below the mean
  EXPECT_LT(median, 115);
  EXPECT_GE(words.front(), 4);
  EXPECT_LE(words.back(), 1100);
}

TEST(SampleStatistics, TextHasTheQuirksOfTheRealFile) {
  const Dataset train = read_dataset((default_sample() / "train.csv").string(), {});
  int quotes = 0, commas = 0, backslash_n = 0, exclaim = 0, non_ascii = 0, all_caps_words = 0;
  for (const auto& r : train.rows) {
    quotes += r.text.find('"') != std::string::npos;
    commas += r.text.find(',') != std::string::npos;
    backslash_n += r.text.find("\\n") != std::string::npos;
    exclaim += r.text.find('!') != std::string::npos;
    non_ascii += std::any_of(r.text.begin(), r.text.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
    all_caps_words += r.text.find("NEVER") != std::string::npos || r.text.find("THE ") != std::string::npos;
    EXPECT_EQ(r.text.find('\n'), std::string::npos);  // line breaks only as the literal two characters
  }
  EXPECT_GT(quotes, 250);
  EXPECT_GT(commas, 2500);
  EXPECT_GT(backslash_n, 250);
  EXPECT_GT(exclaim, 500);
  EXPECT_GT(non_ascii, 250);
  EXPECT_GT(all_caps_words, 10);
  // The CSV escapes quotes by doubling them.
  const std::string bytes = slurp(default_sample() / "train.csv");
  EXPECT_NE(bytes.find("\"\""), std::string::npos);
}

TEST(SampleVocabulary, LayoutAndFileAgree) {
  const std::vector<std::string> vocab = sample_vocabulary();
  ASSERT_GT(vocab.size(), 500u);
  EXPECT_LT(vocab.size(), 3000u);
  const std::vector<std::string> specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  for (size_t i = 0; i < specials.size(); ++i) EXPECT_EQ(vocab[i], specials[i]);
  EXPECT_EQ(std::set<std::string>(vocab.begin(), vocab.end()).size(), vocab.size()) << "duplicate tokens";
  const std::set<std::string> set(vocab.begin(), vocab.end());
  for (const char* t : {"!", "\"", "$", "\\", "a", "z", "0", "9", "##a", "##9", "##s", "##ing", "the", "food",
                        "terrible", "amazing", "cafe", "jalapeno", "creme"}) {
    EXPECT_TRUE(set.count(t)) << t;
  }
  for (size_t i = specials.size(); i < vocab.size(); ++i) {
    const std::string& t = vocab[i];
    EXPECT_FALSE(t.empty());
    EXPECT_TRUE(std::none_of(t.begin(), t.end(), [](char c) { return (c >= 'A' && c <= 'Z') || c == ' '; })) << t;
  }
  std::string expected;
  for (const auto& t : vocab) expected += t + "\n";
  EXPECT_TRUE(slurp(default_sample() / "vocab.txt") == expected);
}

TEST(SampleVocabulary, CoversEveryWordAndWordPieceReallySplits) {
  const std::vector<std::string> vocab = sample_vocabulary();
  const std::set<std::string> set(vocab.begin(), vocab.end());
  int64_t words = 0, split_words = 0, unknown = 0;
  std::string first_unknown;
  for (const char* split : {"train.csv", "test.csv"}) {
    for (const auto& r : read_dataset((default_sample() / split).string(), {}).rows) {
      for (const auto& w : basic_tokens(r.text)) {
        const auto pieces = wordpiece(w, set);
        ++words;
        if (pieces.size() > 1) ++split_words;
        if (pieces[0] == "[UNK]") {
          ++unknown;
          if (first_unknown.empty()) first_unknown = w;
        }
      }
    }
  }
  EXPECT_EQ(unknown, 0) << "first uncovered word: " << first_unknown;
  EXPECT_GT(words, 600000);
  EXPECT_GT(static_cast<double>(split_words) / words, 0.01);  // plurals, -ed, -ly and numbers split
  EXPECT_EQ(wordpiece("servers", set), (std::vector<std::string>{"server", "##s"}));
  EXPECT_FALSE(set.count("servers"));
}

// Multinomial naive Bayes on words, trained on train.csv and scored on test.csv: the classes must be
// learnable (far above the 20% of chance) but not trivially separable (label noise, adjacent classes).
TEST(SampleStatistics, LearnableButNotTrivial) {
  const Dataset train = read_dataset((default_sample() / "train.csv").string(), {});
  const Dataset test = read_dataset((default_sample() / "test.csv").string(), {});
  std::map<std::string, std::array<double, 5>> counts;
  std::array<double, 5> totals{}, docs{};
  for (const auto& r : train.rows) {
    docs[r.label] += 1;
    for (const auto& w : basic_tokens(r.text)) {
      auto& c = counts.try_emplace(w, std::array<double, 5>{}).first->second;
      c[r.label] += 1;
      totals[r.label] += 1;
    }
  }
  const double vocab_size = static_cast<double>(counts.size());
  int correct = 0, extreme_confusions = 0;
  for (const auto& r : test.rows) {
    std::array<double, 5> score{};
    for (int c = 0; c < 5; ++c) score[c] = std::log(docs[c]);
    for (const auto& w : basic_tokens(r.text)) {
      auto it = counts.find(w);
      if (it == counts.end()) continue;
      for (int c = 0; c < 5; ++c) score[c] += std::log((it->second[c] + 1.0) / (totals[c] + vocab_size));
    }
    const int predicted = static_cast<int>(std::max_element(score.begin(), score.end()) - score.begin());
    correct += predicted == r.label;
    extreme_confusions += std::abs(predicted - r.label) >= 3;
  }
  const double accuracy = static_cast<double>(correct) / test.rows.size();
  std::cout << "naive Bayes test accuracy " << accuracy << ", 1<->4/5 confusions " << extreme_confusions << "\n";
  EXPECT_GT(accuracy, 0.45);
  EXPECT_LT(accuracy, 0.85);
  EXPECT_LT(extreme_confusions, 20);  // 1-star and 5-star reviews are almost never mixed up
}

TEST_F(SampleTest, CommandLineWritesTheSameFilesAndSummarizes) {
  const fs::path out = dir_ / "cli", log = dir_ / "cli.log";
  const std::string cmd = std::string(LLMQS_BINARY) + " sample --output_dir " + out.string() +
                          " --train_size 60 --test_size 25 --seed 9 > " + log.string() + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << slurp(log);
  const fs::path lib = make("lib", 60, 25, 9);
  for (const char* file : {"train.csv", "test.csv", "vocab.txt"}) EXPECT_TRUE(slurp(out / file) == slurp(lib / file)) << file;
  const std::string printed = slurp(log);
  EXPECT_NE(printed.find("train.csv: 60 reviews"), std::string::npos) << printed;
  EXPECT_NE(printed.find("test.csv: 25 reviews"), std::string::npos) << printed;
  EXPECT_NE(printed.find("mean "), std::string::npos) << printed;
  EXPECT_NE(printed.find(std::to_string(sample_vocabulary().size()) + " tokens"), std::string::npos) << printed;

  const std::string bad = std::string(LLMQS_BINARY) + " sample --output_dir " + (dir_ / "bad").string() +
                          " --train_size 0 > " + log.string() + " 2>&1";
  EXPECT_NE(std::system(bad.c_str()), 0);
  EXPECT_NE(slurp(log).find("--train_size"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir_ / "bad" / "train.csv"));
}
