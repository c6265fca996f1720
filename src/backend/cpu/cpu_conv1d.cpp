// Causal depthwise conv1d over token spans, each continuing its sequence from the slot's state:
//
//   out[t, c] = act(bias[c] + Σ_{k<K} w[c, k] · in[t − (K−1) + k, c]),   act = SiLU or identity
//
// where, for a span of len tokens, in[j] = x[start + j] for j ≥ 0 and, before the span,
// in[j] = state[slot, c, (K−1) + j] (the state keeps the last K−1 inputs, oldest first). After
// the span the state holds in[len−(K−1) .. len−1]: the span's last K−1 inputs, topped up from
// the old state when the span is shorter than K−1. A fresh sequence arrives with a zero state,
// which is exactly the zero left padding of torch's Conv1d(padding=K−1) followed by [:L].
//
// Work split: (span, block of kBlock channels) items over OpenMP threads. In an item the old
// state is first transposed into a [K−1][kBlock] history so that every tap of every token
// reads one contiguous row piece (x rows or history rows) and the tap loop vectorises over
// channels. Tokens are then visited last to first: out[t] reads inputs ≤ t only, so `out` may
// be `x` itself — row t of x is overwritten only after every output that reads it.
#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_op_checks.h"
#include "backend/cpu/cpu_vec_math.h"

namespace statelm {

namespace {
constexpr int64_t kBlock = 64;  // channels per work item; a multiple of cpu::kLanes
static_assert(kBlock % cpu::kLanes == 0);
}  // namespace

void CpuBackend::conv1d(const Conv1dParams& p, const BatchView& batch) {
  const int64_t T = p.x.shape[0], C = p.weight.shape[0], K = p.weight.shape[1];
  const int64_t hist = K - 1;  // inputs carried between calls
  STATELM_CHECK(p.weight.ndim == 2 && K >= 2, "conv1d: weight must be [C, K] with K >= 2, got ", p.weight.describe());
  cpu::check_tensor(p.weight, {C, K}, "conv1d", "weight");
  STATELM_CHECK(p.weight.stride[0] == K, "conv1d: weight must be contiguous, got ", p.weight.describe());
  cpu::check_tensor(p.x, {T, C}, "conv1d", "x");
  cpu::check_tensor(p.out, {T, C}, "conv1d", "out");
  const int64_t n_slots = p.state.shape[0];
  cpu::check_tensor(p.state, {n_slots, C, hist}, "conv1d", "state");
  const float* bias = cpu::optional_vector(p.bias, C, "conv1d", "bias");
  const bool in_place = p.out.data == p.x.data && p.out.stride[0] == p.x.stride[0];
  STATELM_CHECK(in_place || !cpu::overlaps(p.out, p.x), "conv1d: out ", p.out.describe(),
                " overlaps x ", p.x.describe(), " without being the same view");
  STATELM_CHECK(!cpu::overlaps(p.out, p.state), "conv1d: out overlaps the state");
  cpu::check_spans(batch, T, n_slots, "conv1d");
  if (batch.spans.empty()) return;

  // Taps as rows, wt[k][c] = w[c][k]: a tap then scales a contiguous run of channels.
  static thread_local std::vector<float> wt;
  wt.resize(size_t(K * C));
  const float* w = p.weight.f32();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < K; ++k) wt[size_t(k * C + c)] = w[c * K + k];

  const float* x = p.x.f32();
  float* out = p.out.f32();
  float* state = p.state.f32();
  const int64_t xs = p.x.stride[0], os = p.out.stride[0];
  const int64_t ss0 = p.state.stride[0], ss1 = p.state.stride[1];
  const int64_t n_blocks = (C + kBlock - 1) / kBlock;
  const int64_t n_items = int64_t(batch.spans.size()) * n_blocks;
  const float* wtp = wt.data();
  const bool silu = p.silu;

#pragma omp parallel if (T * C * K > 32768)
  {
    cpu::DenormalsAreZero daz;
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < n_items; ++item) {
      const SeqSpan sp = batch.spans[size_t(item / n_blocks)];
      const int64_t c0 = (item % n_blocks) * kBlock;
      const int64_t width = std::min(kBlock, C - c0);
      static thread_local std::vector<float> history;
      history.resize(size_t(hist * kBlock));
      float* h = history.data();
      float* st = state + sp.slot * ss0 + c0 * ss1;

      // history[i][c] = state[c][i]
      for (int64_t c = 0; c < width; ++c)
        for (int64_t i = 0; i < hist; ++i) h[i * kBlock + c] = st[c * ss1 + i];

      // Input j of the span (j may be negative: then it comes from the history).
      auto input_row = [&](int64_t j) -> const float* {
        return j >= 0 ? x + (sp.start + j) * xs + c0 : h + (hist + j) * kBlock;
      };

      // New state before any output is written (out may alias x).
      for (int64_t i = 0; i < hist; ++i) {
        const float* src = input_row(sp.len - hist + i);
        for (int64_t c = 0; c < width; ++c) st[c * ss1 + i] = src[c];
      }

      alignas(64) float acc[kBlock];
      for (int64_t t = sp.len - 1; t >= 0; --t) {
        for (int64_t c = 0; c < width; ++c) acc[c] = bias ? bias[c0 + c] : 0.0f;
        for (int64_t c = width; c < kBlock; ++c) acc[c] = 0.0f;
        for (int64_t k = 0; k < K; ++k) {
          const float* src = input_row(t - hist + k);
          const float* wk = wtp + k * C + c0;
          for (int64_t c = 0; c < width; ++c) acc[c] += wk[c] * src[c];
        }
        if (silu)
          for (int64_t c = 0; c < kBlock; c += cpu::kLanes) cpu::store(acc + c, cpu::silu(cpu::load(acc + c)));
        float* o = out + (sp.start + t) * os + c0;
        for (int64_t c = 0; c < width; ++c) o[c] = acc[c];
      }
    }
  }
}

}  // namespace statelm
