// Mamba-1 selective scan over token spans on CUDA, each span continuing from its slot's state
// (the op of src/backend/cpu/cpu_selective_scan.cpp). Per channel d, state n, token t:
//
//   dt      = softplus(delta[t, d] + delta_bias[d])
//   h[d, n] ← exp(dt · A[d, n]) · h[d, n] + dt · B[t, n] · u[t, d]
//   y[t, d] = (Σ_n C[t, n] · h[d, n] + D[d] · u[t, d]) · silu(z[t, d])      (gate if z given)
//
// Parallelisation. A thread owns one channel's states, or with d_state > 16 a group of K
// lanes owns it, lane g the 16 states n = 16 g … 16 g + 15 (K = ceil(N / 16) rounded up to 1,
// 2, 4 or 8, so 1 for every Mamba-1 model released). The recurrence of a (d, n) is a serial
// chain, but a lane runs 16 independent ones: per state element one exp2 (MUFU) and four
// FMA-pipe operations, with the per-token work (softplus, gate, loads, addressing) shared by the
// channel's 16 states. B and C rows are shared by every channel: a block stages a tile of them
// in shared memory as fp32 (widened once per block, not per lane), and lanes read them as
// float4 broadcasts. u, delta and z go straight from global memory; a warp's 32 channels make
// each a 64-byte access.
// (The earlier kernel, a lane per state with shuffles to share a token's dt, ran ~4× slower:
// 1.50 ms against 0.38 ms for the mamba-2.8b layer at 4K tokens, H200.)
//
// Long spans and few channels: a span gives only Di · K threads, each walking the whole span in
// sequence, too few to fill the GPU for one long prompt. The launcher then cuts spans into pieces
// of `per_item` tokens (a chunked scan, since h is linear in the incoming state):
//   1. states pass:  every piece but a span's last scans from h = 0, keeping its end state
//                    h_end and Σ dt per channel (the piece's decay is exp(A · Σ dt));
//   2. carry pass:   per span and (d, n), sequentially over pieces,
//                    h_in[k + 1] = exp(A[d, n] · Σdt[k]) · h_in[k] + h_end[k],  h_in[0] = slot;
//   3. output pass:  every piece scans again from its h_in, writing y; the last piece stores h.
// That doubles the exp2 work of all but the last pieces, paid only when parallelism is short.
// Otherwise one pass reads the slot, scans and writes the slot.
//
// Decode steps (every span one token) take scan_decode_kernel instead: a lane per 4 states, so a
// batch of one still spreads the state reads over many threads.
//
// State: fp32, bf16 or f16, widened when a span starts and rounded once when it ends (the CPU's
// rule), fp32 in the scratch between passes. out may alias u, delta or z (each lane reads its
// token's values before it writes that token's output), as on the CPU.
#include <algorithm>

#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/span_kernels.cuh"

namespace statelm::cuda {

namespace {

constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

template <typename T, typename S>
struct ScanArgs {
  const T *u, *delta, *z, *B, *C;
  T* out;
  Param delta_bias, A, D;
  S* state;
  float* hbuf;   // [n_items, Di, N]: h_end of a piece after pass 1, its h_in after pass 2
  float* dtsum;  // [n_items, Di]
  int64_t us, ds, zs, Bs, Cs, os, As, ss0, ss1;
  int Di, N;
};

// 2^x on the MUFU pipe alone: x = dt · A · log2 e is ≤ 0 here, and results below 2^-126
// (flushed to 0) are decays no state survives. exp2f would add range fix-ups around the same
// instruction, on the pipe this kernel is bound by.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

constexpr int kLaneStates = 16;  // states a lane owns
// Tokens whose u, delta and z a lane holds at once (and the next group's in flight): 8 spilled
// at the 128 registers that 4 blocks an SM allow.
constexpr int kTokenGroup = 4;
// Tokens of B and C staged in shared memory at once: 32, fewer for wide states so that a
// thread's share of the next tile (prefetched into registers) stays at most 4 values of each.
template <int K>
constexpr int tile_tokens() {
  return K >= 4 ? kTokenGroup : 32 / K;
}
// Floats per (token, lane) row in shared memory: the 4 of padding put the K lanes of a channel,
// which read different rows, on different banks.
constexpr int kRowFloats = kLaneStates + 4;

// kOut = false: pass 1 (end state of a piece from h = 0); kOut = true: the output pass.
//
// Loads run one step ahead of their use, since a load waited on at once was the kernel's main
// stall (ncu: long-scoreboard stalls on the widening of u and delta): the next tile of B and C
// is in flight in registers while this tile is scanned, and the next group's u, delta and z
// while this group's tokens are. Reads past the piece's end are clamped to its last token, so
// every load is unconditional and the compiler can issue a group's loads together.
template <typename T, typename S, int K, bool kOut>
__global__ void __launch_bounds__(kThreads, 4) scan_kernel(ScanArgs<T, S> a, SpanItems items) {
  constexpr int TT = tile_tokens<K>();
  constexpr int kTileValues = TT * K * kLaneStates / kThreads;  // B (and C) values a thread stages
  __shared__ __align__(16) float sB[TT * K * kRowFloats];
  __shared__ __align__(16) float sC[kOut ? TT * K * kRowFloats : 4];
  const ItemRef it = find_item(items, blockIdx.x);
  const int item = blockIdx.x;
  const SeqSpan sp = items.spans[it.span];
  const int n_pieces = (sp.len + items.per_item - 1) / items.per_item;
  const bool last = it.piece == n_pieces - 1;
  if (!kOut && last) return;  // the last piece's end state is the output pass's business

  const int g = threadIdx.x % K;
  const int d = blockIdx.y * (kThreads / K) + threadIdx.x / K;
  const bool valid = d < a.Di;  // lanes past Di still run (and join shuffles) on a clamped channel
  const int dc = valid ? d : a.Di - 1;
  const int t0 = it.piece * items.per_item;
  const int t1 = min(sp.len, t0 + items.per_item);
  const int n0 = g * kLaneStates;
  const int64_t last_row = int64_t(sp.start) + t1 - 1;
  auto row_of = [&](int t) { return min(int64_t(sp.start) + t, last_row); };

  float a2[kLaneStates], h[kLaneStates];
#pragma unroll
  for (int s = 0; s < kLaneStates; ++s) {
    const int n = n0 + s;
    const bool nv = n < a.N;
    a2[s] = nv ? a.A[int64_t(dc) * a.As + n] * kLog2e : 0.0f;  // padded states: decay 1, input 0
    h[s] = 0.0f;
    if (kOut && nv) {
      h[s] = n_pieces > 1 ? a.hbuf[(int64_t(item) * a.Di + dc) * a.N + n]
                          : to_f32(a.state[int64_t(sp.slot) * a.ss0 + int64_t(dc) * a.ss1 + n]);
    }
  }
  const float bias = a.delta_bias.get(dc, 0.0f);
  const float dskip = a.D.get(dc, 0.0f);
  float dt_total = 0.0f;

  // This thread's share of a tile of B and C: value i is element e = threadIdx.x + i · kThreads
  // of the tile's [TT][K · 16] block (states past N read as 0).
  float nb[kTileValues], nc[kTileValues];
  auto fetch_tile = [&](int tile) {
#pragma unroll
    for (int i = 0; i < kTileValues; ++i) {
      const int e = threadIdx.x + i * kThreads;
      const int tt = e / (K * kLaneStates), n = e % (K * kLaneStates);
      const int64_t row = row_of(tile + tt);
      nb[i] = n < a.N ? to_f32(a.B[row * a.Bs + n]) : 0.0f;
      nc[i] = kOut && n < a.N ? to_f32(a.C[row * a.Cs + n]) : 0.0f;
    }
  };
  T nu[kTokenGroup], nd[kTokenGroup], nz[kTokenGroup];
  auto fetch_group = [&](int t) {
#pragma unroll
    for (int k = 0; k < kTokenGroup; ++k) {
      const int64_t row = row_of(t + k);
      nu[k] = a.u[row * a.us + dc];
      nd[k] = a.delta[row * a.ds + dc];
      if (kOut && a.z) nz[k] = a.z[row * a.zs + dc];
    }
  };
  fetch_tile(t0);
  fetch_group(t0);

  for (int tile = t0; tile < t1; tile += TT) {
    const int tile_len = min(TT, t1 - tile);  // the same in every lane of the block
    __syncthreads();  // every lane is done with the previous tile
#pragma unroll
    for (int i = 0; i < kTileValues; ++i) {
      const int e = threadIdx.x + i * kThreads;
      const int tt = e / (K * kLaneStates), n = e % (K * kLaneStates);
      const int si = (tt * K + n / kLaneStates) * kRowFloats + n % kLaneStates;
      sB[si] = nb[i];
      if (kOut) sC[si] = nc[i];
    }
    __syncthreads();
    fetch_tile(tile + TT);  // clamped past the end: a few wasted loads on the last tile

    for (int tg = 0; tg < tile_len; tg += kTokenGroup) {
      float dt[kTokenGroup], du[kTokenGroup], uv[kTokenGroup], zv[kTokenGroup];
#pragma unroll
      for (int k = 0; k < kTokenGroup; ++k) {
        const bool in = tg + k < tile_len;
        uv[k] = to_f32(nu[k]);
        dt[k] = in ? softplus(to_f32(nd[k]) + bias) : 0.0f;
        du[k] = dt[k] * uv[k];
        zv[k] = kOut && a.z ? to_f32(nz[k]) : 0.0f;
        if (!kOut) dt_total += dt[k];
      }
      fetch_group(tile + tg + kTokenGroup);
#pragma unroll
      for (int k = 0; k < kTokenGroup; ++k) {
        if (tg + k >= tile_len) break;  // uniform: every lane sees the same tile_len
        const float* rb = sB + ((tg + k) * K + g) * kRowFloats;
        const float* rc = sC + ((tg + k) * K + g) * kRowFloats;
        float y = 0.0f;
#pragma unroll
        for (int q = 0; q < kLaneStates; q += 4) {
          const float4 b4 = *reinterpret_cast<const float4*>(rb + q);
          const float b[4] = {b4.x, b4.y, b4.z, b4.w};
          float c[4] = {};
          if (kOut) {
            const float4 c4 = *reinterpret_cast<const float4*>(rc + q);
            c[0] = c4.x, c[1] = c4.y, c[2] = c4.z, c[3] = c4.w;
          }
#pragma unroll
          for (int v = 0; v < 4; ++v) {
            h[q + v] = fmaf(exp2_approx(dt[k] * a2[q + v]), h[q + v], du[k] * b[v]);
            if (kOut) y = fmaf(c[v], h[q + v], y);
          }
        }
        if (kOut) {
#pragma unroll
          for (int o = K / 2; o >= 1; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o, K);
          if (g == 0 && valid) {
            const int64_t row = int64_t(sp.start) + tile + tg + k;
            y = fmaf(dskip, uv[k], y);
            if (a.z) y *= silu_accurate(zv[k]);
            a.out[row * a.os + d] = from_f32<T>(y);
          }
        }
      }
    }
  }

  if (!kOut) {
#pragma unroll
    for (int s = 0; s < kLaneStates; ++s) {
      const int n = n0 + s;
      if (valid && n < a.N) a.hbuf[(int64_t(item) * a.Di + d) * a.N + n] = h[s];
    }
    if (valid && g == 0) a.dtsum[int64_t(item) * a.Di + d] = dt_total;  // every lane has the sum
  } else if (last) {
#pragma unroll
    for (int s = 0; s < kLaneStates; ++s) {
      const int n = n0 + s;
      if (valid && n < a.N) a.state[int64_t(sp.slot) * a.ss0 + int64_t(d) * a.ss1 + n] = from_f32<S>(h[s]);
    }
  }
}

// Decode steps (every span one token): the scan kernel above, with a lane per 16 states, would
// give a batch of one only Di threads to read the state with. Here a thread owns 4 consecutive
// states of a channel, moved as one vector; the L = N / 4 lanes of a channel sum C·h with
// log2 L shuffles, and lane 0 gates and stores y.
// Grid: channels / (kThreads / L) × spans. out may alias u, delta or z: lane 0 stores after the
// shuffles, which every lane of its channel reaches after reading them.
template <typename T, typename S, int L>
__global__ void __launch_bounds__(kThreads) scan_decode_kernel(ScanArgs<T, S> a, const SeqSpan* spans) {
  const int g = threadIdx.x % L;
  const int d = blockIdx.x * (kThreads / L) + threadIdx.x / L;
  const bool valid = d < a.Di;  // lanes past Di still join the shuffles, on a clamped channel
  const int dc = valid ? d : a.Di - 1;
  const SeqSpan sp = spans[blockIdx.y];
  const int64_t row = sp.start, n0 = 4 * g;
  S* st = a.state + int64_t(sp.slot) * a.ss0 + int64_t(dc) * a.ss1 + n0;
  float h[4];
  load_f32<S, 4>(st, h);
  const float u = to_f32(a.u[row * a.us + dc]);
  const float dt = softplus(to_f32(a.delta[row * a.ds + dc]) + a.delta_bias.get(dc, 0.0f));
  const float z = a.z ? to_f32(a.z[row * a.zs + dc]) : 0.0f;
  const float du = dt * u;
  float y = 0.0f;
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    const float a2 = a.A[int64_t(dc) * a.As + n0 + v] * kLog2e;
    h[v] = fmaf(exp2f(dt * a2), h[v], du * to_f32(a.B[row * a.Bs + n0 + v]));
    y = fmaf(to_f32(a.C[row * a.Cs + n0 + v]), h[v], y);
  }
#pragma unroll
  for (int o = L / 2; o >= 1; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o, L);
  if (!valid) return;
  store_f32<S, 4>(st, h);
  if (g == 0) {
    y = fmaf(a.D.get(dc, 0.0f), u, y);
    if (a.z) y *= silu_accurate(z);
    a.out[row * a.os + d] = from_f32<T>(y);
  }
}

// Whether scan_decode_kernel takes this step: one token per span, N = 4 L with L a power of two
// up to a warp, and every channel's states on a 4-element (vector) boundary.
template <typename S>
bool decode_fits(const BatchView& batch, int N, const Tensor& state) {
  const int L = N / 4;
  return longest_span(batch) == 1 && N % 4 == 0 && L >= 1 && L <= 32 && (L & (L - 1)) == 0 &&
         state.stride[0] % 4 == 0 && state.stride[1] % 4 == 0 &&
         reinterpret_cast<uintptr_t>(state.data) % (4 * sizeof(S)) == 0;
}

template <typename T, typename S, int L>
void launch_decode(const ScanArgs<T, S>& a, const BatchView& batch, cudaStream_t stream) {
  const dim3 grid(unsigned((a.Di + kThreads / L - 1) / (kThreads / L)), unsigned(batch.spans.size()));
  scan_decode_kernel<T, S, L><<<grid, kThreads, 0, stream>>>(a, batch.device_spans);
}

// Pass 2: from the first piece of each multi-piece span, walk its pieces carrying h per (d, n):
// hbuf[k] changes from piece k's h_end to its h_in.
template <typename S>
__global__ void __launch_bounds__(256) carry_kernel(Param A, int64_t As, const S* state, int64_t ss0, int64_t ss1,
                                                     float* hbuf, const float* dtsum, int Di, int N, SpanItems items) {
  const ItemRef it = find_item(items, blockIdx.x);
  const SeqSpan sp = items.spans[it.span];
  const int n_pieces = (sp.len + items.per_item - 1) / items.per_item;
  if (it.piece != 0 || n_pieces == 1) return;
  const int64_t e = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (e >= int64_t(Di) * N) return;
  const int d = int(e / N), n = int(e % N);
  const float a2 = A[int64_t(d) * As + n] * kLog2e;
  float h = to_f32(state[int64_t(sp.slot) * ss0 + int64_t(d) * ss1 + n]);
  const int first = blockIdx.x;
  for (int m = first; m < first + n_pieces - 1; ++m) {
    const int64_t idx = (int64_t(m) * Di + d) * N + n;
    const float h_end = hbuf[idx];
    hbuf[idx] = h;
    h = fmaf(exp2f(a2 * dtsum[int64_t(m) * Di + d]), h, h_end);
  }
  hbuf[(int64_t(first + n_pieces - 1) * Di + d) * N + n] = h;
}

// Blocks of the output pass resident on one SM (its registers bound it, not shared memory).
template <typename T, typename S, int K>
int resident_blocks() {
  static const int n = [] {
    int blocks = 1;
    STATELM_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, scan_kernel<T, S, K, true>, kThreads, 0),
        "selective_scan occupancy");
    return std::max(blocks, 1);
  }();
  return n;
}

template <typename T, typename S, int K>
void run(const SelectiveScanParams& p, const BatchView& batch, Scratch& scratch, cudaStream_t stream) {
  const char* op = "selective_scan";
  const int Di = int(p.u.shape[1]), N = int(p.A.shape[1]);
  ScanArgs<T, S> a{};
  a.u = static_cast<const T*>(p.u.data);
  a.delta = static_cast<const T*>(p.delta.data);
  a.z = p.z.defined() ? static_cast<const T*>(p.z.data) : nullptr;
  a.B = static_cast<const T*>(p.B.data);
  a.C = static_cast<const T*>(p.C.data);
  a.out = static_cast<T*>(p.out.data);
  a.delta_bias = param_of(p.delta_bias, op, "delta_bias");
  a.A = param_of(p.A, op, "A");
  a.D = param_of(p.D, op, "D");
  a.state = static_cast<S*>(p.state.data);
  a.us = p.u.stride[0];
  a.ds = p.delta.stride[0];
  a.zs = p.z.defined() ? p.z.stride[0] : 0;
  a.Bs = p.B.stride[0];
  a.Cs = p.C.stride[0];
  a.os = p.out.stride[0];
  a.As = p.A.stride[0];
  a.ss0 = p.state.stride[0];
  a.ss1 = p.state.stride[1];
  a.Di = Di;
  a.N = N;

  if (decode_fits<S>(batch, N, p.state)) {
    switch (N / 4) {
      case 1: launch_decode<T, S, 1>(a, batch, stream); break;
      case 2: launch_decode<T, S, 2>(a, batch, stream); break;
      case 4: launch_decode<T, S, 4>(a, batch, stream); break;
      case 8: launch_decode<T, S, 8>(a, batch, stream); break;
      case 16: launch_decode<T, S, 16>(a, batch, stream); break;
      default: launch_decode<T, S, 32>(a, batch, stream); break;
    }
    STATELM_CUDA_LAUNCHED(op, " (decode) u ", p.u.describe(), " state ", p.state.describe());
    return;
  }
  // Pieces: whole spans when they alone give the GPU a wave of blocks, else pieces sized so
  // that the blocks fill about one wave (at least 128 tokens each: shorter pieces would spend
  // more on the second scan and the carry than they gain).
  const int max_len = longest_span(batch);
  const int64_t blocks_y = (Di + kThreads / K - 1) / (kThreads / K);
  // One wave measured best (0.38 ms at 4K tokens against 0.43 / 0.45 ms for 2 / 4 waves).
  const int64_t wave = int64_t(sm_count()) * resident_blocks<T, S, K>();
  const int64_t want_items = std::max<int64_t>(1, wave / blocks_y);
  const int64_t n_spans = int64_t(batch.spans.size());
  int per_item = std::max(max_len, 1);
  if (n_spans * 2 <= want_items && max_len >= 256) {
    const int64_t factor = (want_items + n_spans - 1) / n_spans;
    per_item = int(std::max<int64_t>(128, (max_len + factor - 1) / factor));
    per_item = (per_item + 31) / 32 * 32;  // whole tiles for every K
  }
  int64_t n_items = 0;
  const SpanItems items = plan_items(batch, per_item, 1, &n_items);
  if (n_items == 0) return;
  const dim3 grid{unsigned(n_items), unsigned(blocks_y)};
  if (int64_t(n_items) > int64_t(batch.spans.size())) {  // some span is in several pieces
    // One scratch request for both arrays (Scratch hands out one region per call).
    const size_t h_floats = (size_t(n_items) * Di * N + 63) / 64 * 64;
    a.hbuf = static_cast<float*>(scratch.get((h_floats + size_t(n_items) * Di) * sizeof(float)));
    a.dtsum = a.hbuf + h_floats;
    scan_kernel<T, S, K, false><<<grid, kThreads, 0, stream>>>(a, items);
    STATELM_CUDA_LAUNCHED(op, " states pass, u ", p.u.describe());
    const dim3 cgrid(unsigned(n_items), unsigned((int64_t(Di) * N + 255) / 256));
    carry_kernel<S><<<cgrid, 256, 0, stream>>>(a.A, a.As, a.state, a.ss0, a.ss1, a.hbuf, a.dtsum, Di, N, items);
    STATELM_CUDA_LAUNCHED(op, " carry pass");
  }
  scan_kernel<T, S, K, true><<<grid, kThreads, 0, stream>>>(a, items);
  STATELM_CUDA_LAUNCHED(op, " u ", p.u.describe(), " state ", p.state.describe());
}

}  // namespace

void selective_scan(const SelectiveScanParams& p, const BatchView& batch, Scratch& scratch, cudaStream_t stream) {
  const char* op = "selective_scan";
  const int64_t T = p.u.shape[0], Di = p.u.shape[1], N = p.A.shape[1];
  STATELM_CHECK(p.delta.shape[0] == T && p.delta.shape[1] == Di && p.B.shape[0] == T && p.B.shape[1] == N &&
                    p.C.shape[0] == T && p.C.shape[1] == N && p.out.shape[0] == T && p.out.shape[1] == Di &&
                    p.A.shape[0] == Di && p.state.shape[1] == Di && p.state.shape[2] == N,
                op, ": shapes u ", p.u.describe(), " A ", p.A.describe(), " B ", p.B.describe(), " state ",
                p.state.describe());
  STATELM_CHECK(N >= 1 && N <= 128, op, ": CUDA kernel supports d_state <= 128, got ", N);
  for (const Tensor* t : {&p.u, &p.delta, &p.B, &p.C, &p.out, &p.A, &p.state}) require_last_contiguous(*t, op, "input");
  if (p.z.defined()) require_last_contiguous(p.z, op, "z");
  for (const Tensor* t : {&p.delta, &p.B, &p.C, &p.out, &p.z})
    STATELM_CHECK(!t->defined() || t->dtype == p.u.dtype, op, ": activations must share one dtype, got ",
                  t->describe(), " and u ", p.u.describe());
  if (batch.spans.empty() || Di == 0) return;
  dispatch_float(p.u.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    dispatch_state(p.state, op, [&](auto stag) {
      using S = decltype(stag);
      if (N <= 16)
        run<T, S, 1>(p, batch, scratch, stream);
      else if (N <= 32)
        run<T, S, 2>(p, batch, scratch, stream);
      else if (N <= 64)
        run<T, S, 4>(p, batch, scratch, stream);
      else
        run<T, S, 8>(p, batch, scratch, stream);
    });
  });
}

}  // namespace statelm::cuda
