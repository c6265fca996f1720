// core/: dtype conversions and UTF-8 validation.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/dtype.h"
#include "core/utf8.h"

namespace statelm {

TEST(DType, Bf16RoundTripAndRounding) {
  for (float f : {0.0f, -0.0f, 1.0f, -2.5f, 3.140625f, std::ldexp(1.0f, -100), 65536.0f}) EXPECT_EQ(bf16_to_f32(f32_to_bf16(f)), f) << f;
  // 1 + 2^-8 lies exactly between two bf16 values: round to even (1.0).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 1.0f / 256)), 1.0f);
  // 1 + 3*2^-8 is between 1+2^-7 (odd mantissa) and 1+2^-6: rounds up to even.
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 3.0f / 256)), 1.0f + 1.0f / 64);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(DType, F16RoundTripIncludingSubnormalsAndInf) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    EXPECT_EQ(f32_to_f16(f), uint16_t(h)) << std::hex << h;
  }
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);  // overflow to +inf
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
}

TEST(DType, SafetensorsCodes) {
  EXPECT_EQ(dtype_from_safetensors("BF16"), DType::BF16);
  EXPECT_EQ(dtype_from_safetensors("F8_E4M3"), std::nullopt);
  EXPECT_EQ(dtype_from_name("bf16"), DType::BF16);
}

TEST(Utf8, ValidatesPerRfc3629) {
  EXPECT_TRUE(utf8_is_valid(""));
  EXPECT_TRUE(utf8_is_valid("plain ascii"));
  EXPECT_TRUE(utf8_is_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));  // é € 😀
  EXPECT_EQ(utf8_first_invalid("ab\xc3"), 2u);             // truncated
  EXPECT_EQ(utf8_first_invalid("\xc0\xaf"), 0u);           // overlong '/'
  EXPECT_EQ(utf8_first_invalid("x\xed\xa0\x80"), 1u);      // surrogate U+D800
  EXPECT_EQ(utf8_first_invalid("\xf4\x90\x80\x80"), 0u);   // > U+10FFFF
  EXPECT_EQ(utf8_first_invalid("ok\x80"), 2u);             // stray continuation
  EXPECT_EQ(utf8_first_invalid("\xff"), 0u);
}

TEST(Utf8, EncodeDecodeRoundTrip) {
  for (uint32_t cp : {0x41u, 0xe9u, 0x20acu, 0x1f600u, 0x10ffffu}) {
    std::string s;
    utf8_append(s, cp);
    size_t n = utf8_sequence_length(s);
    ASSERT_EQ(n, s.size());
    EXPECT_EQ(utf8_decode(s, n), cp);
  }
}

}  // namespace statelm
