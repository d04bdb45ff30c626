// Tests of data/dataset_reader: YelpReviewFull CSV quirks, HF CSV and JSON Lines exports, label
// offsets, and that every error names the file and the line where the problem is.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <unistd.h>

#include "data/dataset_reader.h"

namespace fs = std::filesystem;
using llmqs::data::Dataset;
using llmqs::data::DatasetFormat;
using llmqs::data::read_dataset;
using llmqs::data::ReadOptions;

namespace {

class DataReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("llmqs_reader_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  // Runs the reader, expects a std::runtime_error whose message starts with "path:line:" and contains
  // every one of the given fragments.
  void expect_error(const std::string& path, int64_t line, std::initializer_list<std::string> fragments,
                    const ReadOptions& options = {}) {
    try {
      read_dataset(path, options);
      ADD_FAILURE() << "expected an error reading " << path;
    } catch (const std::runtime_error& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.rfind(path + ":" + std::to_string(line) + ": ", 0), 0u) << message;
      for (const auto& f : fragments) EXPECT_NE(message.find(f), std::string::npos) << "'" << f << "' not in: " << message;
    }
  }

  fs::path dir_;
};

ReadOptions with_offset(int offset, int num_labels = 0) {
  ReadOptions o;
  o.label_offset = offset;
  o.num_labels = num_labels;
  return o;
}

}  // namespace

// ---- YelpReviewFull as distributed ------------------------------------------------------------------

TEST_F(DataReaderTest, DistributedYelpCsvWithQuotesEscapesAndLiteralBackslashN) {
  const std::string path = write("train.csv",
                                 "\"5\",\"Great tacos, \"\"really\"\" good.\\nWill be back.\"\n"
                                 "\"1\",\"Cold food.\"\n"
                                 "\"3\",\"\"\n");
  const Dataset d = read_dataset(path, {});
  ASSERT_EQ(d.rows.size(), 3u);
  EXPECT_EQ(d.path, path);
  EXPECT_EQ(d.label_offset, 1);
  EXPECT_EQ(d.num_labels_seen, 5);
  EXPECT_EQ(d.rows[0].label, 4);
  EXPECT_EQ(d.rows[0].text, "Great tacos, \"really\" good.\\nWill be back.");  // backslash-n kept as two chars
  EXPECT_EQ(d.rows[0].text.size(), 42u);
  EXPECT_EQ(d.rows[1].label, 0);
  EXPECT_EQ(d.rows[1].text, "Cold food.");
  EXPECT_EQ(d.rows[2].label, 2);
  EXPECT_EQ(d.rows[2].text, "");
  EXPECT_EQ(d.rows[0].line, 1);
  EXPECT_EQ(d.rows[2].line, 3);
}

TEST_F(DataReaderTest, NewlinesInsideQuotedFieldsKeepLineNumbersRight) {
  const std::string path = write("train.csv",
                                 "\"2\",\"first\"\n"
                                 "\"4\",\"spans\nthree\nlines\"\n"
                                 "\"1\",\"after\"\n");
  const Dataset d = read_dataset(path, {});
  ASSERT_EQ(d.rows.size(), 3u);
  EXPECT_EQ(d.rows[1].text, "spans\nthree\nlines");
  EXPECT_EQ(d.rows[1].line, 2);
  EXPECT_EQ(d.rows[2].line, 5);
  EXPECT_EQ(d.rows[2].label, 0);
}

TEST_F(DataReaderTest, CrlfLineEndsAndUtf8Bom) {
  const std::string path = write("train.csv",
                                 "\xEF\xBB\xBF\"3\",\"caf\xC3\xA9\r\nna\xC3\xAFve\"\r\n"
                                 "2,plain text\r\n"
                                 "\r\n"
                                 "5,last\r\n");
  const Dataset d = read_dataset(path, {});
  ASSERT_EQ(d.rows.size(), 3u);
  EXPECT_EQ(d.rows[0].label, 2);  // the BOM did not end up in the label
  EXPECT_EQ(d.rows[0].text, "caf\xC3\xA9\r\nna\xC3\xAFve");  // quoted line breaks are data
  EXPECT_EQ(d.rows[1].text, "plain text");                  // no trailing \r
  EXPECT_EQ(d.rows[1].line, 3);
  EXPECT_EQ(d.rows[2].text, "last");
  EXPECT_EQ(d.rows[2].line, 5);  // the blank line 4 is skipped
}

TEST_F(DataReaderTest, UnquotedFieldsAndMissingFinalNewline) {
  const std::string path = write("train.csv", "1,short\n5,  spaced text \n4,\"quoted at the end\"");
  const Dataset d = read_dataset(path, {});
  ASSERT_EQ(d.rows.size(), 3u);
  EXPECT_EQ(d.rows[1].text, "  spaced text ");
  EXPECT_EQ(d.rows[2].text, "quoted at the end");
  EXPECT_EQ(d.rows[2].label, 3);
}

TEST_F(DataReaderTest, TenMegabyteReview) {
  std::string text;
  text.reserve(10 << 20);
  for (int i = 0; text.size() < (10u << 20); ++i) text += "word" + std::to_string(i % 997) + ", \"quoted\" \\n ";
  std::string escaped;
  for (char c : text) escaped += c == '"' ? std::string("\"\"") : std::string(1, c);
  const std::string path = write("big.csv", "\"2\",\"" + escaped + "\"\n\"4\",\"tail\"\n");
  const Dataset d = read_dataset(path, {});
  ASSERT_EQ(d.rows.size(), 2u);
  EXPECT_EQ(d.rows[0].text.size(), text.size());
  EXPECT_TRUE(d.rows[0].text == text);
  EXPECT_EQ(d.rows[1].text, "tail");
  EXPECT_EQ(d.rows[1].line, 2);
}

// ---- HF datasets exports ----------------------------------------------------------------------------

TEST_F(DataReaderTest, HfCsvWithHeaderIsZeroBased) {
  const std::string path = write("train.csv", "label,text\n0,\"awful, truly\"\n4,great\n");
  const Dataset d = read_dataset(path, {});
  ASSERT_EQ(d.rows.size(), 2u);
  EXPECT_EQ(d.label_offset, 0);
  EXPECT_EQ(d.rows[0].label, 0);
  EXPECT_EQ(d.rows[0].text, "awful, truly");
  EXPECT_EQ(d.rows[0].line, 2);
  EXPECT_EQ(d.rows[1].label, 4);
  EXPECT_EQ(d.num_labels_seen, 5);
}

TEST_F(DataReaderTest, HfCsvColumnsByNameInAnyOrderWithIgnoredIdx) {
  const std::string path = write("train.csv", "\"text\",\"idx\",\"Label\"\n\"fine\",0,2\n\"meh\",1,1\n");
  const Dataset d = read_dataset(path, {});
  ASSERT_EQ(d.rows.size(), 2u);
  EXPECT_EQ(d.rows[0].text, "fine");
  EXPECT_EQ(d.rows[0].label, 2);
  EXPECT_EQ(d.rows[1].text, "meh");
  EXPECT_EQ(d.rows[1].label, 1);
  EXPECT_EQ(d.num_labels_seen, 3);
}

TEST_F(DataReaderTest, JsonLinesWithBlankLinesAndEscapes) {
  const std::string path = write("train.jsonl",
                                 "{\"label\": 4, \"text\": \"Caf\\u00e9 \\\"ok\\\"\\nline\"}\n"
                                 "\n"
                                 "   \r\n"
                                 "{\"text\": \"bad\", \"label\": 0, \"idx\": 7}\r\n");
  const Dataset d = read_dataset(path, {});
  ASSERT_EQ(d.rows.size(), 2u);
  EXPECT_EQ(d.label_offset, 0);
  EXPECT_EQ(d.rows[0].label, 4);
  EXPECT_EQ(d.rows[0].text, "Caf\xC3\xA9 \"ok\"\nline");  // JSON escapes decoded
  EXPECT_EQ(d.rows[0].line, 1);
  EXPECT_EQ(d.rows[1].label, 0);
  EXPECT_EQ(d.rows[1].line, 4);
}

TEST_F(DataReaderTest, FormatFromExtensionOrOption) {
  const std::string json = "{\"label\": 1, \"text\": \"x\"}\n";
  EXPECT_EQ(read_dataset(write("a.json", json), {}).rows.at(0).label, 1);
  EXPECT_EQ(read_dataset(write("b.JSONL", json), {}).rows.at(0).label, 1);
  const std::string txt = write("c.txt", json);
  ReadOptions as_jsonl;
  as_jsonl.format = DatasetFormat::kJsonl;
  EXPECT_EQ(read_dataset(txt, as_jsonl).rows.at(0).text, "x");
  // .txt defaults to CSV, and the message points at JSON Lines.
  expect_error(txt, 1, {"not an integer", "--format jsonl"});
  // A CSV with a .jsonl name is read as CSV when told so.
  ReadOptions as_csv;
  as_csv.format = DatasetFormat::kCsv;
  EXPECT_EQ(read_dataset(write("d.jsonl", "3,abc\n"), as_csv).rows.at(0).label, 2);
}

TEST(DatasetFormat, ParseNames) {
  EXPECT_EQ(llmqs::data::parse_dataset_format("auto"), DatasetFormat::kAuto);
  EXPECT_EQ(llmqs::data::parse_dataset_format("csv"), DatasetFormat::kCsv);
  EXPECT_EQ(llmqs::data::parse_dataset_format("jsonl"), DatasetFormat::kJsonl);
  EXPECT_THROW(llmqs::data::parse_dataset_format("parquet"), std::invalid_argument);
  EXPECT_THROW(llmqs::data::parse_dataset_format("CSV "), std::invalid_argument);
}

// ---- label offsets and ranges -----------------------------------------------------------------------

TEST_F(DataReaderTest, ExplicitLabelOffsets) {
  const std::string headerless_zero_based = write("zero.csv", "0,a\n4,b\n");
  expect_error(headerless_zero_based, 1, {"label 0 is below the label offset 1", "--label_offset"});
  const Dataset d = read_dataset(headerless_zero_based, with_offset(0));
  EXPECT_EQ(d.label_offset, 0);
  EXPECT_EQ(d.rows[0].label, 0);
  EXPECT_EQ(d.rows[1].label, 4);

  // An offset can also be forced onto a header CSV or JSON Lines.
  const Dataset h = read_dataset(write("h.csv", "label,text\n1,a\n5,b\n"), with_offset(1));
  EXPECT_EQ(h.rows[0].label, 0);
  EXPECT_EQ(h.rows[1].label, 4);
  const Dataset j = read_dataset(write("j.jsonl", "{\"label\": 3, \"text\": \"a\"}\n"), with_offset(2));
  EXPECT_EQ(j.rows[0].label, 1);
  EXPECT_EQ(j.num_labels_seen, 2);
}

TEST_F(DataReaderTest, NumLabelsBoundsEveryLabel) {
  const std::string path = write("train.csv", "1,a\n5,b\n\"6\",\"c\nc\"\n2,d\n");
  EXPECT_EQ(read_dataset(path, {}).num_labels_seen, 6);  // no bound given: reported, not checked
  expect_error(path, 3, {"label 6 is out of range", "[1, 5]", "--label_offset", "--num_labels"}, with_offset(-1, 5));
  EXPECT_EQ(read_dataset(path, with_offset(-1, 6)).rows.size(), 4u);
  expect_error(write("hf.jsonl", "{\"label\": 0, \"text\": \"a\"}\n{\"label\": 5, \"text\": \"b\"}\n"), 2,
               {"label 5 is out of range", "[0, 4]"}, with_offset(-1, 5));
}

TEST_F(DataReaderTest, InvalidOptionsAreRejected) {
  const std::string path = write("ok.csv", "1,a\n");
  EXPECT_THROW(read_dataset(path, with_offset(-2)), std::invalid_argument);
  EXPECT_THROW(read_dataset(path, with_offset(-1, -1)), std::invalid_argument);
}

// ---- errors: each names the file and the line -------------------------------------------------------

TEST_F(DataReaderTest, MissingFileDirectoryAndEmptyFile) {
  expect_error((dir_ / "nope.csv").string(), 1, {"no such file"});
  fs::create_directories(dir_ / "adir");
  expect_error((dir_ / "adir").string(), 1, {"is a directory"});
  expect_error(write("empty.csv", ""), 1, {"no records"});
  expect_error(write("blank.csv", "\n\r\n\n"), 1, {"no records"});
  expect_error(write("bom_only.jsonl", "\xEF\xBB\xBF\n  \n"), 1, {"no records"});
  expect_error(write("header_only.csv", "label,text\n"), 2, {"no records after the header"});
}

TEST_F(DataReaderTest, UnterminatedQuoteNamesTheLineWhereTheFieldStarted) {
  const std::string path = write("train.csv", "1,ok\n2,fine\n3,\"this never\nends\n4,more\n5,rows\n");
  expect_error(path, 3, {"unterminated quoted field", "opens on line 3"});
}

TEST_F(DataReaderTest, StrayCharacterAfterClosingQuote) {
  expect_error(write("train.csv", "1,ok\n2,\"say \"hi\" now\"\n"), 2, {"after the closing quote", "\"\""});
}

TEST_F(DataReaderTest, WrongColumnCount) {
  expect_error(write("three.csv", "1,a\n2,b\n3,unquoted, comma\n"), 3, {"expected 2 fields", "found 3"});
  expect_error(write("one.csv", "\"1\",\"a\nb\"\n\"2\"\n"), 3, {"expected 2 fields", "found 1"});
  expect_error(write("hdr.csv", "label,text\n1,a\n2\n"), 3, {"expected 2 fields, as in the header", "found 1"});
}

TEST_F(DataReaderTest, NonNumericLabel) {
  expect_error(write("train.csv", "1,a\nfive,b\n"), 2, {"label 'five' is not an integer"});
  expect_error(write("float.csv", "1,a\n2,b\n2.5,c\n"), 3, {"label '2.5' is not an integer"});
  expect_error(write("first.csv", "stars,review\n1,a\n"), 1, {"not an integer", "header row must name"});
  expect_error(write("hdr.csv", "text,label\nok,x\n"), 2, {"label 'x' is not an integer"});
}

TEST_F(DataReaderTest, UnexpectedHeaderColumns) {
  expect_error(write("title.csv", "label,title,text\n1,t,a\n"), 1, {"'title'", "'idx' or 'id'"});
  expect_error(write("pandas.csv", ",label,text\n0,1,a\n"), 1, {"header column 1", "''"});
  expect_error(write("notext.csv", "label,id\n1,2\n"), 1, {"no 'text' column"});
  expect_error(write("twice.csv", "label,text,label\n1,a,1\n"), 1, {"'label' twice"});
}

TEST_F(DataReaderTest, InvalidUtf8NamesTheLineOfTheBadByte) {
  // valid 2-, 3- and 4-byte sequences pass
  EXPECT_EQ(read_dataset(write("ok.csv", "1,\"\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80\"\n"), {}).rows.size(), 1u);
  expect_error(write("latin1.csv", "1,ok\n2,\"two\nlines, then caf\xE9\"\n"), 3, {"invalid UTF-8", "0xE9"});
  expect_error(write("overlong.csv", "1,\"a\xC0\xAF\"\n"), 1, {"invalid UTF-8", "0xC0"});
  expect_error(write("surrogate.csv", "1,ok\n1,ok\n1,\"\xED\xA0\x80\"\n"), 3, {"invalid UTF-8", "0xED"});
  expect_error(write("truncated.csv", "1,\"ab\xE2\x82\"\n"), 1, {"invalid UTF-8", "byte 2 of the field"});
  expect_error(write("bad.jsonl", "{\"label\": 1, \"text\": \"a\"}\n{\"label\": 1, \"text\": \"caf\xE9\"}\n"), 2,
               {"UTF-8"});
}

TEST_F(DataReaderTest, JsonErrors) {
  const std::string good = "{\"label\": 1, \"text\": \"a\"}\n";
  expect_error(write("syntax.jsonl", good + "\n{\"label\": 1, \"text\": \"a\"\n"), 3, {"JSON syntax error"});
  expect_error(write("nolabel.jsonl", good + "{\"text\": \"a\"}\n"), 2, {"missing key \"label\""});
  expect_error(write("notext.jsonl", good + good + "{\"label\": 2}\n"), 3, {"missing key \"text\""});
  expect_error(write("strlabel.jsonl", "{\"label\": \"3\", \"text\": \"a\"}\n"), 1,
               {"\"label\" must be an integer", "string"});
  expect_error(write("floatlabel.jsonl", good + "{\"label\": 2.0, \"text\": \"a\"}\n"), 2,
               {"\"label\" must be an integer", "number"});
  expect_error(write("numtext.jsonl", "{\"label\": 1, \"text\": 42}\n"), 1, {"\"text\" must be a string"});
  expect_error(write("notobj.jsonl", good + "[1, \"a\"]\n"), 2, {"expected a JSON object", "array"});
  expect_error(write("array.json", "[\n" + good + "]\n"), 1, {"JSON array", "lines=True"});
  expect_error(write("extra.jsonl", "{\"label\": 1, \"text\": \"a\", \"stars\": 5}\n"), 1, {"unexpected key \"stars\""});
  expect_error(write("huge.jsonl", "{\"label\": 3000000000, \"text\": \"a\"}\n"), 1, {"32-bit"});
}

TEST_F(DataReaderTest, EarliestErrorIsReportedWhenManyLinesAreBad) {
  std::string lines;
  for (int i = 1; i <= 5000; ++i) {
    lines += (i == 1234 || i == 4000) ? "{\"label\": 1}\n" : "{\"label\": 1, \"text\": \"t" + std::to_string(i) + "\"}\n";
  }
  expect_error(write("many.jsonl", lines), 1234, {"missing key \"text\""});
}

TEST_F(DataReaderTest, CompressedAndUtf16FilesAreRecognized) {
  expect_error(write("train.csv.gz", std::string("\x1f\x8b\x08\x00", 4)), 1, {"gzip"});
  expect_error(write("utf16.csv", std::string("\xFF\xFE" "1\0,\0a\0", 8)), 1, {"UTF-16"});
}

// predict reads text without labels (ReadOptions::labels_optional); train and eval keep requiring them.
TEST_F(DataReaderTest, TextOnlyCsvAndJsonlWhenLabelsAreOptional) {
  ReadOptions optional;
  optional.labels_optional = true;

  const std::string one_column = write("one.csv", "great food\n\"slow, cold\"\n\"a \"\"quoted\"\" word\"\n");
  const Dataset a = read_dataset(one_column, optional);
  EXPECT_FALSE(a.has_labels);
  ASSERT_EQ(a.rows.size(), 3u);
  EXPECT_EQ(a.rows[0].text, "great food");
  EXPECT_EQ(a.rows[1].text, "slow, cold");
  EXPECT_EQ(a.rows[2].text, "a \"quoted\" word");
  EXPECT_EQ(a.rows[2].line, 3);
  EXPECT_EQ(a.num_labels_seen, 0);

  const Dataset b = read_dataset(write("header.csv", "id,text\n7,great\n8,\"bad, sad\"\n"), optional);
  EXPECT_FALSE(b.has_labels);
  ASSERT_EQ(b.rows.size(), 2u);
  EXPECT_EQ(b.rows[1].text, "bad, sad");
  EXPECT_EQ(b.rows[1].line, 3);

  const Dataset c = read_dataset(write("text.jsonl", "{\"text\": \"x\"}\n\n{\"text\": \"y\", \"id\": 3}\n"), optional);
  EXPECT_FALSE(c.has_labels);
  ASSERT_EQ(c.rows.size(), 2u);
  EXPECT_EQ(c.rows[1].text, "y");

  // Labels present: read as before, offsets applied.
  const Dataset d = read_dataset(write("labeled.csv", "\"5\",\"top\"\n\"1\",\"bottom\"\n"), optional);
  EXPECT_TRUE(d.has_labels);
  EXPECT_EQ(d.label_offset, 1);
  EXPECT_EQ(d.rows[0].label, 4);
  EXPECT_EQ(d.num_labels_seen, 5);

  // A one-column file is one column throughout; an unquoted comma is a second field.
  expect_error(write("comma.csv", "fine\nslow, cold\n"), 2, {"expected 1 field (text)", "double quotes"}, optional);
  // All records labelled or none.
  expect_error(write("mixed.jsonl", "{\"text\": \"x\"}\n{\"label\": 1, \"text\": \"y\"}\n"), 2,
               {"has a \"label\"", "line 1 has none"}, optional);
  expect_error(write("words.csv", "good,food\n"), 1, {"is not an integer", "one column"}, optional);

  // Without the option (train, eval, prepare) the label column stays required.
  expect_error(one_column, 1, {"expected 2 fields (label, text), found 1"});
  expect_error(write("textheader.csv", "text\ngreat\n"), 1, {"no 'label' column", "predict"});
  expect_error(write("nolabel.jsonl", "{\"text\": \"x\"}\n"), 1, {"missing key \"label\""});
}

TEST_F(DataReaderTest, LabelThatCannotBecomeAClassCountIsRefused) {
  // label_offset 0 and label 2^31 - 1: num_labels_seen = label + 1 would overflow an int.
  expect_error(write("max.csv", "label,text\n2147483647,a\n"), 2, {"too large"});
}
