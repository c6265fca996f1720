// Pre-tokenizers: split normalized pieces into the words the model sees (tokenizer.json
// "pre_tokenizer"). Supported: ByteLevel, Split, Metaspace, Digits, Whitespace,
// WhitespaceSplit, Punctuation, BertPreTokenizer, CharDelimiterSplit, Sequence; anything else
// is Error(Unsupported).
#pragma once

#include <memory>

#include "tokenizer/json_field.h"
#include "tokenizer/piece.h"

namespace statelm::tok {

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits (and may rewrite) every unresolved piece in place.
  virtual void pre_tokenize(Pieces& pieces) const = 0;
};

// nullptr for a JSON null (the whole piece is one word).
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const JsonField& field, int depth = 0);

// SplitDelimiterBehavior from its JSON name ("Isolated", ...).
SplitBehavior parse_split_behavior(const JsonField& field);

}  // namespace statelm::tok
