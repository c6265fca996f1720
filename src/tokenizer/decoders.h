// Decoders (tokenizer.json "decoder"): turn token strings back into text. Supported:
// ByteLevel, ByteFallback, Metaspace, Replace, Fuse, Strip, Sequence.
//
// The same code serves decode() and streaming. A streaming detokenizer decodes only a short
// window of recent tokens, so each decoder is told where the window sits (DecodeWindow): at
// the start of the sequence or not, and whether its end is final, cut (more tokens follow, in
// another window) or open (more tokens may be appended to this window). With an open end a
// decoder holds back what later tokens could still change (an incomplete UTF-8 sequence, an
// unfinished run of <0xAB> tokens, characters Strip might remove) and says so, so that the
// streamed text is always a prefix of what decode() gives for the whole sequence.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tokenizer/json_field.h"

namespace statelm::tok {

struct DecodeWindow {
  enum class End { Final, Cut, Open };
  bool at_start = true;  // the first token is the first of the sequence
  End end = End::Final;
  // Set while decoding:
  bool fused = false;       // a stage joined all tokens into one (Fuse, ByteLevel)
  bool held_bytes = false;  // ByteLevel held back an incomplete UTF-8 tail
  bool held_run = false;    // ByteFallback held back a trailing run of byte tokens
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens, DecodeWindow& window) const = 0;
};

// What a streaming detokenizer must know about a decoder to choose where a window may end.
struct DecoderTraits {
  bool byte_fallback = false;  // a run of <0xAB> tokens must not be cut in two
  bool strip_start = false;    // a Strip of leading characters applies to the whole text
};

std::unique_ptr<Decoder> parse_decoder(const JsonField& field, DecoderTraits& traits, int depth = 0);

// Whether `token` is a <0xAB> byte token, by ByteFallback's rule; *byte gets its value.
bool parse_byte_token(const std::string& token, uint8_t* byte);

}  // namespace statelm::tok
