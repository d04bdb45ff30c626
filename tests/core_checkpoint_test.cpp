// core/checkpoint and core/hf_model_dir: bit-exact round trips; broken files (truncated,
// garbage, wrong schema, edited shapes) refused with the file named; find_latest and rotation
// rules; failed writes leave nothing behind; HF folders import (BertModel naming, fresh head)
// and export back to the same numbers.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/hf_model_dir.h"
#include "core/parameters.h"
#include "core/safetensors.h"

namespace fs = std::filesystem;
using namespace llmqs::core;

namespace {

BertConfig tiny_config() {
  BertConfig c;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.intermediate_size = 24;
  c.max_position_embeddings = 32;
  c.num_labels = 3;
  c.hidden_dropout_prob = 0.05f;
  c.classifier_dropout = 0.2f;
  c.layer_norm_eps = 1e-7f;
  return c;
}

// Deterministic values that include the awkward ones (-0, subnormals, huge, tiny).
std::vector<float> pattern(size_t n, uint32_t seed) {
  std::vector<float> v(n);
  uint32_t state = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    state = state * 1664525u + 1013904223u;
    v[i] = (static_cast<float>(state >> 8) / 16777216.0f - 0.5f) * 0.1f;
  }
  if (n > 4) {
    v[0] = -0.0f;
    v[1] = 1e-40f;
    v[2] = 3.4e38f;
    v[3] = -1e-30f;
  }
  return v;
}

std::vector<std::string> tiny_vocab() {
  std::vector<std::string> vocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "food", "##s", "café", "naïve"};
  for (int i = 0; i < 20; ++i) vocab.push_back("w" + std::to_string(i));
  return vocab;
}

Checkpoint make_checkpoint(bool with_optimizer) {
  Checkpoint c;
  c.model = tiny_config();
  const size_t n = ParameterLayout::for_bert(c.model).total_numel();
  c.parameters = pattern(n, 1);
  if (with_optimizer) {
    c.adam_m = pattern(n, 2);
    c.adam_v = pattern(n, 3);
    for (float& v : c.adam_v) v = std::fabs(v);
  }
  TrainerState& t = c.trainer;
  t.global_step = 1234;
  t.max_steps = 5000;
  t.epoch = 1.2345678901234;
  t.samples_seen = 19744;
  t.sampler_epoch = 1;
  t.sampler_position = 117;
  t.seed = 0xFEEDFACECAFEBEEFull;
  t.loss_scale = 32768.0f;
  t.loss_scale_good_steps = 1717;
  t.skipped_steps = 3;
  t.world_size = 4;
  t.global_batch_size = 64;
  t.precision = "fp16";
  t.best_metric = 0.6125;
  t.best_checkpoint = "checkpoint-1000.h5";
  t.log_history = {R"({"step":10,"epoch":0.01,"loss":1.61,"learning_rate":5e-05,"grad_norm":3.2})",
                   R"({"step":1000,"epoch":1.0,"eval_loss":1.02,"eval_accuracy":0.6125,"eval_macro_f1":0.6})",
                   R"({"step":1234,"epoch":1.23,"loss":0.98,"learning_rate":4e-05,"grad_norm":2.5})"};
  c.config_ini = "# llmqs-dist train: effective configuration\nlearning_rate = 5e-05\nnote = \"naïve café\"\n";
  c.tokenizer.vocab = tiny_vocab();
  c.tokenizer.do_lower_case = true;
  c.tokenizer.max_length = 24;
  c.tokenizer.label_offset = 1;
  return c;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(float)) == 0; }

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    dir_ = fs::temp_directory_path() / ("llmqs_checkpoint_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // The message read_checkpoint throws for `file`; fails the test when it does not throw.
  static std::string read_error(const std::string& file) {
    try {
      read_checkpoint(file);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    ADD_FAILURE() << "read_checkpoint accepted " << file;
    return "";
  }

  std::vector<std::string> files_in_dir() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path dir_;
};

TEST_F(CheckpointTest, RoundTripIsBitExact) {
  const Checkpoint original = make_checkpoint(true);
  const std::string file = checkpoint_path(dir_.string(), original.trainer.global_step);
  EXPECT_EQ(fs::path(file).filename().string(), "checkpoint-1234.h5");
  write_checkpoint(file, original);
  EXPECT_EQ(files_in_dir(), std::vector<std::string>{"checkpoint-1234.h5"});  // no tmp left

  const Checkpoint back = read_checkpoint(file);
  EXPECT_TRUE(same_bits(back.parameters, original.parameters));
  EXPECT_TRUE(same_bits(back.adam_m, original.adam_m));
  EXPECT_TRUE(same_bits(back.adam_v, original.adam_v));
  EXPECT_TRUE(back.has_optimizer_state());

  const BertConfig &m = back.model, &o = original.model;
  EXPECT_EQ(m.vocab_size, o.vocab_size);
  EXPECT_EQ(m.hidden_size, o.hidden_size);
  EXPECT_EQ(m.num_hidden_layers, o.num_hidden_layers);
  EXPECT_EQ(m.num_attention_heads, o.num_attention_heads);
  EXPECT_EQ(m.intermediate_size, o.intermediate_size);
  EXPECT_EQ(m.max_position_embeddings, o.max_position_embeddings);
  EXPECT_EQ(m.type_vocab_size, o.type_vocab_size);
  EXPECT_EQ(m.num_labels, o.num_labels);
  EXPECT_EQ(m.pad_token_id, o.pad_token_id);
  EXPECT_TRUE(same_bits(m.layer_norm_eps, o.layer_norm_eps));
  EXPECT_TRUE(same_bits(m.hidden_dropout_prob, o.hidden_dropout_prob));
  EXPECT_TRUE(same_bits(m.attention_probs_dropout_prob, o.attention_probs_dropout_prob));
  EXPECT_TRUE(same_bits(m.classifier_dropout, o.classifier_dropout));
  EXPECT_TRUE(same_bits(m.initializer_range, o.initializer_range));

  const TrainerState &t = back.trainer, &u = original.trainer;
  EXPECT_EQ(t.global_step, u.global_step);
  EXPECT_EQ(t.max_steps, u.max_steps);
  EXPECT_EQ(t.epoch, u.epoch);  // double, exact
  EXPECT_EQ(t.samples_seen, u.samples_seen);
  EXPECT_EQ(t.sampler_epoch, u.sampler_epoch);
  EXPECT_EQ(t.sampler_position, u.sampler_position);
  EXPECT_EQ(t.seed, u.seed);  // all 64 bits
  EXPECT_EQ(t.loss_scale, u.loss_scale);
  EXPECT_EQ(t.loss_scale_good_steps, u.loss_scale_good_steps);
  EXPECT_EQ(t.skipped_steps, u.skipped_steps);
  EXPECT_EQ(t.world_size, u.world_size);
  EXPECT_EQ(t.global_batch_size, u.global_batch_size);
  EXPECT_EQ(t.precision, u.precision);
  EXPECT_EQ(t.best_metric, u.best_metric);
  EXPECT_EQ(t.best_checkpoint, u.best_checkpoint);
  EXPECT_EQ(t.log_history, u.log_history);
  EXPECT_EQ(back.config_ini, original.config_ini);
  EXPECT_EQ(back.tokenizer.vocab, original.tokenizer.vocab);
  EXPECT_EQ(back.tokenizer.do_lower_case, true);
  EXPECT_EQ(back.tokenizer.max_length, 24);
  EXPECT_EQ(back.tokenizer.label_offset, 1);

  const CheckpointSummary summary = read_checkpoint_summary(file);
  EXPECT_TRUE(summary.has_optimizer_state);
  EXPECT_EQ(summary.optimizer_step, 1234 - 3);  // AdamW steps: skipped fp16 steps do not count
  EXPECT_EQ(summary.parameter_count, original.parameters.size());
  EXPECT_EQ(summary.trainer.log_history.size(), 3u);
}

TEST_F(CheckpointTest, WithoutOptimizerStateAndWithEmptyHistory) {
  Checkpoint original = make_checkpoint(false);
  original.trainer.log_history.clear();
  original.config_ini.clear();
  original.tokenizer.vocab.clear();
  write_checkpoint(path("imported.h5"), original);
  const Checkpoint back = read_checkpoint(path("imported.h5"));
  EXPECT_FALSE(back.has_optimizer_state());
  EXPECT_TRUE(back.adam_v.empty());
  EXPECT_TRUE(same_bits(back.parameters, original.parameters));
  EXPECT_TRUE(back.trainer.log_history.empty());
  EXPECT_TRUE(back.config_ini.empty());
  EXPECT_TRUE(back.tokenizer.vocab.empty());
}

// The schema as other tools see it: HF names and shapes under /model, root attributes.
TEST_F(CheckpointTest, SchemaIsPlainHdf5WithHfNames) {
  const Checkpoint original = make_checkpoint(true);
  write_checkpoint(path("c.h5"), original);
  const hid_t file = H5Fopen(path("c.h5").c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  const hid_t dataset = H5Dopen2(file, "/model/bert.encoder.layer.1.intermediate.dense.weight", H5P_DEFAULT);
  ASSERT_GE(dataset, 0);
  const hid_t space = H5Dget_space(dataset);
  hsize_t dims[2] = {0, 0};
  ASSERT_EQ(H5Sget_simple_extent_ndims(space), 2);
  H5Sget_simple_extent_dims(space, dims, nullptr);
  EXPECT_EQ(dims[0], 24u);  // [intermediate, hidden] as torch.nn.Linear
  EXPECT_EQ(dims[1], 16u);
  const ParameterLayout layout = ParameterLayout::for_bert(original.model);  // outlives `info`
  const ParameterInfo& info = layout.find("bert.encoder.layer.1.intermediate.dense.weight");
  std::vector<float> values(info.numel);
  ASSERT_GE(H5Dread(dataset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
  EXPECT_EQ(std::memcmp(values.data(), original.parameters.data() + info.offset, info.numel * 4), 0);
  int64_t version = 0;
  const hid_t attribute = H5Aopen(file, "schema_version", H5P_DEFAULT);
  H5Aread(attribute, H5T_NATIVE_INT64, &version);
  EXPECT_EQ(version, 1);
  EXPECT_GT(H5Lexists(file, "/optimizer/exp_avg_sq/classifier.bias", H5P_DEFAULT), 0);
  EXPECT_GT(H5Aexists_by_name(file, "/trainer", "sampler_position", H5P_DEFAULT), 0);
  H5Aclose(attribute);
  H5Sclose(space);
  H5Dclose(dataset);
  H5Fclose(file);
}

TEST_F(CheckpointTest, TruncatedFileIsRefusedNamingTheFile) {
  write_checkpoint(path("good.h5"), make_checkpoint(true));
  std::ifstream in(path("good.h5"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (size_t keep : {bytes.size() / 2, size_t{600}, size_t{100}, size_t{0}}) {
    const std::string cut = path("cut-" + std::to_string(keep) + ".h5");
    std::ofstream(cut, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(keep));
    const std::string message = read_error(cut);
    EXPECT_NE(message.find(cut), std::string::npos) << message;
  }
  EXPECT_NE(read_error(path("cut-0.h5")).find("not an HDF5 file"), std::string::npos);
}

TEST_F(CheckpointTest, GarbageAndMissingFilesAreRefused) {
  const std::string garbage = path("checkpoint-7.h5");
  std::ofstream(garbage, std::ios::binary) << std::string(4096, 'x');
  const std::string message = read_error(garbage);
  EXPECT_NE(message.find(garbage), std::string::npos) << message;
  EXPECT_NE(message.find("not an HDF5 file"), std::string::npos) << message;
  EXPECT_NE(read_error(path("absent.h5")).find("no such file"), std::string::npos);
  EXPECT_NE(read_error(dir_.string()).find("directory"), std::string::npos);

  // Valid HDF5 that is not a checkpoint.
  const hid_t file = H5Fcreate(path("other.h5").c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  H5Fclose(file);
  EXPECT_NE(read_error(path("other.h5")).find("'schema' is missing"), std::string::npos);
}

// Opens `file` read-write so a test can damage one thing in it.
class Edit {
 public:
  explicit Edit(const std::string& file) : id_(H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT)) {}
  ~Edit() { H5Fclose(id_); }
  hid_t id() const { return id_; }

 private:
  hid_t id_;
};

void replace_int_attribute(hid_t location, const char* object, const char* name, int64_t value) {
  H5Adelete_by_name(location, object, name, H5P_DEFAULT);
  const hid_t space = H5Screate(H5S_SCALAR);
  const hid_t attribute = H5Acreate_by_name(location, object, name, H5T_NATIVE_INT64, space, H5P_DEFAULT, H5P_DEFAULT,
                                            H5P_DEFAULT);
  H5Awrite(attribute, H5T_NATIVE_INT64, &value);
  H5Aclose(attribute);
  H5Sclose(space);
}

TEST_F(CheckpointTest, WrongSchemaVersionIsRefused) {
  const std::string file = path("v2.h5");
  write_checkpoint(file, make_checkpoint(true));
  {
    Edit edit(file);
    replace_int_attribute(edit.id(), "/", "schema_version", 2);
  }
  const std::string message = read_error(file);
  EXPECT_NE(message.find(file), std::string::npos) << message;
  EXPECT_NE(message.find("schema_version 2"), std::string::npos) << message;
}

TEST_F(CheckpointTest, LossScaleGoodStepsOfOlderCheckpointsReadAsZeroAndNegativeIsRefused) {
  // Checkpoints written before /trainer@loss_scale_good_steps existed still resume (the fp16
  // growth count restarts, as it did then); a negative count is damage.
  const std::string file = path("older.h5");
  write_checkpoint(file, make_checkpoint(true));
  {
    Edit edit(file);
    ASSERT_GE(H5Adelete_by_name(edit.id(), "/trainer", "loss_scale_good_steps", H5P_DEFAULT), 0);
  }
  EXPECT_EQ(read_checkpoint_summary(file).trainer.loss_scale_good_steps, 0);
  EXPECT_EQ(read_checkpoint(file).trainer.loss_scale, 32768.0f);
  {
    Edit edit(file);
    replace_int_attribute(edit.id(), "/trainer", "loss_scale_good_steps", -5);
  }
  const std::string message = read_error(file);
  EXPECT_NE(message.find("/trainer@loss_scale_good_steps is negative"), std::string::npos) << message;
}

TEST_F(CheckpointTest, DatasetShapeMismatchIsRefusedNamingTheDataset) {
  const std::string file = path("edited.h5");
  write_checkpoint(file, make_checkpoint(true));
  {
    Edit edit(file);
    ASSERT_GE(H5Ldelete(edit.id(), "/model/classifier.weight", H5P_DEFAULT), 0);
    const hsize_t dims[2] = {4, 16};  // 4 labels where /model_config says 3
    const hid_t space = H5Screate_simple(2, dims, nullptr);
    const hid_t dataset = H5Dcreate2(edit.id(), "/model/classifier.weight", H5T_IEEE_F32LE, space, H5P_DEFAULT,
                                     H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(dataset);
    H5Sclose(space);
  }
  const std::string message = read_error(file);
  EXPECT_NE(message.find(file), std::string::npos) << message;
  EXPECT_NE(message.find("/model/classifier.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("[4, 16]"), std::string::npos) << message;
  EXPECT_NE(message.find("[3, 16]"), std::string::npos) << message;
}

TEST_F(CheckpointTest, ModelConfigThatDisagreesWithTheWeightsIsRefused) {
  const std::string file = path("config.h5");
  write_checkpoint(file, make_checkpoint(true));
  {
    Edit edit(file);
    replace_int_attribute(edit.id(), "/model_config", "intermediate_size", 30);
  }
  const std::string message = read_error(file);
  EXPECT_NE(message.find("bert.encoder.layer.0.intermediate.dense.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("[30, 16]"), std::string::npos) << message;
}

TEST_F(CheckpointTest, MissingOptimizerDatasetIsRefused) {
  const std::string file = path("moments.h5");
  write_checkpoint(file, make_checkpoint(true));
  {
    Edit edit(file);
    ASSERT_GE(H5Ldelete(edit.id(), "/optimizer/exp_avg/bert.pooler.dense.bias", H5P_DEFAULT), 0);
  }
  const std::string message = read_error(file);
  EXPECT_NE(message.find("/optimizer/exp_avg/bert.pooler.dense.bias is missing"), std::string::npos) << message;
}

TEST_F(CheckpointTest, FindLatestPicksHighestCompleteStep) {
  EXPECT_EQ(find_latest_checkpoint(path("does-not-exist")), "");
  EXPECT_EQ(find_latest_checkpoint(dir_.string()), "");
  Checkpoint c = make_checkpoint(true);
  write_checkpoint(checkpoint_path(dir_.string(), 2), c);
  write_checkpoint(checkpoint_path(dir_.string(), 10), c);  // 10 > 2 although "10" < "2" as text
  write_checkpoint(path("checkpoint-40.h5.tmp.12345"), c);  // a write that never finished
  std::ofstream(path("checkpoint-30.h5"), std::ios::binary) << "half a file";
  write_checkpoint(path("checkpoint-x.h5"), c);
  write_checkpoint(path("model-50.h5"), c);
  fs::create_directory(path("checkpoint-60.h5"));
  EXPECT_EQ(find_latest_checkpoint(dir_.string()), checkpoint_path(dir_.string(), 10));

  fs::remove(checkpoint_path(dir_.string(), 10));
  EXPECT_EQ(find_latest_checkpoint(dir_.string()), checkpoint_path(dir_.string(), 2));
  EXPECT_EQ(checkpoint_step_from_name("/a/b/checkpoint-0012.h5"), 12);
  EXPECT_EQ(checkpoint_step_from_name("checkpoint-12.h5.tmp.9"), -1);
  EXPECT_EQ(checkpoint_step_from_name("checkpoint-.h5"), -1);
  EXPECT_EQ(checkpoint_step_from_name("checkpoint-1e3.h5"), -1);
}

TEST_F(CheckpointTest, RotationNeverDeletesTheNewestOrTheKeptOne) {
  auto touch = [&](const std::string& name) { std::ofstream(path(name)) << "x"; };
  for (int step : {100, 200, 300, 400, 500, 600}) touch("checkpoint-" + std::to_string(step) + ".h5");
  touch("checkpoint-700.h5.tmp.1");
  touch("metrics.jsonl");

  rotate_checkpoints(dir_.string(), 0, "");  // 0: keep all
  EXPECT_EQ(files_in_dir().size(), 8u);

  rotate_checkpoints(dir_.string(), 3, path("checkpoint-200.h5"));
  EXPECT_EQ(files_in_dir(), (std::vector<std::string>{"checkpoint-200.h5", "checkpoint-500.h5", "checkpoint-600.h5",
                                                      "checkpoint-700.h5.tmp.1", "metrics.jsonl"}));

  // A limit of 1 with a best checkpoint that is not the newest keeps both.
  rotate_checkpoints(dir_.string(), 1, "checkpoint-200.h5");
  EXPECT_EQ(files_in_dir(), (std::vector<std::string>{"checkpoint-200.h5", "checkpoint-600.h5",
                                                      "checkpoint-700.h5.tmp.1", "metrics.jsonl"}));

  // The newest survives even when it is not `keep`, and even with limit 1.
  rotate_checkpoints(dir_.string(), 1, "");
  EXPECT_EQ(files_in_dir(),
            (std::vector<std::string>{"checkpoint-600.h5", "checkpoint-700.h5.tmp.1", "metrics.jsonl"}));
}

TEST_F(CheckpointTest, FailedWritesLeaveNoFileAndNoTmp) {
  Checkpoint bad = make_checkpoint(true);
  bad.parameters.pop_back();
  EXPECT_THROW(write_checkpoint(path("checkpoint-1.h5"), bad), std::invalid_argument);
  Checkpoint bad_moments = make_checkpoint(true);
  bad_moments.adam_v.clear();
  EXPECT_THROW(write_checkpoint(path("checkpoint-2.h5"), bad_moments), std::invalid_argument);
  Checkpoint bad_config = make_checkpoint(true);
  bad_config.model.num_attention_heads = 5;
  EXPECT_THROW(write_checkpoint(path("checkpoint-3.h5"), bad_config), std::invalid_argument);
  EXPECT_TRUE(files_in_dir().empty());

  // The rename fails (a non-empty directory sits at the path): the finished tmp must go.
  fs::create_directories(path("checkpoint-4.h5/occupied"));
  try {
    write_checkpoint(path("checkpoint-4.h5"), make_checkpoint(true));
    FAIL() << "wrote over a directory";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(path("checkpoint-4.h5")), std::string::npos) << e.what();
  }
  EXPECT_EQ(files_in_dir(), std::vector<std::string>{"checkpoint-4.h5"});
  EXPECT_TRUE(fs::is_directory(path("checkpoint-4.h5/occupied")));

  // The directory does not exist: nothing is created anywhere.
  EXPECT_THROW(write_checkpoint(path("missing/checkpoint-5.h5"), make_checkpoint(true)), std::runtime_error);
  EXPECT_FALSE(fs::exists(path("missing")));
}

// ---- HF folders --------------------------------------------------------------------------------

class HfModelDirTest : public CheckpointTest {
 protected:
  // A BertModel folder as sentence-transformers ships it: names without "bert.", no classifier,
  // an I64 position_ids buffer, optionally no pooler.
  void write_bert_model_folder(const std::string& dir, const BertConfig& config, bool with_pooler,
                               std::vector<float>* params_out) {
    fs::create_directories(dir);
    const ParameterLayout layout = ParameterLayout::for_bert(config);
    *params_out = pattern(layout.total_numel(), 7);
    std::vector<SafetensorsF32Tensor> tensors;
    for (const auto& p : layout.parameters()) {
      if (p.name.rfind("classifier.", 0) == 0) continue;
      if (!with_pooler && p.name.rfind("bert.pooler.", 0) == 0) continue;
      tensors.push_back({p.name.substr(5), p.shape, params_out->data() + p.offset});
    }
    write_safetensors_f32(dir + "/model.safetensors", tensors, {{"format", "pt"}});
    nlohmann::json j = {{"architectures", {"BertModel"}}, {"model_type", "bert"},
                        {"vocab_size", config.vocab_size}, {"hidden_size", config.hidden_size},
                        {"num_hidden_layers", config.num_hidden_layers},
                        {"num_attention_heads", config.num_attention_heads},
                        {"intermediate_size", config.intermediate_size},
                        {"max_position_embeddings", config.max_position_embeddings},
                        {"type_vocab_size", 2}, {"pad_token_id", 0}, {"layer_norm_eps", 1e-12},
                        {"hidden_dropout_prob", 0.1}, {"attention_probs_dropout_prob", 0.1},
                        {"initializer_range", 0.02}, {"hidden_act", "gelu"}};
    std::ofstream(dir + "/config.json") << j.dump(2);
    std::ofstream vocab(dir + "/vocab.txt");
    for (const auto& token : tiny_vocab()) vocab << token << "\r\n";  // CRLF, as some Windows-made vocabularies
    vocab.close();
    std::ofstream(dir + "/tokenizer_config.json")
        << R"({"do_lower_case": false, "model_max_length": 1000000000000000019884624838656, "tokenizer_class": "BertTokenizer"})";
  }
};

TEST_F(HfModelDirTest, BertModelFolderImportsWithAFreshHead) {
  BertConfig config = tiny_config();
  const std::string dir = path("minibert");
  std::vector<float> file_params;
  write_bert_model_folder(dir, config, /*with_pooler=*/false, &file_params);

  HfImportOptions options;
  options.num_labels = 5;
  options.seed = 7;
  HfImportReport report;
  const Checkpoint c = import_hf_model_dir(dir, options, &report);
  EXPECT_EQ(c.model.num_labels, 5);
  EXPECT_EQ(c.model.hidden_size, 16);
  EXPECT_FALSE(c.has_optimizer_state());
  EXPECT_FALSE(report.prefix_note.empty());
  EXPECT_EQ(report.initialised_fresh,
            (std::vector<std::string>{"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight",
                                      "classifier.bias"}));

  // Every tensor of the file lands at its HF name, bit for bit.
  const ParameterLayout file_layout = ParameterLayout::for_bert(config);
  config.num_labels = 5;
  const ParameterLayout layout = ParameterLayout::for_bert(config);
  for (const auto& p : file_layout.parameters()) {
    if (p.name.rfind("classifier.", 0) == 0 || p.name.rfind("bert.pooler.", 0) == 0) continue;
    EXPECT_EQ(std::memcmp(c.parameters.data() + layout.find(p.name).offset, file_params.data() + p.offset, p.numel * 4), 0)
        << p.name;
  }
  // The fresh head is HF's init: normal(0, 0.02) weights (our seeded initialiser), zero biases.
  std::vector<float> fresh(layout.total_numel());
  init_bert_parameters(c.model, layout, 7, fresh.data());
  const ParameterInfo& head = layout.find("classifier.weight");
  EXPECT_EQ(std::memcmp(c.parameters.data() + head.offset, fresh.data() + head.offset, head.numel * 4), 0);
  double sum_sq = 0;
  for (size_t i = 0; i < head.numel; ++i) sum_sq += c.parameters[head.offset + i] * c.parameters[head.offset + i];
  EXPECT_GT(sum_sq, 0.0);
  EXPECT_LT(std::sqrt(sum_sq / head.numel), 0.04);
  const ParameterInfo& bias = layout.find("classifier.bias");
  for (size_t i = 0; i < bias.numel; ++i) EXPECT_EQ(c.parameters[bias.offset + i], 0.0f);

  EXPECT_EQ(c.tokenizer.vocab, tiny_vocab());  // CR stripped
  EXPECT_FALSE(c.tokenizer.do_lower_case);
  EXPECT_EQ(c.tokenizer.max_length, 32);  // 1e30 "no limit" capped at max_position_embeddings
  EXPECT_EQ(c.tokenizer.label_offset, 0);

  // Another seed gives another head but the same encoder.
  options.seed = 8;
  const Checkpoint other = import_hf_model_dir(dir, options, nullptr);
  EXPECT_NE(std::memcmp(other.parameters.data() + head.offset, c.parameters.data() + head.offset, head.numel * 4), 0);
  EXPECT_EQ(std::memcmp(other.parameters.data(), c.parameters.data(), layout.find("bert.pooler.dense.weight").offset * 4), 0);
}

TEST_F(HfModelDirTest, ExportThenImportGivesTheSameCheckpoint) {
  const Checkpoint original = make_checkpoint(true);
  const std::string out = path("exported");
  const std::vector<std::string> files = export_hf_model_dir(original, out, false);
  EXPECT_EQ(files.size(), 6u);
  for (const char* name : {"config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
                           "special_tokens_map.json"})
    EXPECT_TRUE(fs::exists(out + "/" + name)) << name;

  const nlohmann::json config = nlohmann::json::parse(std::ifstream(out + "/config.json"));
  EXPECT_EQ(config["architectures"][0], "BertForSequenceClassification");
  EXPECT_EQ(config["model_type"], "bert");
  EXPECT_EQ(config["id2label"].size(), 3u);
  EXPECT_EQ(config["label2id"]["LABEL_2"], 2);
  EXPECT_EQ(config["hidden_dropout_prob"].get<double>(), 0.05);  // shortest decimal, not 0.0500000007
  EXPECT_EQ(config["classifier_dropout"].get<double>(), 0.2);
  const nlohmann::json tokenizer = nlohmann::json::parse(std::ifstream(out + "/tokenizer.json"));
  EXPECT_EQ(tokenizer["model"]["vocab"]["café"], 8);
  EXPECT_EQ(tokenizer["normalizer"]["lowercase"], true);
  EXPECT_EQ(tokenizer["post_processor"]["special_tokens"]["[CLS]"]["ids"][0], 2);
  EXPECT_EQ(nlohmann::json::parse(std::ifstream(out + "/special_tokens_map.json"))["mask_token"], "[MASK]");

  SafetensorsFile weights(out + "/model.safetensors");
  EXPECT_EQ(weights.metadata().at("format"), "pt");
  EXPECT_NE(weights.find("bert.embeddings.word_embeddings.weight"), nullptr);
  EXPECT_NE(weights.find("classifier.bias"), nullptr);

  HfImportReport report;
  const Checkpoint back = import_hf_model_dir(out, HfImportOptions{}, &report);
  EXPECT_TRUE(report.initialised_fresh.empty());
  EXPECT_TRUE(report.ignored.empty());
  EXPECT_TRUE(same_bits(back.parameters, original.parameters));
  EXPECT_EQ(back.model.num_labels, 3);  // from id2label
  EXPECT_TRUE(same_bits(back.model.hidden_dropout_prob, original.model.hidden_dropout_prob));
  EXPECT_TRUE(same_bits(back.model.classifier_dropout, original.model.classifier_dropout));
  EXPECT_TRUE(same_bits(back.model.layer_norm_eps, original.model.layer_norm_eps));
  EXPECT_EQ(back.tokenizer.vocab, original.tokenizer.vocab);
  EXPECT_TRUE(back.tokenizer.do_lower_case);
  EXPECT_EQ(back.tokenizer.max_length, 24);

  // The folder exists now: a second export needs --overwrite.
  try {
    export_hf_model_dir(original, out, false);
    FAIL() << "overwrote a non-empty folder";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(export_hf_model_dir(original, out, true));
}

TEST_F(HfModelDirTest, ImportRefusalsNameTheFileAndTheProblem) {
  const BertConfig config = tiny_config();
  const std::string dir = path("model");
  std::vector<float> params;
  write_bert_model_folder(dir, config, true, &params);
  auto import_error = [&](const HfImportOptions& options) -> std::string {
    try {
      import_hf_model_dir(dir, options, nullptr);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    ADD_FAILURE() << "import accepted " << dir;
    return "";
  };

  std::ofstream(dir + "/config.json") << R"({"model_type": "roberta", "hidden_size": 16})";
  std::string message = import_error({});
  EXPECT_NE(message.find("config.json"), std::string::npos) << message;
  EXPECT_NE(message.find("roberta"), std::string::npos) << message;

  std::ofstream(dir + "/config.json") << R"({"model_type": "bert", "hidden_act": "gelu_new"})";
  EXPECT_NE(import_error({}).find("gelu_new"), std::string::npos);

  // config.json says 3 layers, the weights hold 2.
  nlohmann::json j = {{"model_type", "bert"}, {"vocab_size", 40}, {"hidden_size", 16}, {"num_hidden_layers", 3},
                      {"num_attention_heads", 2}, {"intermediate_size", 24}, {"max_position_embeddings", 32}};
  std::ofstream(dir + "/config.json") << j.dump();
  message = import_error({});
  EXPECT_NE(message.find("model.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("bert.encoder.layer.2."), std::string::npos) << message;

  // Hidden size disagrees with the tensors.
  j["num_hidden_layers"] = 2;
  j["hidden_size"] = 18;
  std::ofstream(dir + "/config.json") << j.dump();
  message = import_error({});
  EXPECT_NE(message.find("but config.json gives [18]"), std::string::npos) << message;

  j["hidden_size"] = 16;
  std::ofstream(dir + "/config.json") << j.dump();
  fs::remove(dir + "/vocab.txt");
  message = import_error({});
  EXPECT_NE(message.find("no vocab.txt or tokenizer.json"), std::string::npos) << message;

  fs::remove(dir + "/model.safetensors");
  EXPECT_NE(import_error({}).find("no model.safetensors"), std::string::npos);
  EXPECT_THROW(import_hf_model_dir(path("nowhere"), {}, nullptr), std::runtime_error);
}

}  // namespace
