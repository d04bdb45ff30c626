// libFuzzer target: core/checkpoint.h read_checkpoint / read_checkpoint_summary on damaged
// checkpoints. Structure-aware: a valid tiny checkpoint (2 labels, 1 layer, hidden 4, with
// optimizer state and log history) is written once with write_checkpoint; each input is a list of
// edits applied to a copy through the HDF5 API (attributes set to fuzzed integers, floats or
// strings, or deleted; datasets deleted or replaced by fuzzed shapes and types), so the fuzzer
// exercises our validation rather than libhdf5's byte-level parser (raw byte damage is the
// bad-input corpus' truncated / garbage cases). Reading must either return a checkpoint whose
// sizes agree with its model config, or throw std::runtime_error / std::invalid_argument.
#include <hdf5.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/parameters.h"
#include "tests/fuzz/fuzz_common.h"

using namespace llmqs;

namespace {

struct Reader {
  const uint8_t* p;
  size_t left;
  uint8_t byte() { return left ? (--left, *p++) : 0; }
  int64_t i64() {
    int64_t v = 0;
    for (int k = 0; k < 8; ++k) v = (v << 8) | byte();
    return v;
  }
  std::string text() {
    size_t n = byte() % 24;
    std::string s;
    while (n-- && left) s.push_back(static_cast<char>(byte()));
    return s;
  }
};

std::string make_base_checkpoint() {
  core::Checkpoint c;
  c.model.vocab_size = 8;
  c.model.hidden_size = 4;
  c.model.num_hidden_layers = 1;
  c.model.num_attention_heads = 2;
  c.model.intermediate_size = 8;
  c.model.max_position_embeddings = 8;
  c.model.num_labels = 2;
  const size_t n = core::ParameterLayout::for_bert(c.model).total_numel();
  c.parameters.assign(n, 0.25f);
  c.adam_m.assign(n, 0.01f);
  c.adam_v.assign(n, 0.001f);
  c.trainer.global_step = 3;
  c.trainer.max_steps = 10;
  c.trainer.log_history = {"{\"step\": 1, \"loss\": 0.7}", "{\"step\": 2, \"loss\": 0.6}"};
  c.config_ini = "learning_rate = 0.001\n";
  c.tokenizer.vocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "##s"};
  c.tokenizer.max_length = 8;
  const std::string path = fuzz::scratch_path("-base.h5");
  core::write_checkpoint(path, c);
  std::ifstream in(path, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  std::remove(path.c_str());
  return bytes.str();
}

// Every group and dataset path of the file, in a stable order (HDF5 1.10 and 1.12+ spell the
// visitor differently).
#if H5_VERSION_GE(1, 12, 0)
using ObjectInfo = H5O_info2_t;
#define LLMQS_H5OVISIT(file, op, data) H5Ovisit3(file, H5_INDEX_NAME, H5_ITER_INC, op, data, H5O_INFO_BASIC)
#else
using ObjectInfo = H5O_info_t;
#define LLMQS_H5OVISIT(file, op, data) H5Ovisit2(file, H5_INDEX_NAME, H5_ITER_INC, op, data, H5O_INFO_BASIC)
#endif
herr_t collect(hid_t, const char* name, const ObjectInfo* info, void* out) {
  auto* list = static_cast<std::vector<std::pair<std::string, bool>>*>(out);
  list->emplace_back(std::string("/") + name, info->type == H5O_TYPE_DATASET);
  return 0;
}

herr_t collect_attribute(hid_t, const char* name, const H5A_info_t*, void* out) {
  static_cast<std::vector<std::string>*>(out)->push_back(name);
  return 0;
}

void set_attribute(hid_t object, const std::string& name, hid_t type, const void* value) {
  if (H5Aexists(object, name.c_str()) > 0) H5Adelete(object, name.c_str());
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(object, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT);
  if (attr >= 0) {
    H5Awrite(attr, type, value);
    H5Aclose(attr);
  }
  H5Sclose(space);
}

void apply_edits(const std::string& path, Reader& r) {
  hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (file < 0) return;
  const int edits = 1 + r.byte() % 4;
  for (int e = 0; e < edits && r.left; ++e) {
    std::vector<std::pair<std::string, bool>> objects;
    LLMQS_H5OVISIT(file, collect, &objects);
    if (objects.empty()) break;
    const auto& [object_path, is_dataset] = objects[r.byte() % objects.size()];
    hid_t object = H5Oopen(file, object_path.c_str(), H5P_DEFAULT);
    if (object < 0) continue;
    // Attribute to touch: an existing one by index, or a fresh name.
    std::vector<std::string> attributes;
    H5Aiterate2(object, H5_INDEX_NAME, H5_ITER_INC, nullptr, collect_attribute, &attributes);
    std::string attr_name = "fuzz";
    if (!attributes.empty()) attr_name = attributes[r.byte() % attributes.size()];
    const uint8_t op = r.byte() % 7;
    if (op == 0) {
      int64_t v = r.i64();
      set_attribute(object, attr_name, H5T_NATIVE_INT64, &v);
    } else if (op == 1) {
      int64_t small = static_cast<int8_t>(r.byte());  // -128..127: near the boundaries that matter
      set_attribute(object, attr_name, H5T_NATIVE_INT64, &small);
    } else if (op == 2) {
      double v;
      int64_t bits = r.i64();
      std::memcpy(&v, &bits, sizeof v);
      set_attribute(object, attr_name, H5T_NATIVE_DOUBLE, &v);
    } else if (op == 3) {
      std::string s = r.text();
      hid_t type = H5Tcopy(H5T_C_S1);
      H5Tset_size(type, H5T_VARIABLE);
      H5Tset_cset(type, H5T_CSET_UTF8);
      const char* value = s.c_str();
      set_attribute(object, attr_name, type, &value);
      H5Tclose(type);
    } else if (op == 4) {
      if (H5Aexists(object, attr_name.c_str()) > 0) H5Adelete(object, attr_name.c_str());
    } else if (op == 5 && object_path != "/") {
      H5Oclose(object);
      object = -1;
      H5Ldelete(file, object_path.c_str(), H5P_DEFAULT);
    } else if (op == 6 && is_dataset) {
      // Replace the dataset by one of fuzzed rank, dims and element type.
      H5Oclose(object);
      object = -1;
      H5Ldelete(file, object_path.c_str(), H5P_DEFAULT);
      const int rank = r.byte() % 4;
      hsize_t dims[3] = {hsize_t(r.byte() % 20), hsize_t(r.byte() % 20), hsize_t(r.byte() % 20)};
      const uint8_t kind = r.byte() % 3;
      hid_t type = kind == 0 ? H5Tcopy(H5T_NATIVE_FLOAT) : kind == 1 ? H5Tcopy(H5T_NATIVE_INT32) : H5Tcopy(H5T_C_S1);
      if (kind == 2) H5Tset_size(type, H5T_VARIABLE);
      hid_t space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims, nullptr);
      hid_t ds = H5Dcreate2(file, object_path.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      if (ds >= 0 && kind != 2) {  // numbers: fill with a fuzzed value; strings stay NULL (empty)
        hsize_t n = 1;
        for (int k = 0; k < rank; ++k) n *= dims[k];
        std::vector<float> values(n, static_cast<float>(static_cast<int8_t>(r.byte())));
        std::vector<int32_t> ints(n, static_cast<int8_t>(r.byte()));
        H5Dwrite(ds, kind == 0 ? H5T_NATIVE_FLOAT : H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                 kind == 0 ? static_cast<const void*>(values.data()) : static_cast<const void*>(ints.data()));
      }
      if (ds >= 0) H5Dclose(ds);
      H5Sclose(space);
      H5Tclose(type);
    }
    if (object >= 0) H5Oclose(object);
  }
  H5Fclose(file);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string base = make_base_checkpoint();
  static const std::string path = fuzz::scratch_path(".h5");
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  fuzz::write_file(path, reinterpret_cast<const uint8_t*>(base.data()), base.size());
  Reader r{data, size};
  apply_edits(path, r);
  try {
    core::CheckpointSummary summary = core::read_checkpoint_summary(path);
    core::Checkpoint c = core::read_checkpoint(path);
    const size_t n = core::ParameterLayout::for_bert(c.model).total_numel();
    LLMQS_FUZZ_CHECK(c.parameters.size() == n, "parameters match the model config");
    LLMQS_FUZZ_CHECK(c.adam_m.size() == c.adam_v.size() && (c.adam_m.empty() || c.adam_m.size() == n),
                     "moments absent or complete");
    LLMQS_FUZZ_CHECK(summary.parameter_count == n, "summary agrees with the full read");
    LLMQS_FUZZ_CHECK(c.tokenizer.vocab.size() <= static_cast<size_t>(c.model.vocab_size),
                     "vocabulary fits the embedding table");
  } catch (const std::runtime_error&) {
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
