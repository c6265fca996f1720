// The pre-tokenizers of tokenizer.json, each a small class; parse_pre_tokenizer picks one by
// "type". Splitting rules are the library's (see piece.h); regexes are compiled once, here.
#include "tokenizer/pre_tokenizers.h"

#include <vector>

#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace statelm::tok {

namespace {

constexpr int kMaxDepth = 16;

// GPT-2's word pattern, which ByteLevel uses when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevel : public PreTokenizer {
 public:
  ByteLevel(const JsonField& f)
      : add_prefix_space_(f.bool_or("add_prefix_space", true)), use_regex_(f.bool_or("use_regex", true)) {
    if (use_regex_) regex_ = std::make_unique<Regex>(kGpt2Pattern, false, f.source(), f.path());
  }
  void pre_tokenize(Pieces& pieces) const override {
    std::vector<std::pair<size_t, size_t>> matches;
    split_pieces(pieces, [&](Piece& p, Pieces& out) {
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) {
        p.text.insert(p.text.begin(), ' ');
        if (p.origin_bytes) p.origin_bytes += 1;
      }
      if (!use_regex_) {
        out.push_back(std::move(p));
        return;
      }
      matches.clear();
      regex_->find_all(p.text, matches);
      split_by_spans(p, spans_from_matches(p.text.size(), matches, false), SplitBehavior::Isolated, out);
    });
    // Then every byte of every word becomes its printable stand-in.
    for (Piece& p : pieces) {
      if (p.added_id >= 0) continue;
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      size_t origin = 0;
      for (size_t i = 0; i < p.text.size(); ++i) {
        std::string_view c = byte_to_unicode(uint8_t(p.text[i]));
        if (i < p.origin_bytes) origin += c.size();
        mapped.append(c);
      }
      p.origin_bytes = origin;
      p.text = std::move(mapped);
    }
  }

 private:
  bool add_prefix_space_, use_regex_;
  std::unique_ptr<Regex> regex_;
};

class Split : public PreTokenizer {
 public:
  Split(const JsonField& f)
      : behavior_(parse_split_behavior(f.at("behavior"))), invert_(f.bool_or("invert", false)) {
    JsonField pattern = f.at("pattern");
    JsonField literal = pattern.opt("String");
    // An empty string pattern matches nothing in the library (not "everywhere").
    if (literal.is_null() || !literal.str().empty()) regex_ = parse_pattern(pattern);
  }
  void pre_tokenize(Pieces& pieces) const override {
    std::vector<std::pair<size_t, size_t>> matches;
    split_pieces(pieces, [&](Piece& p, Pieces& out) {
      matches.clear();
      if (regex_) regex_->find_all(p.text, matches);
      split_by_spans(p, spans_from_matches(p.text.size(), matches, invert_), behavior_, out);
    });
  }

 private:
  SplitBehavior behavior_;
  bool invert_;
  std::unique_ptr<Regex> regex_;
};

// SentencePiece's view of spaces: ' ' becomes the replacement ("▁"), optionally prepended,
// and words start at each replacement.
class Metaspace : public PreTokenizer {
 public:
  enum class Prepend { Always, First, Never };
  Metaspace(const JsonField& f) : split_(f.bool_or("split", true)) {
    JsonField r = f.at("replacement");
    replacement_ = r.str();
    if (replacement_.empty() || count_code_points(replacement_) != 1)
      r.fail(ErrorKind::Format, "must be exactly one character");
    size_t len;
    replacement_cp_ = next_code_point(replacement_, 0, &len);
    prepend_ = parse_prepend(f);
  }
  static Prepend parse_prepend(const JsonField& f) {
    JsonField scheme = f.opt("prepend_scheme");
    Prepend p = Prepend::Always;
    if (!scheme.is_null()) {
      std::string s = scheme.str();
      if (s == "always") p = Prepend::Always;
      else if (s == "first") p = Prepend::First;
      else if (s == "never") p = Prepend::Never;
      else scheme.fail(ErrorKind::Format, "must be \"always\", \"first\" or \"never\", not ", quote(s));
    }
    // Files from before prepend_scheme existed say add_prefix_space instead.
    JsonField legacy = f.opt("add_prefix_space");
    if (!legacy.is_null() && !legacy.boolean()) {
      if (!scheme.is_null() && p != Prepend::Never)
        legacy.fail(ErrorKind::Format, "false contradicts prepend_scheme");
      p = Prepend::Never;
    }
    return p;
  }
  void pre_tokenize(Pieces& pieces) const override {
    split_pieces(pieces, [&](Piece& p, Pieces& out) {
      std::string text;
      text.reserve(p.text.size() + 8);
      size_t origin = 0;
      for (size_t i = 0; i < p.text.size(); ++i) {
        bool space = p.text[i] == ' ';
        if (space) text.append(replacement_); else text.push_back(p.text[i]);
        if (i < p.origin_bytes) origin += space ? replacement_.size() : 1;
      }
      p.text = std::move(text);
      p.origin_bytes = origin;
      bool starts = p.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (prepend_ == Prepend::Always || (prepend_ == Prepend::First && p.origin_bytes > 0))) {
        p.text.insert(0, replacement_);
        if (p.origin_bytes) p.origin_bytes += replacement_.size();
      }
      if (!split_) {
        out.push_back(std::move(p));
        return;
      }
      uint32_t r = replacement_cp_;
      split_by_spans(p, spans_from_chars(p.text, [r](uint32_t cp) { return cp == r; }),
                     SplitBehavior::MergedWithNext, out);
    });
  }

 private:
  std::string replacement_;
  uint32_t replacement_cp_ = 0;
  Prepend prepend_ = Prepend::Always;
  bool split_;
};

// Splits on characters for which a predicate holds (Digits, WhitespaceSplit, Punctuation,
// CharDelimiterSplit all are this with a different predicate and behavior).
template <typename Pred>
class CharSplit : public PreTokenizer {
 public:
  CharSplit(Pred pred, SplitBehavior behavior) : pred_(pred), behavior_(behavior) {}
  void pre_tokenize(Pieces& pieces) const override {
    split_pieces(pieces, [&](Piece& p, Pieces& out) {
      split_by_spans(p, spans_from_chars(p.text, pred_), behavior_, out);
    });
  }

 private:
  Pred pred_;
  SplitBehavior behavior_;
};

template <typename Pred>
std::unique_ptr<PreTokenizer> char_split(Pred pred, SplitBehavior behavior) {
  return std::make_unique<CharSplit<Pred>>(pred, behavior);
}

// Whitespace: the words are the matches of \w+|[^\w\s]+ (Rust regex classes).
class Whitespace : public PreTokenizer {
 public:
  void pre_tokenize(Pieces& pieces) const override {
    split_pieces(pieces, [&](Piece& p, Pieces& out) {
      const std::string& s = p.text;
      size_t i = 0;
      while (i < s.size()) {
        size_t len;
        uint32_t cp = next_code_point(s, i, &len);
        if (is_whitespace(cp) && !is_word_char(cp)) {
          i += len;
          continue;
        }
        bool word = is_word_char(cp);
        size_t begin = i;
        i += len;
        while (i < s.size()) {
          uint32_t c = next_code_point(s, i, &len);
          bool same = word ? is_word_char(c) : (!is_word_char(c) && !is_whitespace(c));
          if (!same) break;
          i += len;
        }
        out.push_back(sub_piece(p, begin, i));
      }
    });
  }
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void pre_tokenize(Pieces& pieces) const override {
    for (const auto& p : parts_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

bool is_whitespace_cp(uint32_t cp) { return is_whitespace(cp); }
bool is_numeric_cp(uint32_t cp) { return is_numeric(cp); }
bool is_punctuation_cp(uint32_t cp) { return is_punctuation(cp); }

}  // namespace

SplitBehavior parse_split_behavior(const JsonField& f) {
  std::string b = f.str();
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  f.fail(ErrorKind::Format, quote(b), " is not a split behavior");
}

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const JsonField& f, int depth) {
  if (f.is_null()) return nullptr;
  if (depth > kMaxDepth) f.fail(ErrorKind::Format, "nests Sequences deeper than ", kMaxDepth);
  std::string type = f.type();
  if (type == "ByteLevel") return std::make_unique<ByteLevel>(f);
  if (type == "Split") return std::make_unique<Split>(f);
  if (type == "Metaspace") return std::make_unique<Metaspace>(f);
  if (type == "Whitespace") return std::make_unique<Whitespace>();
  if (type == "WhitespaceSplit") return char_split(&is_whitespace_cp, SplitBehavior::Removed);
  if (type == "Digits") {
    bool individual = f.bool_or("individual_digits", false);
    return char_split(&is_numeric_cp, individual ? SplitBehavior::Isolated : SplitBehavior::Contiguous);
  }
  if (type == "Punctuation") {
    JsonField b = f.opt("behavior");
    return char_split(&is_punctuation_cp, b.is_null() ? SplitBehavior::Isolated : parse_split_behavior(b));
  }
  if (type == "BertPreTokenizer") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    parts.push_back(char_split(&is_whitespace_cp, SplitBehavior::Removed));
    parts.push_back(char_split(&is_punctuation_cp, SplitBehavior::Isolated));
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  if (type == "CharDelimiterSplit") {
    JsonField d = f.at("delimiter");
    std::string s = d.str();
    if (s.empty() || count_code_points(s) != 1) d.fail(ErrorKind::Format, "must be exactly one character");
    size_t len;
    uint32_t delim = next_code_point(s, 0, &len);
    struct IsDelim {
      uint32_t d;
      bool operator()(uint32_t cp) const { return cp == d; }
    };
    return char_split(IsDelim{delim}, SplitBehavior::Removed);
  }
  if (type == "Sequence") {
    JsonField list = f.at("pretokenizers");
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < list.array().size(); ++i) {
      auto p = parse_pre_tokenizer(list.at(i), depth + 1);
      if (!p) list.at(i).fail(ErrorKind::Format, "must be a pre-tokenizer, not null");
      parts.push_back(std::move(p));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  f.unsupported_type();
}

}  // namespace statelm::tok
