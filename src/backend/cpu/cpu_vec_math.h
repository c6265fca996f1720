// SIMD float vectors (GCC/Clang vector extensions, as wide as the target allows) and the
// transcendental functions the SSM ops need on them: exp, softplus, SiLU.
//
// Why not std::exp in a loop: glibc's expf/log1pf stay scalar calls unless -ffast-math, and the
// scans evaluate one exp per state element per token (Mamba-1 2.8B: 170M per layer for a
// 2048-token prefill), so the libm call, not the arithmetic, would set the speed. Why vector
// types rather than scalar code left to the auto-vectoriser: GCC's jump threading turns the
// range clamps below into branches (a clamped input makes the rest constant), and a loop with
// branches is not vectorised; selects on vector types cannot become branches.
//
// exp(x) = 2^k · e^r, k = round(x / ln2), r = x − k·ln2 ∈ [−ln2/2, ln2/2]. ln2 is split into a
// high part with 9 significant bits (k·ln2_hi is exact for |k| < 2^15) and a low part, so r
// carries no cancellation error. e^r is its Taylor series up to r⁷/7!: the truncation,
// |r|⁸/8! < 6e-9, is below float rounding. 2^k is built from exponent bits, which needs k in
// [−126, 127]: x is clamped to [−87.3, 88.3]; below −87.3 the result is 0 (never a denormal,
// see DenormalsAreZero), above 88.3 it is ~2^127 (not inf).
//
// log(w), w ≥ 1 finite: w = m · 2^e with m ∈ [√½, √2); log m = 2·atanh(s), s = (m−1)/(m+1),
// |s| ≤ 0.172, by the odd series s + s³/3 + … + s⁹/9 (truncation < 1e-9 relative).
// log1p(u) = log(w) − ((w − 1) − u) / w with w = fl(1 + u): the first-order correction puts
// back the part of u that rounding 1 + u dropped, so tiny u give log1p(u) = u.
// softplus(v) = v for v > 20 (torch's threshold; log1p(e^v) = v to float precision there),
// else log1p(e^v).  silu(v) = v / (1 + e^−v).
//
// Accuracy: exp within 1.3 ulp of the exact value, softplus and log1p within 4 ulp (measured
// over their whole float range; the op tests compare against a double-precision reference).
#pragma once

#include <cstdint>
#include <cstring>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace statelm::cpu {

#if defined(__AVX512F__)
inline constexpr int kLanes = 16;
#elif defined(__AVX__)
inline constexpr int kLanes = 8;
#else
inline constexpr int kLanes = 4;
#endif

typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(int32_t))));

// Unaligned loads and stores (memcpy compiles to one vector move).
inline VecF load(const float* p) {
  VecF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, VecF v) { std::memcpy(p, &v, sizeof v); }
inline VecF splat(float s) { return VecF{} + s; }

inline VecF exp(VecF x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;              // 355/512
  constexpr float kLn2Lo = -2.12194440054690583e-4f;  // ln2 − kLn2Hi
  const VecI underflow = x < -87.3f;
  x = x > 88.3f ? splat(88.3f) : x;
  x = underflow ? splat(-87.3f) : x;
  // Round half away from zero by a truncating conversion.
  const VecI ki = __builtin_convertvector(x * kLog2e + (x < 0.0f ? splat(-0.5f) : splat(0.5f)), VecI);
  const VecF k = __builtin_convertvector(ki, VecF);
  const VecF r = (x - k * kLn2Hi) - k * kLn2Lo;
  VecF p = splat(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return underflow ? VecF{} : p * reinterpret_cast<VecF>((ki + 127) << 23);
}

// log(w) for w ≥ 1 finite (all that log1p of a non-negative argument needs).
inline VecF log_ge1(VecF w) {
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440054690583e-4f;
  constexpr float kSqrt2 = 1.41421356237309505f;
  const VecI bits = reinterpret_cast<VecI>(w);
  VecF e = __builtin_convertvector((bits >> 23) - 127, VecF);
  VecF m = reinterpret_cast<VecF>((bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  const VecI high = m > kSqrt2;
  m = high ? m * 0.5f : m;
  e = high ? e + 1.0f : e;
  const VecF s = (m - 1.0f) / (m + 1.0f);
  const VecF s2 = s * s;
  VecF q = splat(1.0f / 9.0f);
  q = q * s2 + 1.0f / 7.0f;
  q = q * s2 + 1.0f / 5.0f;
  q = q * s2 + 1.0f / 3.0f;
  const VecF log_m = 2.0f * s + 2.0f * s * s2 * q;
  return e * kLn2Hi + (log_m + e * kLn2Lo);
}

// log(1 + u) for u ≥ 0.
inline VecF log1p(VecF u) {
  const VecF w = 1.0f + u;
  return log_ge1(w) - ((w - 1.0f) - u) / w;
}

inline VecF softplus(VecF v) {
  const VecI big = v > 20.0f;
  const VecF sp = log1p(exp(big ? splat(20.0f) : v));
  return big ? v : sp;
}

inline VecF silu(VecF v) { return v / (1.0f + exp(-v)); }

// While in scope, this thread flushes denormal results to zero and reads denormal inputs as
// zero (x86 MXCSR FTZ | DAZ). On x86 every instruction touching a denormal takes a microcode
// assist of ~100 cycles, and the SSM ops produce them by the million: decays e^{dt·A} of a
// strongly decaying head multiply states and masks down through 1e-38 (a 2048-token SSD
// prefill ran 15× slower). Magnitudes below 1.2e-38 carry nothing these ops need. The previous
// mode is restored on exit, so OpenMP worker threads go back to other ops unchanged.
class DenormalsAreZero {
 public:
#if defined(__SSE__)
  DenormalsAreZero() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }
  ~DenormalsAreZero() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#else
  DenormalsAreZero() {}
#endif
  DenormalsAreZero(const DenormalsAreZero&) = delete;
  DenormalsAreZero& operator=(const DenormalsAreZero&) = delete;
};

// Scalar forms for tails and single values: one lane of the vector code, so that a value does
// not depend on whether it fell in a vector body or a tail.
inline float exp(float x) { return exp(splat(x))[0]; }
inline float softplus(float v) { return softplus(splat(v))[0]; }
inline float silu(float v) { return silu(splat(v))[0]; }

}  // namespace statelm::cpu
