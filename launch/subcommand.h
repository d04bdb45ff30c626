// The llmqs-dist subcommands. Each launch/cmd_<name>.cpp registers itself with
// LLMQS_REGISTER_SUBCOMMAND, so a subcommand that is not built is not listed.
#pragma once
#include <string>
#include <vector>

namespace llmqs::launch {

struct Subcommand {
  std::string name;     // "train"
  std::string summary;  // one line for `llmqs-dist --help`
  int order;            // position in the help listing
  int (*run)(int argc, char** argv);  // argv[0] is "llmqs-dist <name>"
};

bool register_subcommand(const Subcommand& subcommand);
std::vector<Subcommand> registered_subcommands();  // sorted by order

}  // namespace llmqs::launch

#define LLMQS_REGISTER_SUBCOMMAND(name, summary, order, fn)                                \
  static const bool llmqs_registered_##fn =                                                \
      ::llmqs::launch::register_subcommand(::llmqs::launch::Subcommand{name, summary, order, fn})
