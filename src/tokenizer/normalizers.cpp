// The normalizers of tokenizer.json, each a small class; parse_normalizer picks one by "type".
#include "tokenizer/normalizers.h"

#include <vector>

#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace statelm::tok {

namespace {

constexpr int kMaxDepth = 16;  // nested Sequences; deeper is a malformed (or hostile) file

// Rewrites that map each character to characters of its own (normal forms, lowercase) keep
// the first output character tied to the first input character.
size_t first_char_bytes(const std::string& s) { return s.empty() ? 0 : utf8_len(uint8_t(s[0])); }

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  void normalize(Piece& p) const override {
    p.text = unicode_normalize(p.text, form_);
    if (p.origin_bytes) p.origin_bytes = first_char_bytes(p.text);
  }

 private:
  NormalForm form_;
};

class Lowercase : public Normalizer {
 public:
  void normalize(Piece& p) const override {
    p.text = unicode_lowercase(p.text);
    if (p.origin_bytes) p.origin_bytes = first_char_bytes(p.text);
  }
};

class StripAccents : public Normalizer {
 public:
  void normalize(Piece& p) const override {
    std::string out;
    out.reserve(p.text.size());
    size_t removed_head = 0;
    bool kept_any = false;
    for (size_t i = 0; i < p.text.size();) {
      size_t len;
      uint32_t cp = next_code_point(p.text, i, &len);
      if (!is_combining_mark(cp)) {
        out.append(p.text, i, len);
        kept_any = true;
      } else if (!kept_any) {
        removed_head += len;
      }
      i += len;
    }
    p.origin_bytes = removed_head < p.origin_bytes ? first_char_bytes(out) : 0;
    p.text = std::move(out);
  }
};

// Strips leading and/or trailing whitespace (Rust char::is_whitespace).
class Strip : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  void normalize(Piece& p) const override {
    const std::string& s = p.text;
    size_t begin = 0, end = s.size();
    if (left_) {
      while (begin < end) {
        size_t len;
        if (!is_whitespace(next_code_point(s, begin, &len))) break;
        begin += len;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (uint8_t(s[start]) & 0xc0) == 0x80) --start;
        size_t len;
        if (!is_whitespace(next_code_point(s, start, &len))) break;
        end = start;
      }
    }
    p.origin_bytes = begin < p.origin_bytes ? std::min(p.origin_bytes, end) - begin : 0;
    p.text = s.substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

class Prepend : public Normalizer {
 public:
  explicit Prepend(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(Piece& p) const override {
    if (p.text.empty()) return;
    p.text.insert(0, prefix_);
    // The inserted characters are aligned with the character they precede.
    if (p.origin_bytes) p.origin_bytes += prefix_.size();
  }

 private:
  std::string prefix_;
};

// Replaces every match of a pattern by `content`.
class Replace : public Normalizer {
 public:
  Replace(const JsonField& f) : content_(f.at("content").str()) {
    regex_ = parse_pattern(f.at("pattern"));
  }
  void normalize(Piece& p) const override {
    std::vector<std::pair<size_t, size_t>> matches;
    regex_->find_all(p.text, matches);
    if (matches.empty()) return;
    std::string out;
    out.reserve(p.text.size());
    // Origin tracking: inserted content takes the alignment of the last character it replaces
    // (or of the character before an empty match), as the library's replace() does.
    size_t origin = 0;
    bool counting = p.origin_bytes > 0;
    size_t last = 0;
    auto keep_gap = [&](size_t a, size_t b) {
      if (counting) {
        size_t in_origin = a < p.origin_bytes ? std::min(b, p.origin_bytes) - a : 0;
        origin += in_origin;
        if (in_origin < b - a) counting = false;
      }
      out.append(p.text, a, b - a);
    };
    for (auto [b, e] : matches) {
      keep_gap(last, b);
      if (counting && !content_.empty()) {
        bool aligned_to_origin = e == 0 || e <= p.origin_bytes;
        if (aligned_to_origin) origin += content_.size();
        else counting = false;
      }
      out.append(content_);
      last = e;
    }
    keep_gap(last, p.text.size());
    p.text = std::move(out);
    p.origin_bytes = origin;
  }

 private:
  std::string content_;
  std::unique_ptr<Regex> regex_;
};

// Each byte becomes its GPT-2 byte-level character.
class ByteLevelNormalizer : public Normalizer {
 public:
  void normalize(Piece& p) const override {
    std::string out;
    out.reserve(p.text.size() * 2);
    size_t first_len = p.text.empty() ? 0 : utf8_len(uint8_t(p.text[0]));
    size_t origin = 0;
    for (size_t i = 0; i < p.text.size(); ++i) {
      std::string_view c = byte_to_unicode(uint8_t(p.text[i]));
      if (i < first_len && p.origin_bytes) origin += c.size();
      out.append(c);
    }
    p.text = std::move(out);
    p.origin_bytes = origin;
  }
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  void normalize(Piece& p) const override {
    for (const auto& n : parts_) n->normalize(p);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

std::unique_ptr<Normalizer> parse_normalizer(const JsonField& f, int depth) {
  if (f.is_null()) return nullptr;
  if (depth > kMaxDepth) f.fail(ErrorKind::Format, "nests Sequences deeper than ", kMaxDepth);
  std::string type = f.type();
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(NormalForm::NFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(NormalForm::NFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormalForm::NFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormalForm::NFKD);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Strip") return std::make_unique<Strip>(f.bool_or("strip_left", true), f.bool_or("strip_right", true));
  if (type == "Prepend") return std::make_unique<Prepend>(f.at("prepend").str());
  if (type == "Replace") return std::make_unique<Replace>(f);
  if (type == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
  if (type == "Sequence") {
    JsonField list = f.at("normalizers");
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < list.array().size(); ++i) {
      auto n = parse_normalizer(list.at(i), depth + 1);
      if (!n) list.at(i).fail(ErrorKind::Format, "must be a normalizer, not null");
      parts.push_back(std::move(n));
    }
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  f.unsupported_type();
}

std::string normalize_string(const Normalizer* normalizer, const std::string& text) {
  if (!normalizer) return text;
  Piece p{text, -1, text.empty() ? 0 : utf8_len(uint8_t(text[0]))};
  normalizer->normalize(p);
  return p.text;
}

}  // namespace statelm::tok
