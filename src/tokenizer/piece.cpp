// Splitting pieces: the SplitDelimiterBehavior rules of the library's NormalizedString::split.
#include "tokenizer/piece.h"

#include <algorithm>

namespace statelm::tok {

std::vector<Span> spans_from_matches(size_t size, const std::vector<std::pair<size_t, size_t>>& matches, bool invert) {
  std::vector<Span> spans;
  if (size == 0) {
    spans.push_back({0, 0, invert});
    return spans;
  }
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) spans.push_back({prev, b, invert});
    spans.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != size) spans.push_back({prev, size, invert});
  return spans;
}

Piece sub_piece(const Piece& piece, size_t begin, size_t end) {
  Piece p;
  p.text = piece.text.substr(begin, end - begin);
  p.origin_bytes = begin < piece.origin_bytes ? std::min(piece.origin_bytes, end) - begin : 0;
  return p;
}

void split_by_spans(const Piece& piece, std::vector<Span> spans, SplitBehavior behavior, Pieces& out) {
  // First fold the spans into the ranges to keep (`match` now means "remove").
  std::vector<Span> kept;
  kept.reserve(spans.size());
  switch (behavior) {
    case SplitBehavior::Removed:
      kept = std::move(spans);
      break;
    case SplitBehavior::Isolated:
      for (Span s : spans) kept.push_back({s.begin, s.end, false});
      break;
    case SplitBehavior::Contiguous: {
      bool previous = false;
      for (Span s : spans) {
        if (s.match == previous && !kept.empty())
          kept.back().end = s.end;
        else
          kept.push_back({s.begin, s.end, false});
        previous = s.match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool previous = false;
      for (Span s : spans) {
        if (s.match && !previous && !kept.empty())
          kept.back().end = s.end;
        else
          kept.push_back({s.begin, s.end, false});
        previous = s.match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool previous = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !previous && !kept.empty())
          kept.back().begin = it->begin;
        else
          kept.push_back({it->begin, it->end, false});
        previous = it->match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
  }
  for (const Span& s : kept)
    if (!s.match && s.end > s.begin) out.push_back(sub_piece(piece, s.begin, s.end));
}

}  // namespace statelm::tok
