// Unicode helpers for the tokenizer, with the semantics of the Rust `tokenizers` library.
//
// The library decides "is this whitespace / a digit / a word character" with Rust's char
// methods and regex classes, and repairs broken UTF-8 with String::from_utf8_lossy; matching
// it id-for-id means using those exact definitions, collected here. Also the GPT-2 byte-level
// alphabet (every byte mapped to a printable code point) and NFC/NFKC via utf8proc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace statelm::tok {

// Decodes the code point at s[pos] of a string known to be valid UTF-8; *len gets its size.
uint32_t next_code_point(std::string_view s, size_t pos, size_t* len);
// Byte length of the UTF-8 sequence led by `lead` in valid UTF-8.
inline size_t utf8_len(uint8_t lead) { return lead < 0x80 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4; }
// Number of code points in valid UTF-8.
size_t count_code_points(std::string_view s);

bool is_whitespace(uint32_t cp);  // Rust char::is_whitespace = regex \s (Unicode White_Space)
bool is_numeric(uint32_t cp);     // Rust char::is_numeric: categories Nd, Nl, No
bool is_word_char(uint32_t cp);   // Rust regex \w: alphabetic, marks, Nd, Pc, joiners
bool is_punctuation(uint32_t cp); // ASCII punctuation or a P* category (BERT's rule)
bool is_combining_mark(uint32_t cp);  // Mn (what StripAccents removes)

// GPT-2's byte-level alphabet: byte -> UTF-8 of its printable stand-in, and back.
std::string_view byte_to_unicode(uint8_t byte);
int unicode_to_byte(uint32_t cp);  // -1 when cp is not one of the 256 stand-ins

// Appends `bytes` as Rust's String::from_utf8_lossy does: each maximal invalid subpart
// becomes one U+FFFD.
void append_utf8_lossy(std::string& out, std::string_view bytes);
// Size of a trailing sequence that is a valid but incomplete start of a code point (0..3):
// more bytes could still complete it, so a streaming decoder must hold it back.
size_t utf8_incomplete_tail(std::string_view bytes);

enum class NormalForm { NFC, NFD, NFKC, NFKD };
std::string unicode_normalize(std::string_view s, NormalForm form);
// Rust's per-char to_lowercase (no context rules: final sigma stays σ).
std::string unicode_lowercase(std::string_view s);

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace statelm::tok
