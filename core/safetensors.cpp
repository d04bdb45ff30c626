// safetensors reader and F32 writer; see core/safetensors.h for the format and what is checked.
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "core/checkpoint.h"

namespace llmqs::core {

namespace {

// The reference implementation refuses headers above 100 MB; a larger N is a corrupt length
// field, and allocating it would be the first thing to go wrong.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

std::runtime_error file_error(const std::string& path, const std::string& what) {
  return std::runtime_error(path + ": " + what);
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {  // inf / nan
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal half: normalise into an fp32 normal
    int shift = 0;
    while (!(mantissa & 0x400u)) {
      mantissa <<= 1;
      ++shift;
    }
    mantissa &= 0x3ffu;
    bits = sign | (static_cast<uint32_t>(113 - shift) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float bf16_to_f32(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// pread until `bytes` arrived: a single call may return short for reads above ~2 GB.
void pread_fully(int fd, void* buffer, size_t bytes, uint64_t offset, const std::string& path,
                 const std::string& tensor) {
  char* out = static_cast<char*>(buffer);
  while (bytes > 0) {
    const ssize_t got = ::pread(fd, out, bytes, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      throw file_error(path, "reading tensor '" + tensor + "' failed: " +
                                 (got < 0 ? std::strerror(errno) : "unexpected end of file"));
    out += got;
    bytes -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
}

}  // namespace

size_t safetensors_dtype_size(const std::string& dtype) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2},
      {"U16", 2},  {"F16", 2}, {"BF16", 2}, {"I32", 4},    {"U32", 4},     {"F32", 4},
      {"I64", 8},  {"U64", 8}, {"F64", 8}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

size_t SafetensorsTensor::numel() const {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw file_error(path, std::string("cannot open: ") + std::strerror(errno));
  try {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) throw file_error(path, std::string("cannot stat: ") + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) throw file_error(path, "is a directory, expected a .safetensors file");
    const uint64_t file_size = static_cast<uint64_t>(st.st_size);
    if (file_size < 8)
      throw file_error(path, "not a safetensors file: " + std::to_string(file_size) +
                                 " bytes, shorter than the 8-byte header length");
    unsigned char length_bytes[8];
    pread_fully(fd_, length_bytes, 8, 0, path, "<header length>");
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | length_bytes[i];
    if (header_bytes > kMaxHeaderBytes)
      throw file_error(path, "header length " + std::to_string(header_bytes) +
                                 " bytes is implausible (limit 100 MB): not a safetensors file or corrupt");
    if (header_bytes > file_size - 8)
      throw file_error(path, "header length " + std::to_string(header_bytes) + " bytes runs past the end of the file (" +
                                 std::to_string(file_size) + " bytes): truncated or not a safetensors file");
    data_start_ = 8 + header_bytes;
    const uint64_t data_bytes = file_size - data_start_;

    std::string header(header_bytes, '\0');
    if (header_bytes > 0) pread_fully(fd_, header.data(), header_bytes, 8, path, "<header>");
    nlohmann::ordered_json json;  // keeps the header's order for tensors()
    try {
      json = nlohmann::ordered_json::parse(header);
    } catch (const nlohmann::json::exception& e) {
      throw file_error(path, std::string("header is not valid JSON: ") + e.what());
    }
    if (!json.is_object()) throw file_error(path, "header JSON must be an object of tensors");

    for (auto it = json.begin(); it != json.end(); ++it) {
      const std::string& name = it.key();
      const nlohmann::ordered_json& entry = it.value();
      if (name == "__metadata__") {
        if (!entry.is_object()) throw file_error(path, "__metadata__ must be an object of strings");
        for (auto m = entry.begin(); m != entry.end(); ++m) {
          if (!m.value().is_string()) throw file_error(path, "__metadata__." + m.key() + " must be a string");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      const std::string where = "tensor '" + name + "': ";
      if (!entry.is_object()) throw file_error(path, where + "entry must be an object");
      if (!entry.contains("dtype") || !entry["dtype"].is_string())
        throw file_error(path, where + "missing string field dtype");
      if (!entry.contains("shape") || !entry["shape"].is_array())
        throw file_error(path, where + "missing array field shape");
      if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2)
        throw file_error(path, where + "data_offsets must be [begin, end]");
      SafetensorsTensor tensor;
      tensor.name = name;
      tensor.dtype = entry["dtype"].get<std::string>();
      const size_t element_bytes = safetensors_dtype_size(tensor.dtype);
      if (element_bytes == 0) throw file_error(path, where + "unknown dtype '" + tensor.dtype + "'");
      uint64_t bytes = element_bytes;
      for (const auto& d : entry["shape"]) {
        if (!d.is_number_integer() || d.get<int64_t>() < 0)
          throw file_error(path, where + "shape entries must be non-negative integers, got " + d.dump());
        const uint64_t dim = d.get<uint64_t>();
        if (dim != 0 && bytes > std::numeric_limits<uint64_t>::max() / dim)
          throw file_error(path, where + "shape " + entry["shape"].dump() + " overflows");
        bytes *= dim;
        tensor.shape.push_back(static_cast<int64_t>(dim));
      }
      for (const auto& o : entry["data_offsets"])
        if (!o.is_number_integer() || o.get<int64_t>() < 0)
          throw file_error(path, where + "data_offsets must be non-negative integers, got " + entry["data_offsets"].dump());
      tensor.begin = entry["data_offsets"][0].get<uint64_t>();
      tensor.end = entry["data_offsets"][1].get<uint64_t>();
      if (tensor.end < tensor.begin)
        throw file_error(path, where + "data_offsets " + entry["data_offsets"].dump() + " end before begin");
      if (tensor.end > data_bytes)
        throw file_error(path, where + "data_offsets " + entry["data_offsets"].dump() +
                                   " out of range: the data section holds " + std::to_string(data_bytes) + " bytes");
      if (tensor.end - tensor.begin != bytes)
        throw file_error(path, where + "shape " + entry["shape"].dump() + " x " + tensor.dtype + " (" +
                                   std::to_string(element_bytes) + " bytes) = " + std::to_string(bytes) +
                                   " bytes, but data_offsets span " + std::to_string(tensor.end - tensor.begin));
      tensors_.push_back(std::move(tensor));
    }

    std::vector<const SafetensorsTensor*> by_begin;
    for (const auto& t : tensors_)
      if (t.end > t.begin) by_begin.push_back(&t);
    std::sort(by_begin.begin(), by_begin.end(),
              [](const SafetensorsTensor* a, const SafetensorsTensor* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < by_begin.size(); ++i) {
      if (by_begin[i]->begin < by_begin[i - 1]->end)
        throw file_error(path, "tensors '" + by_begin[i - 1]->name + "' [" + std::to_string(by_begin[i - 1]->begin) +
                                   ", " + std::to_string(by_begin[i - 1]->end) + ") and '" + by_begin[i]->name + "' [" +
                                   std::to_string(by_begin[i]->begin) + ", " + std::to_string(by_begin[i]->end) +
                                   ") overlap");
    }
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

void SafetensorsFile::read_f32(const SafetensorsTensor& tensor, float* out) const {
  const size_t n = tensor.numel();
  const uint64_t offset = data_start_ + tensor.begin;
  const size_t bytes = static_cast<size_t>(tensor.end - tensor.begin);
  if (tensor.dtype == "F32") {
    pread_fully(fd_, out, bytes, offset, path_, tensor.name);
    return;
  }
  if (tensor.dtype == "F16" || tensor.dtype == "BF16") {
    std::vector<uint16_t> raw(n);
    pread_fully(fd_, raw.data(), bytes, offset, path_, tensor.name);
    const bool is_f16 = tensor.dtype == "F16";
    for (size_t i = 0; i < n; ++i) out[i] = is_f16 ? f16_to_f32(raw[i]) : bf16_to_f32(raw[i]);
    return;
  }
  if (tensor.dtype == "F64") {
    std::vector<double> raw(n);
    pread_fully(fd_, raw.data(), bytes, offset, path_, tensor.name);
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(raw[i]);
    return;
  }
  throw file_error(path_, "tensor '" + tensor.name + "' has dtype " + tensor.dtype +
                              "; only F32, F16, BF16 and F64 convert to fp32");
}

std::vector<float> SafetensorsFile::read_f32(const std::string& name) const {
  const SafetensorsTensor* tensor = find(name);
  if (!tensor) throw file_error(path_, "no tensor named '" + name + "'");
  std::vector<float> out(tensor->numel());
  read_f32(*tensor, out.data());
  return out;
}

void write_safetensors_f32(const std::string& path, const std::vector<SafetensorsF32Tensor>& tensors,
                           const std::map<std::string, std::string>& metadata) {
  // nlohmann::json sorts keys; the data section keeps the caller's order, as offsets say where.
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__" || header.contains(t.name))
      throw std::invalid_argument(path + ": duplicate or reserved tensor name '" + t.name + "'");
    uint64_t bytes = 4;
    for (int64_t d : t.shape) {
      if (d < 0) throw std::invalid_argument(path + ": tensor '" + t.name + "' has a negative dimension");
      bytes *= static_cast<uint64_t>(d);
    }
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  const std::string tmp = temporary_path(path);
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw file_error(path, std::string("cannot create ") + tmp + ": " + std::strerror(errno));
  bool ok = true;
  unsigned char length_bytes[8];
  uint64_t n = header_text.size();
  for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<unsigned char>(n >> (8 * i));
  ok = ok && std::fwrite(length_bytes, 1, 8, f) == 8;
  ok = ok && std::fwrite(header_text.data(), 1, header_text.size(), f) == header_text.size();
  for (const auto& t : tensors) {
    size_t count = 1;
    for (int64_t d : t.shape) count *= static_cast<size_t>(d);
    if (count > 0) ok = ok && std::fwrite(t.data, sizeof(float), count, f) == count;
  }
  const int saved_errno = errno;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw file_error(path, std::string("writing failed: ") + std::strerror(saved_errno));
  }
  publish_file(tmp, path);
}

}  // namespace llmqs::core
