// Normalizers: rewrite the text of a piece before it is split into words (tokenizer.json
// "normalizer"). Supported: NFC, NFD, NFKC, NFKD, Lowercase, Strip, StripAccents, Prepend,
// Replace (String or Regex pattern), ByteLevel, Sequence; anything else is Error(Unsupported).
#pragma once

#include <memory>

#include "tokenizer/json_field.h"
#include "tokenizer/piece.h"

namespace statelm::tok {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites piece.text, keeping piece.origin_bytes right (see Piece).
  virtual void normalize(Piece& piece) const = 0;
};

// nullptr for a JSON null (no normalizer).
std::unique_ptr<Normalizer> parse_normalizer(const JsonField& field, int depth = 0);

// Convenience for the added vocabulary: the normalized form of a whole string.
std::string normalize_string(const Normalizer* normalizer, const std::string& text);

}  // namespace statelm::tok
