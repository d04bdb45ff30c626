// Option parsing shared by every subcommand (Boost.Program_options).
// Precedence: command line > --config FILE.ini > defaults. Every config-file key is also a
// command-line option of the same name. Unknown keys, wrong types and missing files throw
// UsageError with a message that names the key or the file.
#pragma once
#include <boost/program_options.hpp>
#include <ostream>
#include <stdexcept>
#include <string>

namespace llmqs::launch {

namespace po = boost::program_options;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct CommandLine {
  std::string command;  // "train"
  std::string usage;    // "llmqs-dist train [options]"
  std::string summary;  // one paragraph shown by --help
  po::options_description options{"Options", 100};
  po::positional_options_description positional;
};

// Parses argv and the --config file into vm. Returns false when --help or --print-config
// was handled (the caller exits 0). Adds --help, --config and --print-config itself.
bool parse_command_line(CommandLine& cl, int argc, char** argv, po::variables_map& vm);

// `key = value` lines of the effective configuration, in the order options were declared.
void print_effective_config(std::ostream& os, const CommandLine& cl, const po::variables_map& vm);

}  // namespace llmqs::launch
