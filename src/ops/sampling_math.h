// What token a sampled row gets, defined so exactly that the CPU reference
// (ops/sample_reference.h) and the CUDA kernel (backend/cuda/sampling.cu) pick the same id for the
// same logits, seed and step: bit for bit, not "close". Host and device compile these functions.
//
// For one row of logits l (after the repetition penalty; NaN counts as -inf):
//   key(i) = ordered_bits(l_i) << 32 | (2^32 - 1 - i): a total order, larger = better, equal logits
//            broken in favour of the lower id. Greedy picks the largest key.
//   q(i)   = floor(2^40 * exp((l_i - l_max) * (1 / T))): the weight relative to the best token
//            (q = 2^40), as an integer. Weights below 2^-40 of the best become 0 (never drawn): at
//            most vocab * 2^-40 of the mass, 2.4e-7 at a 256K vocabulary.
//   top-k  keeps the k largest keys;
//   top-p  keeps, of those, the shortest run of largest keys whose weight reaches
//          ceil(top_p * their total weight);
//   min-p  keeps tokens with q >= ceil(min_p * 2^40), i.e. p >= min_p * p_max;
//          each filter keeps the best token, so something is always left.
//   draw   u = output number `step` of SplitMix64 started from mix(seed) (a counter-based
//          generator: any step is computed directly, nothing carries from one draw to the next);
//          r = floor(u * Q / 2^64) with Q the kept weight; the token is the lowest id at which
//          the running sum of kept weights, in id order, exceeds r.
// Everything after q is integer arithmetic, so the order of a sum (a CPU loop, a GPU tree) cannot
// change a decision. q itself is a fixed sequence of fp32 operations with every multiply-add an
// explicit fma: a compiler may contract a*b+c on one side and not the other (GCC does at -O3
// -march=native, nvcc by default), and an explicit fma rounds the same everywhere.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define STATELM_HD __host__ __device__ __forceinline__
#else
#include <bit>
#include <cmath>
#define STATELM_HD inline
#endif

namespace statelm::sampling {

constexpr int kWeightBits = 40;
constexpr uint64_t kBestWeight = uint64_t(1) << kWeightBits;
// Up to this many tokens per row the kept weight (<= vocab * 2^40) stays below 2^63.
constexpr int64_t kMaxVocab = int64_t(1) << 23;

STATELM_HD uint32_t float_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  return std::bit_cast<uint32_t>(v);
#endif
}

STATELM_HD float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  return std::bit_cast<float>(b);
#endif
}

STATELM_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// (a * b) >> 64.
STATELM_HD uint64_t mul_hi(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return uint64_t((unsigned __int128)a * b >> 64);
#endif
}

// Transformers' repetition penalty: a seen token's logit is divided by the penalty when
// positive and multiplied by it otherwise, so it always becomes less likely (for penalty > 1).
// The _rn forms keep nvcc from fusing the product into a later subtraction.
STATELM_HD float penalize(float logit, float penalty) {
#if defined(__CUDA_ARCH__)
  return logit > 0.0f ? __fdiv_rn(logit, penalty) : __fmul_rn(logit, penalty);
#else
  return logit > 0.0f ? logit / penalty : logit * penalty;
#endif
}

// Order-preserving bits: a < b as floats (NaN taken as -inf) iff ordered_bits(a) < ordered_bits(b),
// except that -0 sorts just below +0.
STATELM_HD uint32_t ordered_bits(float v) {
  const uint32_t b = v != v ? 0xFF800000u : float_bits(v);  // NaN -> the bits of -inf
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

STATELM_HD uint64_t sample_key(float logit, uint32_t id) {
  return (uint64_t(ordered_bits(logit)) << 32) | uint64_t(0xFFFFFFFFu - id);
}
STATELM_HD uint32_t key_id(uint64_t key) { return 0xFFFFFFFFu - uint32_t(key); }
// The (NaN-free) logit a key was made from.
STATELM_HD float key_logit(uint64_t key) {
  const uint32_t o = uint32_t(key >> 32);
  return bits_float((o & 0x80000000u) ? (o & 0x7FFFFFFFu) : ~o);
}

// q = floor(2^40 * e^x) with x = (logit - best) * inv_t <= 0, from fp32 operations that round
// the same on every IEEE machine: x = k ln2 + r (Cody-Waite, |r| <= ln2 / 2), e^r by its Taylor
// series to r^7 (relative error ~1e-7, far below what sampling can tell), times 2^(40 + k).
// Written without early returns so that a CPU loop over it vectorises.
STATELM_HD uint64_t quantized_weight(float logit, float best, float inv_t) {
#if defined(__CUDA_ARCH__)
  const float d = __fsub_rn(logit, best);
  const float x = __fmul_rn(d, inv_t);
#else
  const float d = logit - best;
  const float x = d * inv_t;
#endif
  const bool live = x > -28.0f;      // e^-28 * 2^40 < 1; false for -inf and NaN too
  const float xs = live ? x : 0.0f;  // keeps what follows finite when its result is not used
#if defined(__CUDA_ARCH__)
  const float k = rintf(__fmul_rn(xs, 1.44269504f));
#else
  const float k = std::rint(xs * 1.44269504f);
#endif
  float r = fma_rn(-k, 0.693145752f, xs);  // ln2 in two parts: k * ln2_hi is exact
  r = fma_rn(-k, 1.42860677e-6f, r);
  float p = 1.0f / 5040.0f;
  p = fma_rn(p, r, 1.0f / 720.0f);
  p = fma_rn(p, r, 1.0f / 120.0f);
  p = fma_rn(p, r, 1.0f / 24.0f);
  p = fma_rn(p, r, 1.0f / 6.0f);
  p = fma_rn(p, r, 0.5f);
  p = fma_rn(p, r, 1.0f);
  p = fma_rn(p, r, 1.0f);
  // k is in [-40, 0]: 2^(40 + k) is a normal float and the product exact (a power of two).
  const uint64_t q = uint64_t(p * bits_float(uint32_t(127 + kWeightBits + int(k)) << 23));
  // The best token weighs exactly 2^40, also when inv_t is inf (a temperature of ~1e-39).
  return d == 0.0f ? kBestWeight : (live ? q : 0);
}

// The weight top-p must reach out of `total`: ceil(top_p * total), at least 1, at most total.
STATELM_HD uint64_t top_p_target(float top_p, uint64_t total) {
#if defined(__CUDA_ARCH__)
  const double t = ceil(__dmul_rn(double(top_p), double(total)));
#else
  const double t = std::ceil(double(top_p) * double(total));
#endif
  const uint64_t target = uint64_t(t);  // t <= 2^63: total < 2^63 (kMaxVocab)
  return target < 1 ? 1 : (target > total ? total : target);
}

// The smallest weight min-p keeps: ceil(min_p * 2^40) (exact: a power-of-two scaling).
STATELM_HD uint64_t min_p_weight(float min_p) {
#if defined(__CUDA_ARCH__)
  return uint64_t(ceil(double(min_p) * double(kBestWeight)));
#else
  return uint64_t(std::ceil(double(min_p) * double(kBestWeight)));
#endif
}

// SplitMix64's output function (Steele, Lea & Flood 2014).
STATELM_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The 64 random bits of draw `step` for `seed`: SplitMix64's output number `step` from the state
// mix64(seed), so nearby seeds (the server's seed + i for n choices) give unrelated streams.
STATELM_HD uint64_t draw_bits(uint64_t seed, uint64_t step) {
  return mix64(mix64(seed) + (step + 1) * 0x9E3779B97F4A7C15ull);
}

// A point in [0, total): where the draw lands in the kept weight.
STATELM_HD uint64_t draw_point(uint64_t bits, uint64_t total) { return mul_hi(bits, total); }

}  // namespace statelm::sampling
