// The rotary embedding's arithmetic, shared by rope.cu (q and k rotated in place, any span) and
// the attention decode kernel (attention_decode.cu: q and the new k rotated as they are read), so
// that a key rotated by either is the same bf16 value. transformers' Llama layout
// ("rotate_half"): pair i of a head is (element i, element i + half), at position p
//   f = inv_freq[i] · p,   a' = a cos f − b sin f,   b' = b cos f + a sin f.
#pragma once

#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_common.h"
#include "model/rope_frequencies.h"

namespace statelm::cuda {

constexpr int kMaxRopeHalf = 128;  // rotary_dim ≤ 256

// model/rope_frequencies.h's values (the CPU's too: both backends rotate by the same
// frequencies), passed to a kernel by value.
struct InvFreq {
  float v[kMaxRopeHalf];
};

inline InvFreq inv_freq_table(const RopeSpec& r) {
  InvFreq out{};
  const std::vector<float> inv = rope_inv_freq(r);
  STATELM_CHECK(inv.size() <= size_t(kMaxRopeHalf), "rope: CUDA kernels support rotary_dim <= ", 2 * kMaxRopeHalf,
                ", got ", r.rotary_dim);
  std::copy(inv.begin(), inv.end(), out.v);
  return out;
}

// cos and sin of pair i at position pos: the same fp32 product as the CPU, CUDA's sincosf
// (within 2 ulp of the CPU's).
__device__ __forceinline__ void rope_angle(const InvFreq& inv, int i, int pos, float* sin_f, float* cos_f) {
  sincosf(inv.v[i] * float(pos), sin_f, cos_f);
}

// The rotated value of element x of a pair whose other element is `partner`: x in the first half
// (a) or the second (b). Explicit fmas, so every caller rounds alike.
__device__ __forceinline__ float rope_rotate(float x, float partner, float cos_f, float sin_f, bool first_half) {
  return fmaf(x, cos_f, first_half ? -(partner * sin_f) : partner * sin_f);
}

}  // namespace statelm::cuda
