// Element types of tensors in checkpoints, state and activations.
//
// bf16 is the top 16 bits of an fp32; f16 is IEEE binary16. Conversions to fp32 are exact;
// conversions from fp32 round to nearest even, as PyTorch does, so weights converted here
// match the ones transformers computes with.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace statelm {

enum class DType : uint8_t { F32, F16, BF16, F64, I32, I64 };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);                      // "float32", "bfloat16", ...
std::optional<DType> dtype_from_safetensors(std::string_view code);  // "F32", "BF16", ...
std::string_view dtype_safetensors_code(DType t);
std::optional<DType> dtype_from_name(std::string_view name);  // "float32"|"fp32"|"f32", ...

inline float bf16_to_f32(uint16_t v) {
  uint32_t bits = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);  // quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
  return uint16_t(bits >> 16);
}

float f16_to_f32(uint16_t v);
uint16_t f32_to_f16(float f);

// Converts n elements of type `from` at src into fp32 at dst.
void convert_to_f32(DType from, const void* src, float* dst, size_t n);
// Converts n fp32 values at src into `to` (F32, BF16 or F16) at dst, rounding to nearest even as
// torch does (f16: ±inf past 65504, no clamping).
void convert_from_f32(DType to, const float* src, void* dst, size_t n);

}  // namespace statelm
