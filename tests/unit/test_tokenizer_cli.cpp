// `statelm tokenize` / `statelm detokenize` end to end: round trips, flags, and one-line errors.
#include <gtest/gtest.h>

#include <string>

#include "unit/test_support.h"

namespace statelm {
namespace {

std::string neox_path() { return test::fixture("tokenizer/gpt-neox-20b.tokenizer.json").string(); }

bool one_line(const std::string& s) { return !s.empty() && s.find('\n') == s.size() - 1; }

TEST(TokenizerCli, TokenizeDetokenizeRoundTrip) {
  std::string text = "Hello world\n  indented\tline \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80<|endoftext|>";
  auto enc = test::run_statelm("tokenize --tokenizer '" + neox_path() + "'", text);
  ASSERT_EQ(enc.exit_code, 0) << enc.err;
  ASSERT_TRUE(one_line(enc.out)) << enc.out;
  EXPECT_EQ(enc.out.front(), '[');
  auto dec = test::run_statelm("detokenize --tokenizer '" + neox_path() + "'", enc.out);
  ASSERT_EQ(dec.exit_code, 0) << dec.err;
  EXPECT_EQ(dec.out, text);
  auto skip = test::run_statelm("detokenize --skip-special --tokenizer '" + neox_path() + "'", enc.out);
  EXPECT_EQ(skip.out, text.substr(0, text.size() - std::string("<|endoftext|>").size()));
}

TEST(TokenizerCli, KnownIdsAndIdsFlag) {
  auto enc = test::run_statelm("tokenize --tokenizer '" + neox_path() + "'", "Hello world");
  EXPECT_EQ(enc.out, "[12092,1533]\n");
  auto dec = test::run_statelm("detokenize --tokenizer '" + neox_path() + "' --ids 12092,1533");
  EXPECT_EQ(dec.exit_code, 0) << dec.err;
  EXPECT_EQ(dec.out, "Hello world");
}

TEST(TokenizerCli, ModelDirectoryAndNoSpecial) {
  // A model directory with a tokenizer whose post-processor adds <s> (id 1).
  test::TempDir dir;
  test::write_file(dir / "tokenizer.json", R"({"version":"1.0","added_tokens":[
      {"id":1,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
    "normalizer":null,"pre_tokenizer":null,"decoder":null,
    "post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
      "pair":[],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]}}},
    "model":{"type":"BPE","vocab":{"a":0,"<s>":1,"b":2,"ab":3},"merges":["a b"]}})");
  auto with = test::run_statelm("tokenize --tokenizer '" + dir.path().string() + "'", "abab");
  EXPECT_EQ(with.out, "[1,3,3]\n") << with.err;
  auto without = test::run_statelm("tokenize --no-special --tokenizer '" + dir.path().string() + "'", "abab");
  EXPECT_EQ(without.out, "[3,3]\n") << without.err;
}

TEST(TokenizerCli, InvalidUtf8OnStdinIsOneLineError) {
  auto r = test::run_statelm("tokenize --tokenizer '" + neox_path() + "'", std::string("ok \xff\xfe bad"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("stdin"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("3"), std::string::npos) << r.err;  // the byte offset
  EXPECT_TRUE(r.out.empty());
}

TEST(TokenizerCli, OutOfRangeIdIsOneLineError) {
  auto r = test::run_statelm("detokenize --tokenizer '" + neox_path() + "'", "[12092, 999999]");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("999999"), std::string::npos) << r.err;
  auto bad = test::run_statelm("detokenize --tokenizer '" + neox_path() + "'", "[1, \"two\"]");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_TRUE(one_line(bad.err)) << bad.err;
  auto flag = test::run_statelm("detokenize --tokenizer '" + neox_path() + "' --ids 1,x");
  EXPECT_NE(flag.exit_code, 0);
  EXPECT_NE(flag.err.find("--ids"), std::string::npos) << flag.err;
}

TEST(TokenizerCli, MissingTokenizerFileIsOneLineError) {
  auto r = test::run_statelm("tokenize --tokenizer /nonexistent/tokenizer.json", "hi");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/tokenizer.json"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace statelm
