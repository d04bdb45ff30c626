// Readers for labeled-text datasets (see dataset_reader.h). The whole file is read into one buffer and
// parsed from memory: the CSV parser jumps between quotes with memchr, JSON Lines are parsed line by line
// in parallel, and UTF-8 validation runs in parallel over the records once they are split. This keeps the
// full YelpReviewFull train split (650,000 reviews, ~500 MB) to a few seconds.
#include "data/dataset_reader.h"

#include <utf8proc.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace llmqs::data {

namespace {

[[noreturn]] void fail(const std::string& path, int64_t line, const std::string& problem) {
  throw std::runtime_error(path + ":" + std::to_string(line) + ": " + problem);
}

std::string lower_ascii(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string trim_ascii(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t')) --e;
  return s.substr(b, e - b);
}

// Quoted for messages, cut short so that a 10 MB field does not end up in an error line.
std::string excerpt(const std::string& s, size_t max_bytes = 40) {
  if (s.size() <= max_bytes) return "'" + s + "'";
  return "'" + s.substr(0, max_bytes) + "...'";
}

std::string read_whole_file(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) fail(path, 1, "cannot open dataset: no such file");
  if (std::filesystem::is_directory(status)) fail(path, 1, "is a directory, expected a .csv or .jsonl file");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(path, 1, std::string("cannot open dataset: ") + std::strerror(errno));
  std::string buffer;
  const auto size = std::filesystem::file_size(path, ec);
  if (!ec) buffer.resize(static_cast<size_t>(size));
  size_t got = buffer.empty() ? 0 : std::fread(buffer.data(), 1, buffer.size(), f);
  buffer.resize(got);
  // Pipes and files that grew since stat(): keep reading until EOF.
  char chunk[1 << 16];
  size_t n;
  while ((n = std::fread(chunk, 1, sizeof(chunk), f)) > 0) buffer.append(chunk, n);
  const bool read_error = std::ferror(f);
  std::fclose(f);
  if (read_error) fail(path, 1, "read error");
  return buffer;
}

// Offset of the first byte that does not start a valid UTF-8 sequence, or npos. ASCII is checked
// eight bytes at a time; utf8proc_iterate rejects overlong forms, surrogates and values above U+10FFFF.
size_t find_invalid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, p + i, 8);
      if ((word & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    utf8proc_int32_t codepoint;
    const utf8proc_ssize_t used = utf8proc_iterate(p + i, static_cast<utf8proc_ssize_t>(n - i), &codepoint);
    if (used <= 0) return i;
    i += static_cast<size_t>(used);
  }
  return std::string::npos;
}

// Validates every text in parallel and reports the earliest bad record, with the line of the bad byte.
template <typename Record>
void validate_utf8(const std::string& path, const std::vector<Record>& rows) {
  const int64_t count = static_cast<int64_t>(rows.size());
  int64_t first_bad = count;
#pragma omp parallel for schedule(dynamic, 256) reduction(min : first_bad)
  for (int64_t i = 0; i < count; ++i) {
    if (i < first_bad && find_invalid_utf8(rows[i].text) != std::string::npos) first_bad = i;
  }
  if (first_bad == count) return;
  const Record& row = rows[first_bad];
  const size_t at = find_invalid_utf8(row.text);
  const int64_t line = row.line + std::count(row.text.begin(), row.text.begin() + at, '\n');
  char byte[8];
  std::snprintf(byte, sizeof(byte), "0x%02X", static_cast<unsigned>(static_cast<uint8_t>(row.text[at])));
  fail(path, line,
       std::string("invalid UTF-8 in text: byte ") + byte + " at byte " + std::to_string(at) +
           " of the field (convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8)");
}

// Integer with optional sign and surrounding blanks; false for anything else or for |value| >= 2^31.
bool parse_label(const std::string& field, int64_t& value) {
  const std::string s = trim_ascii(field);
  size_t i = 0;
  bool negative = false;
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) negative = s[i++] == '-';
  if (i == s.size()) return false;
  int64_t v = 0;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
    if (v > std::numeric_limits<int32_t>::max()) return false;
  }
  value = negative ? -v : v;
  return true;
}

// ---- CSV (RFC 4180) -------------------------------------------------------------------------------

// Line breaks are sparse in reviews (YelpReviewFull writes them as a literal backslash-n), so jumping
// between them with memchr beats looking at every byte.
int64_t count_newlines(const char* begin, const char* end) {
  int64_t n = 0;
  for (const char* p = begin; (p = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(end - p))));
       ++p) {
    ++n;
  }
  return n;
}

class CsvParser {
 public:
  CsvParser(const std::string& path, const char* begin, const char* end) : path_(path), p_(begin), end_(end) {}

  // Reads the next non-blank record into fields (resized to its field count). False at end of input.
  bool next(std::vector<std::string>& fields, int64_t& record_line) {
    while (p_ < end_ && (*p_ == '\n' || (*p_ == '\r' && p_ + 1 < end_ && p_[1] == '\n'))) {
      p_ += *p_ == '\n' ? 1 : 2;
      ++line_;
    }
    if (p_ == end_) return false;
    record_line = line_;
    size_t count = 0;
    for (;;) {
      if (count == fields.size()) fields.emplace_back();
      std::string& field = fields[count++];
      const bool more = *p_ == '"' ? quoted_field(field) : plain_field(field);
      if (!more) break;
    }
    fields.resize(count);
    return true;
  }

 private:
  // Each returns true when a comma follows (another field of this record), false at record end.
  bool quoted_field(std::string& field) {
    const int64_t opened_on = line_;
    const char* content = ++p_;
    // The closing quote is the first one not followed by another (a "" pair is an escaped quote).
    const char* close = content;
    size_t escapes = 0;
    for (;;) {
      close = static_cast<const char*>(std::memchr(close, '"', static_cast<size_t>(end_ - close)));
      if (!close) {
        fail(path_, opened_on,
             "unterminated quoted field: the quote that opens on line " + std::to_string(opened_on) +
                 " is never closed");
      }
      if (close + 1 < end_ && close[1] == '"') {
        close += 2;
        ++escapes;
        continue;
      }
      break;
    }
    line_ += count_newlines(content, close);
    if (escapes == 0) {
      field.assign(content, close);
    } else {
      field.clear();
      field.reserve(static_cast<size_t>(close - content) - escapes);
      for (const char* q = content; q < close;) {
        const char* quote = static_cast<const char*>(std::memchr(q, '"', static_cast<size_t>(close - q)));
        if (!quote) {
          field.append(q, close);
          break;
        }
        field.append(q, quote + 1);  // keep one quote of the pair
        q = quote + 2;
      }
    }
    p_ = close + 1;
    if (p_ == end_ || (*p_ == '\r' && p_ + 1 == end_)) {
      p_ = end_;
      return false;
    }
    if (*p_ == ',') {
      ++p_;
      return true;
    }
    if (*p_ == '\n') {
      ++p_;
      ++line_;
      return false;
    }
    if (*p_ == '\r' && p_ + 1 < end_ && p_[1] == '\n') {
      p_ += 2;
      ++line_;
      return false;
    }
    fail(path_, line_,
         std::string("unexpected character '") + *p_ +
             "' after the closing quote of a field (a quote inside a quoted field must be doubled: \"\")");
  }

  bool plain_field(std::string& field) {
    const char* q = p_;
    while (q < end_ && *q != ',' && *q != '\n') ++q;
    const char* field_end = q;
    if ((q == end_ || *q == '\n') && field_end > p_ && field_end[-1] == '\r') --field_end;
    field.assign(p_, field_end);
    p_ = q;
    if (p_ == end_) return false;
    if (*p_++ == ',') return true;
    ++line_;
    return false;
  }

  const std::string& path_;
  const char* p_;
  const char* end_;
  int64_t line_ = 1;
};

constexpr size_t kNoColumn = static_cast<size_t>(-1);

// Fills rows with raw labels (the offset is subtracted later). Returns true when the file has a header row.
// With labels_optional, a file without a label column (a header without 'label', or a headerless
// file whose first record is one field) is read as text only and has_labels becomes false.
bool read_csv(const std::string& path, const char* begin, const char* end, std::vector<LabeledText>& rows,
              bool labels_optional, bool& has_labels) {
  CsvParser parser(path, begin, end);
  std::vector<std::string> fields;
  int64_t line = 0;
  has_labels = true;
  if (!parser.next(fields, line)) return false;

  bool has_header = false;
  size_t label_col = 0, text_col = 1, num_cols = 2;
  for (const auto& f : fields) {
    const std::string name = lower_ascii(trim_ascii(f));
    if (name == "label" || name == "text") has_header = true;
  }
  if (has_header) {
    bool have_label = false, have_text = false;
    num_cols = fields.size();
    for (size_t c = 0; c < fields.size(); ++c) {
      const std::string name = lower_ascii(trim_ascii(fields[c]));
      bool* seen = name == "label" ? &have_label : name == "text" ? &have_text : nullptr;
      if (seen) {
        if (*seen) fail(path, line, "header names column '" + name + "' twice");
        *seen = true;
        (name == "label" ? label_col : text_col) = c;
      } else if (name != "idx" && name != "id") {
        fail(path, line,
             "header column " + std::to_string(c + 1) + " is " + excerpt(fields[c]) +
                 ": expected only 'label' and 'text' (and optionally 'idx' or 'id', which are ignored)");
      }
    }
    if (!have_label && !labels_optional) {
      fail(path, line, "header has no 'label' column (train and eval need labels; predict reads text without them)");
    }
    if (!have_text) fail(path, line, "header has no 'text' column");
    if (!have_label) {
      label_col = kNoColumn;
      has_labels = false;
    }
    if (!parser.next(fields, line)) fail(path, line + 1, "no records after the header");
  } else if (labels_optional && fields.size() == 1) {
    label_col = kNoColumn;
    text_col = 0;
    num_cols = 1;
    has_labels = false;
  }

  const std::string expected = has_header   ? std::to_string(num_cols) + " fields, as in the header"
                               : has_labels ? "2 fields (label, text)"
                                            : "1 field (text), as in the first record";
  do {
    if (fields.size() != num_cols) {
      fail(path, line,
           "expected " + expected + ", found " + std::to_string(fields.size()) +
               " (a text containing commas, quotes or newlines must be enclosed in double quotes)");
    }
    if (label_col == kNoColumn) {
      rows.push_back(LabeledText{0, std::move(fields[text_col]), line});
      continue;
    }
    int64_t label;
    if (!parse_label(fields[label_col], label)) {
      std::string problem = "label " + excerpt(fields[label_col]) + " is not an integer";
      if (!has_header && rows.empty()) {
        problem += fields[0].size() && fields[0][0] == '{'
                       ? " (this looks like JSON Lines: use --format jsonl or a .jsonl extension)"
                   : labels_optional
                       ? " (text without labels: one column, in double quotes where it holds commas, or a header "
                         "row 'text')"
                       : " (a header row must name the columns 'label' and 'text')";
      }
      fail(path, line, problem);
    }
    rows.push_back(LabeledText{static_cast<int32_t>(label), std::move(fields[text_col]), line});
  } while (parser.next(fields, line));
  return has_header;
}

// ---- JSON Lines ------------------------------------------------------------------------------------

// With labels_optional, a line without "label" gives has_label = false (label 0).
LabeledText parse_json_line(const std::string& path, const char* begin, const char* end, int64_t line,
                            bool labels_optional, bool& has_label) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(begin, end);
  } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for numbers like 1e400
    std::string what = e.what();
    const size_t tag_end = what.find("] ");  // drop nlohmann's "[json.exception.parse_error.101] "
    if (what.rfind("[json.exception", 0) == 0 && tag_end != std::string::npos) what = what.substr(tag_end + 2);
    fail(path, line, "JSON syntax error: " + what);
  }
  if (!j.is_object()) fail(path, line, std::string("expected a JSON object, found a JSON ") + j.type_name());
  LabeledText record{0, {}, line};
  bool have_label = false, have_text = false;
  for (auto& item : j.items()) {
    const std::string& key = item.key();
    auto& value = item.value();
    if (key == "label") {
      if (!value.is_number_integer()) {
        fail(path, line, std::string("\"label\" must be an integer, found a JSON ") + value.type_name() + " " +
                             excerpt(value.dump()));
      }
      if (value.is_number_unsigned() ? value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())
                                     : (value.get<int64_t>() > std::numeric_limits<int32_t>::max() ||
                                        value.get<int64_t>() < std::numeric_limits<int32_t>::min())) {
        fail(path, line, "\"label\" " + value.dump() + " is out of the 32-bit integer range");
      }
      record.label = static_cast<int32_t>(value.get<int64_t>());
      have_label = true;
    } else if (key == "text") {
      if (!value.is_string()) {
        fail(path, line, std::string("\"text\" must be a string, found a JSON ") + value.type_name());
      }
      record.text = std::move(value.get_ref<std::string&>());
      have_text = true;
    } else if (key != "idx" && key != "id") {
      fail(path, line,
           "unexpected key \"" + key + "\": expected only \"label\" and \"text\" (and optionally \"idx\" or \"id\")");
    }
  }
  if (!have_label && !labels_optional) fail(path, line, "missing key \"label\"");
  if (!have_text) fail(path, line, "missing key \"text\"");
  has_label = have_label;
  return record;
}

// Labels are all there or (with labels_optional) all absent: has_labels says which.
void read_jsonl(const std::string& path, const char* begin, const char* end, std::vector<LabeledText>& rows,
                bool labels_optional, bool& has_labels) {
  struct Span {
    const char* begin;
    const char* end;
    int64_t line;
  };
  std::vector<Span> spans;
  int64_t line = 1;
  for (const char* p = begin; p < end; ++line) {
    const char* nl = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(end - p)));
    const char* line_end = nl ? nl : end;
    const char* first = p;
    while (first < line_end && (*first == ' ' || *first == '\t' || *first == '\r')) ++first;
    if (first < line_end) {
      if (spans.empty() && *first == '[') {
        fail(path, line,
             "this is a JSON array; expected JSON Lines, one object per line (datasets: "
             "Dataset.to_json(path, lines=True))");
      }
      spans.push_back(Span{p, line_end, line});
    }
    p = nl ? nl + 1 : end;
  }

  const int64_t count = static_cast<int64_t>(spans.size());
  rows.resize(spans.size());
  std::vector<char> labeled(spans.size(), 0);
  int64_t first_bad = count;
  // Exceptions may not leave an OpenMP region: note the earliest bad line, then parse it again outside.
#pragma omp parallel for schedule(dynamic, 512) reduction(min : first_bad)
  for (int64_t i = 0; i < count; ++i) {
    if (i > first_bad) continue;
    try {
      bool has_label = false;
      rows[i] = parse_json_line(path, spans[i].begin, spans[i].end, spans[i].line, labels_optional, has_label);
      labeled[i] = has_label;
    } catch (const std::exception&) {
      first_bad = std::min(first_bad, i);
    }
  }
  bool ignored = false;
  if (first_bad < count) {
    parse_json_line(path, spans[first_bad].begin, spans[first_bad].end, spans[first_bad].line, labels_optional,
                    ignored);
  }
  has_labels = count == 0 || labeled[0];
  for (int64_t i = 1; i < count; ++i) {
    if (static_cast<bool>(labeled[i]) != has_labels) {
      fail(path, spans[i].line,
           std::string(labeled[i] ? "has a \"label\"" : "has no \"label\"") + " but line " +
               std::to_string(spans[0].line) + (has_labels ? " has one" : " has none") +
               ": give every record a label or none");
    }
  }
}

DatasetFormat format_from_extension(const std::string& path) {
  const std::string ext = lower_ascii(std::filesystem::path(path).extension().string());
  if (ext == ".jsonl" || ext == ".json" || ext == ".ndjson") return DatasetFormat::kJsonl;
  return DatasetFormat::kCsv;
}

}  // namespace

DatasetFormat parse_dataset_format(const std::string& name) {
  if (name == "auto") return DatasetFormat::kAuto;
  if (name == "csv") return DatasetFormat::kCsv;
  if (name == "jsonl") return DatasetFormat::kJsonl;
  throw std::invalid_argument("dataset format '" + name + "' is not one of auto, csv, jsonl");
}

Dataset read_dataset(const std::string& path, const ReadOptions& options) {
  if (options.label_offset < -1) {
    throw std::invalid_argument(path + ": label_offset " + std::to_string(options.label_offset) +
                                " is negative (use -1 for auto)");
  }
  if (options.num_labels < 0) {
    throw std::invalid_argument(path + ": num_labels " + std::to_string(options.num_labels) + " is negative");
  }
  const std::string buffer = read_whole_file(path);
  const auto* bytes = reinterpret_cast<const uint8_t*>(buffer.data());
  if (buffer.size() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b) {
    fail(path, 1, "is gzip-compressed; decompress it first (gunzip)");
  }
  if (buffer.size() >= 2 && ((bytes[0] == 0xff && bytes[1] == 0xfe) || (bytes[0] == 0xfe && bytes[1] == 0xff))) {
    fail(path, 1, "is UTF-16 encoded; convert it to UTF-8 (iconv -f utf-16 -t utf-8)");
  }
  size_t start = 0;
  if (buffer.size() >= 3 && bytes[0] == 0xef && bytes[1] == 0xbb && bytes[2] == 0xbf) start = 3;  // UTF-8 BOM
  const char* begin = buffer.data() + start;
  const char* end = buffer.data() + buffer.size();

  const DatasetFormat format = options.format == DatasetFormat::kAuto ? format_from_extension(path) : options.format;
  Dataset dataset;
  dataset.path = path;
  std::vector<LabeledText>& rows = dataset.rows;
  rows.reserve(static_cast<size_t>(count_newlines(begin, end)) + 1);
  int auto_offset = 0;
  if (format == DatasetFormat::kJsonl) {
    read_jsonl(path, begin, end, rows, options.labels_optional, dataset.has_labels);
  } else {
    const bool has_header = read_csv(path, begin, end, rows, options.labels_optional, dataset.has_labels);
    auto_offset = has_header ? 0 : 1;  // YelpReviewFull as distributed stores stars 1-5
  }
  if (rows.empty()) fail(path, 1, "no records (the file is empty)");
  validate_utf8(path, rows);
  if (!dataset.has_labels) {
    dataset.label_offset = std::max(options.label_offset, 0);
    return dataset;
  }

  dataset.label_offset = options.label_offset >= 0 ? options.label_offset : auto_offset;
  const int64_t offset = dataset.label_offset;
  const std::string offset_hint =
      " (set --label_offset: 1 for YelpReviewFull as distributed, 0 for HF datasets exports";
  int64_t max_label = -1;
  for (LabeledText& row : rows) {
    const int64_t raw = row.label;
    const int64_t label = raw - offset;
    if (label < 0) {
      fail(path, row.line,
           "label " + std::to_string(raw) + " is below the label offset " + std::to_string(offset) +
               "; labels become 0-based by subtracting it" + offset_hint + ")");
    }
    if (options.num_labels > 0 && label >= options.num_labels) {
      fail(path, row.line,
           "label " + std::to_string(raw) + " is out of range: with label offset " + std::to_string(offset) +
               " and " + std::to_string(options.num_labels) + " labels it must be in [" + std::to_string(offset) +
               ", " + std::to_string(offset + options.num_labels - 1) + "]" + offset_hint + ", or --num_labels)");
    }
    if (label >= std::numeric_limits<int32_t>::max()) {  // num_labels_seen = label + 1 must be an int
      fail(path, row.line, "label " + std::to_string(raw) + " is too large to be a class index");
    }
    max_label = std::max(max_label, label);
    row.label = static_cast<int32_t>(label);
  }
  dataset.num_labels_seen = static_cast<int>(max_label + 1);
  return dataset;
}

}  // namespace llmqs::data
