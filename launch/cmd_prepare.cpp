// `llmqs-dist prepare`: tokenize a CSV/JSONL dataset once, on all cores, into an HDF5 token
// cache (data/token_cache.h) that train/eval/predict read instead of re-tokenizing at start-up.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>

#include "data/dataset_reader.h"
#include "data/token_cache.h"
#include "data/tokenized_dataset.h"
#include "data/wordpiece_tokenizer.h"
#include "launch/options.h"
#include "launch/subcommand.h"

namespace llmqs::launch {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// A live `\r` line on a terminal; on a pipe or log file, one plain line per tenth of the work.
class TokenizeProgressLine {
 public:
  TokenizeProgressLine() : live_(::isatty(::fileno(stderr)) != 0), start_(std::chrono::steady_clock::now()) {}

  void update(int64_t done, int64_t total) {
    const double elapsed = seconds_since(start_);
    const double rate = elapsed > 0 ? done / elapsed : 0.0;
    const int tenth = total > 0 ? static_cast<int>(done * 10 / total) : 10;
    if (!live_ && tenth == last_tenth_) return;
    last_tenth_ = tenth;
    std::fprintf(stderr, "%sprepare: tokenized %lld / %lld reviews (%3.0f%%), %.0f reviews/s%s", live_ ? "\r" : "",
                 static_cast<long long>(done), static_cast<long long>(total), total > 0 ? 100.0 * done / total : 100.0,
                 rate, live_ ? "" : "\n");
    if (live_ && done == total) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  bool live_;
  std::chrono::steady_clock::time_point start_;
  int last_tenth_ = 0;
};

}  // namespace

int run_prepare(int argc, char** argv) {
  CommandLine cl;
  cl.command = "prepare";
  cl.usage = "llmqs-dist prepare --input FILE --vocab FILE --do_lower_case true|false --max_length N --output cache.h5";
  cl.summary =
      "Tokenizes a dataset once, on all cores (OMP_NUM_THREADS), into an HDF5 token cache: ragged token ids,\n"
      "offsets and 0-based labels, plus the vocabulary hash, lower-casing and max_length they were made with.\n"
      "Give the cache to train/eval in place of the CSV/JSONL (e.g. --train_file cache.h5); a cache made with\n"
      "another vocabulary, lower-casing or max_length is refused. The file appears only when complete.";
  std::string input, vocab, output, format;
  bool do_lower_case = false;
  int max_length = 512, label_offset = -1, num_labels = 0, compression = 0;
  cl.options.add_options()
      ("input", po::value<std::string>(&input)->required(),
       "CSV (YelpReviewFull as distributed, or a HF export with a label,text header) or JSON Lines file")
      ("vocab", po::value<std::string>(&vocab)->required(), "vocab.txt or tokenizer.json of the model to train")
      ("do_lower_case", po::value<bool>(&do_lower_case)->required(),
       "true for uncased vocabularies (MiniLM, the bundled sample), false for bert-base-cased")
      ("max_length", po::value<int>(&max_length)->default_value(512),
       "truncate each review to this many ids, [CLS] and [SEP] included")
      ("output", po::value<std::string>(&output)->required(), "token cache to write (.h5)")
      ("label_offset", po::value<int>(&label_offset)->default_value(-1),
       "subtracted from the file's labels; -1 = auto (1 for headerless YelpReviewFull CSV, 0 for HF exports)")
      ("num_labels", po::value<int>(&num_labels)->default_value(0),
       "> 0: every label must be below it (recorded in the cache); 0 = largest label + 1")
      ("format", po::value<std::string>(&format)->default_value("auto"), "auto|csv|jsonl (auto: by file extension)")
      ("compression", po::value<int>(&compression)->default_value(0),
       "deflate level 0..9 for /tokens (0: none, fastest random reads; 4 halves the file)");
  po::variables_map vm;
  if (!parse_command_line(cl, argc, argv, vm)) return 0;

  if (max_length < 2) throw UsageError("prepare: max_length " + std::to_string(max_length) + " < 2 ([CLS] and [SEP] take 2)");
  if (compression < 0 || compression > 9) throw UsageError("prepare: compression " + std::to_string(compression) + " is outside 0..9");
  if (label_offset < -1) throw UsageError("prepare: label_offset " + std::to_string(label_offset) + " < -1");
  if (num_labels < 0) throw UsageError("prepare: num_labels " + std::to_string(num_labels) + " < 0");
  std::error_code same_error;
  if (std::filesystem::equivalent(input, output, same_error)) {
    throw UsageError("prepare: --output " + output + " is the input file; choose another name");
  }
  data::ReadOptions read_options;
  try {
    read_options.format = data::parse_dataset_format(format);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("prepare: format: ") + e.what());
  }
  read_options.label_offset = label_offset;
  read_options.num_labels = num_labels;

  const auto start = std::chrono::steady_clock::now();
  // The vocabulary first: a wrong path should not cost a minute of CSV parsing.
  const auto tokenizer = data::WordPieceTokenizer::from_file(vocab, do_lower_case);
  const data::Dataset dataset = data::read_dataset(input, read_options);
  const double read_seconds = seconds_since(start);
  std::fprintf(stderr, "prepare: read %lld reviews from %s in %.1f s\n", static_cast<long long>(dataset.rows.size()),
               input.c_str(), read_seconds);

  TokenizeProgressLine progress;
  data::TokenizeStats stats;
  const data::RaggedTokens tokens = data::tokenize_rows(
      dataset, tokenizer, max_length, &stats, [&](int64_t done, int64_t total) { progress.update(done, total); });

  const auto write_start = std::chrono::steady_clock::now();
  data::TokenCacheWriteOptions write_options;
  write_options.compression_level = compression;
  data::write_token_cache(output, data::describe_tokenization(dataset, tokenizer, max_length, num_labels), tokens,
                          write_options);
  const double write_seconds = seconds_since(write_start);

  const double mean_length = stats.examples > 0 ? static_cast<double>(stats.tokens) / stats.examples : 0.0;
  const double truncated_percent = stats.examples > 0 ? 100.0 * stats.truncated / stats.examples : 0.0;
  const double file_mib = static_cast<double>(std::filesystem::file_size(output)) / (1 << 20);
  std::printf("prepare: wrote %s (%.1f MiB)\n", output.c_str(), file_mib);
  std::printf("  examples %lld, tokens %lld, mean length %.1f, max length %d, truncated to %d: %lld (%.2f%%)\n",
              static_cast<long long>(stats.examples), static_cast<long long>(stats.tokens), mean_length, stats.longest,
              max_length, static_cast<long long>(stats.truncated), truncated_percent);
  std::printf("  labels 0..%d (label_offset %d), vocabulary %s (%d tokens, hash %s, do_lower_case %s)\n",
              std::max(dataset.num_labels_seen, num_labels) - 1, dataset.label_offset, vocab.c_str(),
              tokenizer.vocab_size(), data::format_vocab_hash(tokenizer.vocab_hash()).c_str(),
              do_lower_case ? "true" : "false");
  std::printf("  tokenized %.0f reviews/s on %d threads (%.2f s); read %.2f s, write %.2f s, total %.2f s\n",
              stats.seconds > 0 ? stats.examples / stats.seconds : 0.0, stats.threads, stats.seconds, read_seconds,
              write_seconds, seconds_since(start));
  return 0;
}

LLMQS_REGISTER_SUBCOMMAND("prepare", "tokenize a CSV/JSONL dataset into an HDF5 token cache (all cores)", 30,
                          run_prepare);

}  // namespace llmqs::launch
