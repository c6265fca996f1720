// A compiled PCRE2 pattern (UTF + Unicode properties), compiled once and shared by threads.
//
// The Rust library matches pre-tokenizer and Replace patterns with Oniguruma; PCRE2 agrees
// with it on the syntax tokenizer.json files use (\p{L}, \s, lookahead, (?i:...)). Iteration
// follows Oniguruma's find_iter: leftmost matches, left to right, and an empty match right where
// the previous match ended is skipped (so patterns that can match "" cannot loop).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct pcre2_real_code_8;

namespace statelm::tok {

class Regex {
 public:
  // `literal`: the pattern is a plain string (tokenizer.json {"String": ...} patterns).
  // A pattern PCRE2 rejects is Error(Format) naming `field` (e.g. "pre_tokenizer.pattern").
  Regex(std::string_view pattern, bool literal, const std::string& source, const std::string& field);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends every match in `s` (valid UTF-8) as a byte range [begin, end).
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  pcre2_real_code_8* code_ = nullptr;
  std::string field_;
};

class JsonField;

// A tokenizer.json pattern object: {"String": s} (matched literally) or {"Regex": r}.
// Error(Format) naming the field for anything else.
std::unique_ptr<Regex> parse_pattern(const JsonField& pattern);

}  // namespace statelm::tok
