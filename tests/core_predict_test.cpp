// core/predictor and `llmqs-dist predict`: a small randomly initialised checkpoint (the sample
// generator's vocabulary, label_offset 1 as for YelpReviewFull) predicts a CSV, a JSON Lines and a
// text file. Checked: probabilities sum to 1 and equal a direct Backend::forward + softmax of the
// same tokens; they do not change with the batch size or the input order; the checkpoint's
// max_length and lower-casing are applied; predicted_label follows label_offset; the CLI writes
// the same numbers, in input order, and refuses bad inputs naming the file and line.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/cpu_backend.h"
#include "core/parameters.h"
#include "core/predictor.h"
#include "data/dataset_reader.h"
#include "data/sample_generator.h"
#include "data/wordpiece_tokenizer.h"
#include "tests/support/lone_communicator.h"

namespace fs = std::filesystem;
using namespace llmqs;
using core::Predictions;
using core::Predictor;

namespace {

constexpr int kMaxLength = 24;  // short, so that many sample reviews are truncated

core::BertConfig tiny_config(int vocab_size) {
  core::BertConfig c;
  c.vocab_size = vocab_size;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.intermediate_size = 64;
  c.max_position_embeddings = 64;
  c.num_labels = 5;
  // Wider than HF's 0.02 so that a random model's probabilities differ clearly between reviews.
  c.initializer_range = 0.3f;
  return c;
}

core::Checkpoint make_checkpoint(int label_offset, int max_length) {
  core::Checkpoint c;
  c.tokenizer.vocab = data::sample_vocabulary();
  c.tokenizer.do_lower_case = true;
  c.tokenizer.max_length = max_length;
  c.tokenizer.label_offset = label_offset;
  c.model = tiny_config(static_cast<int>(c.tokenizer.vocab.size()));
  const core::ParameterLayout layout = core::ParameterLayout::for_bert(c.model);
  c.parameters.resize(layout.total_numel());
  core::init_bert_parameters(c.model, layout, /*seed=*/7, c.parameters.data());
  return c;
}

void write_text(const fs::path& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary);
  out << contents;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

struct CommandResult {
  int exit_code = -1;
  std::string out, err;
};

CommandResult run_binary(const std::string& arguments, const fs::path& scratch) {
  const fs::path out = scratch / "cli.stdout", err = scratch / "cli.stderr";
  const std::string command =
      std::string("'") + LLMQS_BINARY + "' " + arguments + " > '" + out.string() + "' 2> '" + err.string() + "'";
  const int status = std::system(command.c_str());
  CommandResult result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.out = read_text(out);
  result.err = read_text(err);
  return result;
}

std::vector<nlohmann::json> parse_json_lines(const std::string& text) {
  std::vector<nlohmann::json> records;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    records.push_back(nlohmann::json::parse(text.substr(begin, end - begin)));
    begin = end + 1;
  }
  return records;
}

class PredictTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    dir_ = new fs::path(fs::temp_directory_path() / ("llmqs_predict_" + std::to_string(::getpid())));
    fs::remove_all(*dir_);
    fs::create_directories(*dir_);
    data::SampleOptions sample;
    sample.train_size = 4;
    sample.test_size = 40;
    sample.seed = 11;
    data::write_sample_dataset(dir_->string(), sample);  // test.csv: YelpReviewFull format, labels 1-5
    checkpoint_ = new core::Checkpoint(make_checkpoint(/*label_offset=*/1, kMaxLength));
    core::write_checkpoint(path("model.h5"), *checkpoint_);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
    delete checkpoint_;
  }

  static std::string path(const std::string& name) { return (*dir_ / name).string(); }

  static Predictor make_predictor(const core::Checkpoint& checkpoint) {
    return Predictor(checkpoint, "in-memory", core::make_cpu_backend(checkpoint.model));
  }

  // The sample's test split, read independently of predict's readers.
  static data::Dataset sample_reviews() {
    data::ReadOptions options;
    return data::read_dataset(path("test.csv"), options);
  }
  static std::vector<std::string> sample_texts() {
    std::vector<std::string> texts;
    for (const auto& row : sample_reviews().rows) texts.push_back(row.text);
    return texts;
  }
  // Most sample reviews are longer than kMaxLength tokens: interleave the first 1-11 words of
  // each, so that rows differ in length and length sorting really reorders them.
  static std::vector<std::string> mixed_length_texts() {
    std::vector<std::string> texts;
    size_t i = 0;
    for (const std::string& text : sample_texts()) {
      texts.push_back(text);
      size_t cut = 0;
      for (size_t words = 0; words < 1 + i % 11 && cut != std::string::npos; ++words) cut = text.find(' ', cut + 1);
      texts.push_back(text.substr(0, cut));
      ++i;
    }
    return texts;
  }

  static void expect_same_bits(const Predictions& a, int64_t i, const Predictions& b, int64_t j) {
    ASSERT_EQ(a.num_labels, b.num_labels);
    for (int k = 0; k < a.num_labels; ++k) EXPECT_EQ(a.row(i)[k], b.row(j)[k]) << "rows " << i << " / " << j << ", class " << k;
    EXPECT_EQ(a.predicted_class[i], b.predicted_class[j]);
  }

  static fs::path* dir_;
  static core::Checkpoint* checkpoint_;
};

fs::path* PredictTest::dir_ = nullptr;
core::Checkpoint* PredictTest::checkpoint_ = nullptr;

// ---- inference ---------------------------------------------------------------------------------

TEST_F(PredictTest, ProbabilitiesSumToOneAndEqualDirectForwardSoftmax) {
  Predictor predictor = make_predictor(*checkpoint_);
  const std::vector<std::string> texts = mixed_length_texts();
  const Predictions predictions = predictor.predict(texts, 8);
  ASSERT_EQ(predictions.size(), static_cast<int64_t>(texts.size()));
  ASSERT_EQ(predictions.num_labels, 5);

  // The oracle: the vocabulary as a file, the tokenizer built from it, one row per forward.
  {
    std::ofstream vocab(path("vocab-oracle.txt"));
    for (const auto& token : checkpoint_->tokenizer.vocab) vocab << token << '\n';
  }
  const auto tokenizer = data::WordPieceTokenizer::from_file(path("vocab-oracle.txt"), true);
  auto backend = core::make_cpu_backend(checkpoint_->model);
  backend->set_parameters(checkpoint_->parameters.data());

  std::set<int32_t> classes_seen;
  double largest_deviation_from_uniform = 0.0;
  for (size_t i = 0; i < texts.size(); ++i) {
    data::Batch batch;
    const std::vector<int32_t> ids = tokenizer.encode(texts[i], kMaxLength);
    batch.rows = 1;
    batch.seq_len = static_cast<int>(ids.size());
    batch.input_ids = ids;
    batch.lengths = {static_cast<int32_t>(ids.size())};
    std::vector<float> logits(5);
    backend->forward(batch, logits.data());
    const double top = *std::max_element(logits.begin(), logits.end());
    double sum_exp = 0.0;
    for (float z : logits) sum_exp += std::exp(z - top);

    const float* p = predictions.row(static_cast<int64_t>(i));
    double sum = 0.0;
    for (int k = 0; k < 5; ++k) {
      const double expected = std::exp(logits[k] - top) / sum_exp;
      EXPECT_NEAR(p[k], expected, 2e-6) << "review " << i << " class " << k;
      EXPECT_GT(p[k], 0.0f);
      sum += p[k];
      largest_deviation_from_uniform = std::max(largest_deviation_from_uniform, std::fabs(p[k] - 0.2));
    }
    EXPECT_NEAR(sum, 1.0, 1e-6) << "review " << i;
    const int32_t argmax = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    EXPECT_EQ(predictions.predicted_class[i], argmax) << "review " << i;
    classes_seen.insert(argmax);
  }
  // A model whose outputs did not depend on the review would make the checks above vacuous.
  EXPECT_GE(classes_seen.size(), 2u);
  EXPECT_GT(largest_deviation_from_uniform, 0.05);
}

TEST_F(PredictTest, ResultsDoNotDependOnBatchSizeOrInputOrder) {
  Predictor predictor = make_predictor(*checkpoint_);
  const std::vector<std::string> texts = mixed_length_texts();
  const int64_t n = static_cast<int64_t>(texts.size());
  std::set<size_t> lengths;
  for (const auto& text : texts) lengths.insert(predictor.encode(text).size());
  ASSERT_GE(lengths.size(), 8u);
  const Predictions one_at_a_time = predictor.predict(texts, 1);
  for (int batch_size : {2, 3, 7, 16, 64}) {
    const Predictions batched = predictor.predict(texts, batch_size);
    for (int64_t i = 0; i < n; ++i) expect_same_bits(batched, i, one_at_a_time, i);
  }
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(5));
  std::vector<std::string> shuffled;
  for (int64_t i : order) shuffled.push_back(texts[i]);
  const Predictions reordered = predictor.predict(shuffled, 5);
  for (int64_t j = 0; j < n; ++j) expect_same_bits(reordered, j, one_at_a_time, order[j]);
}

TEST_F(PredictTest, UsesTheCheckpointsMaxLengthAndLowerCasing) {
  Predictor predictor = make_predictor(*checkpoint_);
  EXPECT_EQ(predictor.max_length(), kMaxLength);
  std::string long_review = "the food was great and the service was friendly";
  while (predictor.tokenizer().encode(long_review, 1000).size() <= 2 * kMaxLength) long_review += " and the staff was nice";
  EXPECT_EQ(predictor.encode(long_review).size(), static_cast<size_t>(kMaxLength));

  const std::string shouting = "THE FOOD WAS GREAT AND THE SERVICE WAS FRIENDLY";
  const Predictions p = predictor.predict({long_review, shouting, "the food was great and the service was friendly"}, 3);
  expect_same_bits(p, 1, p, 2);  // do_lower_case from the checkpoint

  // The same weights with a longer max_length see more of the long review, and nothing changes
  // for the short one.
  Predictor longer = make_predictor(make_checkpoint(1, 64));
  const Predictions q = longer.predict({long_review, shouting}, 2);
  EXPECT_NE(std::vector<float>(p.row(0), p.row(0) + 5), std::vector<float>(q.row(0), q.row(0) + 5));
  expect_same_bits(p, 1, q, 1);
}

TEST_F(PredictTest, LabelOffsetAndModelComeFromTheCheckpointFile) {
  test_support::LoneCommunicator single;  // from_checkpoint needs one; one process
  core::PredictSettings settings;
  settings.device = "cpu";
  settings.batch_size = 4;
  Predictor from_file = Predictor::from_checkpoint(path("model.h5"), settings, single);
  EXPECT_EQ(from_file.label_offset(), 1);
  EXPECT_EQ(from_file.num_labels(), 5);
  core::write_checkpoint(path("model-offset0.h5"), make_checkpoint(0, kMaxLength));
  EXPECT_EQ(Predictor::from_checkpoint(path("model-offset0.h5"), settings, single).label_offset(), 0);

  Predictor in_memory = make_predictor(*checkpoint_);
  const std::vector<std::string> texts = sample_texts();
  const Predictions a = from_file.predict(texts, 4), b = in_memory.predict(texts, 4);
  for (int64_t i = 0; i < a.size(); ++i) expect_same_bits(a, i, b, i);
}

TEST_F(PredictTest, CheckpointWithoutVocabularyIsRefusedNamingIt) {
  core::Checkpoint bare = make_checkpoint(1, kMaxLength);
  bare.tokenizer.vocab.clear();
  try {
    make_predictor(bare);
    FAIL() << "a checkpoint without vocabulary was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("in-memory: carries no vocabulary"), std::string::npos) << e.what();
  }
}

// ---- inputs ------------------------------------------------------------------------------------

TEST_F(PredictTest, CsvJsonlAndTextInputsGiveTheSameReviews) {
  const data::Dataset reference = sample_reviews();
  const auto csv = core::read_predict_inputs(path("test.csv"), core::PredictInputFormat::kAuto);
  ASSERT_EQ(csv.size(), reference.rows.size());
  for (size_t i = 0; i < csv.size(); ++i) {
    EXPECT_EQ(csv[i].text, reference.rows[i].text);
    EXPECT_EQ(csv[i].line, reference.rows[i].line);
    ASSERT_TRUE(csv[i].has_label);
    EXPECT_EQ(csv[i].label, reference.rows[i].label + 1);  // verbatim: YelpReviewFull stars 1-5
    EXPECT_GE(csv[i].label, 1);
    EXPECT_LE(csv[i].label, 5);
  }

  // JSON Lines as an HF export writes it (labels 0-4), every third record without a label, a
  // blank line and an ignored key; plain text with CRLF line ends and a blank line.
  std::string jsonl, text;
  std::vector<int64_t> jsonl_lines, text_lines;
  for (size_t i = 0; i < csv.size(); ++i) {
    nlohmann::json record;
    if (i % 3 != 2) record["label"] = csv[i].label - 1;
    record["text"] = csv[i].text;
    record["review_id"] = "r" + std::to_string(i);
    jsonl += record.dump() + "\n";
    jsonl_lines.push_back(static_cast<int64_t>(i) + 1 + (i >= 5 ? 1 : 0));
    if (i == 4) jsonl += "\n";
    ASSERT_EQ(csv[i].text.find('\n'), std::string::npos);  // the sample writes paragraph breaks as a literal "\n"
    text += csv[i].text + "\r\n";
    text_lines.push_back(static_cast<int64_t>(i) + 1 + (i >= 3 ? 1 : 0));
    if (i == 2) text += "  \r\n";
  }
  write_text(path("reviews.jsonl"), jsonl);
  write_text(path("reviews.txt"), text);
  const auto from_jsonl = core::read_predict_inputs(path("reviews.jsonl"), core::PredictInputFormat::kAuto);
  const auto from_text = core::read_predict_inputs(path("reviews.txt"), core::PredictInputFormat::kAuto);
  ASSERT_EQ(from_jsonl.size(), csv.size());
  ASSERT_EQ(from_text.size(), csv.size());
  for (size_t i = 0; i < csv.size(); ++i) {
    EXPECT_EQ(from_jsonl[i].text, csv[i].text);
    EXPECT_EQ(from_jsonl[i].line, jsonl_lines[i]);
    EXPECT_EQ(from_jsonl[i].has_label, i % 3 != 2);
    if (from_jsonl[i].has_label) {
      EXPECT_EQ(from_jsonl[i].label, csv[i].label - 1);
    }
    EXPECT_EQ(from_text[i].text, csv[i].text);
    EXPECT_EQ(from_text[i].line, text_lines[i]);
    EXPECT_FALSE(from_text[i].has_label);
  }

  // The same reviews, whatever the file they came from, get the same probabilities.
  Predictor predictor = make_predictor(*checkpoint_);
  auto texts_of = [](const std::vector<core::PredictInput>& inputs) {
    std::vector<std::string> texts;
    for (const auto& input : inputs) texts.push_back(input.text);
    return texts;
  };
  const Predictions a = predictor.predict(texts_of(csv), 6);
  const Predictions b = predictor.predict(texts_of(from_jsonl), 6);
  const Predictions c = predictor.predict(texts_of(from_text), 6);
  for (int64_t i = 0; i < a.size(); ++i) {
    expect_same_bits(a, i, b, i);
    expect_same_bits(a, i, c, i);
  }
}

TEST_F(PredictTest, BadInputsAreRefusedNamingFileAndLine) {
  auto error_of = [](const std::string& file, core::PredictInputFormat format) -> std::string {
    try {
      core::read_predict_inputs(file, format);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "(accepted)";
  };
  const auto kAuto = core::PredictInputFormat::kAuto;
  write_text(path("syntax.jsonl"), "{\"text\": \"fine\"}\n\n{\"text\": \"broken\"\n");
  EXPECT_NE(error_of(path("syntax.jsonl"), kAuto).find(path("syntax.jsonl") + ":3: JSON syntax error"), std::string::npos)
      << error_of(path("syntax.jsonl"), kAuto);
  write_text(path("no_text.jsonl"), "{\"text\": \"fine\"}\n{\"label\": 3}\n");
  EXPECT_NE(error_of(path("no_text.jsonl"), kAuto).find(path("no_text.jsonl") + ":2: missing key \"text\""),
            std::string::npos);
  write_text(path("float_label.jsonl"), "{\"text\": \"fine\", \"label\": 2.5}\n");
  EXPECT_NE(error_of(path("float_label.jsonl"), kAuto).find(":1: \"label\" must be an integer"), std::string::npos);
  write_text(path("latin1.txt"), "good food\ncaf\xE9 au lait\n");
  EXPECT_NE(error_of(path("latin1.txt"), kAuto).find(path("latin1.txt") + ":2: invalid UTF-8 at byte 4"),
            std::string::npos)
      << error_of(path("latin1.txt"), kAuto);
  write_text(path("blank.txt"), "\n  \n\r\n");
  EXPECT_NE(error_of(path("blank.txt"), kAuto).find("no reviews"), std::string::npos);
  EXPECT_NE(error_of(path("missing.csv"), kAuto).find(path("missing.csv") + ":1: cannot open"), std::string::npos);
  // A CSV goes through data::read_dataset, whose errors name the line too.
  write_text(path("bad.csv"), "\"1\",\"fine\"\n\"x\",\"not a label\"\n");
  EXPECT_NE(error_of(path("bad.csv"), kAuto).find(path("bad.csv") + ":2:"), std::string::npos);
  // The format decides, not the extension, when it is given.
  write_text(path("reviews.data"), "{\"text\": \"json after all\"}\n");
  EXPECT_EQ(core::read_predict_inputs(path("reviews.data"), kAuto)[0].text, "{\"text\": \"json after all\"}");
  EXPECT_EQ(core::read_predict_inputs(path("reviews.data"), core::PredictInputFormat::kJsonl)[0].text, "json after all");
  EXPECT_THROW(core::parse_predict_input_format("tsv"), std::invalid_argument);
}

TEST(PredictUtf8Prefix, CutsOnCodePointBoundaries) {
  EXPECT_EQ(core::utf8_prefix("naïve café", 4), "naïv");
  EXPECT_EQ(core::utf8_prefix("naïve café", 10), "naïve café");
  EXPECT_EQ(core::utf8_prefix("naïve café", 80), "naïve café");
  EXPECT_EQ(core::utf8_prefix("日本語", 2), "日本");
}

// ---- the command line --------------------------------------------------------------------------

TEST_F(PredictTest, CommandLineWritesTheSameNumbersInInputOrder) {
  // Reviews of many lengths (so length sorting reorders them), every other one with a label.
  const std::vector<std::string> texts = mixed_length_texts();
  std::string jsonl;
  for (size_t i = 0; i < texts.size(); ++i) {
    nlohmann::json record;
    record["text"] = texts[i];
    if (i % 2 == 0) record["label"] = static_cast<int>(i % 5);
    jsonl += record.dump() + "\n";
  }
  write_text(path("mixed.jsonl"), jsonl);
  Predictor predictor = make_predictor(*checkpoint_);
  const Predictions expected = predictor.predict(texts, 1);

  const fs::path output = *dir_ / "predictions.jsonl";
  const CommandResult run = run_binary("predict --device cpu --per_device_eval_batch_size 7 --checkpoint '" +
                                           path("model.h5") + "' --input '" + path("mixed.jsonl") + "' --output '" +
                                           output.string() + "'",
                                       *dir_);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_TRUE(run.out.empty()) << "with --output nothing goes to stdout";
  EXPECT_NE(run.err.find("predict: " + std::to_string(texts.size()) + " reviews"), std::string::npos) << run.err;
  const auto records = parse_json_lines(read_text(output));
  ASSERT_EQ(records.size(), texts.size());
  std::set<int> labels_predicted;
  for (size_t i = 0; i < records.size(); ++i) {
    const auto& r = records[i];
    EXPECT_EQ(r.at("index").get<int64_t>(), static_cast<int64_t>(i));
    EXPECT_EQ(r.at("line").get<int64_t>(), static_cast<int64_t>(i) + 1);
    EXPECT_EQ(r.contains("label"), i % 2 == 0);
    if (i % 2 == 0) {
      EXPECT_EQ(r.at("label").get<int>(), static_cast<int>(i % 5));  // echoed verbatim
    }
    // label_offset 1 (as stored in the checkpoint): classes 0-4 are printed as stars 1-5.
    EXPECT_EQ(r.at("predicted_label").get<int>(), expected.predicted_class[i] + 1);
    labels_predicted.insert(r.at("predicted_label").get<int>());
    const auto& probabilities = r.at("probabilities");
    ASSERT_EQ(probabilities.size(), 5u);
    for (int k = 0; k < 5; ++k) EXPECT_EQ(static_cast<float>(probabilities[k].get<double>()), expected.row(i)[k]);
    EXPECT_EQ(r.at("text").get<std::string>(), core::utf8_prefix(texts[i], 80));
  }
  EXPECT_GE(*labels_predicted.begin(), 1);
  EXPECT_LE(*labels_predicted.rbegin(), 5);
  for (const auto& entry : fs::directory_iterator(*dir_))
    EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();

  // A YelpReviewFull CSV: its stars are echoed as they are; --label_offset 0 prints the
  // predicted classes 0-based.
  const auto inputs = core::read_predict_inputs(path("test.csv"), core::PredictInputFormat::kCsv);
  std::vector<std::string> csv_texts;
  for (const auto& input : inputs) csv_texts.push_back(input.text);
  const Predictions csv_expected = predictor.predict(csv_texts, 3);
  const CommandResult zero = run_binary("predict --device cpu --label_offset 0 --checkpoint '" + path("model.h5") +
                                            "' --input '" + path("test.csv") + "'",
                                        *dir_);
  ASSERT_EQ(zero.exit_code, 0) << zero.err;
  const auto zero_records = parse_json_lines(zero.out);
  ASSERT_EQ(zero_records.size(), inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_EQ(zero_records[i].at("line").get<int64_t>(), inputs[i].line);
    EXPECT_EQ(zero_records[i].at("label").get<int64_t>(), inputs[i].label);
    EXPECT_EQ(zero_records[i].at("predicted_label").get<int>(), csv_expected.predicted_class[i]);
  }
}

TEST_F(PredictTest, CommandLineTextGoesToStdout) {
  const std::string review = "The food was great and the service was friendly!";
  Predictor predictor = make_predictor(*checkpoint_);
  const Predictions expected = predictor.predict({review}, 1);
  const CommandResult run =
      run_binary("predict --device cpu --checkpoint '" + path("model.h5") + "' --text '" + review + "'", *dir_);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  const auto records = parse_json_lines(run.out);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].at("index"), 0);
  EXPECT_FALSE(records[0].contains("line"));
  EXPECT_FALSE(records[0].contains("label"));
  EXPECT_EQ(records[0].at("predicted_label").get<int>(), expected.predicted_class[0] + 1);
  for (int k = 0; k < 5; ++k)
    EXPECT_EQ(static_cast<float>(records[0].at("probabilities")[k].get<double>()), expected.row(0)[k]);
  EXPECT_EQ(records[0].at("text"), review);
}

TEST_F(PredictTest, CommandLineRefusalsNameTheProblem) {
  write_text(path("broken.jsonl"), "{\"text\": \"fine\"}\n{\"text\": 5}\n");
  const CommandResult bad_line = run_binary(
      "predict --device cpu --checkpoint '" + path("model.h5") + "' --input '" + path("broken.jsonl") + "' --output '" +
          path("never.jsonl") + "'",
      *dir_);
  EXPECT_EQ(bad_line.exit_code, 1);
  EXPECT_NE(bad_line.err.find(path("broken.jsonl") + ":2: \"text\" must be a string"), std::string::npos) << bad_line.err;
  EXPECT_FALSE(fs::exists(path("never.jsonl")));

  const CommandResult missing_checkpoint =
      run_binary("predict --device cpu --checkpoint '" + path("nope.h5") + "' --text 'good'", *dir_);
  EXPECT_NE(missing_checkpoint.exit_code, 0);
  EXPECT_NE(missing_checkpoint.err.find(path("nope.h5")), std::string::npos) << missing_checkpoint.err;

  const CommandResult both = run_binary(
      "predict --checkpoint '" + path("model.h5") + "' --text 'good' --input '" + path("test.csv") + "'", *dir_);
  EXPECT_EQ(both.exit_code, 2);
  EXPECT_NE(both.err.find("exactly one of --input"), std::string::npos) << both.err;

  const CommandResult format = run_binary(
      "predict --checkpoint '" + path("model.h5") + "' --input '" + path("test.csv") + "' --format tsv", *dir_);
  EXPECT_NE(format.exit_code, 0);
  EXPECT_NE(format.err.find("format: unknown value 'tsv'"), std::string::npos) << format.err;
}

}  // namespace
