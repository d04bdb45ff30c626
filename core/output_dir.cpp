// output_dir pre-flight (see output_dir.h). POSIX calls where std::filesystem says too little:
// statvfs for the free space, getrlimit for the file size limit, kill(pid, 0) for whether the
// writer of a temporary still runs.
#include "core/output_dir.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <system_error>

#include "core/checkpoint.h"

namespace fs = std::filesystem;

namespace llmqs::core {

std::string format_bytes(uint64_t bytes) {
  const char* units[] = {"bytes", "KB", "MB", "GB", "TB", "PB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1000.0 && unit < 5) {
    value /= 1000.0;
    ++unit;
  }
  char text[32];
  if (unit == 0)
    std::snprintf(text, sizeof(text), "%llu bytes", static_cast<unsigned long long>(bytes));
  else
    std::snprintf(text, sizeof(text), "%.3g %s", value, units[unit]);
  return text;
}

uint64_t estimated_checkpoint_bytes(uint64_t parameters, uint64_t tensors, bool with_optimizer,
                                    const std::vector<std::string>& vocab, uint64_t log_entries) {
  // Kept at or below what our files measure (so "does not fit" is certain): each dataset costs
  // at least 448 bytes of HDF5 headers and links, a variable-length string 16 bytes of heap
  // reference besides its text, a log line about 150 bytes.
  const uint64_t copies = with_optimizer ? 3 : 1;
  uint64_t bytes = copies * (parameters * sizeof(float) + tensors * 448);
  for (const auto& token : vocab) bytes += token.size() + 16;
  bytes += log_entries * 150;
  return bytes;
}

OutputDirSpace output_dir_space(const std::string& output_dir) {
  OutputDirSpace space;
  struct statvfs fs_info {};
  if (::statvfs(output_dir.c_str(), &fs_info) == 0)
    space.free_bytes = static_cast<uint64_t>(fs_info.f_bavail) * static_cast<uint64_t>(fs_info.f_frsize);
  else
    space.free_bytes = UINT64_MAX;  // unknown: let the write itself find out
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_FSIZE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY)
    space.file_size_limit = static_cast<uint64_t>(limit.rlim_cur);
  return space;
}

std::string check_checkpoint_fits(const std::string& output_dir, uint64_t checkpoint_bytes, const OutputDirSpace& space) {
  const std::string size = format_bytes(checkpoint_bytes);
  if (space.file_size_limit < checkpoint_bytes)
    throw std::runtime_error("output_dir: " + output_dir + ": a checkpoint of this model takes about " + size +
                             ", more than this process may write to one file (file size limit, ulimit -f: " +
                             format_bytes(space.file_size_limit) + "); raise the limit");
  if (space.free_bytes < checkpoint_bytes)
    throw std::runtime_error("output_dir: " + output_dir + " has " + format_bytes(space.free_bytes) +
                             " free, but a checkpoint of this model takes about " + size +
                             "; free some space or choose another output_dir");
  if (space.free_bytes == UINT64_MAX) return "output_dir: " + output_dir + " (free space unknown; a checkpoint takes about " + size + ")";
  return "output_dir: " + output_dir + " (" + format_bytes(space.free_bytes) + " free; a checkpoint takes about " + size +
         ")";
}

std::string check_output_dir(const std::string& output_dir, uint64_t checkpoint_bytes) {
  if (output_dir.empty()) throw std::runtime_error("output_dir: is empty");
  // Nothing is created here (a run refused later for another reason leaves no trace): a missing
  // output_dir is judged by its nearest existing parent, where train() will create it.
  std::error_code ec;
  fs::path existing = fs::path(output_dir);
  while (!existing.empty() && !fs::exists(existing, ec)) existing = existing.parent_path();
  if (existing.empty()) existing = ".";
  if (!fs::is_directory(existing, ec)) {
    if (existing == fs::path(output_dir))
      throw std::runtime_error("output_dir: " + output_dir + " exists and is not a directory (a file?); choose another output_dir");
    throw std::runtime_error("output_dir: cannot create " + output_dir + ": " + existing.string() +
                             " is not a directory");
  }
  const std::string where = existing == fs::path(output_dir) ? output_dir : existing.string() + " (to hold " + output_dir + ")";
  // Permissions, read-only mounts, quotas and ACLs all answer the one question that matters:
  // can we create a file there and write to it? (The size check comes before the write: a file
  // size limit below 512 bytes would end the process with SIGXFSZ.)
  const std::string probe = (existing / (".llmqs-dist-write-probe." + std::to_string(::getpid()))).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw std::runtime_error("output_dir: " + where + " is not writable: creating a file there failed: " +
                             std::strerror(errno));
  std::string report;
  try {
    report = check_checkpoint_fits(output_dir, checkpoint_bytes, output_dir_space(existing.string()));
  } catch (...) {
    ::close(fd);
    ::unlink(probe.c_str());
    throw;
  }
  const char block[512] = {0};
  const ssize_t written = ::write(fd, block, sizeof(block));
  const int write_errno = errno;
  const int closed = ::close(fd);
  const int close_errno = errno;
  ::unlink(probe.c_str());
  if (written != static_cast<ssize_t>(sizeof(block)) || closed != 0)
    throw std::runtime_error("output_dir: " + where + " is not writable: writing a test file there failed: " +
                             std::strerror(written < 0 ? write_errno : closed != 0 ? close_errno : ENOSPC));
  return report;
}

namespace {

// The pid of a temporary we write ("<name>.tmp.<pid>") when the name is one of ours in
// output_dir (checkpoint-<step>.h5 or metrics.jsonl), else -1.
long temporary_writer_pid(const std::string& name) {
  const size_t marker = name.rfind(".tmp.");
  if (marker == std::string::npos) return -1;
  const std::string target = name.substr(0, marker), digits = name.substr(marker + 5);
  if (digits.empty() || digits.size() > 9) return -1;
  for (char ch : digits)
    if (ch < '0' || ch > '9') return -1;
  if (target != "metrics.jsonl" && checkpoint_step_from_name(target) < 0) return -1;
  return std::stol(digits);
}

// Whether process `pid` runs on this host. A zombie does not: a rank SIGKILLed with its mpirun
// may wait a long time for a parent to reap it, and kill(pid, 0) still succeeds on it.
bool process_runs(long pid) {
  std::FILE* stat = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
  if (stat) {
    char line[512] = {0};
    const size_t n = std::fread(line, 1, sizeof(line) - 1, stat);
    std::fclose(stat);
    const char* after_name = std::strrchr(line, ')');  // the name may hold spaces and parentheses
    if (n > 0 && after_name && after_name[1] == ' ') return after_name[2] != 'Z' && after_name[2] != 'X';
    return true;
  }
  if (std::filesystem::exists("/proc/self/stat")) return false;  // procfs, and no such process
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;  // no procfs
}

}  // namespace

std::vector<std::string> prepare_output_dir_for_steps(const std::string& output_dir, int64_t first_step,
                                                      int64_t last_step) {
  std::vector<fs::path> stale;
  std::error_code ec;
  fs::create_directories(output_dir, ec);
  if (ec || !fs::is_directory(output_dir))
    throw std::runtime_error("output_dir: cannot create " + output_dir + ": " +
                             (ec ? ec.message() : std::string("exists and is not a directory")));
  for (const auto& entry : fs::directory_iterator(output_dir, ec)) {
    const std::string name = entry.path().filename().string();
    const int64_t step = checkpoint_step_from_name(name);
    if (step > first_step && step <= last_step) {
      const std::string problem = checkpoint_destination_problem(entry.path().string());
      if (!problem.empty())
        throw std::runtime_error("output_dir: " + entry.path().string() + " " + problem + ", and this run (steps " +
                                 std::to_string(first_step + 1) + " to " + std::to_string(last_step) +
                                 ") may write a checkpoint under that name; move it away or choose another output_dir");
    }
    const long pid = temporary_writer_pid(name);
    if (pid < 0 || pid == static_cast<long>(::getpid())) continue;
    // A writer that still runs on this host keeps its file (two jobs in one output_dir are a
    // mistake of their own, but not one to make worse by deleting under them).
    if (process_runs(pid)) continue;
    stale.push_back(entry.path());
  }
  if (ec) throw std::runtime_error("output_dir: cannot list " + output_dir + ": " + ec.message());
  std::vector<std::string> removed;
  for (const fs::path& path : stale) {
    std::error_code remove_error;
    if (fs::remove(path, remove_error))
      removed.push_back("removed " + path.string() + ", the temporary of a write that a crash interrupted");
  }
  return removed;
}

}  // namespace llmqs::core
