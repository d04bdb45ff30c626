// llmqs-dist: one binary, one subcommand per job. Errors from any layer arrive here as
// exceptions, are printed once, and turn into a non-zero exit.
#include <algorithm>
#include <cstring>
#include <exception>
#include <iostream>
#include <mutex>
#include <string>
#include <vector>

#include "launch/options.h"
#include "launch/subcommand.h"

namespace llmqs::launch {

namespace {
std::vector<Subcommand>& registry() {
  static std::vector<Subcommand> subcommands;
  return subcommands;
}
}  // namespace

bool register_subcommand(const Subcommand& subcommand) {
  registry().push_back(subcommand);
  return true;
}

std::vector<Subcommand> registered_subcommands() {
  std::vector<Subcommand> list = registry();
  std::sort(list.begin(), list.end(), [](const Subcommand& a, const Subcommand& b) { return a.order < b.order; });
  return list;
}

}  // namespace llmqs::launch

namespace {

void print_usage(std::ostream& os) {
  os << "usage: llmqs-dist <subcommand> [options]   (mpirun -np N llmqs-dist train ... for N ranks)\n\n"
        "Data-parallel fine-tuning of BERT-style text classifiers (YelpReviewFull and the like).\n\n"
        "Subcommands:\n";
  for (const auto& s : llmqs::launch::registered_subcommands()) {
    os << "  " << s.name << std::string(s.name.size() < 14 ? 14 - s.name.size() : 1, ' ') << s.summary << "\n";
  }
  os << "\n'llmqs-dist <subcommand> --help' lists that subcommand's options; every option can also\n"
        "be given in an INI file with --config FILE.ini (see configs/).\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    print_usage(std::cout);
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::cout << "llmqs-dist 0.1.0\n";
    return 0;
  }
  const std::string name = argv[1];
  for (const auto& s : llmqs::launch::registered_subcommands()) {
    if (s.name != name) continue;
    std::string argv0 = "llmqs-dist " + name;
    std::vector<char*> args;
    args.push_back(argv0.data());
    for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
    args.push_back(nullptr);
    try {
      return s.run(static_cast<int>(args.size()) - 1, args.data());
    } catch (const llmqs::launch::UsageError& e) {
      std::cerr << "llmqs-dist: error: " << e.what() << "\n";
      return 2;
    } catch (const std::exception& e) {
      std::cerr << "llmqs-dist: error: " << e.what() << "\n";
      return 1;
    }
  }
  std::cerr << "llmqs-dist: error: unknown subcommand '" << name << "'\n\n";
  print_usage(std::cerr);
  return 2;
}
