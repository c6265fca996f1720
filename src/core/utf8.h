// UTF-8 validation and decoding (RFC 3629: no overlongs, no surrogates, max U+10FFFF).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace statelm {

// Length in bytes of the valid UTF-8 sequence that starts at s[0], or 0 if it is not valid
// (truncated, overlong, surrogate, out of range, stray continuation byte).
size_t utf8_sequence_length(std::string_view s);

// Byte offset of the first invalid sequence, or npos when the whole string is valid UTF-8.
size_t utf8_first_invalid(std::string_view s);

inline bool utf8_is_valid(std::string_view s) { return utf8_first_invalid(s) == std::string_view::npos; }

// Decodes one valid sequence (caller checked utf8_sequence_length(s) == n > 0).
uint32_t utf8_decode(std::string_view s, size_t n);

void utf8_append(std::string& out, uint32_t code_point);

}  // namespace statelm
