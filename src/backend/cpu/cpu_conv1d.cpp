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
// Outputs depend on inputs only, so tokens are independent: work items are (span, block of
// kTokens tokens), each sweeping whole rows of x and out front to back, which keeps the
// accesses sequential (x rows are often thousands of floats apart: a column slice of in_proj's
// output; walking one channel block down all tokens would touch a new page per row). Taps are
// stored transposed, wt[k][c], so every tap is a contiguous vector across channels. The first
// item of a span copies the old state into a [K−1][C] history (the rows before the span) and,
// after its outputs, writes the new state: it is the only item that touches the span's slot.
// out must not overlap x (items read rows that other items write).
//
// The state may be fp32 or bf16 (cpu_state_dtype.h): it is widened into the history and the
// new state is rounded as it is written, once per span; everything in between is fp32.
#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/cpu_op_checks.h"
#include "backend/cpu/cpu_state_dtype.h"
#include "backend/cpu/cpu_vec_math.h"

namespace statelm {

namespace {
constexpr int64_t kTokens = 32;  // tokens per work item (at least K−1, see below)

// One output row: out[c] = act(bias[c] + Σ_k wt[k][c] · src[k][c]) over C channels.
void conv_row(const float* const* src, const float* wt, const float* bias, int64_t K, int64_t C, bool silu,
              float* out) {
  int64_t c = 0;
  for (; c + cpu::kLanes <= C; c += cpu::kLanes) {
    cpu::VecF acc = bias ? cpu::load(bias + c) : cpu::VecF{};
    for (int64_t k = 0; k < K; ++k) acc += cpu::load(wt + k * C + c) * cpu::load(src[k] + c);
    cpu::store(out + c, silu ? cpu::silu(acc) : acc);
  }
  for (; c < C; ++c) {
    float acc = bias ? bias[c] : 0.0f;
    for (int64_t k = 0; k < K; ++k) acc += wt[k * C + c] * src[k][c];
    out[c] = silu ? cpu::silu(acc) : acc;
  }
}
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
  cpu::check_state(p.state, {n_slots, C, hist}, "conv1d");
  const float* bias = cpu::optional_vector(p.bias, C, "conv1d", "bias");
  STATELM_CHECK(!cpu::overlaps(p.out, p.x), "conv1d: out ", p.out.describe(), " overlaps x ", p.x.describe());
  STATELM_CHECK(!cpu::overlaps(p.out, p.state), "conv1d: out overlaps the state");
  cpu::check_spans(batch, T, n_slots, "conv1d");
  if (batch.spans.empty()) return;

  // Taps as rows, wt[k][c] = w[c][k]: a tap then scales a contiguous run of channels.
  static thread_local std::vector<float> wt;
  wt.resize(size_t(K * C));
  const float* w = p.weight.f32();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < K; ++k) wt[size_t(k * C + c)] = w[c * K + k];

  // Work items: the token blocks of every span, in span order. A block of at least K−1 tokens
  // means that only a span's first block reaches back into the state.
  const int64_t block = std::max(kTokens, hist);
  static thread_local std::vector<int64_t> first_item;  // first_item[s]: span s's first item
  const int64_t n_spans = int64_t(batch.spans.size());
  first_item.resize(size_t(n_spans + 1));
  first_item[0] = 0;
  for (int64_t s = 0; s < n_spans; ++s)
    first_item[size_t(s + 1)] = first_item[size_t(s)] + (batch.spans[size_t(s)].len + block - 1) / block;
  const int64_t n_items = first_item[size_t(n_spans)];

  const float* x = p.x.f32();
  float* out = p.out.f32();
  const int64_t xs = p.x.stride[0], os = p.out.stride[0];
  const int64_t ss0 = p.state.stride[0], ss1 = p.state.stride[1];
  const int64_t* firsts = first_item.data();
  const float* wtp = wt.data();
  const bool silu = p.silu;

  cpu::with_state_type(p.state, "conv1d", [&](auto state_type) {
    using S = typename decltype(state_type)::type;
    S* state = static_cast<S*>(p.state.data);
    // Copies the inner lambda can capture: clang 14 rejects a lambda inside an OpenMP region
    // inside this generic lambda that names the enclosing function's locals.
    const float* x_in = x;
    const int64_t x_stride = xs;
#pragma omp parallel if (T * C * K > 32768)
    {
      cpu::DenormalsAreZero daz;
      std::vector<const float*> src(static_cast<size_t>(K));
      static thread_local std::vector<float> history;
#pragma omp for schedule(dynamic)
      for (int64_t item = 0; item < n_items; ++item) {
        const int64_t s = std::upper_bound(firsts, firsts + n_spans + 1, item) - firsts - 1;
        const SeqSpan sp = batch.spans[size_t(s)];
        const int64_t t0 = (item - firsts[s]) * block, t1 = std::min<int64_t>(sp.len, t0 + block);
        const bool first = t0 == 0;
        S* st = state + sp.slot * ss0;
        if (first) {  // history[i][c] = state[c][i]
          history.resize(size_t(hist * C));
          for (int64_t c = 0; c < C; ++c)
            for (int64_t i = 0; i < hist; ++i) history[size_t(i * C + c)] = cpu::widen(st[c * ss1 + i]);
        }
        // Input j of the span (j < 0: the rows before it, from the history).
        auto input_row = [&](int64_t j) -> const float* {
          return j >= 0 ? x_in + (sp.start + j) * x_stride : history.data() + (hist + j) * C;
        };
        for (int64_t t = t0; t < t1; ++t) {
          for (int64_t k = 0; k < K; ++k) src[size_t(k)] = input_row(t - hist + k);
          conv_row(src.data(), wtp, bias, K, C, silu, out + (sp.start + t) * os);
        }
        if (first) {
          for (int64_t i = 0; i < hist; ++i) {
            const float* row = input_row(sp.len - hist + i);
            for (int64_t c = 0; c < C; ++c) st[c * ss1 + i] = cpu::narrow<S>(row[c]);
          }
        }
      }
    }
  });
}

}  // namespace statelm
