// Naive scalar references of the non-SSM ops (embedding, the RMSNorm family, matmul, SwiGLU,
// add, RoPE, causal GQA attention, MoE) in double precision: the ground truth the CPU kernels
// (and through them every backend) are tested against. Each is written from the math in
// src/ops/ops.h and transformers' definitions, with plain loops and no blocking, and shares no
// code with src/backend.
//
// Layouts are plain contiguous row-major arrays of L tokens; attention works on one sequence
// whose whole (already appended) cache is given as contiguous [positions][Hkv][Dh] arrays, so
// the paging of the real cache stays the test's business.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <numeric>
#include <utility>
#include <vector>

#include "model/model_spec.h"

namespace statelm::ref {

inline double silu_d(double v) { return v / (1.0 + std::exp(-v)); }

// out[t] = table[ids[t]]; table [V][D].
inline std::vector<float> embed(const std::vector<float>& table, int64_t D, const std::vector<int32_t>& ids) {
  std::vector<float> out;
  for (int32_t id : ids) out.insert(out.end(), table.begin() + id * D, table.begin() + (id + 1) * D);
  return out;
}

// One row: x * 1/sqrt(mean(x²) + eps) * w (transformers' LlamaRMSNorm order).
inline void rms_row(const double* x, const float* w, int64_t d, double eps, float* out) {
  double ss = 0.0;
  for (int64_t i = 0; i < d; ++i) ss += x[i] * x[i];
  const double inv = 1.0 / std::sqrt(ss / double(d) + eps);
  for (int64_t i = 0; i < d; ++i) out[i] = float(x[i] * inv * double(w[i]));
}

// x, out [L][D]; w [D].
inline std::vector<float> rms_norm(const std::vector<float>& x, const std::vector<float>& w, int64_t L, int64_t D,
                                   double eps) {
  std::vector<float> out(size_t(L * D));
  std::vector<double> row(static_cast<size_t>(D));
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t i = 0; i < D; ++i) row[size_t(i)] = x[size_t(t * D + i)];
    rms_row(row.data(), w.data(), D, eps, &out[size_t(t * D)]);
  }
  return out;
}

// residual += x (in fp32, as the residual stream is stored), then out = rms_norm(residual).
inline std::vector<float> add_rms_norm(std::vector<float>& residual, const std::vector<float>& x,
                                       const std::vector<float>& w, int64_t L, int64_t D, double eps) {
  for (size_t i = 0; i < residual.size(); ++i) residual[i] = float(double(residual[i]) + double(x[i]));
  return rms_norm(residual, w, L, D, eps);
}

// Mamba-2's gated norm: g = y * silu(z), then each group of group_size channels is normalised
// by its own mean square; w [D] spans all groups.
inline std::vector<float> gated_rms_norm(const std::vector<float>& y, const std::vector<float>& z,
                                         const std::vector<float>& w, int64_t L, int64_t D, int64_t group_size,
                                         double eps) {
  std::vector<float> out(size_t(L * D));
  std::vector<double> g(static_cast<size_t>(D));
  for (int64_t t = 0; t < L; ++t) {
    for (int64_t i = 0; i < D; ++i) g[size_t(i)] = double(y[size_t(t * D + i)]) * silu_d(z[size_t(t * D + i)]);
    for (int64_t g0 = 0; g0 < D; g0 += group_size)
      rms_row(&g[size_t(g0)], &w[size_t(g0)], group_size, eps, &out[size_t(t * D + g0)]);
  }
  return out;
}

// out[L][N] = x[L][K] · w[N][K]ᵀ + b[N] (b empty: no bias).
inline std::vector<float> matmul(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& b,
                                 int64_t L, int64_t K, int64_t N) {
  std::vector<float> out(size_t(L * N));
  for (int64_t t = 0; t < L; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double acc = b.empty() ? 0.0 : b[size_t(n)];
      for (int64_t k = 0; k < K; ++k) acc += double(x[size_t(t * K + k)]) * w[size_t(n * K + k)];
      out[size_t(t * N + n)] = float(acc);
    }
  return out;
}

// gate_up [L][2F] (gate | up) -> out [L][F] = silu(gate) * up.
inline std::vector<float> swiglu(const std::vector<float>& gate_up, int64_t L, int64_t F) {
  std::vector<float> out(size_t(L * F));
  for (int64_t t = 0; t < L; ++t)
    for (int64_t i = 0; i < F; ++i)
      out[size_t(t * F + i)] =
          float(silu_d(gate_up[size_t(t * 2 * F + i)]) * double(gate_up[size_t(t * 2 * F + F + i)]));
  return out;
}

// inv_freq_i = theta^(-2i / rotary_dim), then the variant's scaling:
//   linear: / factor;
//   llama3 (transformers' _compute_llama3_parameters): with wavelen = 2π / inv_freq, long
//   wavelengths (> original_max / low_freq_factor) are divided by factor, short ones
//   (< original_max / high_freq_factor) kept, and those between blended linearly in
//   s = (original_max / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor):
//   (1 - s) * inv / factor + s * inv.
inline std::vector<double> rope_inv_freq(const RopeSpec& r) {
  std::vector<double> inv;
  for (int64_t i = 0; i < r.rotary_dim / 2; ++i) {
    const double f = std::pow(r.theta, -double(2 * i) / double(r.rotary_dim));
    if (r.kind == RopeKind::Linear) {
      inv.push_back(f / r.factor);
    } else if (r.kind == RopeKind::Llama3) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      const double low_wavelen = double(r.original_max_position) / r.low_freq_factor;
      const double high_wavelen = double(r.original_max_position) / r.high_freq_factor;
      if (wavelen > low_wavelen) {
        inv.push_back(f / r.factor);
      } else if (wavelen < high_wavelen) {
        inv.push_back(f);
      } else {
        const double s = (double(r.original_max_position) / wavelen - r.low_freq_factor) /
                         (r.high_freq_factor - r.low_freq_factor);
        inv.push_back((1.0 - s) * f / r.factor + s * f);
      }
    } else {
      inv.push_back(f);
    }
  }
  return inv;
}

// Rotates x [L][H][Dh] in place, token t at position pos0 + t: transformers'
// x * cos + rotate_half(x) * sin over the first rotary_dim dims, where rotate_half(a|b) = -b|a
// and both halves use angle pos * inv_freq_i for pair i. Dims past rotary_dim are untouched.
inline void rope(std::vector<float>& x, int64_t L, int64_t H, int64_t Dh, int64_t pos0, const RopeSpec& r) {
  if (r.kind == RopeKind::None) return;
  const std::vector<double> inv = rope_inv_freq(r);
  const int64_t half = r.rotary_dim / 2;
  for (int64_t t = 0; t < L; ++t)
    for (int64_t h = 0; h < H; ++h) {
      float* v = &x[size_t((t * H + h) * Dh)];
      const std::vector<double> orig(v, v + r.rotary_dim);
      for (int64_t d = 0; d < r.rotary_dim; ++d) {
        const double angle = double(pos0 + t) * inv[size_t(d % half)];
        const double rotated = d < half ? -orig[size_t(d + half)] : orig[size_t(d - half)];
        v[d] = float(orig[size_t(d)] * std::cos(angle) + rotated * std::sin(angle));
      }
    }
}

// One sequence: q [L][Hq][Dh] of the tokens at positions pos0..pos0+L-1; keys, values
// [pos0+L][Hkv][Dh] its whole cache including these tokens. Query head h reads KV head
// h / (Hq / Hkv) at positions 0..its own: out = softmax(q·k * scale) v.
inline std::vector<float> attention(const std::vector<float>& q, const std::vector<float>& keys,
                                    const std::vector<float>& values, int64_t L, int64_t pos0, int64_t Hq, int64_t Hkv,
                                    int64_t Dh, double scale) {
  std::vector<float> out(size_t(L * Hq * Dh));
  const int64_t group = Hq / Hkv;
  for (int64_t t = 0; t < L; ++t)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t g = h / group, last = pos0 + t;
      const float* qv = &q[size_t((t * Hq + h) * Dh)];
      std::vector<double> score(size_t(last + 1));
      for (int64_t j = 0; j <= last; ++j) {
        double s = 0.0;
        for (int64_t d = 0; d < Dh; ++d) s += double(qv[d]) * keys[size_t((j * Hkv + g) * Dh + d)];
        score[size_t(j)] = s * scale;
      }
      const double mx = *std::max_element(score.begin(), score.end());
      double denom = 0.0;
      for (double& s : score) denom += s = std::exp(s - mx);
      for (int64_t d = 0; d < Dh; ++d) {
        double acc = 0.0;
        for (int64_t j = 0; j <= last; ++j) acc += score[size_t(j)] * values[size_t((j * Hkv + g) * Dh + d)];
        out[size_t((t * Hq + h) * Dh + d)] = float(acc / denom);
      }
    }
  return out;
}

// The experts a token goes to, with their weights: p = softmax(x routerᵀ) over all E experts,
// the top_k largest p (ties to the lower index, as torch.topk), renormalised over those k only
// if `renormalize`.
inline std::vector<std::pair<int64_t, double>> moe_route(const float* x, const std::vector<float>& router, int64_t D,
                                                         int64_t E, int64_t top_k, bool renormalize) {
  std::vector<double> p(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) {
    double acc = 0.0;
    for (int64_t i = 0; i < D; ++i) acc += double(x[i]) * router[size_t(e * D + i)];
    p[size_t(e)] = acc;
  }
  const double mx = *std::max_element(p.begin(), p.end());
  double sum = 0.0;
  for (double& v : p) sum += v = std::exp(v - mx);
  for (double& v : p) v /= sum;
  std::vector<int64_t> order(static_cast<size_t>(E));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[size_t(a)] > p[size_t(b)]; });
  std::vector<std::pair<int64_t, double>> picked;
  double picked_sum = 0.0;
  for (int64_t k = 0; k < top_k; ++k) {
    picked.emplace_back(order[size_t(k)], p[size_t(order[size_t(k)])]);
    picked_sum += picked.back().second;
  }
  if (renormalize)
    for (auto& [e, w] : picked) w /= picked_sum;
  return picked;
}

// x, out [L][D]; router [E][D]; gate_up [E][2F][D] (gate rows, then up rows); down [E][D][F].
// out = Σ over routed e of p_e · down_e(silu(gate_e x) ⊙ up_e x).
inline std::vector<float> moe(const std::vector<float>& x, const std::vector<float>& router,
                              const std::vector<float>& gate_up, const std::vector<float>& down, int64_t L, int64_t D,
                              int64_t E, int64_t F, int64_t top_k, bool renormalize) {
  std::vector<float> out(size_t(L * D));
  std::vector<double> h(static_cast<size_t>(F)), y(static_cast<size_t>(D));
  for (int64_t t = 0; t < L; ++t) {
    const float* xt = &x[size_t(t * D)];
    std::fill(y.begin(), y.end(), 0.0);
    for (const auto& [e, weight] : moe_route(xt, router, D, E, top_k, renormalize)) {
      const float* gu = &gate_up[size_t(e * 2 * F * D)];
      for (int64_t f = 0; f < F; ++f) {
        double gate = 0.0, up = 0.0;
        for (int64_t i = 0; i < D; ++i) {
          gate += double(gu[f * D + i]) * xt[i];
          up += double(gu[(F + f) * D + i]) * xt[i];
        }
        h[size_t(f)] = silu_d(gate) * up;
      }
      const float* dn = &down[size_t(e * D * F)];
      for (int64_t i = 0; i < D; ++i) {
        double acc = 0.0;
        for (int64_t f = 0; f < F; ++f) acc += double(dn[i * F + f]) * h[size_t(f)];
        y[size_t(i)] += weight * acc;
      }
    }
    for (int64_t i = 0; i < D; ++i) out[size_t(t * D + i)] = float(y[size_t(i)]);
  }
  return out;
}

}  // namespace statelm::ref
