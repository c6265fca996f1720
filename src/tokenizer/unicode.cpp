// Unicode helpers with Rust `tokenizers` semantics; normalization and categories via utf8proc.
#include "tokenizer/unicode.h"

#include <utf8proc.h>

#include <array>
#include <cstdlib>
#include <memory>

#include "core/error.h"
#include "core/utf8.h"

namespace statelm::tok {

uint32_t next_code_point(std::string_view s, size_t pos, size_t* len) {
  size_t n = utf8_len(uint8_t(s[pos]));
  if (pos + n > s.size()) n = s.size() - pos;  // defensive: callers pass valid UTF-8
  *len = n;
  return utf8_decode(s.substr(pos, n), n);
}

size_t count_code_points(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (uint8_t(c) & 0xc0) != 0x80;
  return n;
}

bool is_whitespace(uint32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0d);
  if (cp < 0x85) return false;
  switch (cp) {
    case 0x85: case 0xa0: case 0x1680: case 0x2028: case 0x2029: case 0x202f: case 0x205f:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200a;
  }
}

static utf8proc_category_t category(uint32_t cp) {
  return utf8proc_category(utf8proc_int32_t(cp));
}

bool is_numeric(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  auto c = category(cp);
  return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

bool is_word_char(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') || cp == '_';
  if (cp == 0x200c || cp == 0x200d) return true;  // Join_Control
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

bool is_punctuation(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x21 && cp <= 0x2f) || (cp >= 0x3a && cp <= 0x40) || (cp >= 0x5b && cp <= 0x60) || (cp >= 0x7b && cp <= 0x7e);
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE: case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
      return true;
    default:
      return false;
  }
}

bool is_combining_mark(uint32_t cp) { return cp >= 0x300 && category(cp) == UTF8PROC_CATEGORY_MN; }

namespace {

// GPT-2 keeps the printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') as themselves and maps the
// other 68 bytes, in order, to U+0100.. so that every byte is a visible character.
struct ByteLevelTable {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 0x144> cp_to_byte;  // stand-ins are all below U+0144
  ByteLevelTable() {
    cp_to_byte.fill(-1);
    uint32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
      uint32_t cp = printable ? uint32_t(b) : next++;
      utf8_append(byte_to_utf8[b], cp);
      cp_to_byte[cp] = int16_t(b);
    }
  }
};

const ByteLevelTable& byte_level_table() {
  static const ByteLevelTable table;
  return table;
}

}  // namespace

std::string_view byte_to_unicode(uint8_t byte) { return byte_level_table().byte_to_utf8[byte]; }

int unicode_to_byte(uint32_t cp) {
  return cp < 0x144 ? byte_level_table().cp_to_byte[cp] : -1;
}

namespace {

// Expected length of the sequence a lead byte starts (0: never a lead), and the allowed range
// of the byte after it (RFC 3629 table: no overlongs, surrogates or code points > U+10FFFF).
struct LeadInfo {
  int width;
  uint8_t lo, hi;
};

LeadInfo lead_info(uint8_t b) {
  if (b >= 0xc2 && b <= 0xdf) return {2, 0x80, 0xbf};
  if (b == 0xe0) return {3, 0xa0, 0xbf};
  if ((b >= 0xe1 && b <= 0xec) || b == 0xee || b == 0xef) return {3, 0x80, 0xbf};
  if (b == 0xed) return {3, 0x80, 0x9f};
  if (b == 0xf0) return {4, 0x90, 0xbf};
  if (b >= 0xf1 && b <= 0xf3) return {4, 0x80, 0xbf};
  if (b == 0xf4) return {4, 0x80, 0x8f};
  return {0, 0, 0};
}

// Length of the valid prefix of the sequence starting at s[i] (>= 1), and its expected width.
size_t valid_prefix(std::string_view s, size_t i, int* width) {
  LeadInfo info = lead_info(uint8_t(s[i]));
  *width = info.width;
  if (info.width == 0) return 1;
  size_t k = 1;
  if (i + 1 < s.size() && uint8_t(s[i + 1]) >= info.lo && uint8_t(s[i + 1]) <= info.hi) {
    k = 2;
    while (int(k) < info.width && i + k < s.size() && (uint8_t(s[i + k]) & 0xc0) == 0x80) ++k;
  }
  return k;
}

}  // namespace

void append_utf8_lossy(std::string& out, std::string_view s) {
  size_t i = 0, run = 0;  // s[run, i) is valid and not yet copied
  while (i < s.size()) {
    if (uint8_t(s[i]) < 0x80) {
      ++i;
      continue;
    }
    int width;
    size_t k = valid_prefix(s, i, &width);
    if (int(k) == width) {
      i += k;
      continue;
    }
    out.append(s.substr(run, i - run));
    out.append(kReplacementChar);
    i += k;
    run = i;
  }
  out.append(s.substr(run));
}

size_t utf8_incomplete_tail(std::string_view s) {
  // A code point is at most 4 bytes: only a lead among the last 3 bytes can be incomplete.
  size_t start = s.size() > 3 ? s.size() - 3 : 0;
  for (size_t i = s.size(); i > start; --i) {
    uint8_t b = uint8_t(s[i - 1]);
    if ((b & 0xc0) == 0x80) continue;  // continuation: keep looking for its lead
    if (b < 0x80) return 0;
    int width;
    size_t k = valid_prefix(s, i - 1, &width);
    return (i - 1 + k == s.size() && int(k) < width) ? k : 0;
  }
  return 0;
}

std::string unicode_normalize(std::string_view s, NormalForm form) {
  bool ascii = true;
  for (char c : s) ascii &= uint8_t(c) < 0x80;
  if (ascii) return std::string(s);  // ASCII is invariant under all four forms
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::NFC: options |= UTF8PROC_COMPOSE; break;
    case NormalForm::NFD: options |= UTF8PROC_DECOMPOSE; break;
    case NormalForm::NFKC: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalForm::NFKD: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* out = nullptr;
  utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                    utf8proc_ssize_t(s.size()), &out, utf8proc_option_t(options));
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(out, &std::free);
  if (n < 0) fail(ErrorKind::Internal, "utf8proc: ", utf8proc_errmsg(n));
  return std::string(reinterpret_cast<const char*>(out), size_t(n));
}

std::string unicode_lowercase(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint8_t b = uint8_t(s[i]);
    if (b < 0x80) {
      out.push_back(b >= 'A' && b <= 'Z' ? char(b + 32) : char(b));
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp = next_code_point(s, i, &len);
    i += len;
    if (cp == 0x130) {  // the one unconditional multi-char lowercase mapping: İ -> i + U+0307
      out.append("i\xCC\x87");
      continue;
    }
    utf8_append(out, uint32_t(utf8proc_tolower(utf8proc_int32_t(cp))));
  }
  return out;
}

}  // namespace statelm::tok
