// Checkpoint writer and reader on the HDF5 C API; the layout is docs/checkpoint_schema.md.
// HDF5's own error printing is switched off: every failure becomes one exception that names
// the file and the object, plus HDF5's innermost reason when it has one.
#include "core/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <system_error>
#include <utility>

#include "core/parameters.h"
#include "data/hdf5_guard.h"
#include "data/token_cache.h"

namespace fs = std::filesystem;

namespace llmqs::core {

namespace {

// ---- HDF5 plumbing ------------------------------------------------------------------------

void silence_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

herr_t collect_innermost(unsigned, const H5E_error2_t* error, void* data) {
  if (error && error->desc && *error->desc) *static_cast<std::string*>(data) = error->desc;
  return 0;
}

// HDF5's reason for the last failure (the deepest entry of the error stack), or "".
std::string hdf5_reason() {
  std::string reason;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_innermost, &reason);
  H5Eclear2(H5E_DEFAULT);
  return reason.empty() ? "" : " (HDF5: " + reason + ")";
}

// Owns one hid_t and closes it with the matching H5?close.
class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)), close_(other.close_) {}
  Handle& operator=(Handle&& other) noexcept {
    reset();
    id_ = std::exchange(other.id_, H5I_INVALID_HID);
    close_ = other.close_;
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }
  hid_t get() const { return id_; }
  hid_t release() { return std::exchange(id_, H5I_INVALID_HID); }
  bool valid() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  herr_t (*close_)(hid_t) = nullptr;
};

// Carries the file name into every message.
class H5Context {
 public:
  explicit H5Context(std::string path) : path_(std::move(path)) {}
  const std::string& path() const { return path_; }
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(path_ + ": " + what + hdf5_reason());
  }
  hid_t check(hid_t id, const std::string& what) const {
    if (id < 0) fail(what);
    return id;
  }
  void check(herr_t status, const char* what, const std::string& object) const {
    if (status < 0) fail(std::string(what) + " " + object);
  }

 private:
  std::string path_;
};

Handle vlen_string_type() {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  return Handle(type, H5Tclose);
}

// ---- writing ------------------------------------------------------------------------------

template <typename T>
void write_scalar_attribute(const H5Context& h5, hid_t location, const char* name, hid_t type, const T& value,
                            const std::string& where) {
  Handle space(h5.check(H5Screate(H5S_SCALAR), "cannot create a dataspace"), H5Sclose);
  Handle attribute(h5.check(H5Acreate2(location, name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                            "cannot create attribute " + where + "@" + name),
                   H5Aclose);
  h5.check(H5Awrite(attribute.get(), type, &value), "cannot write attribute", where + "@" + name);
}

void write_string_attribute(const H5Context& h5, hid_t location, const char* name, const std::string& value,
                            const std::string& where) {
  Handle type = vlen_string_type();
  const char* text = value.c_str();
  write_scalar_attribute(h5, location, name, type.get(), text, where);
}

void write_int_attribute(const H5Context& h5, hid_t location, const char* name, int64_t value,
                         const std::string& where) {
  write_scalar_attribute(h5, location, name, H5T_NATIVE_INT64, value, where);
}

Handle create_group(const H5Context& h5, hid_t parent, const char* name, const std::string& where) {
  return Handle(h5.check(H5Gcreate2(parent, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "cannot create group " + where),
                H5Gclose);
}

void write_float_dataset(const H5Context& h5, hid_t group, const std::string& name, const std::vector<int64_t>& shape,
                         const float* data, const std::string& where) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle space(h5.check(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                        "cannot create a dataspace for " + where),
               H5Sclose);
  Handle dataset(h5.check(H5Dcreate2(group, name.c_str(), H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                                     H5P_DEFAULT),
                          "cannot create dataset " + where),
                 H5Dclose);
  h5.check(H5Dwrite(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "cannot write dataset",
           where);
}

void write_string_dataset(const H5Context& h5, hid_t group, const char* name, const std::string& value,
                          const std::string& where) {
  Handle type = vlen_string_type();
  Handle space(h5.check(H5Screate(H5S_SCALAR), "cannot create a dataspace"), H5Sclose);
  Handle dataset(h5.check(H5Dcreate2(group, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                          "cannot create dataset " + where),
                 H5Dclose);
  const char* text = value.c_str();
  h5.check(H5Dwrite(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &text), "cannot write dataset", where);
}

void write_string_list_dataset(const H5Context& h5, hid_t group, const char* name,
                               const std::vector<std::string>& values, const std::string& where) {
  Handle type = vlen_string_type();
  hsize_t count = values.size();
  Handle space(h5.check(H5Screate_simple(1, &count, nullptr), "cannot create a dataspace for " + where), H5Sclose);
  Handle dataset(h5.check(H5Dcreate2(group, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                          "cannot create dataset " + where),
                 H5Dclose);
  if (values.empty()) return;
  std::vector<const char*> pointers;
  pointers.reserve(values.size());
  for (const auto& v : values) pointers.push_back(v.c_str());
  h5.check(H5Dwrite(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, pointers.data()),
           "cannot write dataset", where);
}

// kTestHookCheckpointWritePauseMs (checkpoint.h): a crash test's way into the middle of a write.
void pause_inside_write_for_test(const std::string& tmp) {
  const char* value = std::getenv(kTestHookCheckpointWritePauseMs);
  const long pause_ms = value ? std::strtol(value, nullptr, 10) : 0L;
  if (pause_ms <= 0) return;
  std::fprintf(stderr, "llmqs-dist: test hook: pausing %ld ms inside the write of %s\n", pause_ms, tmp.c_str());
  std::fflush(stderr);
  ::usleep(static_cast<useconds_t>(pause_ms) * 1000);
}

// An HDF5 file built in memory by the core driver (no backing store). When HDF5 closes it, the
// buffer is handed to us instead of freed (image_free with FILE_CLOSE), so the finished image is
// written to disk without another copy.
//
// Why not let HDF5 write the file: HDF5 1.10 does not survive a failed disk write. After ENOSPC
// or EFBIG in H5Dwrite, H5Fclose fails and leaves the file half closed; closing it again, or the
// library's atexit cleanup, then crashes (segfault in H5F__close_cb, measured with 1.10.8). Built
// in memory, every disk error is one write()/fsync() result that we turn into a message. The price
// is one more copy of the checkpoint in rank 0's host memory while it is written (12 bytes per
// parameter: 1.3 GB for bert-base).
class MemoryFileImage {
 public:
  MemoryFileImage() = default;
  ~MemoryFileImage() { std::free(kept_); }
  MemoryFileImage(const MemoryFileImage&) = delete;
  MemoryFileImage& operator=(const MemoryFileImage&) = delete;

  // A file access property list for H5Fcreate that builds the file in this image.
  Handle file_access() {
    Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
    H5Pset_fapl_core(fapl.get(), /*increment=*/8 << 20, /*backing_store=*/0);
    H5FD_file_image_callbacks_t callbacks{};
    callbacks.image_malloc = [](size_t size, H5FD_file_image_op_t, void*) { return std::malloc(size); };
    callbacks.image_memcpy = nullptr;  // memcpy
    callbacks.image_realloc = [](void* p, size_t size, H5FD_file_image_op_t, void*) { return std::realloc(p, size); };
    callbacks.image_free = [](void* p, H5FD_file_image_op_t op, void* self) -> herr_t {
      auto* image = static_cast<MemoryFileImage*>(self);
      if (op == H5FD_FILE_IMAGE_OP_FILE_CLOSE && p != nullptr) {
        std::free(image->kept_);
        image->kept_ = p;
      } else {
        std::free(p);
      }
      return 0;
    };
    callbacks.udata_copy = [](void* self) { return self; };  // property list copies share this image
    callbacks.udata_free = [](void*) -> herr_t { return 0; };
    callbacks.udata = this;
    if (H5Pset_file_image_callbacks(fapl.get(), &callbacks) < 0) return Handle();
    return fapl;
  }
  // The bytes of the closed file: `size` from H5Fget_file_image before the close.
  const char* data() const { return static_cast<const char*>(kept_); }

 private:
  void* kept_ = nullptr;
};

// Writes `size` bytes to a new file `tmp` and fsyncs it; on failure removes it and throws naming
// `path` (the checkpoint it was meant to become) and the system's reason.
void write_image_to_disk(const std::string& path, const std::string& tmp, const char* data, size_t size) {
  auto fail = [&](const std::string& what, int error) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot write the checkpoint (" + std::to_string(size) + " bytes) to " + tmp +
                             ": " + what + ": " + std::strerror(error));
  };
  // 0666: the user's umask decides who may read it, as for every file we create (docs/security.md).
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) fail("create", errno);
  auto write_range = [&](size_t begin, size_t end) {
    while (begin < end) {
      const ssize_t n = ::write(fd, data + begin, std::min<size_t>(end - begin, size_t(64) << 20));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int error = n < 0 ? errno : ENOSPC;
        ::close(fd);
        fail("write", error);
      }
      begin += static_cast<size_t>(n);
    }
  };
  write_range(0, size / 2);
  pause_inside_write_for_test(tmp);  // off unless a crash test turns it on
  write_range(size / 2, size);
  if (::fsync(fd) != 0) {
    const int error = errno;
    ::close(fd);
    fail("fsync", error);
  }
  if (::close(fd) != 0) fail("close", errno);
}

void write_contents(const H5Context& h5, hid_t file, const Checkpoint& checkpoint, const ParameterLayout& layout) {
  write_string_attribute(h5, file, "schema", kCheckpointSchema, "/");
  write_int_attribute(h5, file, "schema_version", kCheckpointSchemaVersion, "/");

  const BertConfig& m = checkpoint.model;
  {
    Handle group = create_group(h5, file, "model_config", "/model_config");
    const std::string w = "/model_config";
    write_string_attribute(h5, group.get(), "model_type", "bert", w);
    write_int_attribute(h5, group.get(), "vocab_size", m.vocab_size, w);
    write_int_attribute(h5, group.get(), "hidden_size", m.hidden_size, w);
    write_int_attribute(h5, group.get(), "num_hidden_layers", m.num_hidden_layers, w);
    write_int_attribute(h5, group.get(), "num_attention_heads", m.num_attention_heads, w);
    write_int_attribute(h5, group.get(), "intermediate_size", m.intermediate_size, w);
    write_int_attribute(h5, group.get(), "max_position_embeddings", m.max_position_embeddings, w);
    write_int_attribute(h5, group.get(), "type_vocab_size", m.type_vocab_size, w);
    write_int_attribute(h5, group.get(), "num_labels", m.num_labels, w);
    write_int_attribute(h5, group.get(), "pad_token_id", m.pad_token_id, w);
    write_scalar_attribute(h5, group.get(), "layer_norm_eps", H5T_NATIVE_FLOAT, m.layer_norm_eps, w);
    write_scalar_attribute(h5, group.get(), "hidden_dropout_prob", H5T_NATIVE_FLOAT, m.hidden_dropout_prob, w);
    write_scalar_attribute(h5, group.get(), "attention_probs_dropout_prob", H5T_NATIVE_FLOAT,
                           m.attention_probs_dropout_prob, w);
    write_scalar_attribute(h5, group.get(), "classifier_dropout", H5T_NATIVE_FLOAT, m.classifier_dropout, w);
    write_scalar_attribute(h5, group.get(), "initializer_range", H5T_NATIVE_FLOAT, m.initializer_range, w);
  }
  {
    Handle group = create_group(h5, file, "model", "/model");
    for (const auto& p : layout.parameters())
      write_float_dataset(h5, group.get(), p.name, p.shape, checkpoint.parameters.data() + p.offset, "/model/" + p.name);
  }
  if (checkpoint.has_optimizer_state()) {
    Handle group = create_group(h5, file, "optimizer", "/optimizer");
    const TrainerState& t = checkpoint.trainer;
    // AdamW's own step counter (bias correction): fp16 overflow steps advance global_step but
    // not the optimizer, as with torch's GradScaler.
    write_int_attribute(h5, group.get(), "step", t.global_step - t.skipped_steps, "/optimizer");
    const std::pair<const char*, const std::vector<float>*> moments[] = {{"exp_avg", &checkpoint.adam_m},
                                                                         {"exp_avg_sq", &checkpoint.adam_v}};
    for (const auto& [name, values] : moments) {
      const std::string where = std::string("/optimizer/") + name;
      Handle moment_group = create_group(h5, group.get(), name, where);
      for (const auto& p : layout.parameters())
        write_float_dataset(h5, moment_group.get(), p.name, p.shape, values->data() + p.offset, where + "/" + p.name);
    }
  }
  {
    const TrainerState& t = checkpoint.trainer;
    Handle group = create_group(h5, file, "trainer", "/trainer");
    const std::string w = "/trainer";
    write_int_attribute(h5, group.get(), "global_step", t.global_step, w);
    write_int_attribute(h5, group.get(), "max_steps", t.max_steps, w);
    write_scalar_attribute(h5, group.get(), "epoch", H5T_NATIVE_DOUBLE, t.epoch, w);
    write_int_attribute(h5, group.get(), "samples_seen", t.samples_seen, w);
    write_int_attribute(h5, group.get(), "sampler_epoch", t.sampler_epoch, w);
    write_int_attribute(h5, group.get(), "sampler_position", t.sampler_position, w);
    write_scalar_attribute(h5, group.get(), "seed", H5T_NATIVE_UINT64, t.seed, w);
    write_scalar_attribute(h5, group.get(), "loss_scale", H5T_NATIVE_FLOAT, t.loss_scale, w);
    write_int_attribute(h5, group.get(), "loss_scale_good_steps", t.loss_scale_good_steps, w);
    write_int_attribute(h5, group.get(), "skipped_steps", t.skipped_steps, w);
    write_int_attribute(h5, group.get(), "world_size", t.world_size, w);
    write_int_attribute(h5, group.get(), "global_batch_size", t.global_batch_size, w);
    write_string_attribute(h5, group.get(), "precision", t.precision, w);
    write_scalar_attribute(h5, group.get(), "best_metric", H5T_NATIVE_DOUBLE, t.best_metric, w);
    write_string_attribute(h5, group.get(), "best_checkpoint", t.best_checkpoint, w);
    write_string_dataset(h5, group.get(), "config_ini", checkpoint.config_ini, "/trainer/config_ini");
    write_string_list_dataset(h5, group.get(), "log_history", t.log_history, "/trainer/log_history");
  }
  {
    const TokenizerInfo& tok = checkpoint.tokenizer;
    Handle group = create_group(h5, file, "tokenizer", "/tokenizer");
    const std::string w = "/tokenizer";
    write_int_attribute(h5, group.get(), "do_lower_case", tok.do_lower_case ? 1 : 0, w);
    write_int_attribute(h5, group.get(), "max_length", tok.max_length, w);
    write_int_attribute(h5, group.get(), "label_offset", tok.label_offset, w);
    write_string_list_dataset(h5, group.get(), "vocab", tok.vocab, "/tokenizer/vocab");
  }
}

// ---- reading ------------------------------------------------------------------------------

bool has_link(hid_t location, const char* name) { return H5Lexists(location, name, H5P_DEFAULT) > 0; }

Handle open_group(const H5Context& h5, hid_t parent, const char* name, const std::string& where) {
  if (!has_link(parent, name)) h5.fail("not a complete llmqs-dist checkpoint: group " + where + " is missing");
  return Handle(h5.check(H5Gopen2(parent, name, H5P_DEFAULT), "cannot open group " + where), H5Gclose);
}

Handle open_attribute(const H5Context& h5, hid_t location, const char* name, const std::string& where) {
  if (H5Aexists(location, name) <= 0) h5.fail("attribute " + where + "@" + name + " is missing");
  return Handle(h5.check(H5Aopen(location, name, H5P_DEFAULT), "cannot open attribute " + where + "@" + name),
                H5Aclose);
}

template <typename T>
T read_numeric_attribute(const H5Context& h5, hid_t location, const char* name, hid_t memtype,
                         const std::string& where) {
  Handle attribute = open_attribute(h5, location, name, where);
  Handle type(H5Aget_type(attribute.get()), H5Tclose);
  const H5T_class_t type_class = H5Tget_class(type.get());
  if (type_class != H5T_INTEGER && type_class != H5T_FLOAT)
    h5.fail("attribute " + where + "@" + name + " must be numeric");
  Handle space(H5Aget_space(attribute.get()), H5Sclose);
  if (H5Sget_simple_extent_npoints(space.get()) != 1) h5.fail("attribute " + where + "@" + name + " must be a scalar");
  T value{};
  h5.check(H5Aread(attribute.get(), memtype, &value), "cannot read attribute", where + "@" + name);
  return value;
}

int64_t read_int_attribute(const H5Context& h5, hid_t location, const char* name, const std::string& where) {
  return read_numeric_attribute<int64_t>(h5, location, name, H5T_NATIVE_INT64, where);
}

int read_int32_attribute(const H5Context& h5, hid_t location, const char* name, const std::string& where) {
  const int64_t value = read_int_attribute(h5, location, name, where);
  if (value < INT32_MIN || value > INT32_MAX) h5.fail("attribute " + where + "@" + name + " is out of range");
  return static_cast<int>(value);
}

// Strings may be variable-length (what we write) or fixed-length (numpy bytes from h5py).
std::vector<std::string> read_strings(const H5Context& h5, hid_t object, bool is_attribute, const std::string& where) {
  Handle file_type(is_attribute ? H5Aget_type(object) : H5Dget_type(object), H5Tclose);
  Handle space(is_attribute ? H5Aget_space(object) : H5Dget_space(object), H5Sclose);
  if (!file_type.valid() || !space.valid()) h5.fail("cannot inspect " + where);
  if (H5Tget_class(file_type.get()) != H5T_STRING) h5.fail(where + " must hold strings");
  if (H5Sget_simple_extent_ndims(space.get()) > 1) h5.fail(where + " must be a scalar or a 1-D list of strings");
  if (!is_attribute) {
    const std::string problem = data::dataset_storage_problem(object);
    if (!problem.empty()) h5.fail(where + " " + problem);
  }
  const hssize_t count = H5Sget_simple_extent_npoints(space.get());
  // HDF5 converts strings only within one character set (ASCII or UTF-8): read in the file's.
  const H5T_cset_t cset = H5Tget_cset(file_type.get());
  if (cset != H5T_CSET_ASCII && cset != H5T_CSET_UTF8) h5.fail(where + " has an unknown character set");
  std::vector<std::string> out;
  if (count <= 0) return out;
  out.reserve(static_cast<size_t>(count));
  auto read = [&](hid_t memtype, void* buffer) {
    const herr_t status = is_attribute ? H5Aread(object, memtype, buffer)
                                       : H5Dread(object, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buffer);
    h5.check(status, "cannot read", where);
  };
  if (H5Tis_variable_str(file_type.get()) > 0) {
    Handle memtype = vlen_string_type();
    H5Tset_cset(memtype.get(), cset);
    std::vector<char*> pointers(static_cast<size_t>(count), nullptr);
    read(memtype.get(), pointers.data());
    for (char* p : pointers) out.emplace_back(p ? p : "");
    H5Dvlen_reclaim(memtype.get(), space.get(), H5P_DEFAULT, pointers.data());
  } else {
    const size_t width = H5Tget_size(file_type.get());
    Handle memtype(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(memtype.get(), width);
    H5Tset_strpad(memtype.get(), H5T_STR_NULLPAD);
    H5Tset_cset(memtype.get(), cset);
    std::vector<char> buffer(width * static_cast<size_t>(count), '\0');
    read(memtype.get(), buffer.data());
    for (hssize_t i = 0; i < count; ++i) {
      const char* begin = buffer.data() + width * static_cast<size_t>(i);
      out.emplace_back(begin, strnlen(begin, width));
    }
  }
  return out;
}

std::string read_string_attribute(const H5Context& h5, hid_t location, const char* name, const std::string& where) {
  Handle attribute = open_attribute(h5, location, name, where);
  std::vector<std::string> values = read_strings(h5, attribute.get(), true, where + "@" + name);
  if (values.size() != 1) h5.fail("attribute " + where + "@" + name + " must be one string");
  return values[0];
}

std::vector<std::string> read_string_dataset(const H5Context& h5, hid_t group, const char* name,
                                             const std::string& where) {
  if (!has_link(group, name)) h5.fail("dataset " + where + " is missing");
  Handle dataset(h5.check(H5Dopen2(group, name, H5P_DEFAULT), "cannot open dataset " + where), H5Dclose);
  return read_strings(h5, dataset.get(), false, where);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Opens /<group>/<name>, checks it is a float dataset of exactly the HF shape; reads it into
// `out` when out != nullptr.
void read_float_dataset(const H5Context& h5, hid_t group, const ParameterInfo& p, const std::string& where,
                        float* out) {
  if (!has_link(group, p.name.c_str()))
    h5.fail("dataset " + where + " is missing (the model config expects shape " + shape_text(p.shape) + ")");
  Handle dataset(h5.check(H5Dopen2(group, p.name.c_str(), H5P_DEFAULT), "cannot open dataset " + where), H5Dclose);
  Handle type(H5Dget_type(dataset.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_FLOAT) h5.fail("dataset " + where + " must be floating point");
  Handle space(H5Dget_space(dataset.get()), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(rank > 0 ? static_cast<size_t>(rank) : 0);
  if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  const std::vector<int64_t> found(dims.begin(), dims.end());
  if (found != p.shape)
    h5.fail("dataset " + where + " has shape " + shape_text(found) + " but the model config (/model_config) gives " +
            shape_text(p.shape));
  const std::string storage = data::dataset_storage_problem(dataset.get());
  if (!storage.empty()) h5.fail("dataset " + where + " " + storage);
  if (!out) return;
  h5.check(H5Dread(dataset.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out), "cannot read", where);
  // A NaN or infinity in a weight or moment spreads to every logit at the first step; refuse it
  // here, where the file and the tensor can still be named (the scan costs ~1% of the read).
  const float* bad = std::find_if(out, out + p.numel, [](float v) { return !std::isfinite(v); });
  if (bad != out + p.numel) {
    std::vector<int64_t> index(p.shape.size());
    size_t flat = static_cast<size_t>(bad - out);
    for (size_t d = p.shape.size(); d-- > 0;) {
      index[d] = static_cast<int64_t>(flat % static_cast<size_t>(p.shape[d]));
      flat /= static_cast<size_t>(p.shape[d]);
    }
    h5.fail("dataset " + where + " holds a non-finite value (" + std::to_string(*bad) + ") at " + shape_text(index) +
            ": the model diverged before this checkpoint was written, or the file is damaged");
  }
}

// Every member of `group` must be a parameter of the layout: a stray dataset means the file
// was written for another model (or edited), and silently ignoring it would hide that.
void check_no_extra_members(const H5Context& h5, hid_t group, const ParameterLayout& layout, const std::string& where) {
  H5G_info_t info{};
  h5.check(H5Gget_info(group, &info), "cannot list", where);
  if (info.nlinks == layout.parameters().size()) return;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t length = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (length < 0) continue;
    std::string name(static_cast<size_t>(length), '\0');
    H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size() + 1, H5P_DEFAULT);
    if (!layout.contains(name))
      h5.fail("unexpected dataset " + where + "/" + name + " (not a parameter of the model in /model_config)");
  }
  h5.fail(where + " holds " + std::to_string(info.nlinks) + " entries, the model has " +
          std::to_string(layout.parameters().size()) + " parameters");
}

struct OpenedCheckpoint {
  Handle file;
  CheckpointSummary summary;
};

// Opens the file, validates the schema and every /model and /optimizer dataset's shape, reads
// everything but the float tensors.
OpenedCheckpoint open_and_validate(const H5Context& h5, ParameterLayout& layout_out) {
  silence_hdf5();
  data::disable_hdf5_plugins();
  const std::string& path = h5.path();
  std::error_code ec;
  if (!fs::exists(path, ec)) h5.fail("cannot open checkpoint: no such file");
  if (fs::is_directory(path, ec)) h5.fail("is a directory, expected a checkpoint-<step>.h5 file");
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    h5.fail("not an HDF5 file (garbage, empty or truncated before the HDF5 superblock)");
  }
  OpenedCheckpoint opened;
  {
    Handle fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
    const hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get());
    if (file < 0) h5.fail("cannot open as HDF5 (truncated or corrupt file)");
    opened.file = Handle(file, H5Fclose);
  }
  const hid_t file = opened.file.get();
  if (H5Aexists(file, "schema") <= 0) h5.fail("not an llmqs-dist checkpoint: root attribute 'schema' is missing");
  const std::string schema = read_string_attribute(h5, file, "schema", "/");
  if (schema == data::kTokenCacheSchema)
    h5.fail("not an llmqs-dist checkpoint: it is a token cache (made by llmqs-dist prepare); give it as "
            "--train_file or --validation_file");
  if (schema != kCheckpointSchema)
    h5.fail("not an llmqs-dist checkpoint: schema is '" + schema + "', expected '" + kCheckpointSchema + "'");
  const int64_t version = read_int_attribute(h5, file, "schema_version", "/");
  if (version != kCheckpointSchemaVersion)
    h5.fail("checkpoint schema_version " + std::to_string(version) + " is not supported (this build reads version " +
            std::to_string(kCheckpointSchemaVersion) + ")");

  CheckpointSummary& s = opened.summary;
  {
    Handle group = open_group(h5, file, "model_config", "/model_config");
    const std::string w = "/model_config";
    const hid_t g = group.get();
    BertConfig& m = s.model;
    m.vocab_size = read_int32_attribute(h5, g, "vocab_size", w);
    m.hidden_size = read_int32_attribute(h5, g, "hidden_size", w);
    m.num_hidden_layers = read_int32_attribute(h5, g, "num_hidden_layers", w);
    m.num_attention_heads = read_int32_attribute(h5, g, "num_attention_heads", w);
    m.intermediate_size = read_int32_attribute(h5, g, "intermediate_size", w);
    m.max_position_embeddings = read_int32_attribute(h5, g, "max_position_embeddings", w);
    m.type_vocab_size = read_int32_attribute(h5, g, "type_vocab_size", w);
    m.num_labels = read_int32_attribute(h5, g, "num_labels", w);
    m.pad_token_id = read_int32_attribute(h5, g, "pad_token_id", w);
    m.layer_norm_eps = read_numeric_attribute<float>(h5, g, "layer_norm_eps", H5T_NATIVE_FLOAT, w);
    m.hidden_dropout_prob = read_numeric_attribute<float>(h5, g, "hidden_dropout_prob", H5T_NATIVE_FLOAT, w);
    m.attention_probs_dropout_prob =
        read_numeric_attribute<float>(h5, g, "attention_probs_dropout_prob", H5T_NATIVE_FLOAT, w);
    m.classifier_dropout = read_numeric_attribute<float>(h5, g, "classifier_dropout", H5T_NATIVE_FLOAT, w);
    m.initializer_range = read_numeric_attribute<float>(h5, g, "initializer_range", H5T_NATIVE_FLOAT, w);
    try {
      m.validate();
    } catch (const std::invalid_argument& e) {
      h5.fail(std::string("/model_config: ") + e.what());
    }
  }
  layout_out = ParameterLayout::for_bert(s.model);
  s.parameter_count = layout_out.total_numel();
  {
    Handle group = open_group(h5, file, "model", "/model");
    for (const auto& p : layout_out.parameters())
      read_float_dataset(h5, group.get(), p, "/model/" + p.name, nullptr);
    check_no_extra_members(h5, group.get(), layout_out, "/model");
  }
  s.has_optimizer_state = has_link(file, "optimizer");
  if (s.has_optimizer_state) {
    Handle group = open_group(h5, file, "optimizer", "/optimizer");
    s.optimizer_step = read_int_attribute(h5, group.get(), "step", "/optimizer");
    for (const char* name : {"exp_avg", "exp_avg_sq"}) {
      const std::string where = std::string("/optimizer/") + name;
      Handle moments = open_group(h5, group.get(), name, where);
      for (const auto& p : layout_out.parameters())
        read_float_dataset(h5, moments.get(), p, where + "/" + p.name, nullptr);
      check_no_extra_members(h5, moments.get(), layout_out, where);
    }
  }
  {
    Handle group = open_group(h5, file, "trainer", "/trainer");
    const std::string w = "/trainer";
    const hid_t g = group.get();
    TrainerState& t = s.trainer;
    t.global_step = read_int_attribute(h5, g, "global_step", w);
    t.max_steps = read_int_attribute(h5, g, "max_steps", w);
    t.epoch = read_numeric_attribute<double>(h5, g, "epoch", H5T_NATIVE_DOUBLE, w);
    t.samples_seen = read_int_attribute(h5, g, "samples_seen", w);
    t.sampler_epoch = read_int_attribute(h5, g, "sampler_epoch", w);
    t.sampler_position = read_int_attribute(h5, g, "sampler_position", w);
    t.seed = read_numeric_attribute<uint64_t>(h5, g, "seed", H5T_NATIVE_UINT64, w);
    t.loss_scale = read_numeric_attribute<float>(h5, g, "loss_scale", H5T_NATIVE_FLOAT, w);
    // Added after the first checkpoints were written: absent means 0 (the growth count restarts).
    t.loss_scale_good_steps =
        H5Aexists(g, "loss_scale_good_steps") > 0 ? read_int_attribute(h5, g, "loss_scale_good_steps", w) : 0;
    if (t.loss_scale_good_steps < 0) h5.fail("/trainer@loss_scale_good_steps is negative");
    t.skipped_steps = read_int_attribute(h5, g, "skipped_steps", w);
    t.world_size = read_int32_attribute(h5, g, "world_size", w);
    t.global_batch_size = read_int_attribute(h5, g, "global_batch_size", w);
    t.precision = read_string_attribute(h5, g, "precision", w);
    t.best_metric = read_numeric_attribute<double>(h5, g, "best_metric", H5T_NATIVE_DOUBLE, w);
    t.best_checkpoint = read_string_attribute(h5, g, "best_checkpoint", w);
    if (t.global_step < 0) h5.fail("/trainer@global_step is negative");
    // Resume indexes the sampler and divides by these: each must hold what a run can write.
    auto within = [&](const char* key, int64_t value, int64_t low, int64_t high, const char* high_name) {
      if (value >= low && value <= high) return;
      const std::string name = key[0] == '/' ? key : "/trainer@" + std::string(key);
      h5.fail(name + " " + std::to_string(value) +
              (*high_name ? " is outside [" + std::to_string(low) + ", " + high_name + " " + std::to_string(high) + "]"
                          : " is below " + std::to_string(low)));
    };
    within("max_steps", t.max_steps, 0, INT64_MAX, "");
    within("samples_seen", t.samples_seen, 0, INT64_MAX, "");
    within("sampler_epoch", t.sampler_epoch, 0, t.global_step, "global_step");
    within("sampler_position", t.sampler_position, 0, t.global_step, "global_step");
    within("skipped_steps", t.skipped_steps, 0, t.global_step, "global_step");
    within("world_size", t.world_size, 1, INT32_MAX, "");
    within("global_batch_size", t.global_batch_size, 0, INT64_MAX, "");
    if (t.global_batch_size % t.world_size != 0)
      h5.fail("/trainer@global_batch_size " + std::to_string(t.global_batch_size) + " is not a multiple of world_size " +
              std::to_string(t.world_size));
    if (!std::isfinite(t.epoch) || t.epoch < 0) h5.fail("/trainer@epoch " + std::to_string(t.epoch) + " is not a finite non-negative number");
    if (!std::isfinite(t.loss_scale) || t.loss_scale < 0)
      h5.fail("/trainer@loss_scale " + std::to_string(t.loss_scale) + " is not a finite non-negative number");
    if (s.has_optimizer_state) within("/optimizer@step", s.optimizer_step, 0, t.global_step, "global_step");
    const std::vector<std::string> ini = read_string_dataset(h5, g, "config_ini", "/trainer/config_ini");
    s.config_ini = ini.empty() ? "" : ini[0];
    if (ini.size() > 1) h5.fail("/trainer/config_ini must be one string");
    t.log_history = read_string_dataset(h5, g, "log_history", "/trainer/log_history");
  }
  {
    Handle group = open_group(h5, file, "tokenizer", "/tokenizer");
    const std::string w = "/tokenizer";
    TokenizerInfo& tok = s.tokenizer;
    tok.do_lower_case = read_int_attribute(h5, group.get(), "do_lower_case", w) != 0;
    tok.max_length = read_int32_attribute(h5, group.get(), "max_length", w);
    tok.label_offset = read_int32_attribute(h5, group.get(), "label_offset", w);
    if (tok.max_length < 2 || tok.max_length > s.model.max_position_embeddings)
      h5.fail("/tokenizer@max_length " + std::to_string(tok.max_length) + " is outside [2, max_position_embeddings " +
              std::to_string(s.model.max_position_embeddings) + "]");
    // predicted_label = class + label_offset must stay an int.
    if (tok.label_offset < 0 || tok.label_offset > INT32_MAX - s.model.num_labels)
      h5.fail("/tokenizer@label_offset " + std::to_string(tok.label_offset) + " is outside [0, " +
              std::to_string(INT32_MAX - s.model.num_labels) + "]");
    tok.vocab = read_string_dataset(h5, group.get(), "vocab", "/tokenizer/vocab");
    if (tok.vocab.size() > static_cast<size_t>(s.model.vocab_size))
      h5.fail("/tokenizer/vocab holds " + std::to_string(tok.vocab.size()) +
              " tokens, more than the model's vocab_size " + std::to_string(s.model.vocab_size));
  }
  return opened;
}

void validate_for_write(const std::string& path, const Checkpoint& c, const ParameterLayout& layout) {
  auto refuse = [&](const std::string& what) { throw std::invalid_argument(path + ": refusing to write: " + what); };
  const size_t n = layout.total_numel();
  if (c.parameters.size() != n)
    refuse("parameters hold " + std::to_string(c.parameters.size()) + " floats, the model needs " + std::to_string(n));
  if (c.adam_m.size() != c.adam_v.size())
    refuse("adam_m and adam_v sizes differ (" + std::to_string(c.adam_m.size()) + " vs " +
           std::to_string(c.adam_v.size()) + ")");
  if (!c.adam_m.empty() && c.adam_m.size() != n)
    refuse("optimizer moments hold " + std::to_string(c.adam_m.size()) + " floats, the model needs " +
           std::to_string(n));
  if (c.tokenizer.vocab.size() > static_cast<size_t>(c.model.vocab_size))
    refuse("the vocabulary has " + std::to_string(c.tokenizer.vocab.size()) + " tokens, more than vocab_size " +
           std::to_string(c.model.vocab_size));
}

struct NamedCheckpoint {
  int64_t step;
  fs::path path;
};

std::vector<NamedCheckpoint> list_checkpoints(const std::string& output_dir) {
  std::vector<NamedCheckpoint> found;
  std::error_code ec;
  if (!fs::is_directory(output_dir, ec)) return found;
  for (const auto& entry : fs::directory_iterator(output_dir, ec)) {
    if (!entry.is_regular_file(ec)) continue;
    const int64_t step = checkpoint_step_from_name(entry.path().string());
    if (step >= 0) found.push_back({step, entry.path()});
  }
  std::sort(found.begin(), found.end(), [](const NamedCheckpoint& a, const NamedCheckpoint& b) { return a.step < b.step; });
  return found;
}

}  // namespace

// ---- public API ---------------------------------------------------------------------------

std::string temporary_path(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

void publish_file(const std::string& temporary, const std::string& path) {
  auto fail = [&](const std::string& what) {
    const std::string reason = std::strerror(errno);
    std::remove(temporary.c_str());
    throw std::runtime_error(path + ": " + what + ": " + reason);
  };
  const int fd = ::open(temporary.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot reopen " + temporary + " to flush it");
  const int synced = ::fsync(fd);
  ::close(fd);
  if (synced != 0) fail("fsync of " + temporary + " failed");
  if (std::rename(temporary.c_str(), path.c_str()) != 0) fail("cannot rename " + temporary + " into place");
  // The rename itself must reach the disk, or a crash could lose the new name.
  fs::path directory = fs::path(path).parent_path();
  if (directory.empty()) directory = ".";
  const int dir_fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

void write_checkpoint(const std::string& path, const Checkpoint& checkpoint) {
  try {
    checkpoint.model.validate();
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path + ": refusing to write: model config: " + e.what());
  }
  const ParameterLayout layout = ParameterLayout::for_bert(checkpoint.model);
  validate_for_write(path, checkpoint, layout);
  // The rename would replace whatever holds the name: only ever an earlier checkpoint.
  const std::string occupied = checkpoint_destination_problem(path);
  if (!occupied.empty())
    throw std::runtime_error(path + ": refusing to write a checkpoint there: it " + occupied +
                             "; move it away or write elsewhere");

  silence_hdf5();
  const H5Context h5(path);
  const std::string tmp = temporary_path(path);
  // Built in memory (see MemoryFileImage), then written, fsynced and renamed into place.
  MemoryFileImage image;
  size_t size = 0;
  {
    Handle fapl = image.file_access();
    if (!fapl.valid()) h5.fail("cannot set up the in-memory HDF5 file");
    Handle file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose);
    if (!file.valid()) h5.fail("cannot create the in-memory HDF5 file");
    write_contents(h5, file.get(), checkpoint, layout);
    h5.check(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), "cannot flush", "the in-memory file");
    const ssize_t image_size = H5Fget_file_image(file.get(), nullptr, 0);
    if (image_size <= 0) h5.fail("cannot size the in-memory HDF5 file");
    size = static_cast<size_t>(image_size);
    h5.check(H5Fclose(file.release()), "cannot close", "the in-memory file");
  }
  if (image.data() == nullptr) h5.fail("HDF5 did not hand over the in-memory file");
  write_image_to_disk(path, tmp, image.data(), size);
  publish_file(tmp, path);
}

std::string checkpoint_destination_problem(const std::string& path) {
  struct stat info {};
  if (::lstat(path.c_str(), &info) != 0) return errno == ENOENT ? "" : std::string("cannot be inspected: ") + std::strerror(errno);
  if (S_ISLNK(info.st_mode)) return "is a symbolic link";
  if (S_ISDIR(info.st_mode)) return "is a directory";
  if (!S_ISREG(info.st_mode)) return "is not a regular file";
  silence_hdf5();
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    return "is not an llmqs-dist checkpoint (not an HDF5 file)";
  }
  Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!file.valid()) return "is not an llmqs-dist checkpoint (a damaged HDF5 file" + hdf5_reason() + ")";
  try {
    const H5Context h5(path);
    if (H5Aexists(file.get(), "schema") > 0 && read_string_attribute(h5, file.get(), "schema", "/") == kCheckpointSchema)
      return "";
  } catch (const std::runtime_error&) {
  }
  H5Eclear2(H5E_DEFAULT);
  return "is not an llmqs-dist checkpoint (an HDF5 file without @schema \"" + std::string(kCheckpointSchema) + "\")";
}

Checkpoint read_checkpoint(const std::string& path) {
  const H5Context h5(path);
  ParameterLayout layout;
  OpenedCheckpoint opened = open_and_validate(h5, layout);
  Checkpoint c;
  CheckpointSummary& s = opened.summary;
  c.model = s.model;
  c.trainer = std::move(s.trainer);
  c.config_ini = std::move(s.config_ini);
  c.tokenizer = std::move(s.tokenizer);
  const hid_t file = opened.file.get();
  c.parameters.resize(layout.total_numel());
  {
    Handle group = open_group(h5, file, "model", "/model");
    for (const auto& p : layout.parameters())
      read_float_dataset(h5, group.get(), p, "/model/" + p.name, c.parameters.data() + p.offset);
  }
  if (s.has_optimizer_state) {
    Handle group = open_group(h5, file, "optimizer", "/optimizer");
    std::pair<const char*, std::vector<float>*> moments[] = {{"exp_avg", &c.adam_m}, {"exp_avg_sq", &c.adam_v}};
    for (auto& [name, values] : moments) {
      const std::string where = std::string("/optimizer/") + name;
      Handle moment_group = open_group(h5, group.get(), name, where);
      values->resize(layout.total_numel());
      for (const auto& p : layout.parameters())
        read_float_dataset(h5, moment_group.get(), p, where + "/" + p.name, values->data() + p.offset);
    }
  }
  return c;
}

CheckpointSummary read_checkpoint_summary(const std::string& path) {
  const H5Context h5(path);
  ParameterLayout layout;
  return std::move(open_and_validate(h5, layout).summary);
}

std::string checkpoint_path(const std::string& output_dir, int64_t global_step) {
  return (fs::path(output_dir) / ("checkpoint-" + std::to_string(global_step) + ".h5")).string();
}

int64_t checkpoint_step_from_name(const std::string& path) {
  const std::string name = fs::path(path).filename().string();
  static const std::string prefix = "checkpoint-", suffix = ".h5";
  if (name.size() <= prefix.size() + suffix.size()) return -1;
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  if (name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) return -1;
  const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  if (digits.empty() || digits.size() > 18) return -1;
  for (char ch : digits)
    if (ch < '0' || ch > '9') return -1;
  return std::stoll(digits);
}

std::string find_latest_checkpoint(const std::string& output_dir) {
  std::vector<NamedCheckpoint> found = list_checkpoints(output_dir);
  for (auto it = found.rbegin(); it != found.rend(); ++it) {
    try {
      read_checkpoint_summary(it->path.string());
      return it->path.string();
    } catch (const std::exception& e) {
      std::cerr << "llmqs-dist: warning: skipping " << e.what() << "\n";
    }
  }
  return "";
}

void rotate_checkpoints(const std::string& output_dir, int limit, const std::string& keep) {
  if (limit <= 0) return;
  std::vector<NamedCheckpoint> found = list_checkpoints(output_dir);
  if (found.size() <= static_cast<size_t>(limit)) return;
  const std::string keep_name = keep.empty() ? "" : fs::path(keep).filename().string();
  size_t remaining = found.size();
  for (size_t i = 0; i + 1 < found.size() && remaining > static_cast<size_t>(limit); ++i) {
    if (!keep_name.empty() && found[i].path.filename().string() == keep_name) continue;
    std::error_code ec;
    if (fs::remove(found[i].path, ec)) {
      --remaining;
    } else if (ec) {
      std::cerr << "llmqs-dist: warning: cannot delete old checkpoint " << found[i].path.string() << ": "
                << ec.message() << "\n";
    }
  }
}

}  // namespace llmqs::core
