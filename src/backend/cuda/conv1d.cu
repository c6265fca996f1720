// Causal depthwise conv1d over token spans on CUDA, each span continuing from its slot's state
// (the same op as src/backend/cpu/cpu_conv1d.cpp):
//
//   out[t, c] = act(bias[c] + Σ_{k<K} w[c, k] · in[t − (K−1) + k, c]),   act = SiLU or identity
//
// with in[j] = x[start + j] for j ≥ 0 and in[j] = state[slot, c, (K−1) + j] for the K−1 inputs
// before the span (oldest first). Afterwards the state holds in[len−(K−1) .. len−1]: the span's
// last K−1 inputs, topped up from the old state when len < K−1.
//
// Parallelisation: one thread per channel, a block of 128 consecutive channels (coalesced rows of
// x and out), and one block row per item of kTokens consecutive tokens of a span, so prefill
// spans spread over many blocks and a decode step (len 1) is one item per span. The thread keeps
// the K-tap window in registers (K is a template parameter) and slides it down its tokens.
//
// State: since kTokens ≥ K−1, only a span's first item reaches back into the old state, so that
// item alone reads it and, after its outputs, writes the new state: one thread reads and then
// writes the state row of its channel, and no other block touches it (no race). The state is
// widened to fp32 once and rounded once per span (bf16 or f16 state), as the CPU does; out must
// not overlap x (items read rows other items write). The runtime keeps conv windows in fp32
// (state_cache.h); the narrow types are there because the op takes what the CPU op takes.
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/span_kernels.cuh"

namespace statelm::cuda {

namespace {

constexpr int kThreads = 128;  // channels per block
constexpr int kTokens = 64;    // tokens per item; must be ≥ K−1 (K ≤ kMaxK)
constexpr int kMaxK = 8;

template <typename T, typename S, int K>
__global__ void __launch_bounds__(kThreads) conv1d_kernel(const T* x, int64_t xs, Param w, int64_t ws,
                                                           Param bias, S* state, int64_t ss0, int64_t ss1,
                                                           T* __restrict__ out, int64_t os, int C, bool silu,
                                                           SpanItems items) {
  static_assert(K >= 2 && K - 1 <= kTokens, "the first item must cover the whole history");
  const ItemRef it = find_item(items, blockIdx.x);  // block-wide: before any early exit
  const int c = blockIdx.y * kThreads + threadIdx.x;
  pdl_allow_dependents();  // the SSD after it may launch and load its state meanwhile
  if (c >= C) return;
  const SeqSpan sp = items.spans[it.span];
  const int t0 = it.piece * kTokens;
  const int t1 = min(sp.len, t0 + kTokens);
  const bool first = t0 == 0;

  float wk[K];
#pragma unroll
  for (int k = 0; k < K; ++k) wk[k] = w[int64_t(c) * ws + k];
  const float b = bias.get(c, 0.0f);

  S* st = state + int64_t(sp.slot) * ss0 + int64_t(c) * ss1;
  float old[K - 1];  // the old state of this channel (first item only)
  if (first) {
#pragma unroll
    for (int i = 0; i < K - 1; ++i) old[i] = to_f32(st[i]);
  }
  // Launched as a programmatic dependent (pdl.cuh): the weights and the old window (last written
  // by the previous step) were read above; x comes from the kernel ahead.
  pdl_wait();
  const T* xc = x + int64_t(sp.start) * xs + c;
  // in(j): input j of the span; j < 0 only in the first item, where old[] holds it. old[] is
  // picked by an unrolled compare, not indexed at run time (which would move it to local memory).
  auto in = [&](int j) -> float {
    if (j >= 0) return to_f32(xc[int64_t(j) * xs]);
    float v = 0.0f;
#pragma unroll
    for (int m = 0; m < K - 1; ++m)
      if (m == (K - 1) + j) v = old[m];
    return v;
  };

  // win[k] = in(t − (K−1) + k) for the token t being computed; win[K−1] is loaded per token.
  // The first item starts from the old state, the others from the K−1 tokens before t0.
  float win[K];
#pragma unroll
  for (int i = 0; i < K - 1; ++i) win[i] = first ? old[i] : to_f32(xc[int64_t(t0 - (K - 1) + i) * xs]);
  T* oc = out + int64_t(sp.start) * os + c;
#pragma unroll 4
  for (int t = t0; t < t1; ++t) {
    win[K - 1] = to_f32(xc[int64_t(t) * xs]);
    float acc = b;
#pragma unroll
    for (int k = 0; k < K; ++k) acc = fmaf(wk[k], win[k], acc);
    oc[int64_t(t) * os] = from_f32<T>(silu ? silu_accurate(acc) : acc);
#pragma unroll
    for (int k = 0; k < K - 1; ++k) win[k] = win[k + 1];
  }

  if (first) {
#pragma unroll
    for (int i = 0; i < K - 1; ++i) st[i] = from_f32<S>(in(sp.len - (K - 1) + i));
  }
}

template <typename T, typename S, int K>
void launch(const Conv1dParams& p, const SpanItems& items, int64_t n_items, cudaStream_t stream) {
  const int C = int(p.weight.shape[0]);
  const dim3 grid(unsigned(n_items), unsigned((C + kThreads - 1) / kThreads));
  STATELM_CUDA_CHECK(launch_pdl_if(pdl_chain(), conv1d_kernel<T, S, K>, grid, dim3(kThreads), stream,
                                   static_cast<const T*>(p.x.data), p.x.stride[0],
                                   param_of(p.weight, "conv1d", "weight"), p.weight.stride[0],
                                   param_of(p.bias, "conv1d", "bias"), static_cast<S*>(p.state.data),
                                   p.state.stride[0], p.state.stride[1], static_cast<T*>(p.out.data), p.out.stride[0],
                                   C, p.silu, items),
                     "conv1d x ", p.x.describe());
}

template <int K, typename T, typename S>
bool launch_k(int k, const Conv1dParams& p, const SpanItems& items, int64_t n_items, cudaStream_t stream) {
  if (k != K) return false;
  launch<T, S, K>(p, items, n_items, stream);
  return true;
}

}  // namespace

void conv1d(const Conv1dParams& p, const BatchView& batch, cudaStream_t stream) {
  const int64_t C = p.weight.shape[0], K = p.weight.shape[1];
  STATELM_CHECK(K >= 2 && K <= kMaxK, "conv1d: CUDA kernel supports 2 <= K <= ", kMaxK, ", got weight ",
                p.weight.describe());
  STATELM_CHECK(p.weight.stride[1] == 1, "conv1d: weight rows must be contiguous, got ", p.weight.describe());
  STATELM_CHECK(p.x.shape[1] == C && p.out.shape[1] == C && p.state.shape[1] == C && p.state.shape[2] == K - 1,
                "conv1d: shapes x ", p.x.describe(), " out ", p.out.describe(), " state ", p.state.describe());
  require_last_contiguous(p.x, "conv1d", "x");
  require_last_contiguous(p.out, "conv1d", "out");
  require_last_contiguous(p.state, "conv1d", "state");
  STATELM_CHECK(p.x.dtype == p.out.dtype, "conv1d: x and out dtypes differ");
  if (batch.spans.empty() || C == 0) return;
  int64_t n_items = 0;
  const SpanItems items = plan_items(batch, kTokens, 1, &n_items);
  if (n_items == 0) return;
  dispatch_float(p.x.dtype, "conv1d", [&](auto t) {
    using T = decltype(t);
    dispatch_state(p.state, "conv1d", [&](auto s) {
      using S = decltype(s);
      const int k = int(K);
      launch_k<2, T, S>(k, p, items, n_items, stream) || launch_k<3, T, S>(k, p, items, n_items, stream) ||
          launch_k<4, T, S>(k, p, items, n_items, stream) || launch_k<5, T, S>(k, p, items, n_items, stream) ||
          launch_k<6, T, S>(k, p, items, n_items, stream) || launch_k<7, T, S>(k, p, items, n_items, stream) ||
          launch_k<8, T, S>(k, p, items, n_items, stream);
    });
  });
  STATELM_CUDA_LAUNCHED("conv1d x ", p.x.describe());
}

}  // namespace statelm::cuda
