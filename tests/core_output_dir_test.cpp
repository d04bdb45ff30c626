// core/output_dir and the checkpoint writer's side of disk faults: output_dir refusals (a file, a
// file among its parents, not writable, a checkpoint that cannot fit by free space or by the file
// size limit), checkpoint names held by something that is not a checkpoint, leftover temporaries
// of crashed writes, the size estimate against real files, and a write that hits the file size
// limit (EFBIG, what a full disk's ENOSPC also takes): one message naming the file and the reason,
// no temporary left, the earlier checkpoint untouched, HDF5 still usable, a clean exit.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/output_dir.h"
#include "core/parameters.h"

namespace fs = std::filesystem;
using namespace llmqs::core;

namespace {

Checkpoint tiny_checkpoint(int64_t step) {
  Checkpoint c;
  c.model.vocab_size = 30;
  c.model.hidden_size = 16;
  c.model.num_hidden_layers = 2;
  c.model.num_attention_heads = 2;
  c.model.intermediate_size = 32;
  c.model.max_position_embeddings = 32;
  c.model.num_labels = 3;
  const size_t n = ParameterLayout::for_bert(c.model).total_numel();
  c.parameters.assign(n, 0.5f);
  c.adam_m.assign(n, 0.01f);
  c.adam_v.assign(n, 0.001f);
  c.trainer.global_step = step;
  c.trainer.max_steps = 100;
  c.tokenizer.max_length = 32;
  for (int i = 0; i < 30; ++i) c.tokenizer.vocab.push_back("tok" + std::to_string(i));
  return c;
}

// The text of the std::runtime_error `work` throws ("" and a test failure if it does not).
template <typename Work>
std::string error_of(Work work) {
  try {
    work();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

class OutputDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("llmqs_output_dir_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::vector<std::string> names(const std::string& sub = "") const {
    std::vector<std::string> out;
    for (const auto& entry : fs::directory_iterator(sub.empty() ? dir_ : dir_ / sub))
      out.push_back(entry.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  fs::path dir_;
};

TEST(CheckpointSpace, RefusesWhenFreeSpaceOrTheFileSizeLimitIsBelowOneCheckpoint) {
  OutputDirSpace space;
  space.free_bytes = 5'000'000'000;
  EXPECT_EQ(check_checkpoint_fits("/runs/a", 1'320'000'000, space),
            "output_dir: /runs/a (5 GB free; a checkpoint takes about 1.32 GB)");
  space.free_bytes = 700'000'000;
  std::string message = error_of([&] { check_checkpoint_fits("/runs/a", 1'320'000'000, space); });
  EXPECT_TRUE(contains(message, "/runs/a has 700 MB free, but a checkpoint of this model takes about 1.32 GB")) << message;
  space.free_bytes = 5'000'000'000;
  space.file_size_limit = 1'000'000;
  message = error_of([&] { check_checkpoint_fits("/runs/a", 1'320'000'000, space); });
  EXPECT_TRUE(contains(message, "more than this process may write to one file (file size limit, ulimit -f: 1 MB)"))
      << message;
  EXPECT_EQ(format_bytes(999), "999 bytes");
  EXPECT_EQ(format_bytes(654'132), "654 KB");
}

TEST_F(OutputDirTest, AMissingDirectoryIsJudgedByItsParentAndCreatedOnlyWhenTheRunStarts) {
  const std::string out = path("a/b/run");
  const std::string report = check_output_dir(out, 1000);
  EXPECT_TRUE(names().empty()) << "check_output_dir created something (or left its probe file)";
  EXPECT_TRUE(contains(report, "output_dir: " + out + " (")) << report;
  EXPECT_TRUE(contains(report, "free; a checkpoint takes about 1 KB)")) << report;
  EXPECT_TRUE(prepare_output_dir_for_steps(out, 0, 10).empty());
  EXPECT_TRUE(fs::is_directory(out));
  EXPECT_TRUE(fs::is_empty(out));
}

TEST_F(OutputDirTest, AFileAsOutputDirOrAmongItsParentsIsRefused) {
  std::ofstream(path("notes.txt")) << "mine\n";
  std::string message = error_of([&] { check_output_dir(path("notes.txt"), 1000); });
  EXPECT_TRUE(contains(message, path("notes.txt") + " exists and is not a directory")) << message;
  message = error_of([&] { check_output_dir(path("notes.txt/run"), 1000); });
  EXPECT_TRUE(contains(message, "cannot create " + path("notes.txt/run") + ": " + path("notes.txt") +
                                    " is not a directory"))
      << message;
  std::ifstream in(path("notes.txt"));
  std::string text;
  std::getline(in, text);
  EXPECT_EQ(text, "mine");
}

TEST_F(OutputDirTest, AnUnwritableDirectoryIsRefused) {
  std::string unwritable = path("locked");
  if (::geteuid() != 0) {
    fs::create_directories(unwritable);
    fs::permissions(unwritable, fs::perms::owner_read | fs::perms::owner_exec);
  } else if (fs::is_directory("/sys/kernel") && ::access("/sys/kernel", W_OK) == 0) {
    unwritable = "/sys/kernel";  // root passes permission bits; sysfs takes no new files even from root
  } else {
    GTEST_SKIP() << "running as root without a read-only directory to try";
  }
  const std::string message = error_of([&] { check_output_dir(unwritable, 1000); });
  EXPECT_TRUE(contains(message, "output_dir: " + unwritable + " is not writable: creating a file there failed:"))
      << message;
}

TEST_F(OutputDirTest, TheFileSizeLimitIsFoundBeforeAnythingIsWritten) {
  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  struct rlimit low = saved;
  low.rlim_cur = 100'000;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &low), 0);
  const std::string message = error_of([&] { check_output_dir(dir_.string(), 654'132); });
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &saved), 0);
  EXPECT_TRUE(contains(message, "a checkpoint of this model takes about 654 KB, more than this process may write to "
                                "one file (file size limit, ulimit -f: 100 KB)"))
      << message;
  EXPECT_TRUE(names().empty()) << "the probe file was left behind";
}

TEST_F(OutputDirTest, CheckpointNamesHeldByOtherThingsAreRefusedWithinTheRunsSteps) {
  const std::string out = dir_.string();
  write_checkpoint(checkpoint_path(out, 2), tiny_checkpoint(2));
  EXPECT_TRUE(prepare_output_dir_for_steps(out, 0, 10).empty()) << "a checkpoint may be replaced";
  fs::create_directories(path("checkpoint-4.h5"));
  std::string message = error_of([&] { prepare_output_dir_for_steps(out, 0, 10); });
  EXPECT_TRUE(contains(message, path("checkpoint-4.h5") + " is a directory, and this run (steps 1 to 10) may write"))
      << message;
  EXPECT_TRUE(prepare_output_dir_for_steps(out, 4, 10).empty()) << "a resumed run past step 4 never writes it";
  EXPECT_TRUE(prepare_output_dir_for_steps(out, 0, 3).empty()) << "a run of 3 steps never writes it";
  fs::remove(path("checkpoint-4.h5"));
  std::ofstream(path("checkpoint-6.h5")) << "my notes";
  message = error_of([&] { prepare_output_dir_for_steps(out, 0, 10); });
  EXPECT_TRUE(contains(message, path("checkpoint-6.h5") + " is not an llmqs-dist checkpoint (not an HDF5 file)"))
      << message;
  fs::remove(path("checkpoint-6.h5"));
  fs::create_symlink(checkpoint_path(out, 2), path("checkpoint-8.h5"));
  message = error_of([&] { prepare_output_dir_for_steps(out, 0, 10); });
  EXPECT_TRUE(contains(message, path("checkpoint-8.h5") + " is a symbolic link")) << message;
}

TEST_F(OutputDirTest, TemporariesOfDeadWritersAreRemovedOthersKept) {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  ::waitpid(child, nullptr, 0);  // reaped: nobody runs under that pid now
  const std::string dead = std::to_string(child), alive = std::to_string(::getppid()),
                    own = std::to_string(::getpid());
  for (const std::string& name : {"checkpoint-12.h5.tmp." + dead, "metrics.jsonl.tmp." + dead,
                                  "checkpoint-14.h5.tmp." + alive, "checkpoint-16.h5.tmp." + own,
                                  "notes.txt.tmp." + dead, "checkpoint-x.h5.tmp." + dead})
    std::ofstream(path(name)) << "partial";
  const std::vector<std::string> removed = prepare_output_dir_for_steps(dir_.string(), 0, 100);
  ASSERT_EQ(removed.size(), 2u);
  for (const std::string& line : removed)
    EXPECT_TRUE(contains(line, "the temporary of a write that a crash interrupted")) << line;
  EXPECT_EQ(names(), (std::vector<std::string>{"checkpoint-14.h5.tmp." + alive, "checkpoint-16.h5.tmp." + own,
                                               "checkpoint-x.h5.tmp." + dead, "notes.txt.tmp." + dead}));
}

TEST_F(OutputDirTest, TheSizeEstimateIsAtMostTheRealFileAndClose) {
  const Checkpoint c = tiny_checkpoint(1);
  write_checkpoint(path("checkpoint-1.h5"), c);
  const ParameterLayout layout = ParameterLayout::for_bert(c.model);
  const uint64_t estimate = estimated_checkpoint_bytes(layout.total_numel(), layout.parameters().size(), true,
                                                       c.tokenizer.vocab, c.trainer.log_history.size());
  const uint64_t real = fs::file_size(path("checkpoint-1.h5"));
  EXPECT_LE(estimate, real);
  EXPECT_GE(estimate, real * 8 / 10) << "estimate " << estimate << ", file " << real;
}

TEST_F(OutputDirTest, WriteCheckpointNeverReplacesWhatIsNotACheckpoint) {
  std::ofstream(path("checkpoint-5.h5")) << "my notes";
  std::string message = error_of([&] { write_checkpoint(path("checkpoint-5.h5"), tiny_checkpoint(5)); });
  EXPECT_TRUE(contains(message, path("checkpoint-5.h5") + ": refusing to write a checkpoint there: it is not an "
                                                           "llmqs-dist checkpoint"))
      << message;
  std::ifstream in(path("checkpoint-5.h5"));
  std::string text;
  std::getline(in, text);
  EXPECT_EQ(text, "my notes");
  // An earlier checkpoint under the name is replaced.
  write_checkpoint(path("checkpoint-6.h5"), tiny_checkpoint(6));
  write_checkpoint(path("checkpoint-6.h5"), tiny_checkpoint(7));
  EXPECT_EQ(read_checkpoint_summary(path("checkpoint-6.h5")).trainer.global_step, 7);
  EXPECT_EQ(names(), (std::vector<std::string>{"checkpoint-5.h5", "checkpoint-6.h5"}));
}

// A write that hits the file size limit fails the way a full disk does (a write() error), so this
// is also the ENOSPC path. HDF5 itself would crash on the next close or at exit after such a
// failure; the checkpoint is built in memory so that it never sees one.
TEST_F(OutputDirTest, AWriteOverTheFileSizeLimitFailsCleanlyAndKeepsTheEarlierCheckpoint) {
  write_checkpoint(path("checkpoint-1.h5"), tiny_checkpoint(1));
  const uintmax_t before = fs::file_size(path("checkpoint-1.h5"));
  struct sigaction ignore {}, previous {};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGXFSZ, &ignore, &previous);
  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  struct rlimit low = saved;
  low.rlim_cur = 20'000;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &low), 0);
  const std::string message = error_of([&] { write_checkpoint(path("checkpoint-2.h5"), tiny_checkpoint(2)); });
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &saved), 0);
  sigaction(SIGXFSZ, &previous, nullptr);
  EXPECT_TRUE(contains(message, path("checkpoint-2.h5") + ": cannot write the checkpoint (")) << message;
  EXPECT_TRUE(contains(message, "write: File too large")) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
  EXPECT_EQ(names(), std::vector<std::string>{"checkpoint-1.h5"}) << "a temporary or a partial file was left";
  EXPECT_EQ(fs::file_size(path("checkpoint-1.h5")), before);
  EXPECT_EQ(read_checkpoint(path("checkpoint-1.h5")).trainer.global_step, 1);
  // HDF5 is still healthy: the next write and read work (and the process exits cleanly).
  write_checkpoint(path("checkpoint-2.h5"), tiny_checkpoint(2));
  EXPECT_EQ(read_checkpoint(path("checkpoint-2.h5")).trainer.global_step, 2);
}

TEST_F(OutputDirTest, TheTestHookPausesHalfWayThroughTheWriteOnlyWhenAsked) {
  // Off by default: the variable is not set in a normal environment.
  ASSERT_EQ(std::getenv(kTestHookCheckpointWritePauseMs), nullptr);
  const pid_t child = ::fork();
  if (child == 0) {
    ::setenv(kTestHookCheckpointWritePauseMs, "400", 1);
    const std::string file = path("checkpoint-3.h5");
    const pid_t writer = ::fork();
    if (writer == 0) {
      write_checkpoint(file, tiny_checkpoint(3));
      ::_exit(0);
    }
    ::usleep(200 * 1000);  // inside the pause: the temporary is half written, the name not taken
    const bool tmp_there = fs::exists(file + ".tmp." + std::to_string(writer));
    const bool final_there = fs::exists(file);
    int status = 0;
    ::waitpid(writer, &status, 0);
    ::_exit(tmp_there && !final_there && WIFEXITED(status) && WEXITSTATUS(status) == 0 && fs::exists(file) ? 0 : 1);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the pause did not hold the write half-way";
}

}  // namespace
