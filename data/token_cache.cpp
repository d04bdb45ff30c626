// HDF5 token cache: writer (temp file + rename), reader (attributes checked at open, token ids
// read per request as a union of hyperslabs). HDF5 C API; layout in data/token_cache.h and
// docs/token_cache.md.
#include "data/token_cache.h"

#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <utility>

#include "data/hdf5_guard.h"

namespace llmqs::data {

namespace {

namespace fs = std::filesystem;

// HDF5's error stack is per thread in thread-safe builds, so every entry point silences it
// for the calling thread; we report our own messages instead.
void silence_hdf5_errors() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

// The innermost HDF5 error description ("truncated file: eof = ...") for our own messages.
std::string hdf5_error_detail() {
  std::string detail;
  auto visit = [](unsigned, const H5E_error2_t* err, void* data) -> herr_t {
    auto* out = static_cast<std::string*>(data);
    if (out->empty() && err->desc && *err->desc) *out = err->desc;
    return 0;
  };
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, visit, &detail);  // most specific first
  H5Eclear2(H5E_DEFAULT);
  return detail.empty() ? std::string() : " (HDF5: " + detail + ")";
}

// Owns one HDF5 identifier.
class Hid {
 public:
  Hid() = default;
  Hid(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  Hid(Hid&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)), close_(other.close_) {}
  Hid& operator=(Hid&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
      close_ = other.close_;
    }
    return *this;
  }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  ~Hid() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and reports whether HDF5 managed to (a file's close is where its data is flushed).
  bool close() {
    if (id_ < 0) return true;
    const herr_t status = close_(std::exchange(id_, H5I_INVALID_HID));
    return status >= 0;
  }

 private:
  void reset() {
    if (id_ >= 0) close_(std::exchange(id_, H5I_INVALID_HID));
  }
  hid_t id_ = H5I_INVALID_HID;
  herr_t (*close_)(hid_t) = nullptr;
};

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what + hdf5_error_detail());
}

Hid checked(hid_t id, herr_t (*close)(hid_t), const std::string& path, const std::string& what) {
  if (id < 0) fail(path, what);
  return Hid(id, close);
}

// ---- attributes ----------------------------------------------------------------------

void write_numeric_attribute(hid_t loc, const char* name, hid_t file_type, hid_t memory_type, const void* value,
                             const std::string& path) {
  Hid space = checked(H5Screate(H5S_SCALAR), H5Sclose, path, "cannot create a dataspace");
  Hid attribute = checked(H5Acreate2(loc, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose, path,
                          std::string("cannot create attribute '") + name + "'");
  if (H5Awrite(attribute.get(), memory_type, value) < 0) fail(path, std::string("cannot write attribute '") + name + "'");
}

void write_string_attribute(hid_t loc, const char* name, const std::string& value, const std::string& path) {
  // Fixed-length, NUL-terminated UTF-8: h5dump prints it as a plain string, h5py as bytes.
  Hid type = checked(H5Tcopy(H5T_C_S1), H5Tclose, path, "cannot create a string type");
  H5Tset_size(type.get(), value.size() + 1);
  H5Tset_strpad(type.get(), H5T_STR_NULLTERM);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  Hid space = checked(H5Screate(H5S_SCALAR), H5Sclose, path, "cannot create a dataspace");
  Hid attribute = checked(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose, path,
                          std::string("cannot create attribute '") + name + "'");
  if (H5Awrite(attribute.get(), type.get(), value.c_str()) < 0) {
    fail(path, std::string("cannot write attribute '") + name + "'");
  }
}

Hid open_attribute(hid_t loc, const char* name, const std::string& path) {
  const htri_t exists = H5Aexists(loc, name);
  if (exists <= 0) {
    throw std::runtime_error(path + ": attribute '" + name +
                             "' is missing: not a complete llmqs token cache (rebuild it with llmqs-dist prepare)");
  }
  return checked(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose, path, std::string("cannot open attribute '") + name + "'");
}

template <typename T>
T read_integer_attribute(hid_t loc, const char* name, hid_t memory_type, const std::string& path) {
  Hid attribute = open_attribute(loc, name, path);
  Hid type = checked(H5Aget_type(attribute.get()), H5Tclose, path, std::string("attribute '") + name + "'");
  if (H5Tget_class(type.get()) != H5T_INTEGER) {
    throw std::runtime_error(path + ": attribute '" + name + "' is not an integer");
  }
  T value{};
  if (H5Aread(attribute.get(), memory_type, &value) < 0) fail(path, std::string("cannot read attribute '") + name + "'");
  return value;
}

std::string read_string_attribute(hid_t loc, const char* name, const std::string& path) {
  Hid attribute = open_attribute(loc, name, path);
  Hid type = checked(H5Aget_type(attribute.get()), H5Tclose, path, std::string("attribute '") + name + "'");
  if (H5Tget_class(type.get()) != H5T_STRING) {
    throw std::runtime_error(path + ": attribute '" + name + "' is not a string");
  }
  if (H5Tis_variable_str(type.get()) > 0) {
    Hid memory_type = checked(H5Tcopy(H5T_C_S1), H5Tclose, path, "cannot create a string type");
    H5Tset_size(memory_type.get(), H5T_VARIABLE);
    H5Tset_cset(memory_type.get(), H5Tget_cset(type.get()));
    char* text = nullptr;
    if (H5Aread(attribute.get(), memory_type.get(), &text) < 0) {
      fail(path, std::string("cannot read attribute '") + name + "'");
    }
    std::string value = text ? text : "";
    H5free_memory(text);
    return value;
  }
  // Read with the file's own string type: HDF5 does not convert between ASCII and UTF-8 sets.
  const size_t size = H5Tget_size(type.get());
  std::string buffer(size + 1, '\0');
  if (H5Aread(attribute.get(), type.get(), buffer.data()) < 0) {
    fail(path, std::string("cannot read attribute '") + name + "'");
  }
  buffer.resize(std::strlen(buffer.c_str()));
  return buffer;
}

// ---- datasets ------------------------------------------------------------------------

void write_dataset(hid_t file, const char* name, hid_t file_type, hid_t memory_type, const void* data, hsize_t count,
                   hsize_t chunk, int compression_level, const std::string& path) {
  Hid space = checked(H5Screate_simple(1, &count, nullptr), H5Sclose, path, "cannot create a dataspace");
  Hid create = checked(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, path, "cannot create a property list");
  if (chunk > 0 && count > 0) {
    const hsize_t chunk_size = std::min(chunk, count);
    H5Pset_chunk(create.get(), 1, &chunk_size);
    if (compression_level > 0) {
      H5Pset_shuffle(create.get());  // token ids are small: byte shuffle lets deflate see the zero high bytes
      H5Pset_deflate(create.get(), static_cast<unsigned>(compression_level));
    }
  }
  Hid dataset = checked(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, create.get(), H5P_DEFAULT),
                        H5Dclose, path, std::string("cannot create dataset /") + name);
  if (count > 0 && H5Dwrite(dataset.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
    fail(path, std::string("cannot write dataset /") + name + " (disk full?)");
  }
}

Hid open_dataset(hid_t file, const char* name, hsize_t expected_size, const char* expected_from,
                 const std::string& path, hid_t access = H5P_DEFAULT) {
  if (H5Lexists(file, name, H5P_DEFAULT) <= 0) {
    throw std::runtime_error(path + ": dataset /" + name + " is missing: not a complete llmqs token cache");
  }
  Hid dataset = checked(H5Dopen2(file, name, access), H5Dclose, path, std::string("cannot open dataset /") + name);
  Hid type = checked(H5Dget_type(dataset.get()), H5Tclose, path, std::string("dataset /") + name);
  if (H5Tget_class(type.get()) != H5T_INTEGER) {
    throw std::runtime_error(path + ": dataset /" + name + " is not an integer array");
  }
  Hid space = checked(H5Dget_space(dataset.get()), H5Sclose, path, std::string("dataset /") + name);
  hsize_t dims[2] = {0, 0};
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank != 1) {
    throw std::runtime_error(path + ": dataset /" + name + " has " + std::to_string(rank) + " dimensions, expected 1");
  }
  H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  if (dims[0] != expected_size) {
    throw std::runtime_error(path + ": dataset /" + name + " holds " + std::to_string(dims[0]) +
                             " values but the attributes say " + std::to_string(expected_size) + " (" +
                             expected_from + "): the cache is damaged, rebuild it with llmqs-dist prepare");
  }
  // The size above came from the file: it must also be what the file stores, before anything is
  // allocated for it.
  const std::string storage = dataset_storage_problem(dataset.get());
  if (!storage.empty()) {
    throw std::runtime_error(path + ": dataset /" + name + " " + storage + "; rebuild it with llmqs-dist prepare");
  }
  return dataset;
}

template <typename T>
std::vector<T> read_whole_dataset(hid_t dataset, hid_t memory_type, size_t count, const char* name,
                                  const std::string& path) {
  std::vector<T> values(count);
  if (count > 0 && H5Dread(dataset, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) < 0) {
    fail(path, std::string("cannot read dataset /") + name + " (truncated or corrupt file?)");
  }
  return values;
}

void write_cache_file(const std::string& file_path, const std::string& shown_path, const TokenCacheInfo& info,
                      const RaggedTokens& data, const TokenCacheWriteOptions& options) {
  Hid file = checked(H5Fcreate(file_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose, shown_path,
                     "cannot create " + file_path + " (does the directory exist and is it writable?)");
  const hid_t root = file.get();
  const std::string& p = shown_path;
  const int32_t schema_version = info.schema_version;
  const uint64_t vocab_hash = info.vocab_hash;
  const int32_t vocab_size = info.vocab_size;
  const uint8_t do_lower_case = info.do_lower_case ? 1 : 0;
  const int32_t max_length = info.max_length;
  const int64_t num_examples = info.num_examples;
  const int64_t num_tokens = info.num_tokens;
  const int32_t num_labels = info.num_labels;
  const int32_t label_offset = info.label_offset;
  write_string_attribute(root, "schema", info.schema, p);
  write_numeric_attribute(root, "schema_version", H5T_STD_I32LE, H5T_NATIVE_INT32, &schema_version, p);
  write_numeric_attribute(root, "vocab_hash", H5T_STD_U64LE, H5T_NATIVE_UINT64, &vocab_hash, p);
  write_numeric_attribute(root, "vocab_size", H5T_STD_I32LE, H5T_NATIVE_INT32, &vocab_size, p);
  write_numeric_attribute(root, "do_lower_case", H5T_STD_U8LE, H5T_NATIVE_UINT8, &do_lower_case, p);
  write_numeric_attribute(root, "max_length", H5T_STD_I32LE, H5T_NATIVE_INT32, &max_length, p);
  write_numeric_attribute(root, "num_examples", H5T_STD_I64LE, H5T_NATIVE_INT64, &num_examples, p);
  write_numeric_attribute(root, "num_tokens", H5T_STD_I64LE, H5T_NATIVE_INT64, &num_tokens, p);
  write_numeric_attribute(root, "num_labels", H5T_STD_I32LE, H5T_NATIVE_INT32, &num_labels, p);
  write_numeric_attribute(root, "label_offset", H5T_STD_I32LE, H5T_NATIVE_INT32, &label_offset, p);
  write_string_attribute(root, "source_file", info.source_file, p);
  write_string_attribute(root, "tokenizer_file", info.tokenizer_file, p);

  write_dataset(root, "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, data.tokens.data(), data.tokens.size(),
                static_cast<hsize_t>(options.chunk_tokens), options.compression_level, p);
  write_dataset(root, "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, data.offsets.data(), data.offsets.size(), 0, 0, p);
  write_dataset(root, "labels", H5T_STD_I32LE, H5T_NATIVE_INT32, data.labels.data(), data.labels.size(), 0, 0, p);
  if (!file.close()) fail(p, "cannot finish writing " + file_path + " (disk full?)");
}

}  // namespace

// ---- RaggedTokens ----------------------------------------------------------------------

void RaggedTokens::append(const int32_t* ids, int32_t count, int32_t label) {
  tokens.insert(tokens.end(), ids, ids + count);
  offsets.push_back(static_cast<int64_t>(tokens.size()));
  labels.push_back(label);
}

std::string format_vocab_hash(uint64_t hash) {
  char text[19];
  std::snprintf(text, sizeof text, "0x%016llx", static_cast<unsigned long long>(hash));
  return text;
}

// ---- writer ----------------------------------------------------------------------------

void write_token_cache(const std::string& path, TokenCacheInfo info, const RaggedTokens& data,
                       const TokenCacheWriteOptions& options) {
  silence_hdf5_errors();
  if (data.offsets.size() != data.labels.size() + 1 || data.offsets.front() != 0 ||
      data.offsets.back() != static_cast<int64_t>(data.tokens.size()) ||
      !std::is_sorted(data.offsets.begin(), data.offsets.end())) {
    throw std::invalid_argument(path + ": inconsistent ragged token arrays (offsets must rise from 0 to the token count, "
                                "one more offset than labels)");
  }
  if (options.compression_level < 0 || options.compression_level > 9) {
    throw std::invalid_argument(path + ": compression level " + std::to_string(options.compression_level) +
                                " is outside 0..9");
  }
  if (options.chunk_tokens < 1) throw std::invalid_argument(path + ": chunk_tokens must be positive");
  if (options.compression_level > 0 && H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0) {
    throw std::runtime_error(path + ": this HDF5 library has no deflate filter; use compression level 0");
  }
  info.num_examples = data.size();
  info.num_tokens = static_cast<int64_t>(data.tokens.size());

  const std::string temp_path = path + ".tmp." + std::to_string(::getpid());
  try {
    write_cache_file(temp_path, path, info, data, options);
    std::error_code error;
    fs::rename(temp_path, path, error);
    if (error) throw std::runtime_error(path + ": cannot rename " + temp_path + " into place: " + error.message());
  } catch (...) {
    std::error_code ignored;
    fs::remove(temp_path, ignored);
    throw;
  }
}

// ---- reader ----------------------------------------------------------------------------

struct TokenCacheReader::Handles {
  Hid file;
  Hid tokens;
};

TokenCacheReader::TokenCacheReader(const std::string& path) : path_(path), handles_(std::make_unique<Handles>()) {
  silence_hdf5_errors();
  disable_hdf5_plugins();
  std::error_code error;
  if (!fs::exists(path, error)) {
    throw std::runtime_error(path + ": no such token cache (build one with llmqs-dist prepare --input FILE --vocab FILE "
                             "--do_lower_case true|false --max_length N --output " + path + ")");
  }
  if (fs::is_directory(path, error)) throw std::runtime_error(path + ": is a directory, expected a token cache .h5 file");
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    throw std::runtime_error(path + ": not an HDF5 file (garbage or a partial copy?); rebuild it with llmqs-dist prepare");
  }
  Hid access = checked(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, path, "cannot create a property list");
#if H5_VERSION_GE(1, 10, 7)
  // Read-only users need no lock; cluster file systems without flock would otherwise refuse the open.
  H5Pset_file_locking(access.get(), false, true);
#endif
  handles_->file = checked(H5Fopen(path.c_str(), H5F_ACC_RDONLY, access.get()), H5Fclose, path,
                           "cannot open the token cache: the HDF5 file is truncated or corrupt; rebuild it with "
                           "llmqs-dist prepare");
  const hid_t root = handles_->file.get();

  info_.schema = read_string_attribute(root, "schema", path);
  if (info_.schema == "llmqs-dist-checkpoint") {
    throw std::runtime_error(path + ": not an llmqs token cache: it is a checkpoint (give it as --init_from, "
                             "--resume_from_checkpoint or --checkpoint)");
  }
  if (info_.schema != kTokenCacheSchema) {
    throw std::runtime_error(path + ": schema is '" + info_.schema + "', expected '" + kTokenCacheSchema +
                             "': not an llmqs token cache");
  }
  info_.schema_version = read_integer_attribute<int32_t>(root, "schema_version", H5T_NATIVE_INT32, path);
  if (info_.schema_version != kTokenCacheSchemaVersion) {
    throw std::runtime_error(path + ": token cache schema version " + std::to_string(info_.schema_version) +
                             ", this llmqs-dist reads version " + std::to_string(kTokenCacheSchemaVersion) +
                             "; rebuild it with this build's llmqs-dist prepare");
  }
  info_.vocab_hash = read_integer_attribute<uint64_t>(root, "vocab_hash", H5T_NATIVE_UINT64, path);
  info_.vocab_size = read_integer_attribute<int32_t>(root, "vocab_size", H5T_NATIVE_INT32, path);
  info_.do_lower_case = read_integer_attribute<uint8_t>(root, "do_lower_case", H5T_NATIVE_UINT8, path) != 0;
  info_.max_length = read_integer_attribute<int32_t>(root, "max_length", H5T_NATIVE_INT32, path);
  info_.num_examples = read_integer_attribute<int64_t>(root, "num_examples", H5T_NATIVE_INT64, path);
  info_.num_tokens = read_integer_attribute<int64_t>(root, "num_tokens", H5T_NATIVE_INT64, path);
  info_.num_labels = read_integer_attribute<int32_t>(root, "num_labels", H5T_NATIVE_INT32, path);
  info_.label_offset = read_integer_attribute<int32_t>(root, "label_offset", H5T_NATIVE_INT32, path);
  info_.source_file = read_string_attribute(root, "source_file", path);
  info_.tokenizer_file = read_string_attribute(root, "tokenizer_file", path);
  if (info_.num_examples < 0 || info_.num_tokens < 0) {
    throw std::runtime_error(path + ": negative num_examples or num_tokens attribute: the cache is damaged");
  }
  // prepare writes max_length >= 2 and at least one label; other values would switch off the
  // length and label checks below.
  if (info_.max_length < 2 || info_.num_labels < 1 || info_.vocab_size < 0 || info_.label_offset < 0) {
    throw std::runtime_error(path + ": attribute max_length " + std::to_string(info_.max_length) + ", num_labels " +
                             std::to_string(info_.num_labels) + ", vocab_size " + std::to_string(info_.vocab_size) +
                             " or label_offset " + std::to_string(info_.label_offset) +
                             " is out of range: the cache is damaged, rebuild it with llmqs-dist prepare");
  }

  const auto n = static_cast<hsize_t>(info_.num_examples);
  {
    Hid offsets = open_dataset(root, "offsets", n + 1, "num_examples + 1", path);
    offsets_ = read_whole_dataset<int64_t>(offsets.get(), H5T_NATIVE_INT64, n + 1, "offsets", path);
    Hid labels = open_dataset(root, "labels", n, "num_examples", path);
    labels_ = read_whole_dataset<int32_t>(labels.get(), H5T_NATIVE_INT32, n, "labels", path);
  }
  Hid access_tokens = checked(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose, path, "cannot create a property list");
  // 32 MiB of decoded chunks, so a batch whose examples share chunks decodes each chunk once.
  H5Pset_chunk_cache(access_tokens.get(), 12421, 32u << 20, 0.75);
  handles_->tokens = open_dataset(root, "tokens", static_cast<hsize_t>(info_.num_tokens), "num_tokens", path,
                                  access_tokens.get());

  if (offsets_.front() != 0 || offsets_.back() != info_.num_tokens) {
    throw std::runtime_error(path + ": /offsets must run from 0 to num_tokens (" + std::to_string(info_.num_tokens) +
                             "), found " + std::to_string(offsets_.front()) + " .. " + std::to_string(offsets_.back()) +
                             ": the cache is damaged");
  }
  lengths_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t length = offsets_[i + 1] - offsets_[i];
    if (length < 0 || length > info_.max_length) {
      throw std::runtime_error(path + ": example " + std::to_string(i) + " has " + std::to_string(length) +
                               " tokens (max_length " + std::to_string(info_.max_length) + "): the cache is damaged");
    }
    lengths_[i] = static_cast<int32_t>(length);
  }
  for (size_t i = 0; i < n; ++i) {
    if (labels_[i] < 0 || labels_[i] >= info_.num_labels) {
      throw std::runtime_error(path + ": example " + std::to_string(i) + " has label " + std::to_string(labels_[i]) +
                               " outside 0.." + std::to_string(info_.num_labels - 1) + ": the cache is damaged");
    }
  }
}

TokenCacheReader::~TokenCacheReader() = default;

void TokenCacheReader::check_token_ids(int32_t vocab_size, const std::string& vocab_name) {
  silence_hdf5_errors();
  // One sequential pass in blocks of 4 MiB: 240-550 M ids/s from the page cache on 2 cores
  // (docs/token_cache.md), about 0.2-0.5 s for the full YelpReviewFull train split.
  constexpr hsize_t kBlock = hsize_t{1} << 20;
  const auto total = static_cast<hsize_t>(info_.num_tokens);
  std::vector<int32_t> ids(static_cast<size_t>(std::min(kBlock, total)));
  Hid file_space = checked(H5Dget_space(handles_->tokens.get()), H5Sclose, path_, "dataset /tokens");
  for (hsize_t start = 0; start < total; start += kBlock) {
    const hsize_t count = std::min(kBlock, total - start);
    if (H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr) < 0) {
      fail(path_, "cannot select /tokens");
    }
    Hid memory_space = checked(H5Screate_simple(1, &count, nullptr), H5Sclose, path_, "cannot create a dataspace");
    if (H5Dread(handles_->tokens.get(), H5T_NATIVE_INT32, memory_space.get(), file_space.get(), H5P_DEFAULT,
                ids.data()) < 0) {
      fail(path_, "cannot read /tokens (truncated or corrupt file?)");
    }
    const auto end = ids.begin() + static_cast<std::ptrdiff_t>(count);
    const auto bad = std::find_if(ids.begin(), end, [vocab_size](int32_t id) { return id < 0 || id >= vocab_size; });
    if (bad == end) continue;
    const int64_t position = static_cast<int64_t>(start) + (bad - ids.begin());
    const int64_t example = std::upper_bound(offsets_.begin(), offsets_.end(), position) - offsets_.begin() - 1;
    throw std::runtime_error(path_ + ": example " + std::to_string(example) + " holds token id " +
                             std::to_string(*bad) + ", outside the vocabulary of " + vocab_name + " (" +
                             std::to_string(vocab_size) + " tokens): the cache is damaged, rebuild it with "
                             "llmqs-dist prepare");
  }
}

void TokenCacheReader::read(const std::vector<int64_t>& indices, std::vector<std::vector<int32_t>>& out) {
  silence_hdf5_errors();
  if (indices.empty()) return;
  for (int64_t index : indices) {
    if (index < 0 || index >= info_.num_examples) {
      throw std::out_of_range(path_ + ": example index " + std::to_string(index) + " outside 0.." +
                              std::to_string(info_.num_examples - 1));
    }
  }
  std::vector<int64_t> unique = indices;
  std::sort(unique.begin(), unique.end());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());

  // Where each unique example lands in one flat buffer (requested examples back to back).
  std::vector<int64_t> flat_start(unique.size() + 1, 0);
  for (size_t k = 0; k < unique.size(); ++k) flat_start[k + 1] = flat_start[k] + lengths_[unique[k]];
  std::vector<int32_t> flat(static_cast<size_t>(flat_start.back()));

  // Consecutive example ids are consecutive on disk: one hyperslab block per run. HDF5 keeps an
  // OR-ed selection as a span list, so runs go in sorted order and at most kRunsPerRead per call.
  constexpr size_t kRunsPerRead = 256;
  Hid file_space = checked(H5Dget_space(handles_->tokens.get()), H5Sclose, path_, "dataset /tokens");
  size_t k = 0;
  while (k < unique.size()) {
    const int64_t read_begin = flat_start[k];
    size_t runs = 0;
    while (k < unique.size() && runs < kRunsPerRead) {
      size_t end = k + 1;
      while (end < unique.size() && unique[end] == unique[end - 1] + 1) ++end;
      const hsize_t start = static_cast<hsize_t>(offsets_[unique[k]]);
      const hsize_t count = static_cast<hsize_t>(offsets_[unique[end - 1] + 1]) - start;
      if (count > 0) {
        const H5S_seloper_t op = runs == 0 ? H5S_SELECT_SET : H5S_SELECT_OR;
        if (H5Sselect_hyperslab(file_space.get(), op, &start, nullptr, &count, nullptr) < 0) {
          fail(path_, "cannot select tokens of examples " + std::to_string(unique[k]) + ".." +
                          std::to_string(unique[end - 1]));
        }
        ++runs;
      }
      k = end;
    }
    const hsize_t selected = static_cast<hsize_t>(flat_start[k] - read_begin);
    if (selected == 0) continue;
    Hid memory_space = checked(H5Screate_simple(1, &selected, nullptr), H5Sclose, path_, "cannot create a dataspace");
    if (H5Dread(handles_->tokens.get(), H5T_NATIVE_INT32, memory_space.get(), file_space.get(), H5P_DEFAULT,
                flat.data() + read_begin) < 0) {
      fail(path_, "cannot read /tokens (truncated or corrupt file?)");
    }
  }

  out.reserve(out.size() + indices.size());
  for (int64_t index : indices) {
    const size_t u = static_cast<size_t>(std::lower_bound(unique.begin(), unique.end(), index) - unique.begin());
    out.emplace_back(flat.begin() + flat_start[u], flat.begin() + flat_start[u + 1]);
  }
}

// ---- compatibility -----------------------------------------------------------------------

void check_token_cache_matches(const std::string& cache_path, const TokenCacheInfo& info, uint64_t vocab_hash,
                               bool do_lower_case, int max_length, const std::string& vocab_path) {
  std::vector<std::string> differences;
  if (info.vocab_hash != vocab_hash) {
    differences.push_back("it was tokenized with vocabulary '" + info.tokenizer_file + "' (hash " +
                          format_vocab_hash(info.vocab_hash) + "), but " + vocab_path + " has hash " +
                          format_vocab_hash(vocab_hash));
  }
  if (info.do_lower_case != do_lower_case) {
    differences.push_back(std::string("it was tokenized with do_lower_case ") + (info.do_lower_case ? "true" : "false") +
                          ", this run uses " + (do_lower_case ? "true" : "false"));
  }
  if (info.max_length != max_length) {
    differences.push_back("it was truncated to max_length " + std::to_string(info.max_length) + ", this run uses " +
                          std::to_string(max_length));
  }
  if (differences.empty()) return;
  std::string message = cache_path + ": token cache does not match this run: ";
  for (size_t i = 0; i < differences.size(); ++i) message += (i ? "; " : "") + differences[i];
  message += ". Rebuild it: llmqs-dist prepare --input " +
             (info.source_file.empty() ? std::string("TRAIN_FILE") : info.source_file) + " --vocab " + vocab_path +
             " --do_lower_case " + (do_lower_case ? "true" : "false") + " --max_length " + std::to_string(max_length) +
             " --output " + cache_path;
  throw std::runtime_error(message);
}

}  // namespace llmqs::data
