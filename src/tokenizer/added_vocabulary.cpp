// Added tokens: id assignment, the two tries, and the library's find_matches rules.
#include "tokenizer/added_vocabulary.h"

#include <algorithm>

#include "tokenizer/unicode.h"

namespace statelm::tok {

void AddedVocabulary::Trie::insert(std::string_view pattern, int32_t token) {
  if (nodes.empty()) nodes.emplace_back();
  if (pattern.empty()) {
    if (empty_token < 0) empty_token = token;
    return;
  }
  size_t node = 0;
  for (char c : pattern) {
    uint8_t b = uint8_t(c);
    auto& ch = nodes[node].children;
    auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(b, int32_t(-1)));
    if (it != ch.end() && it->first == b) {
      node = size_t(it->second);
      continue;
    }
    int32_t created = int32_t(nodes.size());
    ch.insert(it, {b, created});
    nodes.emplace_back();
    node = size_t(created);
  }
  if (nodes[node].token < 0) nodes[node].token = token;  // the first of equal patterns wins
  first_byte[uint8_t(pattern[0])] = true;
}

void AddedVocabulary::Trie::find(std::string_view s, size_t from, size_t* begin, size_t* end, int32_t* token) const {
  *token = -1;
  for (size_t i = from; i < s.size(); ++i) {
    if (empty_token >= 0 && i > from) break;  // the empty pattern already matched at `from`
    if (!first_byte[uint8_t(s[i])]) continue;
    size_t node = 0;
    for (size_t j = i; j < s.size(); ++j) {
      const auto& ch = nodes[node].children;
      uint8_t b = uint8_t(s[j]);
      auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(b, int32_t(-1)));
      if (it == ch.end() || it->first != b) break;
      node = size_t(it->second);
      if (nodes[node].token >= 0) {
        *begin = i;
        *end = j + 1;
        *token = nodes[node].token;
      }
    }
    if (*token >= 0) return;
  }
  if (empty_token >= 0 && from < s.size()) {
    *begin = *end = from;
    *token = empty_token;
  }
}

AddedVocabulary::AddedVocabulary(const JsonField& field, const BpeModel& model, const Normalizer* normalizer) {
  if (field.is_null()) return;
  const auto& list = field.array();
  int32_t model_size = int32_t(model.vocab_count());
  // The library's next free id: after the model vocab, or after the highest added id.
  int32_t next_id = model_size;
  for (size_t i = 0; i < list.size(); ++i) {
    JsonField t = field.at(i);
    AddedToken tok;
    tok.content = t.at("content").str();
    int64_t declared = t.at("id").integer(0, (int64_t(1) << 24) - 1);
    tok.single_word = t.bool_or("single_word", false);
    tok.lstrip = t.bool_or("lstrip", false);
    tok.rstrip = t.bool_or("rstrip", false);
    tok.special = t.bool_or("special", false);
    tok.normalized = t.bool_or("normalized", !tok.special);
    (void)declared;  // the library trusts the vocab over the file's ids (it only warns)
    if (tok.content.empty()) continue;
    auto existing = by_content_.find(tok.content);
    if (existing != by_content_.end()) {
      tok.id = existing->second;
    } else if (auto id = model.token_to_id(tok.content)) {
      tok.id = *id;
    } else {
      if (next_id >= (int32_t(1) << 24)) t.fail(ErrorKind::Format, "is past the largest supported id");
      tok.id = next_id++;
    }
    tok.normalized_content = tok.normalized ? normalize_string(normalizer, tok.content) : tok.content;
    if (tok.special) special_contents_[tok.content] = true;
    by_content_[tok.content] = tok.id;
    auto at = by_id_.find(tok.id);
    if (at != by_id_.end()) {
      tokens_[at->second] = std::move(tok);  // a later entry for the same id replaces it
    } else {
      by_id_[tok.id] = tokens_.size();
      tokens_.push_back(std::move(tok));
    }
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& tok = tokens_[i];
    max_id_ = std::max(max_id_, tok.id);
    if (tok.normalized) {
      normalized_.insert(tok.normalized_content, int32_t(i));
    } else {
      raw_.insert(tok.content, int32_t(i));
    }
  }
}

const AddedToken* AddedVocabulary::find_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

std::optional<int32_t> AddedVocabulary::find_content(std::string_view content) const {
  auto it = by_content_.find(content);
  if (it == by_content_.end()) return std::nullopt;
  return it->second;
}

bool AddedVocabulary::is_special_content(std::string_view token) const {
  return special_contents_.find(token) != special_contents_.end();
}

namespace {

uint32_t last_code_point(std::string_view s, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (uint8_t(s[start]) & 0xc0) == 0x80) --start;
  size_t len;
  return next_code_point(s, start, &len);
}

// Start of the whitespace run that ends at `end` (regex \s*$ on s[..end]).
size_t whitespace_start_before(std::string_view s, size_t end) {
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (uint8_t(s[start]) & 0xc0) == 0x80) --start;
    size_t len;
    if (!is_whitespace(next_code_point(s, start, &len))) break;
    end = start;
  }
  return end;
}

// End of the whitespace run that starts at `begin` (regex ^\s* on s[begin..]).
size_t whitespace_end_after(std::string_view s, size_t begin) {
  while (begin < s.size()) {
    size_t len;
    if (!is_whitespace(next_code_point(s, begin, &len))) break;
    begin += len;
  }
  return begin;
}

}  // namespace

void AddedVocabulary::split(const Piece& piece, const Trie& trie, Pieces& out) const {
  const std::string& s = piece.text;
  if (trie.empty() || s.empty()) {
    out.push_back(piece);
    return;
  }
  size_t start_offset = 0, search = 0;
  while (search < s.size()) {
    size_t begin, end;
    int32_t index;
    trie.find(s, search, &begin, &end, &index);
    if (index < 0) break;
    // The next search resumes after the raw match, whatever is done with it (one character on
    // after an empty match).
    search = end > begin ? end : end + utf8_len(uint8_t(s[end]));
    const AddedToken& tok = tokens_[size_t(index)];
    if (tok.single_word) {
      bool word_before = begin > 0 && is_word_char(last_code_point(s, begin));
      size_t len;
      bool word_after = end < s.size() && is_word_char(next_code_point(s, end, &len));
      if (word_before || word_after) continue;
    }
    if (tok.lstrip) begin = std::max(whitespace_start_before(s, begin), start_offset);
    if (tok.rstrip) end = whitespace_end_after(s, end);
    if (start_offset < begin) out.push_back(sub_piece(piece, start_offset, begin));
    // Pieces may overlap when an rstrip swallowed the start of the next match; the library
    // then keeps both tokens (and moves start_offset back), so this does too.
    Piece token;
    token.text = s.substr(begin, end - begin);
    token.added_id = tok.id;
    out.push_back(std::move(token));
    start_offset = end;
  }
  if (start_offset < s.size()) out.push_back(sub_piece(piece, start_offset, s.size()));
}

void AddedVocabulary::split_and_normalize(Pieces& pieces, const Normalizer* normalizer) const {
  if (!raw_.empty()) split_pieces(pieces, [&](Piece& p, Pieces& out) { split(p, raw_, out); });
  split_pieces(pieces, [&](Piece& p, Pieces& out) {
    if (normalizer) normalizer->normalize(p);
    split(p, normalized_, out);
  });
}

}  // namespace statelm::tok
