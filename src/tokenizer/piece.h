// The text being tokenized, as a list of pieces, and how a piece is split into smaller ones.
//
// Encoding is a series of splits (added tokens, pre-tokenizers) and rewrites (normalizers) of
// pieces; the model finally turns each remaining piece into ids. A piece already recognised
// as an added token is final and skipped by every later stage. Pieces that end up empty are
// dropped after each split, as the library does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace statelm::tok {

struct Piece {
  std::string text;
  int32_t added_id = -1;  // >= 0: an added token, already final
  // How many leading bytes of `text` map back to the first character of the original input.
  // Metaspace's prepend_scheme "first" only prepends to a piece that starts there (the library
  // tests the piece's original offset == 0), and normalizers can move that start.
  size_t origin_bytes = 0;
};
using Pieces = std::vector<Piece>;

// What to do with the parts of a piece a pattern matched (SplitDelimiterBehavior).
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// A part of a piece: bytes [begin, end), and whether the pattern matched it.
struct Span {
  size_t begin, end;
  bool match;
};

// Matches (sorted, non-overlapping) -> spans covering [0, size): gaps are non-matches.
std::vector<Span> spans_from_matches(size_t size, const std::vector<std::pair<size_t, size_t>>& matches, bool invert);
// Each character for which `pred` holds is a match of its own.
template <typename Pred>
std::vector<Span> spans_from_chars(const std::string& s, Pred pred);

// Appends the sub-pieces of `piece` that `behavior` keeps from `spans` (empty ones dropped).
void split_by_spans(const Piece& piece, std::vector<Span> spans, SplitBehavior behavior, Pieces& out);

// Replaces every unresolved piece by what fn(piece, out) appends in its place; empty pieces
// are dropped (even an empty added-token match, as in the library), final pieces (added
// tokens) are kept as they are.
template <typename Fn>
void split_pieces(Pieces& pieces, Fn&& fn) {
  Pieces out;
  out.reserve(pieces.size());
  for (Piece& p : pieces) {
    if (p.added_id >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    size_t first = out.size();
    fn(p, out);
    size_t keep = first;
    for (size_t i = first; i < out.size(); ++i)
      if (!out[i].text.empty()) {
        if (keep != i) out[keep] = std::move(out[i]);
        ++keep;
      }
    out.resize(keep);
  }
  pieces = std::move(out);
}

// Sub-piece [begin, end) of `piece`, carrying over what is left of its origin bytes.
Piece sub_piece(const Piece& piece, size_t begin, size_t end);

}  // namespace statelm::tok

#include "tokenizer/unicode.h"

namespace statelm::tok {

template <typename Pred>
std::vector<Span> spans_from_chars(const std::string& s, Pred pred) {
  std::vector<Span> spans;
  if (s.empty()) {
    spans.push_back({0, 0, false});
    return spans;
  }
  size_t last = 0;
  for (size_t i = 0; i < s.size();) {
    size_t len;
    uint32_t cp = next_code_point(s, i, &len);
    if (pred(cp)) {
      if (last < i) spans.push_back({last, i, false});
      spans.push_back({i, i + len, true});
      last = i + len;
    }
    i += len;
  }
  if (last < s.size()) spans.push_back({last, s.size(), false});
  return spans;
}

}  // namespace statelm::tok
