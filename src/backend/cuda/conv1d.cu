// Causal depthwise conv1d over token spans on CUDA, each span continuing from its slot's state
// (the same op as src/backend/cpu/cpu_conv1d.cpp):
//
//   out[t, c] = act(bias[c] + Σ_{k<K} w[c, k] · in[t − (K−1) + k, c]),   act = SiLU or identity
//
// with in[j] = x[start + j] for j ≥ 0 and in[j] = state[slot, c, (K−1) + j] for the K−1 inputs
// before the span (oldest first). Afterwards the state holds in[len−(K−1) .. len−1]: the span's
// last K−1 inputs, topped up from the old state when len < K−1.
//
// Parallelisation: one block row per item of kTokens consecutive tokens of a span, so prefill
// spans spread over many blocks and a decode step (len 1) is one item per span. Within an item a
// thread slides the K-tap window (registers; K is a template parameter) down its tokens, for
//  - 16 bytes of consecutive channels (8 bf16 or 4 fp32: conv1d_vec_kernel) when the rows of x and
//    out allow 16-byte accesses and some span has more than one token: a warp moves 512 bytes of
//    a row per access, and each thread loads the next kGroup tokens' rows while it computes the
//    current ones, so a thread has several loads in flight instead of one dependent chain;
//  - one channel (conv1d_kernel) otherwise: odd channel counts or offsets, and decode steps, whose
//    state reads and writes (K−1 per channel) are coalesced across the threads of a warp that way.
// Either way a block covers consecutive channels, and every output is
// acc = bias; acc = fmaf(w[k], in[t−(K−1)+k], acc) for k = 0..K−1, as on the CPU.
//
// State: since kTokens ≥ K−1, only a span's first item reaches back into the old state, so that
// item alone reads it and, after its outputs, writes the new state (conv1d_vec_kernel writes the
// entries that come from the old state before its outputs): one thread reads and then writes the
// state rows of its channels, and no other block touches them (no race). The state is
// widened to fp32 once and rounded once per span (bf16 or f16 state), as the CPU does; out must
// not overlap x (items read rows other items write). The runtime keeps conv windows in fp32
// (state_cache.h); the narrow types are there because the op takes what the CPU op takes.
#include <type_traits>

#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/span_kernels.cuh"

namespace statelm::cuda {

namespace {

constexpr int kThreads = 128;  // threads per block (of either kernel)
constexpr int kTokens = 64;    // tokens per item; must be ≥ K−1 (K ≤ kMaxK)
constexpr int kMaxK = 8;
// conv1d_vec_kernel: tokens whose rows are loaded together. Measured on the H200 (16K-token
// prefill, C = 5376, bf16): 2 → 140 µs, 4 → 124 µs, 8 → 117 µs (at 3 blocks per SM: 168 registers).
constexpr int kGroup = 8;

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
    oc[int64_t(t) * os] = from_f32<T>(silu ? silu_conv(acc) : acc);
#pragma unroll
    for (int k = 0; k < K - 1; ++k) win[k] = win[k + 1];
  }

  if (first) {
#pragma unroll
    for (int i = 0; i < K - 1; ++i) st[i] = from_f32<S>(in(sp.len - (K - 1) + i));
  }
}

// conv1d_kernel with V = 16 / sizeof(T) consecutive channels per thread (C % V == 0; x, out and
// their row strides 16-byte aligned). Rows are moved as uint4 (one 16-byte access) and kept
// packed until used, so the loads of the next kGroup tokens stay in flight while the current
// kGroup are computed and stored. The state is touched per channel as in conv1d_kernel.
template <typename T, typename S, int K>
__global__ void __launch_bounds__(kThreads, 3)
    conv1d_vec_kernel(const T* x, int64_t xs, Param w, int64_t ws, Param bias, S* state, int64_t ss0, int64_t ss1,
                      T* __restrict__ out, int64_t os, int C, bool silu, SpanItems items) {
  static_assert(K >= 2 && K - 1 <= kTokens, "the first item must cover the whole history");
  constexpr int V = kVec16<T>, H = K - 1;
  using Row = uint4;  // V channels of one token, packed
  const ItemRef it = find_item(items, blockIdx.x);  // block-wide: before any early exit
  const int c0 = (blockIdx.y * kThreads + threadIdx.x) * V;
  pdl_allow_dependents();
  if (c0 >= C) return;
  const SeqSpan sp = items.spans[it.span];
  const int t0 = it.piece * kTokens;
  const int t1 = min(sp.len, t0 + kTokens);
  const bool first = t0 == 0;

  float wk[K][V], b[V];
#pragma unroll
  for (int v = 0; v < V; ++v) {
#pragma unroll
    for (int k = 0; k < K; ++k) wk[k][v] = w[int64_t(c0 + v) * ws + k];
    b[v] = bias.get(c0 + v, 0.0f);
  }
  S* st = state + int64_t(sp.slot) * ss0 + int64_t(c0) * ss1;
  float old[H][V];  // the old state of these channels (first item only)
  if (first) {
#pragma unroll
    for (int i = 0; i < H; ++i)
#pragma unroll
      for (int v = 0; v < V; ++v) old[i][v] = to_f32(st[v * ss1 + i]);
  }
  pdl_wait();  // x comes from the kernel ahead (see conv1d_kernel)
  if (first) {
    // The new state's entries that come from the old one (spans shorter than H): in(len − H + i)
    // = old[i + len]. Stored now, so that old[] need not live through the loop; the shifts are
    // unrolled and predicated rather than indexed at run time (which would move old[] to local
    // memory).
    float sh[H][V];
#pragma unroll
    for (int i = 0; i < H; ++i)
#pragma unroll
      for (int v = 0; v < V; ++v) sh[i][v] = old[i][v];
#pragma unroll
    for (int n = 0; n < H - 1; ++n) {
      if (n >= sp.len) break;
#pragma unroll
      for (int i = 0; i < H - 1; ++i)
#pragma unroll
        for (int v = 0; v < V; ++v) sh[i][v] = sh[i + 1][v];
    }
#pragma unroll
    for (int i = 0; i < H; ++i)
      if (sp.len - H + i < 0)
#pragma unroll
        for (int v = 0; v < V; ++v) st[v * ss1 + i] = from_f32<S>(sh[i][v]);
  }
  const T* xc = x + int64_t(sp.start) * xs + c0;
  T* oc = out + int64_t(sp.start) * os + c0;
  auto row = [&](int j) { return *reinterpret_cast<const Row*>(xc + int64_t(j) * xs); };
  const Row zero = make_uint4(0, 0, 0, 0);
  // Rows t .. t + kGroup − 1 that lie in the item; the others are not read.
  auto load_group = [&](Row (&g)[kGroup], int t) {
#pragma unroll
    for (int r = 0; r < kGroup; ++r) g[r] = t + r < t1 ? row(t + r) : zero;
  };

  // win[i] = in(t − H + i) for the token t being computed: the old state in the first item, else
  // the H rows before t0 (loaded with the first group, converted after it is in flight).
  float win[H][V];
  Row hist[H];
  if (!first) {
#pragma unroll
    for (int i = 0; i < H; ++i) hist[i] = row(t0 - H + i);
  }
  Row cur[kGroup];
  load_group(cur, t0);
#pragma unroll
  for (int i = 0; i < H; ++i) {
    if (first) {
#pragma unroll
      for (int v = 0; v < V; ++v) win[i][v] = old[i][v];
    } else {
      unpack16<T>(hist[i], win[i]);
    }
  }

  for (int t = t0; t < t1; t += kGroup) {
    Row next[kGroup];
    load_group(next, t + kGroup);  // in flight while this group is computed
#pragma unroll
    for (int r = 0; r < kGroup; ++r) {
      float in[V], o[V];
      unpack16<T>(cur[r], in);
#pragma unroll
      for (int v = 0; v < V; ++v) {
        float acc = b[v];
#pragma unroll
        for (int k = 0; k < H; ++k) acc = fmaf(wk[k][v], win[k][v], acc);
        acc = fmaf(wk[H][v], in[v], acc);
        o[v] = silu ? silu_conv(acc) : acc;
      }
      if (t + r < t1) store_f32(oc + int64_t(t + r) * os, o);
#pragma unroll
      for (int v = 0; v < V; ++v) {
#pragma unroll
        for (int k = 0; k < H - 1; ++k) win[k][v] = win[k + 1][v];
        win[H - 1][v] = in[v];
      }
    }
#pragma unroll
    for (int r = 0; r < kGroup; ++r) cur[r] = next[r];
  }

  if (first) {
    // The entries that come from x: all loaded before the first store (st may alias x for all
    // the compiler knows).
    Row last[H];
#pragma unroll
    for (int i = 0; i < H; ++i) {
      const int j = sp.len - H + i;
      last[i] = j >= 0 ? row(j) : zero;
    }
#pragma unroll
    for (int i = 0; i < H; ++i)
      if (sp.len - H + i >= 0) {
        float f[V];
        unpack16<T>(last[i], f);
#pragma unroll
        for (int v = 0; v < V; ++v) st[v * ss1 + i] = from_f32<S>(f[v]);
      }
  }
}

template <typename T, typename S, int K>
void launch(const Conv1dParams& p, const SpanItems& items, int64_t n_items, bool vec, cudaStream_t stream) {
  const int C = int(p.weight.shape[0]);
  const int per_block = vec ? kThreads * kVec16<T> : kThreads;  // channels
  const dim3 grid(unsigned(n_items), unsigned((C + per_block - 1) / per_block));
  STATELM_CUDA_CHECK(launch_pdl_if(pdl_chain(), vec ? conv1d_vec_kernel<T, S, K> : conv1d_kernel<T, S, K>, grid,
                                   dim3(kThreads), stream, static_cast<const T*>(p.x.data), p.x.stride[0],
                                   param_of(p.weight, "conv1d", "weight"), p.weight.stride[0],
                                   param_of(p.bias, "conv1d", "bias"), static_cast<S*>(p.state.data),
                                   p.state.stride[0], p.state.stride[1], static_cast<T*>(p.out.data), p.out.stride[0],
                                   C, p.silu, items),
                     "conv1d x ", p.x.describe());
}

template <int K, typename T, typename S>
bool launch_k(int k, const Conv1dParams& p, const SpanItems& items, int64_t n_items, bool vec,
              cudaStream_t stream) {
  if (k != K) return false;
  launch<T, S, K>(p, items, n_items, vec, stream);
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
  bool multi_token = false;  // a decode step (every span one token) keeps the per-channel kernel
  for (const SeqSpan& s : batch.spans) multi_token = multi_token || s.len > 1;
  dispatch_float(p.x.dtype, "conv1d", [&](auto t) {
    using T = decltype(t);
    constexpr int V = kVec16<T>;
    const bool vec = multi_token && C % V == 0 && aligned_for(p.x.data, p.x.stride[0], sizeof(T), 16) &&
                     aligned_for(p.out.data, p.out.stride[0], sizeof(T), 16);
    dispatch_state(p.state, "conv1d", [&](auto s) {
      using S = decltype(s);
      const int k = int(K);
      launch_k<2, T, S>(k, p, items, n_items, vec, stream) || launch_k<3, T, S>(k, p, items, n_items, vec, stream) ||
          launch_k<4, T, S>(k, p, items, n_items, vec, stream) || launch_k<5, T, S>(k, p, items, n_items, vec, stream) ||
          launch_k<6, T, S>(k, p, items, n_items, vec, stream) || launch_k<7, T, S>(k, p, items, n_items, vec, stream) ||
          launch_k<8, T, S>(k, p, items, n_items, vec, stream);
    });
  });
  STATELM_CUDA_LAUNCHED("conv1d x ", p.x.describe());
}

}  // namespace statelm::cuda
