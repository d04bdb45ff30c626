// `llmqs-dist tokenize`: text lines on stdin -> one line of space-separated token ids per input
// line ([CLS] ... [SEP], at most --max_length ids) on stdout. The same WordPieceTokenizer that
// `prepare` uses, so this is how the HF parity tests and the tokenizer benchmark reach it.
// Lines are encoded in blocks, in parallel over the OpenMP threads (OMP_NUM_THREADS), and
// written in input order.
#include <omp.h>

#include <charconv>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "data/wordpiece_tokenizer.h"
#include "launch/options.h"
#include "launch/subcommand.h"

namespace llmqs::launch {

namespace {

constexpr size_t kLinesPerBlock = 16384;

void write_block(const std::vector<std::vector<int32_t>>& ids, size_t count, std::string& buffer) {
  buffer.clear();
  char number[16];
  for (size_t line = 0; line < count; ++line) {
    for (size_t k = 0; k < ids[line].size(); ++k) {
      if (k) buffer.push_back(' ');
      const auto result = std::to_chars(number, number + sizeof(number), ids[line][k]);
      buffer.append(number, result.ptr);
    }
    buffer.push_back('\n');
  }
  std::fwrite(buffer.data(), 1, buffer.size(), stdout);
}

}  // namespace

int run_tokenize(int argc, char** argv) {
  CommandLine cl;
  cl.command = "tokenize";
  cl.usage = "llmqs-dist tokenize --vocab FILE --do_lower_case true|false [--max_length N] < text.txt";
  cl.summary =
      "Reads text lines on stdin and prints, for each, its token ids ([CLS] wordpieces [SEP]) separated by\n"
      "spaces: exactly what HF BertTokenizerFast(text, truncation=True, max_length=N)['input_ids'] gives.";
  cl.options.add_options()
      ("vocab", po::value<std::string>()->required(), "vocab.txt (one token per line) or HF tokenizer.json")
      ("do_lower_case", po::value<bool>()->required(),
       "lowercase and strip accents (true for uncased vocabularies such as MiniLM, false for bert-base-cased)")
      ("max_length", po::value<int>()->default_value(512), "ids per line at most, [CLS] and [SEP] included (>= 2)");
  po::variables_map vm;
  if (!parse_command_line(cl, argc, argv, vm)) return 0;
  const int max_length = vm["max_length"].as<int>();
  if (max_length < 2) {
    throw UsageError("tokenize: --max_length " + std::to_string(max_length) + " must be at least 2 ([CLS] and [SEP])");
  }
  const auto tokenizer =
      data::WordPieceTokenizer::from_file(vm["vocab"].as<std::string>(), vm["do_lower_case"].as<bool>());

  std::ios::sync_with_stdio(false);
  std::vector<std::string> lines(kLinesPerBlock);
  std::vector<std::vector<int32_t>> ids(kLinesPerBlock);
  std::string buffer;
  for (;;) {
    size_t count = 0;
    while (count < kLinesPerBlock && std::getline(std::cin, lines[count])) ++count;
    if (count == 0) break;
#pragma omp parallel for schedule(dynamic, 64)
    for (size_t line = 0; line < count; ++line) tokenizer.encode_into(lines[line], max_length, ids[line]);
    write_block(ids, count, buffer);
    if (count < kLinesPerBlock) break;
  }
  std::fflush(stdout);
  if (std::ferror(stdout)) throw std::runtime_error("tokenize: error writing to stdout");
  return 0;
}

LLMQS_REGISTER_SUBCOMMAND("tokenize", "text lines on stdin -> WordPiece token ids on stdout (HF-exact)", 20,
                          run_tokenize);

}  // namespace llmqs::launch
