// IncrementalDetokenizer: streaming decode over a short window of recent tokens.
//
// Decoding every id again from the start of the sequence would cost O(n) per token. Instead
// the tokens since the last "cut" are decoded with an open end (decoders hold back what a
// later token could still change), and what grew since the previous push is returned. A cut
// (starting a new window at the new token) is only made where decoding the two sides apart
// gives the same text as decoding them together: no incomplete UTF-8 bytes pending, no run of
// <0xAB> byte tokens split in two, and, when a Strip removes leading characters of the whole
// text, only once some text exists.
#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_impl.h"

namespace statelm {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}

std::string IncrementalDetokenizer::push(int32_t id) {
  const tok::TokenizerImpl& impl = *tokenizer_.impl_;
  const std::string& token = impl.token_string(id);
  if (skip_special_ && impl.added.is_special_content(token)) return "";
  std::string out;
  uint8_t byte;
  bool new_is_byte = impl.decoder_traits.byte_fallback && tok::parse_byte_token(token, &byte);
  if (!window_.empty() && !held_bytes_ && !(held_run_ && new_is_byte)) {
    std::vector<std::string> tokens = window_;
    tok::DecodeWindow w{at_start_, tok::DecodeWindow::End::Cut};
    std::string text = impl.decode_tokens(tokens, w);
    if (!impl.decoder_traits.strip_start || emitted_any_ || !text.empty()) {
      if (text.size() > emitted_) out = text.substr(emitted_);
      emitted_any_ |= !text.empty();
      window_.clear();
      at_start_ = false;
      emitted_ = 0;
    }
  }
  window_.push_back(token);
  std::vector<std::string> tokens = window_;
  tok::DecodeWindow w{at_start_, tok::DecodeWindow::End::Open};
  std::string text = impl.decode_tokens(tokens, w);
  held_bytes_ = w.held_bytes;
  held_run_ = w.held_run;
  if (text.size() > emitted_) {
    out += text.substr(emitted_);
    emitted_ = text.size();
  }
  emitted_any_ |= !out.empty();
  return out;
}

std::string IncrementalDetokenizer::flush() {
  const tok::TokenizerImpl& impl = *tokenizer_.impl_;
  std::string out;
  if (!window_.empty()) {
    tok::DecodeWindow w{at_start_, tok::DecodeWindow::End::Final};
    std::string text = impl.decode_tokens(window_, w);
    if (text.size() > emitted_) out = text.substr(emitted_);
  }
  window_.clear();
  at_start_ = false;
  emitted_ = 0;
  held_bytes_ = held_run_ = false;
  emitted_any_ |= !out.empty();
  return out;
}

}  // namespace statelm
