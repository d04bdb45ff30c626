// HF parity checks of imported / exported checkpoints (a plain main, driven by tests/checkpoint.cmake
// and tests/checkpoint/*.sh):
//
//   checkpoint_hf_parity minilm CHECKPOINT.h5 FIXTURE.h5 VOCAB.txt [TOLERANCE]
//     CHECKPOINT is all-MiniLM-L6-v2 imported with --num_labels 384. Its classifier is set to the
//     identity (zero bias), so our logits ARE the pooler output; the CPU encoder output gives
//     the [CLS] hidden state and the mean over real tokens. All three are compared with HF's
//     fp32 outputs in FIXTURE (tests/fixtures/minilm_reference.h5) as the worst per-sentence
//     max|ours - hf| / max|hf|; our WordPiece ids must equal HF's for every sentence.
//
//   checkpoint_hf_parity same A.h5 B.h5
//     Exit 0 when both hold the same parameters and AdamW moments bit for bit and the same run
//     position (the exact-resume check of run_cli_checks.sh).
//
//   checkpoint_hf_parity logits CHECKPOINT.h5 TEXTS.txt OUT.h5
//     Tokenizes each line with the checkpoint's vocabulary and writes input_ids, lengths and our
//     CPU logits to OUT.h5: tests/checkpoint/check_export_hf.py compares them with what
//     transformers computes from the export-hf folder.
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/cpu_backend.h"
#include "core/parameters.h"
#include "data/batch.h"
#include "data/wordpiece_tokenizer.h"

using namespace llmqs;

namespace {

constexpr int kRowsPerBatch = 16;

template <typename T>
std::vector<T> read_dataset(hid_t file, const char* name, hid_t memtype, std::vector<hsize_t>* dims_out) {
  const hid_t dataset = H5Dopen2(file, name, H5P_DEFAULT);
  if (dataset < 0) throw std::runtime_error(std::string("fixture has no dataset ") + name);
  const hid_t space = H5Dget_space(dataset);
  std::vector<hsize_t> dims(static_cast<size_t>(H5Sget_simple_extent_ndims(space)));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  size_t count = 1;
  for (hsize_t d : dims) count *= d;
  std::vector<T> values(count);
  if (H5Dread(dataset, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) < 0)
    throw std::runtime_error(std::string("cannot read fixture dataset ") + name);
  H5Sclose(space);
  H5Dclose(dataset);
  if (dims_out) *dims_out = dims;
  return values;
}

std::vector<std::string> read_sentences(hid_t file) {
  const hid_t dataset = H5Dopen2(file, "sentences", H5P_DEFAULT);
  if (dataset < 0) throw std::runtime_error("fixture has no dataset sentences");
  const hid_t space = H5Dget_space(dataset);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  const hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  std::vector<char*> pointers(static_cast<size_t>(n));
  if (H5Dread(dataset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, pointers.data()) < 0)
    throw std::runtime_error("cannot read fixture sentences");
  std::vector<std::string> out(pointers.begin(), pointers.end());
  H5Dvlen_reclaim(type, space, H5P_DEFAULT, pointers.data());
  H5Tclose(type);
  H5Sclose(space);
  H5Dclose(dataset);
  return out;
}

// Rows [begin, end) of variable-length id lists as one padded batch (seq_len rounded up to 8).
data::Batch make_batch(const std::vector<std::vector<int32_t>>& ids, size_t begin, size_t end) {
  data::Batch b;
  b.rows = static_cast<int>(end - begin);
  size_t longest = 1;
  for (size_t r = begin; r < end; ++r) longest = std::max(longest, ids[r].size());
  b.seq_len = static_cast<int>((longest + 7) / 8 * 8);
  b.input_ids.assign(static_cast<size_t>(b.rows) * b.seq_len, 0);
  for (size_t r = begin; r < end; ++r) {
    std::copy(ids[r].begin(), ids[r].end(), b.input_ids.begin() + static_cast<std::ptrdiff_t>((r - begin) * b.seq_len));
    b.lengths.push_back(static_cast<int32_t>(ids[r].size()));
    b.labels.push_back(0);
    b.example_index.push_back(static_cast<int64_t>(r));
  }
  return b;
}

// max|a - b| / max|b| over one vector.
double relative_error(const float* ours, const float* reference, int n) {
  double diff = 0, scale = 0;
  for (int i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(ours[i]) - reference[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(reference[i])));
  }
  return diff / std::max(scale, 1e-30);
}

int run_minilm(const std::string& checkpoint_file, const std::string& fixture_file, const std::string& vocab_file,
               double tolerance) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  core::Checkpoint checkpoint = core::read_checkpoint(checkpoint_file);
  const core::BertConfig& config = checkpoint.model;
  const int H = config.hidden_size;
  if (config.num_labels != H)
    throw std::runtime_error(checkpoint_file + ": import MiniLM with --num_labels " + std::to_string(H) +
                             " (the identity classifier turns logits into the pooler output)");

  const hid_t fixture = H5Fopen(fixture_file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (fixture < 0) throw std::runtime_error(fixture_file + ": cannot open the fixture");
  std::vector<hsize_t> id_dims;
  const std::vector<int32_t> ids = read_dataset<int32_t>(fixture, "input_ids", H5T_NATIVE_INT32, &id_dims);
  const std::vector<int32_t> lengths = read_dataset<int32_t>(fixture, "lengths", H5T_NATIVE_INT32, nullptr);
  const std::vector<float> cls_ref = read_dataset<float>(fixture, "cls_hidden", H5T_NATIVE_FLOAT, nullptr);
  const std::vector<float> mean_ref = read_dataset<float>(fixture, "mean_hidden", H5T_NATIVE_FLOAT, nullptr);
  const std::vector<float> pooler_ref = read_dataset<float>(fixture, "pooler_output", H5T_NATIVE_FLOAT, nullptr);
  const std::vector<std::string> sentences = read_sentences(fixture);
  H5Fclose(fixture);
  const size_t n = id_dims.at(0), padded = id_dims.at(1);
  if (lengths.size() != n || cls_ref.size() != n * H || sentences.size() != n)
    throw std::runtime_error(fixture_file + ": inconsistent fixture shapes");

  std::vector<std::vector<int32_t>> rows(n);
  for (size_t r = 0; r < n; ++r) rows[r].assign(ids.begin() + r * padded, ids.begin() + r * padded + lengths[r]);

  // Our tokenizer must produce HF's ids: the same numbers feed both models.
  const data::WordPieceTokenizer tokenizer = data::WordPieceTokenizer::from_file(vocab_file, checkpoint.tokenizer.do_lower_case);
  size_t tokenizer_mismatches = 0;
  for (size_t r = 0; r < n; ++r) {
    if (tokenizer.encode(sentences[r], static_cast<int>(padded)) != rows[r]) {
      if (tokenizer_mismatches++ < 3) std::fprintf(stderr, "tokenizer differs from HF on: %s\n", sentences[r].c_str());
    }
  }

  const core::ParameterLayout layout = core::ParameterLayout::for_bert(config);
  float* classifier = checkpoint.parameters.data() + layout.find("classifier.weight").offset;
  std::fill(classifier, classifier + static_cast<size_t>(H) * H, 0.0f);
  for (int i = 0; i < H; ++i) classifier[static_cast<size_t>(i) * H + i] = 1.0f;
  float* bias = checkpoint.parameters.data() + layout.find("classifier.bias").offset;
  std::fill(bias, bias + H, 0.0f);
  auto backend = core::make_cpu_backend(config);
  backend->set_parameters(checkpoint.parameters.data());

  double worst_pooler = 0, worst_cls = 0, worst_mean = 0;
  std::vector<float> logits, mean(H);
  for (size_t begin = 0; begin < n; begin += kRowsPerBatch) {
    const size_t end = std::min(n, begin + kRowsPerBatch);
    const data::Batch batch = make_batch(rows, begin, end);
    logits.assign(static_cast<size_t>(batch.rows) * H, 0.0f);
    backend->forward(batch, logits.data());
    const std::vector<float> hidden = core::cpu_last_hidden_state(config, checkpoint.parameters.data(), batch);
    for (int r = 0; r < batch.rows; ++r) {
      const size_t row = begin + r;
      const float* h = hidden.data() + static_cast<size_t>(r) * batch.seq_len * H;
      std::fill(mean.begin(), mean.end(), 0.0f);
      for (int t = 0; t < batch.lengths[r]; ++t)
        for (int c = 0; c < H; ++c) mean[c] += h[static_cast<size_t>(t) * H + c] / batch.lengths[r];
      worst_pooler = std::max(worst_pooler, relative_error(logits.data() + static_cast<size_t>(r) * H,
                                                           pooler_ref.data() + row * H, H));
      worst_cls = std::max(worst_cls, relative_error(h, cls_ref.data() + row * H, H));
      worst_mean = std::max(worst_mean, relative_error(mean.data(), mean_ref.data() + row * H, H));
    }
  }
  std::printf("MiniLM parity over %zu sentences (lengths up to %zu tokens), worst max|ours-hf|/max|hf| per sentence:\n"
              "  pooler_output %.3g   cls_hidden %.3g   mean_hidden %.3g   (tolerance %.1g)\n"
              "  tokenizer: %zu of %zu sentences differ from HF's input ids\n",
              n, padded, worst_pooler, worst_cls, worst_mean, tolerance, tokenizer_mismatches, n);
  const bool ok = worst_pooler <= tolerance && worst_cls <= tolerance && worst_mean <= tolerance &&
                  tokenizer_mismatches == 0;
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}

int run_logits(const std::string& checkpoint_file, const std::string& texts_file, const std::string& out_file) {
  const core::Checkpoint checkpoint = core::read_checkpoint(checkpoint_file);
  if (checkpoint.tokenizer.vocab.empty()) throw std::runtime_error(checkpoint_file + ": carries no vocabulary");
  const std::string vocab_file = out_file + ".vocab." + std::to_string(::getpid());
  {
    std::ofstream vocab(vocab_file);
    for (const auto& token : checkpoint.tokenizer.vocab) vocab << token << "\n";
  }
  const data::WordPieceTokenizer tokenizer = data::WordPieceTokenizer::from_file(vocab_file, checkpoint.tokenizer.do_lower_case);
  std::filesystem::remove(vocab_file);
  std::ifstream in(texts_file);
  if (!in) throw std::runtime_error(texts_file + ": cannot open");
  std::vector<std::vector<int32_t>> rows;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(tokenizer.encode(line, checkpoint.tokenizer.max_length));
  const size_t n = rows.size();
  const int labels = checkpoint.model.num_labels;
  size_t longest = 0;
  for (const auto& r : rows) longest = std::max(longest, r.size());

  auto backend = core::make_cpu_backend(checkpoint.model);
  backend->set_parameters(checkpoint.parameters.data());
  std::vector<float> logits(n * labels);
  std::vector<int32_t> ids(n * longest, 0), lengths(n);
  for (size_t begin = 0; begin < n; begin += kRowsPerBatch) {
    const size_t end = std::min(n, begin + kRowsPerBatch);
    backend->forward(make_batch(rows, begin, end), logits.data() + begin * labels);
  }
  for (size_t r = 0; r < n; ++r) {
    std::copy(rows[r].begin(), rows[r].end(), ids.begin() + r * longest);
    lengths[r] = static_cast<int32_t>(rows[r].size());
  }
  const hid_t file = H5Fcreate(out_file.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (file < 0) throw std::runtime_error(out_file + ": cannot create");
  auto write = [&](const char* name, hid_t type, const void* data, std::vector<hsize_t> dims) {
    const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    const hid_t dataset = H5Dcreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dwrite(dataset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
    H5Dclose(dataset);
    H5Sclose(space);
  };
  write("input_ids", H5T_NATIVE_INT32, ids.data(), {n, longest});
  write("lengths", H5T_NATIVE_INT32, lengths.data(), {n});
  write("logits", H5T_NATIVE_FLOAT, logits.data(), {n, static_cast<hsize_t>(labels)});
  H5Fclose(file);
  std::printf("wrote %s: logits of %zu texts (%d labels)\n", out_file.c_str(), n, labels);
  return 0;
}

// Two checkpoints hold the same run: parameters and AdamW moments bit for bit, and the same
// run position. Used by the exact-resume check (run_cli_checks.sh).
int run_same(const std::string& a_file, const std::string& b_file) {
  const core::Checkpoint a = core::read_checkpoint(a_file), b = core::read_checkpoint(b_file);
  auto same = [](const std::vector<float>& x, const std::vector<float>& y) {
    return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
  };
  size_t differing = 0;
  for (size_t i = 0; i < std::min(a.parameters.size(), b.parameters.size()); ++i)
    differing += std::memcmp(&a.parameters[i], &b.parameters[i], sizeof(float)) != 0;
  const bool ok = same(a.parameters, b.parameters) && same(a.adam_m, b.adam_m) && same(a.adam_v, b.adam_v) &&
                  a.trainer.global_step == b.trainer.global_step && a.trainer.samples_seen == b.trainer.samples_seen &&
                  a.trainer.sampler_epoch == b.trainer.sampler_epoch &&
                  a.trainer.sampler_position == b.trainer.sampler_position && a.trainer.epoch == b.trainer.epoch;
  std::printf("%s vs %s: step %lld / %lld, %zu of %zu parameters differ, moments %s: %s\n", a_file.c_str(),
              b_file.c_str(), static_cast<long long>(a.trainer.global_step),
              static_cast<long long>(b.trainer.global_step), differing, a.parameters.size(),
              same(a.adam_m, b.adam_m) && same(a.adam_v, b.adam_v) ? "identical" : "differ", ok ? "SAME" : "DIFFERENT");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "minilm" && (argc == 5 || argc == 6))
      return run_minilm(argv[2], argv[3], argv[4], argc == 6 ? std::stod(argv[5]) : 1e-5);
    if (mode == "logits" && argc == 5) return run_logits(argv[2], argv[3], argv[4]);
    if (mode == "same" && argc == 4) return run_same(argv[2], argv[3]);
    std::fprintf(stderr,
                 "usage: %s minilm CHECKPOINT.h5 FIXTURE.h5 VOCAB.txt [TOLERANCE]\n"
                 "       %s logits CHECKPOINT.h5 TEXTS.txt OUT.h5\n"
                 "       %s same CHECKPOINT_A.h5 CHECKPOINT_B.h5\n",
                 argv[0], argv[0], argv[0]);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "checkpoint_hf_parity: error: %s\n", e.what());
    return 1;
  }
}
