// The tokenizer against the Rust `tokenizers` library: every <name>.expected.json under
// tests/fixtures/tokenizer (made by tools/make_tokenizer_fixtures.py) lists, for each hard text,
// the library's ids with and without special tokens and its decodes of them; statelm must agree
// id for id and byte for byte, and the incremental detokenizer must stream the same text.
// STATELM_TOKENIZER_FIXTURES overrides the directory (to try fixtures not yet committed).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/tokenizer.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

namespace fs = std::filesystem;

fs::path fixture_dir() {
  if (const char* env = std::getenv("STATELM_TOKENIZER_FIXTURES")) return env;
  return test::fixture("tokenizer");
}

// The tokenizers the fixture script covers, plus any other <name>.expected.json present.
std::vector<std::string> fixture_names() {
  std::set<std::string> names = {"gpt-neox-20b", "llama-style", "metaspace-style"};
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(fixture_dir(), ec)) {
    std::string f = entry.path().filename().string();
    const std::string suffix = ".expected.json";
    if (f.size() > suffix.size() && f.compare(f.size() - suffix.size(), suffix.size(), suffix) == 0)
      names.insert(f.substr(0, f.size() - suffix.size()));
  }
  return {names.begin(), names.end()};
}

std::vector<int32_t> ids_of(const nlohmann::json& j) { return j.get<std::vector<int32_t>>(); }

// "first difference at i: got ... want ..." is far more useful than two 500-id vectors.
std::string first_difference(const std::vector<int32_t>& got, const std::vector<int32_t>& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto show = [&](const std::vector<int32_t>& v) {
    std::string s;
    for (size_t k = i; k < v.size() && k < i + 8; ++k) s += std::to_string(v[k]) + " ";
    return s.empty() ? std::string("(end)") : s;
  };
  return "sizes " + std::to_string(got.size()) + " vs " + std::to_string(want.size()) + ", first difference at " +
         std::to_string(i) + ": got [" + show(got) + "] want [" + show(want) + "]";
}

class TokenizerFixture : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    fs::path expected = fixture_dir() / (GetParam() + ".expected.json");
    fs::path tokenizer = fixture_dir() / (GetParam() + ".tokenizer.json");
    if (!fs::exists(expected) || !fs::exists(tokenizer))
      GTEST_SKIP() << "fixture " << expected << " or " << tokenizer
                   << " not present yet (run tools/make_tokenizer_fixtures.py)";
    doc_ = nlohmann::json::parse(test::read_file(expected));
    tok_ = std::make_unique<Tokenizer>(Tokenizer::from_file(tokenizer.string()));
  }
  nlohmann::json doc_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_P(TokenizerFixture, EncodeMatchesLibrary) {
  ASSERT_GE(doc_["cases"].size(), 30u);
  EXPECT_EQ(tok_->vocab_size(), doc_["vocab_size"].get<size_t>());
  for (const auto& c : doc_["cases"]) {
    SCOPED_TRACE("case " + c["name"].get<std::string>());
    std::string text = c["text"];
    auto with = tok_->encode(text, true);
    auto without = tok_->encode(text, false);
    EXPECT_EQ(with, ids_of(c["ids"])) << first_difference(with, ids_of(c["ids"]));
    EXPECT_EQ(without, ids_of(c["ids_no_special"])) << first_difference(without, ids_of(c["ids_no_special"]));
  }
}

TEST_P(TokenizerFixture, DecodeMatchesLibrary) {
  for (const auto& c : doc_["cases"]) {
    SCOPED_TRACE("case " + c["name"].get<std::string>());
    auto ids = ids_of(c["ids"]);
    EXPECT_EQ(tok_->decode(ids, false), c["decode"].get<std::string>());
    EXPECT_EQ(tok_->decode(ids, true), c["decode_skip_special"].get<std::string>());
    EXPECT_EQ(tok_->decode(ids_of(c["ids_no_special"]), false), c["decode_no_special"].get<std::string>());
  }
  // Random id sequences: broken byte sequences must become U+FFFD exactly where the library
  // puts them.
  for (const auto& c : doc_["decode_cases"]) {
    auto ids = ids_of(c["ids"]);
    SCOPED_TRACE("decode case " + c["ids"].dump());
    EXPECT_EQ(tok_->decode(ids, c["skip_special_tokens"].get<bool>()), c["text"].get<std::string>());
  }
}

// Streams ids one by one; checks every chunk is whole UTF-8 and the chunks add up to decode().
void check_incremental(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special) {
  IncrementalDetokenizer detok(tok, skip_special);
  std::string streamed;
  for (size_t i = 0; i < ids.size(); ++i) {
    std::string chunk = detok.push(ids[i]);
    ASSERT_TRUE(utf8_is_valid(chunk)) << "push #" << i << " (id " << ids[i] << ") returned broken UTF-8";
    streamed += chunk;
  }
  std::string rest = detok.flush();
  ASSERT_TRUE(utf8_is_valid(rest));
  streamed += rest;
  EXPECT_EQ(streamed, tok.decode(ids, skip_special));
}

TEST_P(TokenizerFixture, IncrementalDetokenizerMatchesDecode) {
  for (const auto& c : doc_["cases"]) {
    SCOPED_TRACE("case " + c["name"].get<std::string>());
    for (bool skip : {false, true}) {
      check_incremental(*tok_, ids_of(c["ids"]), skip);
      check_incremental(*tok_, ids_of(c["ids_no_special"]), skip);
    }
  }
  for (const auto& c : doc_["decode_cases"]) {
    SCOPED_TRACE("decode case " + c["ids"].dump());
    check_incremental(*tok_, ids_of(c["ids"]), c["skip_special_tokens"].get<bool>());
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizerFixture, ::testing::ValuesIn(fixture_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

}  // namespace
}  // namespace statelm
