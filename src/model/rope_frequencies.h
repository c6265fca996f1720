// The inverse frequency of each rotary pair, with the scaling of the RoPE variant folded in:
// the one definition the CPU and CUDA rope ops both use (header-only, so the CUDA launcher and
// the standalone kernel check need nothing else linked).
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include "model/model_spec.h"

namespace statelm {

// Whether a rotation fits heads of head_dim: the rotated part is a whole number of pairs, none
// past the head. Kind None rotates nothing and always fits. Both backends' rope ops check this.
inline bool rope_fits_head(const RopeSpec& r, int64_t head_dim) {
  return r.kind == RopeKind::None || (r.rotary_dim > 0 && r.rotary_dim % 2 == 0 && r.rotary_dim <= head_dim);
}

inline std::vector<float> rope_inv_freq(const RopeSpec& r) {
  const int64_t half = r.rotary_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // As transformers: base ** (2i / dim) in fp32, then its reciprocal.
    float f = 1.0f / std::pow(float(r.theta), float(2 * i) / float(r.rotary_dim));
    if (r.kind == RopeKind::Linear) f = f / float(r.factor);
    if (r.kind == RopeKind::Llama3) {
      const double low_wavelen = double(r.original_max_position) / r.low_freq_factor;
      const double high_wavelen = double(r.original_max_position) / r.high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f = float(f / r.factor);
      } else if (wavelen >= high_wavelen) {  // between the two: interpolate smoothly
        double smooth = (double(r.original_max_position) / wavelen - r.low_freq_factor) /
                        (r.high_freq_factor - r.low_freq_factor);
        f = float((1.0 - smooth) * f / r.factor + smooth * f);
      }
    }
    inv[size_t(i)] = f;
  }
  return inv;
}

}  // namespace statelm
