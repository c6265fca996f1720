// tokenizer.json files statelm must refuse, and how: Error(Format) for a malformed file,
// Error(Unsupported) for a well-formed one it does not implement, always naming the file and
// the JSON field. Also invalid UTF-8 text and bad ids.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace statelm {
namespace {

// A small valid byte-level BPE tokenizer; the tests below break one field at a time.
std::string tiny_json(const std::string& model_override = "", const std::string& extra = "") {
  std::string model = model_override.empty()
                          ? R"({"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false,
                               "byte_fallback": false, "vocab": {"a": 0, "b": 1, "ab": 2, "<|end|>": 3},
                               "merges": ["a b"]})"
                          : model_override;
  return R"({"version": "1.0", "added_tokens": [{"id": 3, "content": "<|end|>", "single_word": false,
             "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
             "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null)" +
         extra + R"(, "model": )" + model + "}";
}

// Expects loading `json` to throw `kind` with every one of `needles` in the message.
void expect_load_error(const std::string& json, ErrorKind kind, const std::vector<std::string>& needles) {
  try {
    Tokenizer::from_json(json, "tokenizer.json");
    FAIL() << "loaded without error: " << json.substr(0, 200);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
  }
}

TEST(TokenizerErrors, TinyTokenizerLoads) {
  Tokenizer tok = Tokenizer::from_json(tiny_json(), "tokenizer.json");
  EXPECT_EQ(tok.encode("aab<|end|>b"), (std::vector<int32_t>{0, 2, 3, 1}));
  EXPECT_EQ(tok.vocab_size(), 4u);
}

TEST(TokenizerErrors, UnknownModelTypeIsUnsupported) {
  expect_load_error(tiny_json(R"({"type": "Unigram", "vocab": [["a", 0.0]]})"), ErrorKind::Unsupported,
                    {"tokenizer.json", "model.type", "Unigram", "not supported"});
  expect_load_error(tiny_json(R"({"type": "WordPiece", "vocab": {"a": 0}})"), ErrorKind::Unsupported,
                    {"model.type", "WordPiece"});
}

TEST(TokenizerErrors, UnknownComponentsAreUnsupported) {
  auto with = [](const std::string& key, const std::string& value) {
    std::string j = tiny_json();
    std::string from = "\"" + key + "\": null";
    return j.replace(j.find(from), from.size(), "\"" + key + "\": " + value);
  };
  expect_load_error(with("pre_tokenizer", R"({"type": "UnicodeScripts"})"), ErrorKind::Unsupported,
                    {"tokenizer.json", "pre_tokenizer.type", "UnicodeScripts"});
  expect_load_error(with("normalizer", R"({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Precompiled", "precompiled_charsmap": ""}]})"),
                    ErrorKind::Unsupported, {"normalizer.normalizers[1].type", "Precompiled"});
  expect_load_error(with("decoder", R"({"type": "CTC"})"), ErrorKind::Unsupported, {"decoder.type", "CTC"});
  expect_load_error(with("post_processor", R"({"type": "Mystery"})"), ErrorKind::Unsupported,
                    {"post_processor.type", "Mystery"});
}

TEST(TokenizerErrors, DropoutIsUnsupported) {
  expect_load_error(tiny_json(R"({"type": "BPE", "dropout": 0.1, "vocab": {"a": 0}, "merges": []})"),
                    ErrorKind::Unsupported, {"model.dropout"});
}

TEST(TokenizerErrors, TruncatedJsonIsFormat) {
  std::string j = tiny_json();
  expect_load_error(j.substr(0, j.size() / 2), ErrorKind::Format, {"tokenizer.json", "not valid JSON"});
  expect_load_error("", ErrorKind::Format, {"tokenizer.json"});
  expect_load_error("[1, 2]", ErrorKind::Format, {"tokenizer.json", "must be an object"});
}

TEST(TokenizerErrors, MergeWithUnknownTokenIsFormat) {
  expect_load_error(tiny_json(R"({"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a c"]})"),
                    ErrorKind::Format, {"model.merges[0]", "\"c\"", "not in model.vocab"});
  expect_load_error(tiny_json(R"({"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]})"),
                    ErrorKind::Format, {"model.merges[0]", "\"ab\""});
  expect_load_error(tiny_json(R"({"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b c"]})"),
                    ErrorKind::Format, {"model.merges[0]"});
}

TEST(TokenizerErrors, MergesInArrayFormLoad) {
  Tokenizer tok = Tokenizer::from_json(
      tiny_json(R"({"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<|end|>": 3}, "merges": [["a", "b"]]})"),
      "tokenizer.json");
  EXPECT_EQ(tok.encode("abab"), (std::vector<int32_t>{2, 2}));
}

TEST(TokenizerErrors, WrongFieldTypesAreFormat) {
  expect_load_error(tiny_json(R"({"type": "BPE", "vocab": [["a", 0]], "merges": []})"), ErrorKind::Format,
                    {"tokenizer.json", "model.vocab", "must be an object"});
  expect_load_error(tiny_json(R"({"type": "BPE", "vocab": {"a": "zero"}, "merges": []})"), ErrorKind::Format,
                    {"model.vocab[\"a\"]", "integer"});
  expect_load_error(tiny_json(R"({"type": "BPE", "vocab": {"a": -1}, "merges": []})"), ErrorKind::Format,
                    {"model.vocab[\"a\"]"});
  expect_load_error(tiny_json(R"({"type": "BPE", "vocab": {"a": 0}, "merges": "a b"})"), ErrorKind::Format,
                    {"model.merges", "must be an array"});
  expect_load_error(tiny_json(R"({"type": "BPE", "vocab": {"a": 0}})"), ErrorKind::Format,
                    {"model", "merges"});
  expect_load_error(tiny_json(R"({"type": "BPE", "vocab": {"a": 0}, "merges": [], "byte_fallback": "yes"})"),
                    ErrorKind::Format, {"model.byte_fallback"});
}

TEST(TokenizerErrors, DuplicateIdsAreFormat) {
  expect_load_error(tiny_json(R"({"type": "BPE", "vocab": {"a": 0, "b": 0}, "merges": []})"), ErrorKind::Format,
                    {"model.vocab", "id 0"});
}

TEST(TokenizerErrors, BadRegexIsFormat) {
  std::string j = tiny_json();
  std::string from = "\"pre_tokenizer\": null";
  j.replace(j.find(from), from.size(),
            R"("pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false})");
  expect_load_error(j, ErrorKind::Format, {"pre_tokenizer.pattern.Regex", "regex"});
}

TEST(TokenizerErrors, MissingFileIsIo) {
  try {
    Tokenizer::from_file("/nonexistent/dir/tokenizer.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Io);
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/tokenizer.json"), std::string::npos);
  }
}

TEST(TokenizerErrors, InvalidUtf8TextIsInvalidArgument) {
  Tokenizer tok = Tokenizer::from_json(tiny_json(), "tokenizer.json");
  for (std::string bad : {std::string("ab\xff"), std::string("\xc3"), std::string("a\xed\xa0\x80"), std::string("\xc0\xaf")}) {
    try {
      tok.encode(bad);
      FAIL() << "accepted invalid UTF-8";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("UTF-8"), std::string::npos);
    }
  }
}

TEST(TokenizerErrors, OutOfRangeIdsAreInvalidArgument) {
  Tokenizer tok = Tokenizer::from_json(tiny_json(), "tokenizer.json");
  for (int32_t id : {4, -1, 1 << 30}) {
    std::vector<int32_t> ids = {0, id};
    try {
      tok.decode(ids);
      FAIL();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find(std::to_string(id)), std::string::npos) << e.what();
    }
    EXPECT_THROW(tok.id_to_token(id), Error);
    IncrementalDetokenizer detok(tok);
    EXPECT_THROW(detok.push(id), Error);
    EXPECT_FALSE(tok.has_token(id));
  }
}

// Generated ids past the tokenizer (a model vocabulary padded beyond it) add no text and leave
// the stream intact, as transformers' decode skips ids without a token.
TEST(TokenizerErrors, GeneratedIdsWithoutATokenAddNoText) {
  Tokenizer tok = Tokenizer::from_json(tiny_json(), "tokenizer.json");
  const std::vector<int32_t> ids = {0, 1, 2, 3};
  IncrementalDetokenizer plain(tok), padded(tok);
  std::string want, got;
  for (int32_t id : ids) {
    EXPECT_TRUE(tok.has_token(id));
    want += plain.push(id);
    got += padded.push_generated(id);
    EXPECT_EQ(padded.push_generated(int32_t(tok.vocab_size()) + id), "");
  }
  EXPECT_EQ(got + padded.flush(), want + plain.flush());
  EXPECT_EQ(want.empty(), false);
}

}  // namespace
}  // namespace statelm
