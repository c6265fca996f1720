// Mamba-1 selective scan over token spans on CUDA, each span continuing from its slot's state
// (the op of src/backend/cpu/cpu_selective_scan.cpp). Per channel d, state n, token t:
//
//   dt      = softplus(delta[t, d] + delta_bias[d])
//   h[d, n] ← exp(dt · A[d, n]) · h[d, n] + dt · B[t, n] · u[t, d]
//   y[t, d] = (Σ_n C[t, n] · h[d, n] + D[d] · u[t, d]) · silu(z[t, d])      (gate if z given)
//
// Parallelisation. A group of NL lanes of one warp owns a channel, lane j the states n = j,
// j + NL, … (NS per lane; NL = 16 for Mamba's d_state 16), so a block of 128 threads holds
// 128/NL channels and the grid covers channels × span pieces. Time runs in groups of NL tokens:
// lane j loads the per-channel values of token t + j (u, delta, z: NL loads in flight instead of
// one) and computes that token's dt once; the recurrence then walks the NL tokens with dt and
// dt·u broadcast by shuffles. The sums over n of the NL tokens are reduced together by a
// transposing butterfly (NL − 1 shuffles for NL sums, rather than log2 NL per token), leaving
// token t + j's y in lane j, which applies D and the gate and stores it.
//
// Long spans and few channels: a single span of a small model gives too few threads to fill
// the GPU, and each walks the whole span in sequence. The launcher then cuts spans into pieces
// of `per_item` tokens (a chunked scan, since h is linear in the incoming state):
//   1. states pass:  every piece but a span's last scans from h = 0, keeping its end state
//                    h_end and Σ dt per channel (the piece's decay is exp(A · Σ dt));
//   2. carry pass:   per span and (d, n), sequentially over pieces,
//                    h_in[k + 1] = exp(A[d, n] · Σdt[k]) · h_in[k] + h_end[k],  h_in[0] = slot;
//   3. output pass:  every piece scans again from its h_in, writing y; the last piece stores h.
// That costs a second scan of all but the last pieces, paid only when parallelism is short.
// Otherwise one pass reads the slot, scans and writes the slot.
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

// Lane j (of a group of K lanes, inside shuffle segments of W lanes) holds v[i] = its part of
// sum i, i < K; returns Σ over the K lanes of v[j % K]: the full sum i = j % K. Each step halves
// the sums a lane carries: it keeps the half its lane bit selects and sends the other half to
// the partner lane.
template <int K, int W>
__device__ __forceinline__ float transpose_reduce(float (&v)[K], int j) {
#pragma unroll
  for (int o = K / 2; o >= 1; o >>= 1) {
    const bool upper = j & o;
#pragma unroll
    for (int i = 0; i < o; ++i) {
      const float send = upper ? v[i] : v[i + o];
      const float keep = upper ? v[i + o] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o, W);
    }
  }
  return v[0];
}

// kOut = false: pass 1 (end state of a piece from h = 0); kOut = true: the output pass.
template <typename T, typename S, int NL, int NS, bool kOut>
__global__ void __launch_bounds__(kThreads) scan_kernel(ScanArgs<T, S> a, SpanItems items) {
  const ItemRef it = find_item(items, blockIdx.x);
  const int item = blockIdx.x;
  const SeqSpan sp = items.spans[it.span];
  const int n_pieces = (sp.len + items.per_item - 1) / items.per_item;
  const bool last = it.piece == n_pieces - 1;
  if (!kOut && last) return;  // the last piece's end state is the output pass's business

  const int j = threadIdx.x % NL;
  const int d = blockIdx.y * (kThreads / NL) + threadIdx.x / NL;
  const bool valid = d < a.Di;  // lanes past Di still join the shuffles, on a clamped channel
  const int dc = valid ? d : a.Di - 1;
  const int t0 = it.piece * items.per_item;
  const int t1 = min(sp.len, t0 + items.per_item);

  float a2[NS], h[NS];
#pragma unroll
  for (int s = 0; s < NS; ++s) {
    const int n = j + s * NL;
    const bool nv = n < a.N;
    a2[s] = nv ? a.A[int64_t(dc) * a.As + n] * kLog2e : 0.0f;
    h[s] = 0.0f;
    if (kOut && nv) {
      h[s] = n_pieces > 1 ? a.hbuf[(int64_t(item) * a.Di + dc) * a.N + n]
                          : to_f32(a.state[int64_t(sp.slot) * a.ss0 + int64_t(dc) * a.ss1 + n]);
    }
  }
  const float bias = a.delta_bias.get(dc, 0.0f);
  const float dskip = a.D.get(dc, 0.0f);
  float dt_total = 0.0f;

  // Tokens go in groups of TG ≤ 16: lane j preloads token t + j % TG (with NL = 32 both halves
  // of the warp hold the same tokens), which keeps yv[] in registers.
  constexpr int TG = NL < 16 ? NL : 16;
  const int jt = j % TG;
  for (int t = t0; t < t1; t += TG) {
    const int count = min(TG, t1 - t);  // the same in every lane of the block
    const int64_t row_j = int64_t(sp.start) + t + jt;
    float dt_j = 0.0f, du_j = 0.0f, u_j = 0.0f, z_j = 0.0f;
    if (jt < count) {
      u_j = to_f32(a.u[row_j * a.us + dc]);
      dt_j = softplus(to_f32(a.delta[row_j * a.ds + dc]) + bias);
      du_j = dt_j * u_j;
      if (kOut && a.z) z_j = to_f32(a.z[row_j * a.zs + dc]);
    }
    if (j < TG) dt_total += dt_j;
    float yv[TG];
#pragma unroll
    for (int jj = 0; jj < TG; ++jj) {
      yv[jj] = 0.0f;
      if (jj < count) {
        const float dt = __shfl_sync(0xffffffffu, dt_j, jj, NL);
        const float du = __shfl_sync(0xffffffffu, du_j, jj, NL);
        const int64_t row = int64_t(sp.start) + t + jj;
#pragma unroll
        for (int s = 0; s < NS; ++s) {
          const int n = j + s * NL;
          const float b = n < a.N ? to_f32(a.B[row * a.Bs + n]) : 0.0f;
          h[s] = fmaf(exp2f(dt * a2[s]), h[s], du * b);
          if (kOut) {
            const float c = n < a.N ? to_f32(a.C[row * a.Cs + n]) : 0.0f;
            yv[jj] = fmaf(c, h[s], yv[jj]);
          }
        }
      }
    }
    if (kOut) {
      if constexpr (NL > TG) {  // fold the two halves of the warp first
#pragma unroll
        for (int i = 0; i < TG; ++i) yv[i] += __shfl_xor_sync(0xffffffffu, yv[i], TG, NL);
      }
      float y = transpose_reduce<TG, NL>(yv, j);
      if (j < count && valid) {  // j < count ≤ TG: one lane per token
        y = fmaf(dskip, u_j, y);
        if (a.z) y *= silu_accurate(z_j);
        a.out[row_j * a.os + d] = from_f32<T>(y);
      }
    }
  }

  if (!kOut) {
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      const int n = j + s * NL;
      if (valid && n < a.N) a.hbuf[(int64_t(item) * a.Di + d) * a.N + n] = h[s];
    }
#pragma unroll
    for (int o = NL / 2; o >= 1; o >>= 1) dt_total += __shfl_xor_sync(0xffffffffu, dt_total, o, NL);
    if (valid && j == 0) a.dtsum[int64_t(item) * a.Di + d] = dt_total;
  } else if (last) {
#pragma unroll
    for (int s = 0; s < NS; ++s) {
      const int n = j + s * NL;
      if (valid && n < a.N) a.state[int64_t(sp.slot) * a.ss0 + int64_t(d) * a.ss1 + n] = from_f32<S>(h[s]);
    }
  }
}

// Decode steps (every span one token): the scan kernel above spends a lane per state element and
// walks a 16-token group and a 16-way transposing reduction for that one token, ~200
// instructions per 4-byte element (measured: 353 GB/s at b = 16 for the mamba-2.8b layer, 8% of
// the copy bandwidth). Here a thread owns 4 consecutive states of a channel, moved as one vector;
// the L = N / 4 lanes of a channel sum C·h with log2 L shuffles, and lane 0 gates and stores y.
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
  for (const SeqSpan& s : batch.spans)
    if (s.len != 1) return false;
  const int L = N / 4;
  return N % 4 == 0 && L >= 1 && L <= 32 && (L & (L - 1)) == 0 && state.stride[0] % 4 == 0 &&
         state.stride[1] % 4 == 0 && reinterpret_cast<uintptr_t>(state.data) % (4 * sizeof(S)) == 0;
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

template <typename T, typename S, int NL, int NS>
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
  // Pieces: whole spans when the spans alone give enough threads, else pieces sized so that
  // threads ≈ 2 waves of a full GPU (at least 128 tokens each: shorter pieces would spend more
  // on the second scan and the carry than they gain).
  int max_len = 0;
  for (const SeqSpan& s : batch.spans) max_len = std::max(max_len, int(s.len));
  const int64_t threads_per_span = int64_t(Di) * NL;
  const int64_t want = int64_t(sm_count()) * 2048 * 2;
  const int64_t base = threads_per_span * int64_t(batch.spans.size());
  int per_item = std::max(max_len, 1);
  if (base * 2 <= want && max_len >= 256) {
    const int64_t factor = (want + base - 1) / base;
    per_item = int(std::max<int64_t>(128, (max_len + factor - 1) / factor));
    per_item = (per_item + 31) / 32 * 32;
  }
  int64_t n_items = 0;
  const SpanItems items = plan_items(batch, per_item, 1, &n_items);
  if (n_items == 0) return;
  const dim3 grid(unsigned(n_items), unsigned((Di + kThreads / NL - 1) / (kThreads / NL)));
  if (int64_t(n_items) > int64_t(batch.spans.size())) {  // some span is in several pieces
    // One scratch request for both arrays (Scratch hands out one region per call).
    const size_t h_floats = (size_t(n_items) * Di * N + 63) / 64 * 64;
    a.hbuf = static_cast<float*>(scratch.get((h_floats + size_t(n_items) * Di) * sizeof(float)));
    a.dtsum = a.hbuf + h_floats;
    scan_kernel<T, S, NL, NS, false><<<grid, kThreads, 0, stream>>>(a, items);
    STATELM_CUDA_LAUNCHED(op, " states pass, u ", p.u.describe());
    const dim3 cgrid(unsigned(n_items), unsigned((int64_t(Di) * N + 255) / 256));
    carry_kernel<S><<<cgrid, 256, 0, stream>>>(a.A, a.As, a.state, a.ss0, a.ss1, a.hbuf, a.dtsum, Di, N, items);
    STATELM_CUDA_LAUNCHED(op, " carry pass");
  }
  scan_kernel<T, S, NL, NS, true><<<grid, kThreads, 0, stream>>>(a, items);
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
        run<T, S, 16, 1>(p, batch, scratch, stream);
      else if (N <= 32)
        run<T, S, 32, 1>(p, batch, scratch, stream);
      else if (N <= 64)
        run<T, S, 32, 2>(p, batch, scratch, stream);
      else
        run<T, S, 32, 4>(p, batch, scratch, stream);
    });
  });
}

}  // namespace statelm::cuda
