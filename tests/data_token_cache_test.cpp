// HDF5 token cache: write/read round trips of random ragged data, scattered hyperslab reads,
// refusal of caches made with another tokenizer or max_length, damaged files, the
// complete-or-absent guarantee of the writer, and load_tokenized (CSV vs cache) on a tiny vocabulary.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "data/dataset_reader.h"
#include "data/sharded_sampler.h"
#include "data/token_cache.h"
#include "data/tokenized_dataset.h"
#include "data/wordpiece_tokenizer.h"

namespace fs = std::filesystem;
using namespace llmqs::data;

namespace {

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() /
            ("llmqs_token_cache_test_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Random ragged examples: lengths 0..max_length (some empty), ids 0..vocab-1, labels 0..4.
RaggedTokens random_ragged(int64_t examples, int max_length, uint64_t seed) {
  SplitMix64 rng(seed);
  RaggedTokens data;
  std::vector<int32_t> ids;
  for (int64_t i = 0; i < examples; ++i) {
    const auto length = static_cast<int32_t>(rng.below(static_cast<uint64_t>(max_length) + 1));
    ids.resize(length);
    for (auto& id : ids) id = static_cast<int32_t>(rng.below(30522));
    data.append(ids.data(), length, static_cast<int32_t>(rng.below(5)));
  }
  return data;
}

TokenCacheInfo sample_info(int max_length) {
  TokenCacheInfo info;
  info.vocab_hash = 0x0123456789abcdefull;
  info.vocab_size = 30522;
  info.do_lower_case = true;
  info.max_length = max_length;
  info.num_labels = 5;
  info.label_offset = 1;
  info.source_file = "train.csv";
  info.tokenizer_file = "vocab.txt";
  return info;
}

std::vector<int32_t> example_of(const RaggedTokens& data, int64_t i) {
  return {data.tokens.begin() + data.offsets[i], data.tokens.begin() + data.offsets[i + 1]};
}

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

std::vector<std::string> leftover_temp_files(const fs::path& dir) {
  std::vector<std::string> found;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (contains(entry.path().filename().string(), ".tmp.")) found.push_back(entry.path().string());
  }
  return found;
}

void set_int_attribute(const std::string& path, const char* name, int64_t value) {
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  hid_t attribute = H5Aopen(file, name, H5P_DEFAULT);
  ASSERT_GE(attribute, 0);
  ASSERT_GE(H5Awrite(attribute, H5T_NATIVE_INT64, &value), 0);
  H5Aclose(attribute);
  H5Fclose(file);
}

}  // namespace

TEST(TokenCache, RoundTripKeepsEveryExampleAndAttribute) {
  TempDir dir;
  const RaggedTokens data = random_ragged(513, 64, 7);
  for (int level : {0, 4}) {
    const std::string path = dir.file("cache_" + std::to_string(level) + ".h5");
    TokenCacheWriteOptions options;
    options.compression_level = level;
    options.chunk_tokens = 97;  // many chunks, examples straddle their borders
    write_token_cache(path, sample_info(64), data, options);

    TokenCacheReader reader(path);
    const TokenCacheInfo& info = reader.info();
    EXPECT_EQ(info.schema, kTokenCacheSchema);
    EXPECT_EQ(info.schema_version, kTokenCacheSchemaVersion);
    EXPECT_EQ(info.vocab_hash, 0x0123456789abcdefull);
    EXPECT_EQ(info.vocab_size, 30522);
    EXPECT_TRUE(info.do_lower_case);
    EXPECT_EQ(info.max_length, 64);
    EXPECT_EQ(info.num_examples, 513);
    EXPECT_EQ(info.num_tokens, static_cast<int64_t>(data.tokens.size()));
    EXPECT_EQ(info.num_labels, 5);
    EXPECT_EQ(info.label_offset, 1);
    EXPECT_EQ(info.source_file, "train.csv");
    EXPECT_EQ(info.tokenizer_file, "vocab.txt");
    EXPECT_EQ(reader.offsets(), data.offsets);
    EXPECT_EQ(reader.labels(), data.labels);
    for (int64_t i = 0; i < data.size(); ++i) ASSERT_EQ(reader.lengths()[i], data.length(i)) << "example " << i;

    std::vector<int64_t> all(data.size());
    for (int64_t i = 0; i < data.size(); ++i) all[i] = i;
    std::vector<std::vector<int32_t>> rows;
    reader.read(all, rows);
    ASSERT_EQ(rows.size(), all.size());
    for (int64_t i = 0; i < data.size(); ++i) ASSERT_EQ(rows[i], example_of(data, i)) << "example " << i;
  }
}

TEST(TokenCache, ScatteredHyperslabReadsEqualTheOriginals) {
  TempDir dir;
  const RaggedTokens data = random_ragged(2000, 40, 11);
  const std::string path = dir.file("cache.h5");
  TokenCacheWriteOptions options;
  options.chunk_tokens = 512;
  write_token_cache(path, sample_info(40), data, options);
  TokenCacheReader reader(path);

  SplitMix64 rng(3);
  for (int trial = 0; trial < 20; ++trial) {
    // Random order with duplicates, plus a few consecutive runs that merge into one block.
    std::vector<int64_t> indices;
    const int count = 1 + static_cast<int>(rng.below(700));  // up to ~700 runs: several reads per call
    for (int k = 0; k < count; ++k) indices.push_back(static_cast<int64_t>(rng.below(2000)));
    const int64_t run_start = static_cast<int64_t>(rng.below(1990));
    for (int64_t i = run_start; i < run_start + 10; ++i) indices.push_back(i);
    indices.push_back(indices.front());
    std::vector<std::vector<int32_t>> rows = {{-5}};  // read() appends after what is there
    reader.read(indices, rows);
    ASSERT_EQ(rows.size(), indices.size() + 1);
    EXPECT_EQ(rows[0], std::vector<int32_t>{-5});
    for (size_t k = 0; k < indices.size(); ++k) {
      ASSERT_EQ(rows[k + 1], example_of(data, indices[k])) << "trial " << trial << " position " << k;
    }
  }
  std::vector<std::vector<int32_t>> rows;
  EXPECT_THROW(reader.read({0, 2000}, rows), std::out_of_range);
  EXPECT_THROW(reader.read({-1}, rows), std::out_of_range);
}

TEST(TokenCache, CachedDatasetReadsLikeTheInMemoryOne) {
  TempDir dir;
  const RaggedTokens data = random_ragged(300, 32, 5);
  const std::string path = dir.file("cache.h5");
  write_token_cache(path, sample_info(32), data);
  auto cached = open_token_cache(path);
  auto in_memory = make_in_memory_dataset(data, sample_info(32));
  ASSERT_EQ(cached->size(), 300);
  EXPECT_EQ(cached->lengths(), in_memory->lengths());
  EXPECT_EQ(cached->labels(), in_memory->labels());
  EXPECT_EQ(cached->info().num_tokens, in_memory->info().num_tokens);
  const std::vector<int64_t> indices = {299, 0, 17, 18, 19, 150, 17};
  std::vector<std::vector<int32_t>> from_cache, from_memory;
  cached->read(indices, from_cache);
  in_memory->read(indices, from_memory);
  EXPECT_EQ(from_cache, from_memory);
  EXPECT_TRUE(is_token_cache_path(path));
  const std::string renamed = dir.file("cache.bin");
  fs::copy_file(path, renamed);
  EXPECT_TRUE(is_token_cache_path(renamed));  // recognised by its signature too
  std::ofstream(dir.file("train.csv")) << "1,\"fine\"\n";
  EXPECT_FALSE(is_token_cache_path(dir.file("train.csv")));
}

TEST(TokenCache, EmptyDatasetRoundTrips) {
  TempDir dir;
  const std::string path = dir.file("empty.h5");
  write_token_cache(path, sample_info(16), RaggedTokens{});
  TokenCacheReader reader(path);
  EXPECT_EQ(reader.info().num_examples, 0);
  EXPECT_EQ(reader.info().num_tokens, 0);
  std::vector<std::vector<int32_t>> rows;
  reader.read({}, rows);
  EXPECT_TRUE(rows.empty());
}

TEST(TokenCache, MismatchedTokenizerOrMaxLengthIsRefusedWithTheRebuildCommand) {
  const TokenCacheInfo info = sample_info(128);
  EXPECT_NO_THROW(check_token_cache_matches("c.h5", info, info.vocab_hash, true, 128, "vocab.txt"));

  const std::string hash = error_of([&] { check_token_cache_matches("c.h5", info, 42, true, 128, "other/vocab.txt"); });
  EXPECT_TRUE(contains(hash, "c.h5")) << hash;
  EXPECT_TRUE(contains(hash, "0x0123456789abcdef")) << hash;
  EXPECT_TRUE(contains(hash, format_vocab_hash(42))) << hash;
  EXPECT_TRUE(contains(hash, "llmqs-dist prepare --input train.csv --vocab other/vocab.txt")) << hash;

  const std::string length = error_of([&] { check_token_cache_matches("c.h5", info, info.vocab_hash, true, 512, "v"); });
  EXPECT_TRUE(contains(length, "max_length 128, this run uses 512")) << length;
  EXPECT_TRUE(contains(length, "--max_length 512 --output c.h5")) << length;
  EXPECT_FALSE(contains(length, "hash")) << length;

  const std::string lower = error_of([&] { check_token_cache_matches("c.h5", info, info.vocab_hash, false, 128, "v"); });
  EXPECT_TRUE(contains(lower, "do_lower_case true, this run uses false")) << lower;
  EXPECT_TRUE(contains(lower, "--do_lower_case false")) << lower;
}

TEST(TokenCache, TruncatedGarbageAndMissingFilesAreErrorsNamingTheFile) {
  TempDir dir;
  const std::string path = dir.file("good.h5");
  write_token_cache(path, sample_info(64), random_ragged(4000, 64, 9));
  const auto size = fs::file_size(path);

  const std::string truncated = dir.file("truncated.h5");
  fs::copy_file(path, truncated);
  fs::resize_file(truncated, size / 2);
  const std::string cut = error_of([&] { TokenCacheReader reader(truncated); });
  EXPECT_TRUE(contains(cut, truncated)) << cut;
  EXPECT_TRUE(contains(cut, "truncated")) << cut;

  const std::string garbage = dir.file("garbage.h5");
  {
    std::ofstream out(garbage, std::ios::binary);
    SplitMix64 rng(1);
    for (int i = 0; i < 4096; ++i) out.put(static_cast<char>(rng.next()));
  }
  const std::string junk = error_of([&] { TokenCacheReader reader(garbage); });
  EXPECT_TRUE(contains(junk, garbage)) << junk;
  EXPECT_TRUE(contains(junk, "not an HDF5 file")) << junk;

  const std::string missing = error_of([&] { TokenCacheReader reader(dir.file("missing.h5")); });
  EXPECT_TRUE(contains(missing, dir.file("missing.h5"))) << missing;
  EXPECT_TRUE(contains(missing, "llmqs-dist prepare")) << missing;
}

TEST(TokenCache, TamperedAttributesAreCaughtAtOpen) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  write_token_cache(path, sample_info(64), random_ragged(100, 64, 2));

  const std::string version_path = dir.file("version.h5");
  fs::copy_file(path, version_path);
  set_int_attribute(version_path, "schema_version", kTokenCacheSchemaVersion + 1);
  const std::string version = error_of([&] { TokenCacheReader reader(version_path); });
  EXPECT_TRUE(contains(version, version_path)) << version;
  EXPECT_TRUE(contains(version, "schema version " + std::to_string(kTokenCacheSchemaVersion + 1))) << version;

  const std::string count_path = dir.file("count.h5");
  fs::copy_file(path, count_path);
  set_int_attribute(count_path, "num_examples", 101);
  const std::string count = error_of([&] { TokenCacheReader reader(count_path); });
  EXPECT_TRUE(contains(count, count_path)) << count;
  EXPECT_TRUE(contains(count, "/offsets holds 101 values but the attributes say 102")) << count;

  const std::string tokens_path = dir.file("tokens.h5");
  fs::copy_file(path, tokens_path);
  set_int_attribute(tokens_path, "num_tokens", 3);
  const std::string tokens = error_of([&] { TokenCacheReader reader(tokens_path); });
  EXPECT_TRUE(contains(tokens, "/tokens holds")) << tokens;

  const std::string plain_path = dir.file("plain.h5");
  {
    hid_t file = H5Fcreate(plain_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    H5Fclose(file);
  }
  const std::string plain = error_of([&] { TokenCacheReader reader(plain_path); });
  EXPECT_TRUE(contains(plain, plain_path + ": attribute 'schema' is missing")) << plain;
}

TEST(TokenCache, FailedWriteLeavesNoTemporaryFile) {
  TempDir dir;
  const RaggedTokens data = random_ragged(50, 16, 4);

  const std::string in_missing_dir = dir.file("no/such/dir/cache.h5");
  const std::string missing = error_of([&] { write_token_cache(in_missing_dir, sample_info(16), data); });
  EXPECT_TRUE(contains(missing, in_missing_dir)) << missing;
  EXPECT_TRUE(leftover_temp_files(dir.path()).empty());

  // The rename is the last step: a directory in the way makes it fail after the file was written.
  const std::string blocked = dir.file("blocked.h5");
  fs::create_directories(fs::path(blocked) / "occupied");
  const std::string rename = error_of([&] { write_token_cache(blocked, sample_info(16), data); });
  EXPECT_TRUE(contains(rename, blocked)) << rename;
  EXPECT_TRUE(leftover_temp_files(dir.path()).empty());
  EXPECT_TRUE(fs::is_directory(blocked));

  RaggedTokens inconsistent = data;
  inconsistent.labels.pop_back();
  EXPECT_THROW(write_token_cache(dir.file("bad.h5"), sample_info(16), inconsistent), std::invalid_argument);
  EXPECT_FALSE(fs::exists(dir.file("bad.h5")));
  EXPECT_TRUE(leftover_temp_files(dir.path()).empty());

  // Rewriting replaces the old cache as a whole.
  const std::string path = dir.file("cache.h5");
  write_token_cache(path, sample_info(16), random_ragged(10, 16, 1));
  write_token_cache(path, sample_info(16), data);
  EXPECT_EQ(TokenCacheReader(path).info().num_examples, 50);
  EXPECT_TRUE(leftover_temp_files(dir.path()).empty());
}

// The path the trainer takes: a CSV tokenized in memory and a cache built from it give the same
// examples; a cache made with another tokenizer, lower-casing, max_length, label offset or more
// labels than the run allows is refused. (Uses the real reader and tokenizer on a tiny vocabulary.)
TEST(LoadTokenized, CsvAndCacheAgreeAndMismatchesAreRefused) {
  TempDir dir;
  const std::string vocab = dir.file("vocab.txt");
  const std::vector<std::string> tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "food",
                                           "was",   "great", "bad",   "not",   "!",     "serv", "##ice"};
  {
    std::ofstream out(vocab);
    for (const auto& t : tokens) out << t << "\n";
  }
  const std::string csv = dir.file("train.csv");
  std::ofstream(csv) << "5,\"The food was great!\"\n"
                        "1,\"Bad service, bad food, not great, not great at all\"\n"
                        "3,\"the service\"\n";
  const auto tokenizer = WordPieceTokenizer::from_file(vocab, true);
  const ReadOptions options;
  const int max_length = 8;

  auto from_csv = load_tokenized(csv, options, tokenizer, max_length);
  ASSERT_EQ(from_csv->size(), 3);
  EXPECT_EQ(from_csv->labels(), (std::vector<int32_t>{4, 0, 2}));
  std::vector<std::vector<int32_t>> rows;
  from_csv->read({0, 1, 2}, rows);
  // [CLS] the food was great ! [SEP]; the second review is cut to 6 pieces + [CLS]/[SEP] (',' is [UNK]);
  // "service" splits into serv ##ice.
  EXPECT_EQ(rows[0], (std::vector<int32_t>{2, 5, 6, 7, 8, 11, 3}));
  EXPECT_EQ(rows[1], (std::vector<int32_t>{2, 9, 12, 13, 1, 9, 6, 3}));
  EXPECT_EQ(rows[2], (std::vector<int32_t>{2, 5, 12, 13, 3}));
  const Dataset data = read_dataset(csv, options);
  for (int64_t i = 0; i < 3; ++i) {
    // Truncation by "one id more, then drop the last piece" equals the tokenizer's own truncation.
    EXPECT_EQ(rows[i], tokenizer.encode(data.rows[i].text, max_length)) << "row " << i;
  }

  TokenizeStats stats;
  const RaggedTokens ragged = tokenize_rows(data, tokenizer, max_length, &stats);
  EXPECT_EQ(stats.examples, 3);
  EXPECT_EQ(stats.truncated, 1);
  EXPECT_EQ(stats.longest, 8);
  EXPECT_EQ(stats.tokens, 7 + 8 + 5);
  const std::string cache = dir.file("train.h5");
  write_token_cache(cache, describe_tokenization(data, tokenizer, max_length, 0), ragged);
  auto from_cache = load_tokenized(cache, options, tokenizer, max_length);
  EXPECT_EQ(from_cache->info().label_offset, 1);
  EXPECT_EQ(from_cache->info().num_labels, 5);
  EXPECT_EQ(from_cache->info().source_file, "train.csv");
  EXPECT_EQ(from_cache->info().tokenizer_file, "vocab.txt");
  EXPECT_EQ(from_cache->info().vocab_hash, tokenizer.vocab_hash());
  EXPECT_EQ(from_cache->labels(), from_csv->labels());
  EXPECT_EQ(from_cache->lengths(), from_csv->lengths());
  std::vector<std::vector<int32_t>> cached_rows;
  from_cache->read({0, 1, 2}, cached_rows);
  EXPECT_EQ(cached_rows, rows);

  const std::string length = error_of([&] { load_tokenized(cache, options, tokenizer, 16); });
  EXPECT_TRUE(contains(length, cache + ": token cache does not match this run")) << length;
  EXPECT_TRUE(contains(length, "max_length 8, this run uses 16")) << length;
  const auto cased = WordPieceTokenizer::from_file(vocab, false);
  const std::string lower = error_of([&] { load_tokenized(cache, options, cased, max_length); });
  EXPECT_TRUE(contains(lower, "do_lower_case true, this run uses false")) << lower;
  const std::string other_vocab = dir.file("other_vocab.txt");
  {
    std::ofstream out(other_vocab);
    for (const auto& t : tokens) out << t << "\n";
    out << "extra\n";
  }
  const auto other = WordPieceTokenizer::from_file(other_vocab, true);
  const std::string hash = error_of([&] { load_tokenized(cache, options, other, max_length); });
  EXPECT_TRUE(contains(hash, "tokenized with vocabulary 'vocab.txt'")) << hash;
  EXPECT_TRUE(contains(hash, "--vocab " + other_vocab)) << hash;

  ReadOptions offset_zero;
  offset_zero.label_offset = 0;
  const std::string offset = error_of([&] { load_tokenized(cache, offset_zero, tokenizer, max_length); });
  EXPECT_TRUE(contains(offset, "label_offset 1 but this run asks for label_offset 0")) << offset;
  ReadOptions three_labels;
  three_labels.num_labels = 3;
  const std::string labels = error_of([&] { load_tokenized(cache, three_labels, tokenizer, max_length); });
  EXPECT_TRUE(contains(labels, "has label 4 but num_labels is 3")) << labels;
}

TEST(TokenCache, IdsOutsideTheVocabularyAreFoundBeforeTraining) {
  TempDir dir;
  // 3 examples over more than one 2^20-id scan block, so the reported example is located by offset.
  RaggedTokens data;
  std::vector<int32_t> ids(700000, 7);
  data.append(ids.data(), static_cast<int32_t>(ids.size()), 0);
  data.append(ids.data(), static_cast<int32_t>(ids.size()), 1);
  ids[123] = 30522;  // one past the vocabulary
  data.append(ids.data(), static_cast<int32_t>(ids.size()), 2);
  const std::string path = dir.file("ids.h5");
  write_token_cache(path, sample_info(800000), data);
  TokenCacheReader reader(path);
  EXPECT_NO_THROW(reader.check_token_ids(30523, "big_vocab.txt"));
  const std::string message = error_of([&] { reader.check_token_ids(30522, "vocab.txt"); });
  EXPECT_TRUE(contains(message, path + ": example 2 holds token id 30522")) << message;
  EXPECT_TRUE(contains(message, "vocab.txt (30522 tokens)")) << message;

  RaggedTokens negative;
  const int32_t row[] = {2, -5, 3};
  negative.append(row, 3, 0);
  const std::string negative_path = dir.file("negative.h5");
  write_token_cache(negative_path, sample_info(16), negative);
  const std::string refused = error_of([&] { TokenCacheReader(negative_path).check_token_ids(100, "v.txt"); });
  EXPECT_TRUE(contains(refused, "example 0 holds token id -5")) << refused;
}

TEST(TokenCache, DatasetSizesThatTheFileDoesNotStoreAreRefusedBeforeAllocating) {
  TempDir dir;
  const std::string path = dir.file("cache.h5");
  write_token_cache(path, sample_info(64), random_ragged(100, 64, 2));

  // Replace /labels by a chunked dataset of 2^40 elements that was never written (a few bytes of
  // metadata), and make the counts agree with it: only the storage check stands in the way.
  const std::string huge_path = dir.file("huge.h5");
  fs::copy_file(path, huge_path);
  {
    hid_t file = H5Fopen(huge_path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    ASSERT_GE(H5Ldelete(file, "labels", H5P_DEFAULT), 0);
    ASSERT_GE(H5Ldelete(file, "offsets", H5P_DEFAULT), 0);
    const hsize_t n = hsize_t{1} << 40, chunk = 1 << 16;
    hid_t create = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(create, 1, &chunk);
    const hsize_t offsets_size = n + 1;
    for (const auto& [name, size, type] : {std::tuple<const char*, hsize_t, hid_t>{"offsets", offsets_size, H5T_STD_I64LE},
                                           {"labels", n, H5T_STD_I32LE}}) {
      hid_t space = H5Screate_simple(1, &size, nullptr);
      hid_t dataset = H5Dcreate2(file, name, type, space, H5P_DEFAULT, create, H5P_DEFAULT);
      ASSERT_GE(dataset, 0);
      H5Dclose(dataset);
      H5Sclose(space);
    }
    H5Pclose(create);
    H5Fclose(file);
  }
  set_int_attribute(huge_path, "num_examples", int64_t{1} << 40);
  const std::string message = error_of([&] { TokenCacheReader reader(huge_path); });
  EXPECT_TRUE(contains(message, huge_path + ": dataset /offsets declares 1099511627777 elements")) << message;
  EXPECT_TRUE(contains(message, "the file stores 0 bytes")) << message;

  // Compression is fine (prepare --compression writes it): the bound is deflate's 1032:1.
  const std::string deflated = dir.file("deflated.h5");
  TokenCacheWriteOptions options;
  options.compression_level = 9;
  write_token_cache(deflated, sample_info(64), random_ragged(100, 64, 2), options);
  EXPECT_NO_THROW(TokenCacheReader reader(deflated));
}
