// Tokenizer behaviour that does not need the generated fixtures: known GPT-NeoX ids (taken from
// the Rust library), streaming, thread safety, speed on long texts, and small hand-written
// tokenizers for byte fallback, <unk> and added-token options.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/utf8.h"
#include "tokenizer/tokenizer.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

using Ids = std::vector<int32_t>;

const Tokenizer& neox() {
  static const Tokenizer tok = Tokenizer::from_file(test::fixture("tokenizer/gpt-neox-20b.tokenizer.json").string());
  return tok;
}

TEST(Tokenizer, GptNeoxKnownIds) {
  const Tokenizer& tok = neox();
  EXPECT_EQ(tok.encode("Hello world"), (Ids{12092, 1533}));
  // Runs of spaces are added tokens (normalized, not special), cut out before the pre-tokenizer.
  EXPECT_EQ(tok.encode("a" + std::string(30, ' ') + "b"), (Ids{66, 50254, 50272, 67}));
  EXPECT_EQ(tok.encode("x<|endoftext|>y"), (Ids{89, 0, 90}));
  EXPECT_EQ(tok.encode("  def f():\n        return 1\n"), (Ids{50276, 1545, 269, 14850, 187, 50270, 2309, 337, 187}));
  EXPECT_EQ(tok.encode("\xF0\x9F\x87\xBA\xF0\x9F\x87\xB8"), (Ids{14931, 218, 120, 14931, 218, 118}));  // 🇺🇸
  EXPECT_EQ(tok.encode(""), Ids{});
  EXPECT_EQ(tok.vocab_size(), 50281u);
}

TEST(Tokenizer, GptNeoxDecode) {
  const Tokenizer& tok = neox();
  EXPECT_EQ(tok.decode(Ids{13305, 10}), " episodes)");
  EXPECT_EQ(tok.decode(Ids{50276, 50277, 0}, false), "  <|im_start|><|endoftext|>");
  EXPECT_EQ(tok.decode(Ids{50276, 50277, 0}, true), "  ");
  EXPECT_EQ(tok.decode(Ids{14931, 218}), "\xEF\xBF\xBD");  // half an emoji: one U+FFFD, as from_utf8_lossy
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), 0);
  EXPECT_EQ(tok.id_to_token(12092), "Hello");
  EXPECT_TRUE(tok.is_special(0));
  EXPECT_FALSE(tok.is_special(50254));
  EXPECT_FALSE(tok.is_special(12092));
  EXPECT_EQ(tok.bos_id(), 0);
  EXPECT_EQ(tok.eos_id(), 0);
}

TEST(Tokenizer, RoundTripsArbitraryText) {
  const Tokenizer& tok = neox();
  std::string text = "Mixed: caf\xC3\xA9, \xE4\xB8\xAD\xE6\x96\x87, tabs\t\tand   spaces\r\n<|endoftext|> end  ";
  EXPECT_EQ(tok.decode(tok.encode(text)), text);
}

TEST(Tokenizer, IncrementalChunksAreWholeCharacters) {
  const Tokenizer& tok = neox();
  // Each emoji is split over several byte-level tokens: push() must hold the partial bytes.
  std::string text = "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 ok \xF0\x9F\x98\x80";
  Ids ids = tok.encode(text);
  IncrementalDetokenizer detok(tok);
  std::string out;
  for (int32_t id : ids) {
    std::string chunk = detok.push(id);
    EXPECT_TRUE(utf8_is_valid(chunk));
    out += chunk;
  }
  out += detok.flush();
  EXPECT_EQ(out, text);
  // A dangling half character becomes U+FFFD at flush, as decode() does.
  IncrementalDetokenizer half(tok);
  EXPECT_EQ(half.push(14931), "");
  EXPECT_EQ(half.flush(), "\xEF\xBF\xBD");
}

TEST(Tokenizer, IncrementalSkipsSpecialTokens) {
  const Tokenizer& tok = neox();
  IncrementalDetokenizer detok(tok, /*skip_special_tokens=*/true);
  std::string out;
  for (int32_t id : Ids{12092, 0, 1533}) out += detok.push(id);
  out += detok.flush();
  EXPECT_EQ(out, "Hello world");
}

TEST(Tokenizer, LongTextEncodesFast) {
  const Tokenizer& tok = neox();
  std::string text;
  while (text.size() < 100000) text += "The quick brown fox, 1234 times; \xE4\xB8\xAD\xE6\x96\x87 and    spaces!\n";
  auto t0 = std::chrono::steady_clock::now();
  Ids ids = tok.encode(text);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, 1.0);
  EXPECT_EQ(tok.decode(ids), text);
  // One 100 KB "word" (no pre-tokenizer split) must not be quadratic either.
  std::string word(100000, 'a');
  t0 = std::chrono::steady_clock::now();
  Ids one = tok.encode(word);
  seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, 1.0);
  EXPECT_EQ(tok.decode(one), word);
}

TEST(Tokenizer, ConcurrentEncodesAgree) {
  const Tokenizer& tok = neox();
  std::vector<std::string> texts = {"Hello world", "def main():\n    pass\n", "  spaced   out  ", "numbers 12345 67"};
  std::vector<Ids> want;
  for (const auto& t : texts) want.push_back(tok.encode(t));
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i)
        for (size_t k = 0; k < texts.size(); ++k) bad[size_t(t)] += tok.encode(texts[k] + std::to_string(i % 7)) !=
                                                                 tok.encode(texts[k] + std::to_string(i % 7));
    });
  for (auto& th : threads) th.join();
  for (int b : bad) EXPECT_EQ(b, 0);
  for (size_t k = 0; k < texts.size(); ++k) EXPECT_EQ(tok.encode(texts[k]), want[k]);
}

TEST(Tokenizer, ModelDirectoryWorksAsPath) {
  test::TempDir dir;
  test::write_file(dir / "tokenizer.json", test::read_file(test::fixture("tokenizer/gpt-neox-20b.tokenizer.json")));
  EXPECT_EQ(Tokenizer::from_file(dir.path().string()).encode("Hello world"), (Ids{12092, 1533}));
}

// A SentencePiece-style tokenizer small enough to reason about by hand.
Tokenizer spm(const std::string& model_flags, const std::string& added = "") {
  std::string bytes;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    bytes += std::string(",\"") + name + "\":" + std::to_string(3 + b);
  }
  std::string json = R"({"version":"1.0","added_tokens":[
      {"id":0,"content":"<unk>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
      {"id":1,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
      {"id":2,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true})" +
                     added + R"(],
    "normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"}]},
    "pre_tokenizer":null,
    "post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
      "pair":[],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]}}},
    "decoder":{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]},
    "model":{"type":"BPE","dropout":null,"unk_token":"<unk>",)" +
                     model_flags + R"(,"vocab":{"<unk>":0,"<s>":1,"</s>":2)" + bytes +
                     R"(,"▁":259,"h":260,"i":261,"▁h":262,"▁hi":263},"merges":[["▁","h"],["▁h","i"]]}})";
  return Tokenizer::from_json(json, "spm.json");
}

TEST(Tokenizer, ByteFallbackAndUnk) {
  Tokenizer fb = spm(R"("fuse_unk":true,"byte_fallback":true)");
  // "é" is not in the vocab: its two UTF-8 bytes become <0xC3> <0xA9>.
  EXPECT_EQ(fb.encode("hi é"), (Ids{1, 263, 259, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(fb.decode(fb.encode("hi é")), "<s> hi é");
  EXPECT_EQ(fb.decode(fb.encode("hi é"), true), "hi é");
  EXPECT_EQ(fb.decode(Ids{263, 3 + 0xC3}), "hi\xEF\xBF\xBD");  // a lone lead byte: U+FFFD
  EXPECT_EQ(fb.decode(Ids{3 + 0xC3, 3 + 0xC3}), "\xEF\xBF\xBD\xEF\xBF\xBD");  // one per byte
  Tokenizer unk = spm(R"("fuse_unk":true,"byte_fallback":false)");
  EXPECT_EQ(unk.encode("hi éé", false), (Ids{263, 259, 0}));  // unknown chars fuse into one <unk>
  Tokenizer unk2 = spm(R"("fuse_unk":false,"byte_fallback":false)");
  EXPECT_EQ(unk2.encode("hi éé", false), (Ids{263, 259, 0, 0}));
  EXPECT_EQ(fb.bos_id(), 1);
  EXPECT_EQ(fb.eos_id(), 2);
}

TEST(Tokenizer, AddedTokenStripOptions) {
  // lstrip swallows the whitespace before the token, rstrip the whitespace after it.
  Tokenizer tok = spm(R"("fuse_unk":true,"byte_fallback":true)",
                      R"(,{"id":264,"content":"<x>","single_word":false,"lstrip":true,"rstrip":true,"normalized":false,"special":true})");
  EXPECT_EQ(tok.encode("hi  <x>  hi", false), (Ids{263, 264, 263}));
  Tokenizer word = spm(R"("fuse_unk":true,"byte_fallback":true)",
                       R"(,{"id":264,"content":"<x>","single_word":true,"lstrip":false,"rstrip":false,"normalized":false,"special":true})");
  EXPECT_EQ(word.encode("hi<x>", false).back(), 3 + '>');  // inside a word: not the added token
  EXPECT_EQ(word.encode("hi <x>", false).back(), 264);
}

}  // namespace
}  // namespace statelm
