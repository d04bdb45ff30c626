// `llmqs-dist sample`: writes the bundled Yelp-like dataset (train.csv, test.csv, vocab.txt), then reads
// the splits back through the same reader that `train` uses and prints what they hold.
#include <cstdio>
#include <iostream>
#include <string>

#include "data/dataset_reader.h"
#include "data/sample_generator.h"
#include "launch/options.h"
#include "launch/subcommand.h"

namespace llmqs::launch {

namespace {

void print_split_summary(const std::string& path) {
  const data::Dataset dataset = data::read_dataset(path, data::ReadOptions{});
  int64_t words = 0, over_400 = 0;
  int64_t per_label[5] = {0, 0, 0, 0, 0};
  for (const auto& row : dataset.rows) {
    const int64_t n = data::count_review_words(row.text);
    words += n;
    over_400 += n > 400;
    if (row.label >= 0 && row.label < 5) ++per_label[row.label];
  }
  const double count = static_cast<double>(dataset.rows.size());
  char line[256];
  std::snprintf(line, sizeof(line), "%s: %zu reviews, mean %.1f words, %.1f%% longer than 400 words, stars",
                path.c_str(), dataset.rows.size(), words / count, 100.0 * over_400 / count);
  std::cout << line;
  for (int label = 0; label < 5; ++label) std::cout << " " << label + 1 << ":" << per_label[label];
  std::cout << "\n";
}

}  // namespace

int run_sample(int argc, char** argv) {
  CommandLine cl;
  cl.command = "sample";
  cl.usage = "llmqs-dist sample --output_dir DIR [--train_size N] [--test_size N] [--seed S]";
  cl.summary =
      "Writes DIR/train.csv and DIR/test.csv (YelpReviewFull format: no header, label 1-5, quoted text)\n"
      "and DIR/vocab.txt (a lower-cased WordPiece vocabulary covering every word). The reviews are\n"
      "synthetic but learnable, with real-looking lengths; the same seed gives identical files.";
  data::SampleOptions defaults;
  cl.options.add_options()
      ("output_dir", po::value<std::string>()->required(), "directory to write (created if missing)")
      ("train_size", po::value<int64_t>()->default_value(defaults.train_size), "reviews in train.csv")
      ("test_size", po::value<int64_t>()->default_value(defaults.test_size), "reviews in test.csv")
      ("seed", po::value<uint64_t>()->default_value(defaults.seed), "random seed");
  po::variables_map vm;
  if (!parse_command_line(cl, argc, argv, vm)) return 0;

  data::SampleOptions options;
  options.train_size = vm["train_size"].as<int64_t>();
  options.test_size = vm["test_size"].as<int64_t>();
  options.seed = vm["seed"].as<uint64_t>();
  if (options.train_size < 1) throw UsageError("sample: --train_size must be at least 1");
  if (options.test_size < 1) throw UsageError("sample: --test_size must be at least 1");
  const std::string dir = vm["output_dir"].as<std::string>();

  data::write_sample_dataset(dir, options);
  print_split_summary(dir + "/train.csv");
  print_split_summary(dir + "/test.csv");
  std::cout << dir << "/vocab.txt: " << data::sample_vocabulary().size() << " tokens (lower-cased WordPiece)\n";
  return 0;
}

LLMQS_REGISTER_SUBCOMMAND("sample", "write the bundled Yelp-like sample dataset (train.csv, test.csv, vocab.txt)",
                          10, run_sample);

}  // namespace llmqs::launch
