#include "launch/options.h"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

namespace llmqs::launch {

namespace {

std::string any_to_string(const boost::any& value) {
  if (value.empty()) return "";
  if (auto p = boost::any_cast<std::string>(&value)) return *p;
  if (auto p = boost::any_cast<bool>(&value)) return *p ? "true" : "false";
  if (auto p = boost::any_cast<int>(&value)) return std::to_string(*p);
  if (auto p = boost::any_cast<int64_t>(&value)) return std::to_string(*p);
  if (auto p = boost::any_cast<uint64_t>(&value)) return std::to_string(*p);
  if (auto p = boost::any_cast<float>(&value)) {
    std::ostringstream s;
    s << *p;
    return s.str();
  }
  if (auto p = boost::any_cast<double>(&value)) {
    std::ostringstream s;
    s << *p;
    return s.str();
  }
  return "<value>";
}

void print_help(const CommandLine& cl) {
  std::cout << "usage: " << cl.usage << "\n\n" << cl.summary << "\n\n" << cl.options << "\n";
}

}  // namespace

bool parse_command_line(CommandLine& cl, int argc, char** argv, po::variables_map& vm) {
  cl.options.add_options()
      ("help,h", "show this help and exit")
      ("config", po::value<std::string>(), "INI file of options (command-line values win)")
      ("print-config", "print the effective configuration as INI and exit");
  try {
    po::store(po::command_line_parser(argc, argv)
                  .options(cl.options)
                  .positional(cl.positional)
                  .run(),
              vm);
  } catch (const po::error& e) {
    throw UsageError(cl.command + ": " + e.what() + " (see 'llmqs-dist " + cl.command + " --help')");
  }
  if (vm.count("help")) {
    print_help(cl);
    return false;
  }
  if (vm.count("config")) {
    const std::string path = vm["config"].as<std::string>();
    if (std::filesystem::is_directory(path)) throw UsageError(path + ": is a directory, expected an INI config file");
    std::ifstream in(path);
    if (!in) throw UsageError(path + ": cannot open config file");
    try {
      po::store(po::parse_config_file(in, cl.options, /*allow_unregistered=*/false), vm);
    } catch (const po::error& e) {
      throw UsageError(path + ": " + e.what());
    }
  }
  try {
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(cl.command + ": " + e.what());
  }
  if (vm.count("print-config")) {
    print_effective_config(std::cout, cl, vm);
    return false;
  }
  return true;
}

void print_effective_config(std::ostream& os, const CommandLine& cl, const po::variables_map& vm) {
  os << "# llmqs-dist " << cl.command << ": effective configuration\n";
  for (const auto& option : cl.options.options()) {
    const std::string& key = option->long_name();
    if (key == "help" || key == "config" || key == "print-config") continue;
    auto it = vm.find(key);
    if (it == vm.end()) {
      os << "# " << key << " =   (unset)\n";
    } else {
      os << key << " = " << any_to_string(it->second.value()) << "\n";
    }
  }
}

}  // namespace llmqs::launch
