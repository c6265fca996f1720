// Naive scalar references of the three SSM op families, one sequence at a time, in double
// precision: the ground truth the CPU kernels (and through them every backend) are tested
// against. Each is the per-token recurrence written as literally as the math in ops.h, with no
// chunking, blocking or transposed layouts, and shares no code with src/backend.
//
// Layouts are plain contiguous row-major arrays of one sequence of L tokens; `state` is the
// slot's state row, read on entry and overwritten with the state after the last token.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace statelm::ref {

inline double softplus(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }
inline double silu(double v) { return v / (1.0 + std::exp(-v)); }

// x [L][C], w [C][K], bias [C] (empty: none), state [C][K-1] oldest first, out [L][C].
inline void conv1d(const std::vector<float>& x, int64_t L, int64_t C, const std::vector<float>& w, int64_t K,
                   const std::vector<float>& bias, bool silu_act, std::vector<float>& state, std::vector<float>& out) {
  const int64_t hist = K - 1;
  // The whole input stream of the sequence: the K-1 remembered inputs, then the new ones.
  std::vector<double> stream(size_t((hist + L) * C));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < hist; ++i) stream[size_t(i * C + c)] = state[size_t(c * hist + i)];
  for (int64_t t = 0; t < L; ++t)
    for (int64_t c = 0; c < C; ++c) stream[size_t((hist + t) * C + c)] = x[size_t(t * C + c)];
  out.assign(size_t(L * C), 0.0f);
  for (int64_t t = 0; t < L; ++t)
    for (int64_t c = 0; c < C; ++c) {
      double acc = bias.empty() ? 0.0 : bias[size_t(c)];
      for (int64_t k = 0; k < K; ++k) acc += double(w[size_t(c * K + k)]) * stream[size_t((t + k) * C + c)];
      out[size_t(t * C + c)] = float(silu_act ? silu(acc) : acc);
    }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < hist; ++i) state[size_t(c * hist + i)] = float(stream[size_t((L + i) * C + c)]);
}

// Mamba-1. u, delta, z, out [L][Di]; A [Di][N]; B, C [L][N]; delta_bias, D [Di]; z empty = no
// gate; state [Di][N].
inline void selective_scan(const std::vector<float>& u, const std::vector<float>& delta,
                           const std::vector<float>& delta_bias, const std::vector<float>& A,
                           const std::vector<float>& B, const std::vector<float>& C, const std::vector<float>& D,
                           const std::vector<float>& z, int64_t L, int64_t Di, int64_t N, std::vector<float>& state,
                           std::vector<float>& out) {
  std::vector<double> h(state.begin(), state.end());
  out.assign(size_t(L * Di), 0.0f);
  for (int64_t t = 0; t < L; ++t)
    for (int64_t d = 0; d < Di; ++d) {
      const double ut = u[size_t(t * Di + d)];
      const double dt = softplus(double(delta[size_t(t * Di + d)]) + delta_bias[size_t(d)]);
      double y = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        double& hn = h[size_t(d * N + n)];
        hn = std::exp(dt * A[size_t(d * N + n)]) * hn + dt * B[size_t(t * N + n)] * ut;
        y += C[size_t(t * N + n)] * hn;
      }
      y += D[size_t(d)] * ut;
      if (!z.empty()) y *= silu(z[size_t(t * Di + d)]);
      out[size_t(t * Di + d)] = float(y);
    }
  for (size_t i = 0; i < h.size(); ++i) state[i] = float(h[i]);
}

// Mamba-2. x, out [L][H][P]; dt [L][H] raw; dt_bias, A, D [H]; B, C [L][G][N]; state [H][P][N].
struct SsdShape {
  int64_t L, H, P, G, N;
  bool dt_limited = false;
  float dt_min = 0.0f, dt_max = 0.0f;
};

inline void ssd(const SsdShape& s, const std::vector<float>& x, const std::vector<float>& dt_raw,
                const std::vector<float>& dt_bias, const std::vector<float>& A, const std::vector<float>& B,
                const std::vector<float>& C, const std::vector<float>& D, std::vector<float>& state,
                std::vector<float>& out) {
  std::vector<double> S(state.begin(), state.end());
  out.assign(size_t(s.L * s.H * s.P), 0.0f);
  const int64_t heads_per_group = s.H / s.G;
  for (int64_t t = 0; t < s.L; ++t)
    for (int64_t h = 0; h < s.H; ++h) {
      const int64_t g = h / heads_per_group;
      double dt = softplus(double(dt_raw[size_t(t * s.H + h)]) + dt_bias[size_t(h)]);
      if (s.dt_limited) dt = std::clamp(dt, double(s.dt_min), double(s.dt_max));
      const double dA = std::exp(dt * A[size_t(h)]);
      const float* b = &B[size_t((t * s.G + g) * s.N)];
      const float* c = &C[size_t((t * s.G + g) * s.N)];
      for (int64_t p = 0; p < s.P; ++p) {
        const double xp = x[size_t((t * s.H + h) * s.P + p)];
        double y = 0.0;
        for (int64_t n = 0; n < s.N; ++n) {
          double& Sn = S[size_t((h * s.P + p) * s.N + n)];
          Sn = dA * Sn + dt * xp * b[n];
          y += c[n] * Sn;
        }
        out[size_t((t * s.H + h) * s.P + p)] = float(y + D[size_t(h)] * xp);
      }
    }
  for (size_t i = 0; i < S.size(); ++i) state[i] = float(S[i]);
}

}  // namespace statelm::ref
