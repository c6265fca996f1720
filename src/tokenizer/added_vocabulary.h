// Added tokens (tokenizer.json "added_tokens"): strings matched in the text before the model
// ever sees it, e.g. <|endoftext|> or GPT-NeoX's runs of spaces.
//
// As the library's AddedVocabulary: tokens with normalized=false are cut out of the raw text
// first; each remaining piece is then normalized and the normalized=true tokens (matched in
// their normalized form) are cut out of it. Matching is leftmost-longest over all tokens of a
// kind, resuming after each match; lstrip/rstrip swallow adjacent whitespace and single_word
// rejects matches inside a word.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/json_field.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/piece.h"

namespace statelm::tok {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
  std::string normalized_content;  // what a normalized token matches and decodes to
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  // `field` is the "added_tokens" array (may be null); ids are assigned as the library does:
  // the model's id when the content is in its vocab, otherwise the next free id.
  AddedVocabulary(const JsonField& field, const BpeModel& model, const Normalizer* normalizer);

  // Cuts the raw-text tokens out of the pieces, then normalizes what is left and cuts the
  // normalized tokens out of that.
  void split_and_normalize(Pieces& pieces, const Normalizer* normalizer) const;

  const AddedToken* find_id(int32_t id) const;
  std::optional<int32_t> find_content(std::string_view content) const;
  bool is_special_content(std::string_view token) const;
  int32_t max_id() const { return max_id_; }
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // A byte trie over the patterns of one kind of token (raw or normalized).
  struct Trie {
    struct Node {
      std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
      int32_t token = -1;  // index into tokens_ of the pattern ending here
    };
    std::vector<Node> nodes;
    bool first_byte[256] = {};
    // An added token whose normalized form is "" (e.g. a run of spaces under a Strip
    // normalizer) matches, empty, wherever nothing longer does: the library's automaton then
    // cuts the text at every character. Reproduced for the ids to match.
    int32_t empty_token = -1;
    bool empty() const { return nodes.size() <= 1 && empty_token < 0; }
    void insert(std::string_view pattern, int32_t token);
    // Leftmost-longest match at or after `from`: (begin, end, token), or token -1.
    void find(std::string_view s, size_t from, size_t* begin, size_t* end, int32_t* token) const;
  };

  void split(const Piece& piece, const Trie& trie, Pieces& out) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  TokenMap by_content_;
  std::unordered_map<std::string, bool, StringHash, std::equal_to<>> special_contents_;
  Trie raw_, normalized_;
  int32_t max_id_ = -1;
};

}  // namespace statelm::tok
