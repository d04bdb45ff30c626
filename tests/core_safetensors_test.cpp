// core/safetensors: headers that lie are refused before any tensor byte is read, with a message
// naming the file and the problem; F16/BF16 convert exactly; the F32 writer round-trips.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/safetensors.h"

namespace fs = std::filesystem;
using llmqs::core::SafetensorsF32Tensor;
using llmqs::core::SafetensorsFile;

namespace {

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("llmqs_safetensors_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A file made of the 8-byte length `declared_length`, then `header`, then `data`.
  std::string write_raw(const std::string& header, const std::string& data, uint64_t declared_length) {
    const std::string path = (dir_ / "model.safetensors").string();
    std::ofstream out(path, std::ios::binary);
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>(declared_length >> (8 * i)));
    out << header << data;
    return path;
  }
  std::string write_raw(const std::string& header, const std::string& data) {
    return write_raw(header, data, header.size());
  }

  // The message of the exception SafetensorsFile(path) throws; fails the test if none.
  static std::string open_error(const std::string& path) {
    try {
      SafetensorsFile file(path);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    ADD_FAILURE() << "no error for " << path;
    return "";
  }

  fs::path dir_;
};

TEST_F(SafetensorsTest, F32RoundTripIsBitExactAndKeepsOrderAndMetadata) {
  std::vector<float> a = {1.5f, -0.0f, 3.0e-39f /* subnormal */, 123456.789f, -7.25f, 0.1f};
  std::vector<float> b = {42.0f, -1.0f};
  std::vector<float> empty;
  const std::string path = (dir_ / "out.safetensors").string();
  llmqs::core::write_safetensors_f32(path, {{"z.weight", {2, 3}, a.data()}, {"a.bias", {2}, b.data()},
                                            {"empty", {0, 4}, empty.data()}},
                                     {{"format", "pt"}});
  EXPECT_FALSE(fs::exists(path + ".tmp." + std::to_string(::getpid())));

  // Header length is a multiple of 8 and the data section is exactly the tensors' bytes.
  std::ifstream in(path, std::ios::binary);
  unsigned char length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | length_bytes[i];
  EXPECT_EQ(header_length % 8, 0u);
  EXPECT_EQ(fs::file_size(path), 8 + header_length + (a.size() + b.size()) * 4);

  SafetensorsFile file(path);
  ASSERT_EQ(file.tensors().size(), 3u);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  const auto* z = file.find("z.weight");
  ASSERT_NE(z, nullptr);
  EXPECT_EQ(z->dtype, "F32");
  EXPECT_EQ(z->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(z->begin, 0u);  // caller's order, not the header's sorted order
  EXPECT_EQ(file.find("a.bias")->begin, 24u);
  const std::vector<float> z_back = file.read_f32("z.weight");
  ASSERT_EQ(z_back.size(), a.size());
  EXPECT_EQ(std::memcmp(z_back.data(), a.data(), a.size() * 4), 0);
  EXPECT_EQ(file.read_f32("a.bias"), b);
  EXPECT_TRUE(file.read_f32("empty").empty());
  EXPECT_EQ(file.find("missing"), nullptr);
  EXPECT_THROW(file.read_f32("missing"), std::runtime_error);
}

TEST_F(SafetensorsTest, F16AndBF16ConvertExactly) {
  // F16: 1, -2, 65504 (max), 2^-24 (smallest subnormal), 0.5, -0; BF16: 1, 3.140625, -inf
  const uint16_t f16[] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x3800, 0x8000};
  const uint16_t bf16[] = {0x3F80, 0x4049, 0xFF80};
  std::string data(reinterpret_cast<const char*>(f16), sizeof(f16));
  data.append(reinterpret_cast<const char*>(bf16), sizeof(bf16));
  const std::string header =
      R"({"h":{"dtype":"F16","shape":[6],"data_offsets":[0,12]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[12,18]}})";
  SafetensorsFile file(write_raw(header, data));
  const std::vector<float> h = file.read_f32("h");
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], -2.0f);
  EXPECT_EQ(h[2], 65504.0f);
  EXPECT_EQ(h[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(h[4], 0.5f);
  EXPECT_TRUE(h[5] == 0.0f && std::signbit(h[5]));
  const std::vector<float> b = file.read_f32("b");
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], 3.140625f);
  EXPECT_TRUE(std::isinf(b[2]) && b[2] < 0);
}

TEST_F(SafetensorsTest, NonFloatTensorIsListedButRefusesConversion) {
  const int64_t ids[] = {0, 1, 2};
  const std::string header = R"({"position_ids":{"dtype":"I64","shape":[1,3],"data_offsets":[0,24]}})";
  SafetensorsFile file(write_raw(header, std::string(reinterpret_cast<const char*>(ids), sizeof(ids))));
  ASSERT_NE(file.find("position_ids"), nullptr);
  try {
    file.read_f32("position_ids");
    FAIL() << "I64 converted to fp32";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("position_ids"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("I64"), std::string::npos) << e.what();
  }
}

TEST_F(SafetensorsTest, HeaderLengthPastEndOfFile) {
  const std::string header = R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const std::string path = write_raw(header, std::string(4, '\0'), header.size() + 100);
  const std::string message = open_error(path);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("past the end"), std::string::npos) << message;
}

TEST_F(SafetensorsTest, HugeHeaderLength) {
  const std::string path = write_raw("{}", "", 1ull << 60);
  const std::string message = open_error(path);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("implausible"), std::string::npos) << message;
}

TEST_F(SafetensorsTest, FileShorterThanTheLengthField) {
  const std::string path = (dir_ / "short.safetensors").string();
  std::ofstream(path, std::ios::binary) << "abc";
  const std::string message = open_error(path);
  EXPECT_NE(message.find("3 bytes"), std::string::npos) << message;
}

TEST_F(SafetensorsTest, BadJson) {
  const std::string path = write_raw(R"({"t": {"dtype": "F32", "shape": [1],)", "");
  const std::string message = open_error(path);
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find("not valid JSON"), std::string::npos) << message;
}

TEST_F(SafetensorsTest, HeaderThatIsNotAnObject) {
  const std::string message = open_error(write_raw("[1, 2, 3]", ""));
  EXPECT_NE(message.find("must be an object"), std::string::npos) << message;
}

TEST_F(SafetensorsTest, UnknownDtype) {
  const std::string message =
      open_error(write_raw(R"({"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')));
  EXPECT_NE(message.find("tensor 'w'"), std::string::npos) << message;
  EXPECT_NE(message.find("unknown dtype 'F33'"), std::string::npos) << message;
}

TEST_F(SafetensorsTest, OffsetsOutOfRange) {
  const std::string message =
      open_error(write_raw(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", std::string(16, '\0')));
  EXPECT_NE(message.find("tensor 'w'"), std::string::npos) << message;
  EXPECT_NE(message.find("out of range"), std::string::npos) << message;
  EXPECT_NE(message.find("16 bytes"), std::string::npos) << message;
}

TEST_F(SafetensorsTest, OffsetsEndBeforeBegin) {
  const std::string message =
      open_error(write_raw(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", std::string(16, '\0')));
  EXPECT_NE(message.find("end before begin"), std::string::npos) << message;
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})";
  const std::string message = open_error(write_raw(header, std::string(24, '\0')));
  EXPECT_NE(message.find("overlap"), std::string::npos) << message;
  EXPECT_NE(message.find("'a'"), std::string::npos) << message;
  EXPECT_NE(message.find("'b'"), std::string::npos) << message;
}

TEST_F(SafetensorsTest, ShapeTimesDtypeDisagreesWithOffsets) {
  // [2, 3] x F32 = 24 bytes, but the range spans 20.
  const std::string message =
      open_error(write_raw(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})", std::string(24, '\0')));
  EXPECT_NE(message.find("tensor 'w'"), std::string::npos) << message;
  EXPECT_NE(message.find("24 bytes"), std::string::npos) << message;
  EXPECT_NE(message.find("span 20"), std::string::npos) << message;
}

TEST_F(SafetensorsTest, ShapeProductOverflowIsRefused) {
  const std::string message = open_error(
      write_raw(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", std::string(4, '\0')));
  EXPECT_NE(message.find("overflows"), std::string::npos) << message;
}

TEST_F(SafetensorsTest, NegativeShapeAndMissingFields) {
  EXPECT_NE(open_error(write_raw(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, '\0')))
                .find("non-negative"),
            std::string::npos);
  EXPECT_NE(open_error(write_raw(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", std::string(4, '\0'))).find("shape"),
            std::string::npos);
  EXPECT_NE(open_error(write_raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", std::string(4, '\0')))
                .find("data_offsets"),
            std::string::npos);
  EXPECT_NE(open_error(write_raw(R"({"__metadata__":{"format":1}})", "")).find("__metadata__"), std::string::npos);
}

TEST_F(SafetensorsTest, MissingFileAndDirectory) {
  EXPECT_NE(open_error((dir_ / "nope.safetensors").string()).find("cannot open"), std::string::npos);
  EXPECT_NE(open_error(dir_.string()).find("directory"), std::string::npos);
}

}  // namespace
