// The decoders of tokenizer.json, each a small class; parse_decoder picks one by "type".
#include "tokenizer/decoders.h"

#include "core/utf8.h"
#include "tokenizer/regex.h"
#include "tokenizer/unicode.h"

namespace statelm::tok {

namespace {

constexpr int kMaxDepth = 16;

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// ByteLevel: each token's characters back to bytes (a token with a character outside the
// byte-level alphabet, e.g. an added token, keeps its UTF-8 bytes), then the bytes of all
// tokens as one lossy UTF-8 string.
class ByteLevelDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens, DecodeWindow& w) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      size_t mark = bytes.size();
      bool mapped = true;
      for (size_t i = 0; i < t.size() && mapped;) {
        size_t len;
        int b = unicode_to_byte(next_code_point(t, i, &len));
        if (b < 0) mapped = false;
        else bytes.push_back(char(b));
        i += len;
      }
      if (!mapped) {
        bytes.resize(mark);
        bytes.append(t);
      }
    }
    if (w.end == DecodeWindow::End::Open) {
      size_t tail = utf8_incomplete_tail(bytes);
      if (tail) {
        bytes.resize(bytes.size() - tail);
        w.held_bytes = true;
      }
    }
    std::string text;
    append_utf8_lossy(text, bytes);
    tokens.assign(1, std::move(text));
    w.fused = true;
  }
};

// ByteFallback: runs of <0xAB> tokens become the UTF-8 they spell, or one U+FFFD per byte
// when the run as a whole is not valid UTF-8.
class ByteFallbackDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens, DecodeWindow& w) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string run;
    size_t run_tokens = 0;
    auto flush = [&] {
      if (!run_tokens) return;
      if (utf8_is_valid(run)) {  // Rust String::from_utf8 succeeds
        out.push_back(run);
      } else {
        for (size_t i = 0; i < run_tokens; ++i) out.emplace_back(kReplacementChar);
      }
      run.clear();
      run_tokens = 0;
    };
    for (std::string& t : tokens) {
      uint8_t b;
      if (parse_byte_token(t, &b)) {
        run.push_back(char(b));
        ++run_tokens;
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    if (run_tokens && w.end == DecodeWindow::End::Open) {
      w.held_run = true;  // the run may go on in the next token
    } else {
      flush();
    }
    tokens = std::move(out);
  }

};

class FuseDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens, DecodeWindow& w) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
    w.fused = true;
  }
};

class ReplaceDecoder : public Decoder {
 public:
  explicit ReplaceDecoder(const JsonField& f) : content_(f.at("content").str()) {
    regex_ = parse_pattern(f.at("pattern"));
  }
  void decode_chain(std::vector<std::string>& tokens, DecodeWindow&) const override {
    std::vector<std::pair<size_t, size_t>> matches;
    for (std::string& t : tokens) {
      matches.clear();
      regex_->find_all(t, matches);
      if (matches.empty()) continue;
      std::string out;
      size_t last = 0;
      for (auto [b, e] : matches) {
        out.append(t, last, b - last);
        out.append(content_);
        last = e;
      }
      out.append(t, last, std::string::npos);
      t = std::move(out);
    }
  }

 private:
  std::string content_;
  std::unique_ptr<Regex> regex_;
};

// Strip: removes up to `start` leading and `stop` trailing copies of one character per token.
class StripDecoder : public Decoder {
 public:
  explicit StripDecoder(const JsonField& f) {
    JsonField c = f.at("content");
    std::string s = c.str();
    if (s.empty() || count_code_points(s) != 1) c.fail(ErrorKind::Format, "must be exactly one character");
    content_ = s;
    start_ = size_t(f.at("start").integer(0, 1 << 30));
    stop_ = size_t(f.at("stop").integer(0, 1 << 30));
  }
  size_t start() const { return start_; }
  void decode_chain(std::vector<std::string>& tokens, DecodeWindow& w) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      // After a fusing stage the one token is the whole text: its head was stripped in an
      // earlier window, and its tail is only final at the real end.
      bool strip_head = !(i == 0 && w.fused && !w.at_start);
      bool strip_tail = !(i + 1 == tokens.size() && w.fused && w.end != DecodeWindow::End::Final);
      bool hold_tail = !strip_tail && w.end == DecodeWindow::End::Open;
      size_t begin = 0, end = t.size();
      const size_t n = content_.size();
      if (strip_head)
        for (size_t k = 0; k < start_ && end - begin >= n && t.compare(begin, n, content_) == 0; ++k) begin += n;
      if (strip_tail || hold_tail)
        for (size_t k = 0; k < stop_ && end - begin >= n && t.compare(end - n, n, content_) == 0; ++k) end -= n;
      if (begin != 0 || end != t.size()) t = t.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;
  size_t start_ = 0, stop_ = 0;
};

// Metaspace: the replacement character ("▁") back to a space; the first token of the text
// loses its replacement characters instead (they were prepended) unless prepend_scheme is
// "never".
class MetaspaceDecoder : public Decoder {
 public:
  explicit MetaspaceDecoder(const JsonField& f) {
    JsonField r = f.at("replacement");
    replacement_ = r.str();
    if (replacement_.empty() || count_code_points(replacement_) != 1)
      r.fail(ErrorKind::Format, "must be exactly one character");
    std::string scheme = f.str_or("prepend_scheme", "always");
    if (scheme != "always" && scheme != "first" && scheme != "never")
      f.at("prepend_scheme").fail(ErrorKind::Format, "must be \"always\", \"first\" or \"never\", not ", quote(scheme));
    JsonField legacy = f.opt("add_prefix_space");
    drop_first_ = scheme != "never" && (legacy.is_null() || legacy.boolean());
  }
  void decode_chain(std::vector<std::string>& tokens, DecodeWindow& w) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      bool first = i == 0 && (w.at_start || w.fused);
      std::string out;
      out.reserve(t.size());
      for (size_t pos = 0;;) {
        size_t hit = t.find(replacement_, pos);
        out.append(t, pos, hit == std::string::npos ? std::string::npos : hit - pos);
        if (hit == std::string::npos) break;
        if (!(first && drop_first_)) out.push_back(' ');
        pos = hit + replacement_.size();
      }
      t = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool drop_first_ = true;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens, DecodeWindow& w) const override {
    for (const auto& d : parts_) d->decode_chain(tokens, w);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

std::unique_ptr<Decoder> parse(const JsonField& f, DecoderTraits& traits, bool& fused, int depth) {
  if (depth > kMaxDepth) f.fail(ErrorKind::Format, "nests Sequences deeper than ", kMaxDepth);
  std::string type = f.type();
  if (type == "ByteLevel") {
    fused = true;
    return std::make_unique<ByteLevelDecoder>();
  }
  if (type == "ByteFallback") {
    traits.byte_fallback = true;
    return std::make_unique<ByteFallbackDecoder>();
  }
  if (type == "Fuse") {
    fused = true;
    return std::make_unique<FuseDecoder>();
  }
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(f);
  if (type == "Metaspace") return std::make_unique<MetaspaceDecoder>(f);
  if (type == "Strip") {
    auto d = std::make_unique<StripDecoder>(f);
    if (fused && d->start() > 0) traits.strip_start = true;
    return d;
  }
  if (type == "Sequence") {
    JsonField list = f.at("decoders");
    std::vector<std::unique_ptr<Decoder>> parts;
    for (size_t i = 0; i < list.array().size(); ++i) {
      JsonField item = list.at(i);
      if (item.is_null()) item.fail(ErrorKind::Format, "must be a decoder, not null");
      parts.push_back(parse(item, traits, fused, depth + 1));
    }
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  f.unsupported_type();
}

}  // namespace

bool parse_byte_token(const std::string& t, uint8_t* byte) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return false;
  // Rust's u8::from_str_radix(.., 16): two hex digits, or a '+' sign and one digit.
  int hi = hex_value(t[3]), lo = hex_value(t[4]);
  if (lo < 0) return false;
  if (hi < 0) {
    if (t[3] != '+') return false;
    hi = 0;
  }
  *byte = uint8_t(hi * 16 + lo);
  return true;
}

std::unique_ptr<Decoder> parse_decoder(const JsonField& f, DecoderTraits& traits, int depth) {
  if (f.is_null()) return nullptr;
  bool fused = false;
  return parse(f, traits, fused, depth);
}

}  // namespace statelm::tok
