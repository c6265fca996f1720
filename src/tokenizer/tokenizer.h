// statelm's tokenizer: reads a Hugging Face tokenizer.json and encodes/decodes exactly as the
// Rust `tokenizers` library does (id for id), for BPE models — byte-level (GPT-2, GPT-NeoX,
// Llama-3) and SentencePiece-style with byte fallback (Llama-2, Mistral).
//
// Encoding runs the library's pipeline: added tokens are cut out of the text, the rest is
// normalized, pre-tokenized into words, each word is BPE-merged, and the post-processor adds
// special tokens. Decoding maps ids to token strings and runs the decoder chain. Anything in a
// tokenizer.json that statelm does not implement is Error(Unsupported) at load time, never a
// silent difference. A Tokenizer is immutable after loading and safe to share between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace statelm {

namespace tok {
struct TokenizerImpl;
}

class Tokenizer {
 public:
  // `path` is a tokenizer.json, or a directory that contains one.
  static Tokenizer from_file(const std::string& path);
  // `source_name` is what error messages call the document (e.g. its path).
  static Tokenizer from_json(std::string_view json, const std::string& source_name);

  // Error(InvalidArgument) when `text` is not valid UTF-8.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Error(InvalidArgument) for an id that no token has. Broken UTF-8 becomes U+FFFD.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  size_t vocab_size() const;  // including added tokens: max id + 1
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string_view id_to_token(int32_t id) const;  // Error(InvalidArgument) when out of range
  // Whether some token has this id. A model's vocabulary is often padded past its tokenizer's
  // (Mamba: 50280 rows of logits, 50277 tokens): ids it generates there have no text.
  bool has_token(int32_t id) const;
  bool is_special(int32_t id) const;
  // Best effort, from the post-processor's template or well-known special token names.
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;

 private:
  friend class IncrementalDetokenizer;
  explicit Tokenizer(std::shared_ptr<const tok::TokenizerImpl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const tok::TokenizerImpl> impl_;
};

// Streams the text of a sequence being generated, one id at a time. push() returns only text
// that later ids cannot change (never half a UTF-8 character), and all push() results followed
// by flush() concatenate to exactly decode(all ids). One per sequence; not thread-safe.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens = true);
  std::string push(int32_t id);  // Error(InvalidArgument) for an id no token has
  // An id the model generated: one without a token (a padded vocabulary) adds no text, as
  // transformers' decode skips it, instead of being an error.
  std::string push_generated(int32_t id) { return tokenizer_.has_token(id) ? push(id) : std::string(); }
  std::string flush();  // the rest; incomplete bytes become U+FFFD as in decode()

 private:
  Tokenizer tokenizer_;
  bool skip_special_;
  // The window: tokens since the last cut, and how much of its text was already returned.
  std::vector<std::string> window_;
  bool at_start_ = true;
  size_t emitted_ = 0;
  bool emitted_any_ = false;
  bool held_bytes_ = false, held_run_ = false;
};

}  // namespace statelm
