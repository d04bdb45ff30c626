// core/checkpoint read side against files that lie (docs/security.md): non-finite weights and
// moments, trainer-state numbers that resume would index or divide by, tokenizer attributes,
// datasets whose declared size the file does not store, model configs beyond the limits, and
// strings in either HDF5 character set. Each case edits a valid checkpoint through the HDF5 API
// and expects one error naming the file and the object.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/parameters.h"
#include "data/token_cache.h"

namespace fs = std::filesystem;
using namespace llmqs::core;

namespace {

Checkpoint small_checkpoint() {
  Checkpoint c;
  c.model.vocab_size = 30;
  c.model.hidden_size = 8;
  c.model.num_hidden_layers = 1;
  c.model.num_attention_heads = 2;
  c.model.intermediate_size = 16;
  c.model.max_position_embeddings = 16;
  c.model.num_labels = 3;
  const size_t n = ParameterLayout::for_bert(c.model).total_numel();
  c.parameters.assign(n, 0.25f);
  c.adam_m.assign(n, 0.01f);
  c.adam_v.assign(n, 0.001f);
  c.trainer.global_step = 10;
  c.trainer.max_steps = 20;
  c.trainer.sampler_epoch = 1;
  c.trainer.sampler_position = 4;
  c.trainer.world_size = 2;
  c.trainer.global_batch_size = 8;
  c.tokenizer.vocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "good"};
  c.tokenizer.max_length = 16;
  c.tokenizer.label_offset = 1;
  return c;
}

class CheckpointValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    dir_ = fs::temp_directory_path() / ("llmqs_ck_validation_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    file_ = (dir_ / "checkpoint-10.h5").string();
    write_checkpoint(file_, small_checkpoint());
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Opens file_ for writing for the duration of `edit`.
  template <typename Edit>
  void edit(Edit edit) {
    const hid_t file = H5Fopen(file_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    edit(file);
    ASSERT_GE(H5Fclose(file), 0);
  }

  // Replaced rather than rewritten in place: HDF5 1.10 cannot H5Awrite an attribute opened by
  // name among many ("can't locate open attribute").
  static void set_int(hid_t file, const char* object, const char* name, int64_t value) {
    ASSERT_GE(H5Adelete_by_name(file, object, name, H5P_DEFAULT), 0) << object << "@" << name;
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attribute = H5Acreate_by_name(file, object, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT,
                                              H5P_DEFAULT);
    ASSERT_GE(attribute, 0) << object << "@" << name;
    ASSERT_GE(H5Awrite(attribute, H5T_NATIVE_INT64, &value), 0);
    H5Aclose(attribute);
    H5Sclose(space);
  }

  static void set_float(hid_t file, const char* dataset_name, size_t index, float value) {
    const hid_t dataset = H5Dopen2(file, dataset_name, H5P_DEFAULT);
    ASSERT_GE(dataset, 0) << dataset_name;
    const hid_t space = H5Dget_space(dataset);
    std::vector<float> values(static_cast<size_t>(H5Sget_simple_extent_npoints(space)));
    ASSERT_GE(H5Dread(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
    values.at(index) = value;
    ASSERT_GE(H5Dwrite(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
    H5Sclose(space);
    H5Dclose(dataset);
  }

  // The message of the exception `read` throws; fails the test when it does not throw.
  template <typename Read>
  std::string error_of(Read read) {
    try {
      read();
    } catch (const std::exception& e) {
      return e.what();
    }
    ADD_FAILURE() << "accepted " << file_;
    return "";
  }

  void expect_refused(std::initializer_list<std::string> fragments, bool summary_too = true) {
    const std::string full = error_of([&] { read_checkpoint(file_); });
    EXPECT_EQ(full.rfind(file_ + ": ", 0), 0u) << full;
    for (const auto& f : fragments) EXPECT_NE(full.find(f), std::string::npos) << "'" << f << "' not in: " << full;
    if (summary_too) {
      const std::string summary = error_of([&] { read_checkpoint_summary(file_); });
      EXPECT_EQ(summary, full);
    }
  }

  fs::path dir_;
  std::string file_;
};

}  // namespace

TEST_F(CheckpointValidationTest, TheUneditedCheckpointReads) {
  const Checkpoint c = read_checkpoint(file_);
  EXPECT_EQ(c.trainer.sampler_position, 4);
  EXPECT_EQ(c.parameters.front(), 0.25f);
}

TEST_F(CheckpointValidationTest, NonFiniteWeightsAndMomentsAreRefusedNamingTheTensorAndIndex) {
  edit([](hid_t f) { set_float(f, "/model/classifier.weight", 9, std::numeric_limits<float>::quiet_NaN()); });
  // classifier.weight is [3, 8]: flat index 9 is [1, 1].
  expect_refused({"dataset /model/classifier.weight holds a non-finite value (nan) at [1, 1]"}, false);
  // inspect (the summary) reads no tensors and still answers.
  EXPECT_EQ(read_checkpoint_summary(file_).trainer.global_step, 10);

  edit([](hid_t f) {
    set_float(f, "/model/classifier.weight", 9, 0.5f);
    set_float(f, "/optimizer/exp_avg_sq/bert.pooler.dense.bias", 2, -std::numeric_limits<float>::infinity());
  });
  expect_refused({"/optimizer/exp_avg_sq/bert.pooler.dense.bias holds a non-finite value (-inf) at [2]"}, false);
}

TEST_F(CheckpointValidationTest, TrainerStateThatResumeWouldMisuseIsRefused) {
  edit([](hid_t f) { set_int(f, "/trainer", "world_size", 0); });
  expect_refused({"/trainer@world_size 0 is below 1"});
  edit([](hid_t f) {
    set_int(f, "/trainer", "world_size", 3);  // global_batch_size 8 cannot be split over 3 ranks
  });
  expect_refused({"/trainer@global_batch_size 8 is not a multiple of world_size 3"});
  edit([](hid_t f) {
    set_int(f, "/trainer", "world_size", 2);
    set_int(f, "/trainer", "sampler_position", int64_t{1} << 62);
  });
  expect_refused({"/trainer@sampler_position 4611686018427387904 is outside [0, global_step 10]"});
  edit([](hid_t f) {
    set_int(f, "/trainer", "sampler_position", 4);
    set_int(f, "/trainer", "skipped_steps", 11);
  });
  expect_refused({"/trainer@skipped_steps 11 is outside [0, global_step 10]"});
  edit([](hid_t f) {
    set_int(f, "/trainer", "skipped_steps", 0);
    set_int(f, "/trainer", "sampler_epoch", -1);
  });
  expect_refused({"/trainer@sampler_epoch -1"});
}

TEST_F(CheckpointValidationTest, TokenizerAttributesOutOfRangeAreRefused) {
  edit([](hid_t f) { set_int(f, "/tokenizer", "max_length", 1); });
  expect_refused({"/tokenizer@max_length 1 is outside [2, max_position_embeddings 16]"});
  edit([](hid_t f) {
    set_int(f, "/tokenizer", "max_length", 16);
    set_int(f, "/tokenizer", "label_offset", std::numeric_limits<int32_t>::max() - 1);
  });
  expect_refused({"/tokenizer@label_offset 2147483646 is outside [0, 2147483644]"});
}

TEST_F(CheckpointValidationTest, ADatasetTheFileDoesNotStoreIsRefusedBeforeItIsRead) {
  // The word embeddings replaced by a chunked dataset of the right shape whose chunks were never
  // written: HDF5 would read fill values (zeros) without complaint.
  edit([](hid_t f) {
    ASSERT_GE(H5Ldelete(f, "/model/bert.embeddings.word_embeddings.weight", H5P_DEFAULT), 0);
    const hsize_t dims[2] = {30, 8}, chunk[2] = {10, 8};
    const hid_t space = H5Screate_simple(2, dims, nullptr);
    const hid_t create = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(create, 2, chunk);
    const hid_t dataset = H5Dcreate2(f, "/model/bert.embeddings.word_embeddings.weight", H5T_IEEE_F32LE, space,
                                     H5P_DEFAULT, create, H5P_DEFAULT);
    ASSERT_GE(dataset, 0);
    H5Dclose(dataset);
    H5Pclose(create);
    H5Sclose(space);
  });
  expect_refused({"dataset /model/bert.embeddings.word_embeddings.weight declares 240 elements (960 bytes) but the "
                  "file stores 0 bytes for it: unwritten or damaged"});
}

TEST_F(CheckpointValidationTest, ModelConfigBeyondTheLimitsIsRefusedBeforeTheLayoutIsBuilt) {
  edit([](hid_t f) { set_int(f, "/model_config", "num_hidden_layers", 100000); });
  expect_refused({"/model_config: num_hidden_layers must be at most 1024, got 100000"});
  edit([](hid_t f) {
    set_int(f, "/model_config", "num_hidden_layers", 1);
    set_int(f, "/model_config", "hidden_size", 1 << 20);
    set_int(f, "/model_config", "num_attention_heads", 1);
  });
  expect_refused({"/model_config: the model would have", "more than the limit of 17179869184"});
}

TEST_F(CheckpointValidationTest, StringsInEitherCharacterSetAndATokenCacheSaySo) {
  // h5py writes Python bytes as variable-length ASCII; we write UTF-8. Both must read.
  edit([](hid_t f) {
    ASSERT_GE(H5Adelete(f, "schema"), 0);
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_ASCII);
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attribute = H5Acreate2(f, "schema", type, space, H5P_DEFAULT, H5P_DEFAULT);
    const char* text = kCheckpointSchema;
    ASSERT_GE(H5Awrite(attribute, type, &text), 0);
    H5Aclose(attribute);
    H5Sclose(space);
    H5Tclose(type);
  });
  EXPECT_EQ(read_checkpoint_summary(file_).trainer.global_step, 10);

  // A token cache stores its schema as a fixed-length UTF-8 string.
  const std::string cache = (dir_ / "train.h5").string();
  llmqs::data::TokenCacheInfo info;
  info.max_length = 8;
  info.num_labels = 2;
  llmqs::data::RaggedTokens tokens;
  const int32_t ids[] = {2, 4, 3};
  tokens.append(ids, 3, 1);
  llmqs::data::write_token_cache(cache, info, tokens);
  const std::string message = error_of([&] { read_checkpoint_summary(cache); });
  EXPECT_EQ(message, cache + ": not an llmqs-dist checkpoint: it is a token cache (made by llmqs-dist prepare); give "
                             "it as --train_file or --validation_file");
}
