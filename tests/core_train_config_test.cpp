// TrainConfig::validate refuses every value that cannot work, before any work, and names the
// key first in its message; the label and vocabulary checks that need the data do the same.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <stdexcept>
#include <string>

#include "core/train_config.h"
#include "core/trainer.h"

using llmqs::core::TrainConfig;

namespace {

TrainConfig valid_config() {
  TrainConfig c;
  c.train_file = "train.csv";
  c.output_dir = "out";
  c.vocab = "vocab.txt";
  c.max_length = 128;
  return c;
}

// Applies `change` to a valid config and expects validate() to refuse it with a message that
// starts with `key` (so the user sees which option to fix).
void expect_refused(const std::function<void(TrainConfig&)>& change, const std::string& key,
                    bool for_training = true) {
  TrainConfig c = valid_config();
  change(c);
  try {
    c.validate(for_training);
    FAIL() << "expected a refusal naming " << key;
  } catch (const std::invalid_argument& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.rfind(key + ":", 0), 0u) << "message does not start with '" << key << ":': " << message;
  }
}

}  // namespace

TEST(TrainConfig, DefaultsFollowHfTrainingArguments) {
  const TrainConfig c;
  EXPECT_EQ(c.per_device_train_batch_size, 8);
  EXPECT_FLOAT_EQ(c.learning_rate, 5e-5f);
  EXPECT_FLOAT_EQ(c.weight_decay, 0.0f);
  EXPECT_FLOAT_EQ(c.adam_beta1, 0.9f);
  EXPECT_FLOAT_EQ(c.adam_beta2, 0.999f);
  EXPECT_FLOAT_EQ(c.adam_epsilon, 1e-8f);
  EXPECT_FLOAT_EQ(c.max_grad_norm, 1.0f);
  EXPECT_EQ(c.lr_scheduler_type, "linear");
  EXPECT_DOUBLE_EQ(c.num_train_epochs, 3.0);
  EXPECT_EQ(c.max_steps, -1);
  EXPECT_EQ(c.logging_steps, 500);
  EXPECT_EQ(c.seed, 42u);
  EXPECT_EQ(c.model.vocab_size, 0);  // the vocabulary's size
  EXPECT_NO_THROW(valid_config().validate());
}

TEST(TrainConfig, RefusesBatchSizes) {
  expect_refused([](TrainConfig& c) { c.per_device_train_batch_size = 0; }, "per_device_train_batch_size");
  expect_refused([](TrainConfig& c) { c.per_device_eval_batch_size = 0; }, "per_device_eval_batch_size");
  expect_refused([](TrainConfig& c) { c.per_device_eval_batch_size = -3; }, "per_device_eval_batch_size", false);
  expect_refused([](TrainConfig& c) { c.gradient_accumulation_steps = 0; }, "gradient_accumulation_steps");
}

TEST(TrainConfig, RefusesOptimizerValues) {
  expect_refused([](TrainConfig& c) { c.learning_rate = 0.0f; }, "learning_rate");
  expect_refused([](TrainConfig& c) { c.learning_rate = -1e-4f; }, "learning_rate");
  expect_refused([](TrainConfig& c) { c.learning_rate = std::nanf(""); }, "learning_rate");
  expect_refused([](TrainConfig& c) { c.weight_decay = -0.01f; }, "weight_decay");
  expect_refused([](TrainConfig& c) { c.adam_beta1 = 1.0f; }, "adam_beta1");
  expect_refused([](TrainConfig& c) { c.adam_beta2 = -0.1f; }, "adam_beta2");
  expect_refused([](TrainConfig& c) { c.adam_epsilon = 0.0f; }, "adam_epsilon");
  expect_refused([](TrainConfig& c) { c.max_grad_norm = std::nanf(""); }, "max_grad_norm");
}

TEST(TrainConfig, RefusesScheduleValues) {
  expect_refused([](TrainConfig& c) { c.warmup_ratio = 1.0; }, "warmup_ratio");
  expect_refused([](TrainConfig& c) { c.warmup_ratio = -0.1; }, "warmup_ratio");
  expect_refused([](TrainConfig& c) { c.warmup_steps = -1; }, "warmup_steps");
  expect_refused([](TrainConfig& c) { c.lr_scheduler_type = "polynomial_typo"; }, "lr_scheduler_type");
  expect_refused([](TrainConfig& c) { c.num_train_epochs = 0.0; }, "num_train_epochs");
  expect_refused([](TrainConfig& c) { c.max_steps = 0; }, "max_steps");
  expect_refused([](TrainConfig& c) { c.max_steps = -2; }, "max_steps");
  // max_steps > 0 wins over epochs, so epochs are not checked then (HF).
  TrainConfig c = valid_config();
  c.max_steps = 10;
  c.num_train_epochs = 0.0;
  EXPECT_NO_THROW(c.validate());
  for (const char* name : {"linear", "cosine", "constant", "constant_with_warmup"}) {
    c.lr_scheduler_type = name;
    EXPECT_NO_THROW(c.validate()) << name;
  }
}

TEST(TrainConfig, RefusesModelShapes) {
  expect_refused([](TrainConfig& c) { c.model.num_labels = 1; }, "num_labels");
  expect_refused([](TrainConfig& c) { c.model.num_labels = 1; }, "num_labels", false);
  expect_refused([](TrainConfig& c) { c.model.hidden_size = 100; c.model.num_attention_heads = 12; }, "num_attention_heads");
  expect_refused([](TrainConfig& c) { c.model.hidden_size = 0; }, "hidden_size");
  expect_refused([](TrainConfig& c) { c.model.num_hidden_layers = 0; }, "num_hidden_layers");
  expect_refused([](TrainConfig& c) { c.model.intermediate_size = 0; }, "intermediate_size");
  expect_refused([](TrainConfig& c) { c.model.vocab_size = -5; }, "vocab_size");
  expect_refused([](TrainConfig& c) { c.max_length = 513; }, "max_length");
  expect_refused([](TrainConfig& c) { c.max_length = 1; }, "max_length");
  expect_refused([](TrainConfig& c) { c.model.hidden_dropout_prob = 1.0f; }, "hidden_dropout_prob");
  expect_refused([](TrainConfig& c) { c.model.attention_probs_dropout_prob = -0.5f; }, "attention_probs_dropout_prob");
  expect_refused([](TrainConfig& c) { c.label_offset = -2; }, "label_offset");
}

TEST(TrainConfig, RefusesUnknownNames) {
  expect_refused([](TrainConfig& c) { c.device = "tpu"; }, "device");
  expect_refused([](TrainConfig& c) { c.device = "tpu"; }, "device", false);
  expect_refused([](TrainConfig& c) { c.precision = "fp8"; }, "precision");
  expect_refused([](TrainConfig& c) { c.eval_strategy = "epochs"; }, "eval_strategy");
  expect_refused([](TrainConfig& c) { c.metric_for_best_model = "f1"; }, "metric_for_best_model");
}

TEST(TrainConfig, RefusesLoggingEvalAndCheckpointValues) {
  expect_refused([](TrainConfig& c) { c.logging_steps = 0; }, "logging_steps");
  expect_refused([](TrainConfig& c) { c.eval_steps = -1; }, "eval_steps");
  expect_refused([](TrainConfig& c) { c.eval_strategy = "epoch"; }, "eval_strategy");  // no validation_file
  expect_refused([](TrainConfig& c) { c.save_steps = -1; }, "save_steps");
  expect_refused([](TrainConfig& c) { c.save_total_limit = -1; }, "save_total_limit");
  expect_refused([](TrainConfig& c) { c.resume_from_checkpoint = ""; }, "resume_from_checkpoint");
  TrainConfig c = valid_config();
  c.eval_strategy = "steps";
  c.validation_file = "test.csv";
  c.logging_steps = 7;
  EXPECT_NO_THROW(c.validate());
  EXPECT_EQ(c.effective_eval_steps(), 7);  // HF: eval_steps defaults to logging_steps
  c.eval_steps = 3;
  EXPECT_EQ(c.effective_eval_steps(), 3);
}

TEST(TrainConfig, RefusesMissingFilesOnlyForTraining) {
  expect_refused([](TrainConfig& c) { c.train_file.clear(); }, "train_file");
  expect_refused([](TrainConfig& c) { c.output_dir.clear(); }, "output_dir");
  expect_refused([](TrainConfig& c) { c.vocab.clear(); }, "vocab");
  TrainConfig eval_only;
  eval_only.max_length = 64;
  EXPECT_NO_THROW(eval_only.validate(/*for_training=*/false));
}

TEST(TrainConfig, LabelsBeyondNumLabelsAreRefusedNamingTheFile) {
  TrainConfig c = valid_config();
  c.model.num_labels = 3;
  EXPECT_NO_THROW(c.validate_labels(3, "train.csv"));
  EXPECT_NO_THROW(c.validate_labels(2, "train.csv"));
  try {
    c.validate_labels(5, "data/train.csv");
    FAIL() << "5 labels in the data with num_labels 3 must be refused";
  } catch (const std::invalid_argument& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.rfind("num_labels:", 0), 0u) << message;
    EXPECT_NE(message.find("data/train.csv"), std::string::npos) << message;
    EXPECT_NE(message.find("--num_labels 5"), std::string::npos) << message;
  }
}

TEST(TrainConfig, VocabSizeComesFromTheVocabularyOrMustCoverIt) {
  TrainConfig c = valid_config();
  c.resolve_vocab_size(30522);
  EXPECT_EQ(c.model.vocab_size, 30522);
  c.model.vocab_size = 32000;  // larger than the vocabulary: allowed (padded embedding tables)
  c.resolve_vocab_size(30522);
  EXPECT_EQ(c.model.vocab_size, 32000);
  c.model.vocab_size = 1000;
  try {
    c.resolve_vocab_size(30522);
    FAIL() << "a vocab_size below the vocabulary must be refused";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind("vocab_size:", 0), 0u) << e.what();
  }
}

TEST(DeviceSelection, AutoPicksCpuAndPrecisionIsChecked) {
  std::string note;
  EXPECT_EQ(llmqs::core::resolve_device("auto", &note), "cpu");
  EXPECT_NE(note.find("cpu"), std::string::npos);
  EXPECT_EQ(llmqs::core::resolve_device("cpu"), "cpu");
  EXPECT_THROW(llmqs::core::resolve_device("tpu"), std::invalid_argument);
  EXPECT_EQ(llmqs::core::resolve_precision("cpu", "auto"), "fp32");
  EXPECT_EQ(llmqs::core::resolve_precision("cpu", "fp32"), "fp32");
  try {
    llmqs::core::resolve_precision("cpu", "fp16");
    FAIL() << "fp16 on cpu must be refused";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind("precision:", 0), 0u) << e.what();
  }
}
