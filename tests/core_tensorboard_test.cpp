// TensorBoard event files: CRC-32C against its published check value, and a file we write read
// back by TensorBoard's own EventAccumulator (PyPI `tensorboard`), values and steps exact.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <unistd.h>

#include "core/tensorboard_writer.h"

namespace fs = std::filesystem;
using llmqs::core::TensorBoardWriter;

TEST(TensorBoard, Crc32cCheckValue) {
  EXPECT_EQ(llmqs::core::crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(llmqs::core::crc32c("", 0), 0u);
}

TEST(TensorBoard, TensorBoardReadsOurScalars) {
  const fs::path dir = fs::temp_directory_path() / ("llmqs_tb_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  {
    TensorBoardWriter writer((dir / "runs").string());
    for (int step = 1; step <= 5; ++step) {
      writer.add_scalars(step, {{"train/loss", 2.0f / step}, {"train/learning_rate", 1e-4f * step}});
    }
    writer.add_scalars(5, {{"eval/accuracy", 0.625f}});
    writer.flush();
  }
  const std::string cmd = "python3 " LLMQS_TEST_DATA_DIR "/tensorboard/read_events.py " + (dir / "runs").string();
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof(buffer), pipe)) out.append(buffer, n);
  ASSERT_EQ(pclose(pipe), 0) << "TensorBoard's reader failed:\n" << out;

  std::map<std::string, std::map<long, double>> seen;
  std::istringstream lines(out);
  std::string tag;
  long step;
  double value;
  while (lines >> tag >> step >> value) seen[tag][step] = value;
  ASSERT_EQ(seen["train/loss"].size(), 5u) << out;
  for (int s = 1; s <= 5; ++s) {
    EXPECT_FLOAT_EQ(static_cast<float>(seen["train/loss"][s]), 2.0f / s);
    EXPECT_FLOAT_EQ(static_cast<float>(seen["train/learning_rate"][s]), 1e-4f * s);
  }
  EXPECT_FLOAT_EQ(static_cast<float>(seen["eval/accuracy"][5]), 0.625f);
  fs::remove_all(dir);
}
