// Mamba-2 SSD over token spans on CUDA, each span continuing from its slot's state (the op of
// src/backend/cpu/cpu_ssd.cpp). Per head h (group g = h / (H/G)), channel p, state n, token t:
//
//   dt_t = softplus(dt_raw[t, h] + dt_bias[h]), clamped to [dt_min, dt_max] if dt_limited
//   S[p, n] ← exp(dt_t · A[h]) · S[p, n] + dt_t · x[t, h, p] · B[t, g, n]
//   y[t, h, p] = Σ_n C[t, g, n] · S[p, n] + D[h] · x[t, h, p]
//
// Decode spans (len 1) run the recurrence: one block per (span, head) reads the head's P × N
// state once, updates it, reduces y over n with warp sums and writes the state once.
//
// Prefill spans (len ≥ 2) run the chunked algorithm, in mamba_ssm's five stages. A span is cut
// into chunks of Q tokens from its own first token (the last one partial); for a chunk of L
// tokens, a_i = dt_i · A[h] and cs_i = a_0 + … + a_i:
//   1. chunk_cumsum:  dt_i and cs_i per (chunk, head)                         → scratch
//   2. chunk_cb:      CB = C Bᵀ [L × L] per (chunk, group), lower block triangle → scratch
//                     (shared by the H/G heads of the group: the largest product, done once)
//   3. chunk_state:   S_loc[p, n] = Σ_j e^{cs_{L−1} − cs_j} dt_j x_j[p] B_j[n]   → scratch
//   4. state_passing: per span, head, (p, n), in chunk order from the slot's state:
//                     S_in[c] = S;  S ← e^{cs_{L−1}} S + S_loc[c]; the slot gets the final S
//                     (S_in overwrites S_loc in the scratch)
//   5. chunk_scan:    y_i = e^{cs_i} (C_i · S_in) + Σ_{j ≤ i} CB_ij e^{cs_i − cs_j} dt_j x_j
//                          + D x_i
// Stages 2, 3 and 5 are tiled matrix products: on bf16 tensor cores for bf16 activations
// (ssd_chunks_mma.cu), on fp32 CUDA cores for float activations (ssd_chunks_f32.cu, the exact
// path). Stage 1 is one warp per (chunk, head), a lane per token of each 32-token round: a warp
// prefix sum per round, carried across the rounds. Stage 4 is one thread per 4 consecutive state
// elements (one where P·N % 4 != 0), walking the chunks in order.
//
// Decays: cs is accumulated in double, and e^{cs_i − cs_j} takes the difference in double.
// A strongly decaying head reaches |cs| in the thousands within a chunk, where a float's ulp
// (~1e-4) would swamp the decay between neighbouring tokens; the CPU backend sums segment sums
// for the same reason, and double differences give the same accuracy on the GPU at no cost
// that matters (a few per mask element, next to an N-long dot product).
//
// State: fp32, bf16 or f16, widened when a span starts, rounded once when it ends; fp32 between
// the stages. out must not overlap x, dt, B, C (stage 5 writes rows other blocks read).
#include <algorithm>
#include <type_traits>
#include <utility>

#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/span_kernels.cuh"
#include "backend/cuda/ssd_args.cuh"

namespace statelm::cuda {

namespace {

using namespace ssd_detail;

constexpr int kThreads = 256;

// ---- stage 1: dt and the cumulative log-decay per (chunk, head) ---------------------------
// One warp per (chunk, head), kCumsumHeads heads per block. Token i of the chunk belongs to lane
// i % 32 of round i / 32, so each round writes dtc, cs, cs2 and w as coalesced rows. The block
// first stages dt (computed once per token and head) for a segment of kCumsumRounds rounds in
// shared memory: 8 threads read the block's heads of one token's row together, where a warp
// reading one head would touch 32 rows. Each round is then a warp inclusive scan in double plus
// the total of the rounds before it (carry). a_i = dt_i · A is rounded to float as the CPU
// rounds it and summed in double (ssd.cu's header says why). w needs the chunk's total cs_{L−1}:
// each lane re-reads the cs and dt it wrote. At most 64 registers (4 blocks, 32 warps per SM):
// more warps to overlap the rounds' shuffle chains, at no spill.
constexpr int kCumsumHeads = 8, kCumsumRounds = 8, kCumsumSeg = 32 * kCumsumRounds;

template <typename T>
__global__ void __launch_bounds__(kCumsumHeads * 32, 4) chunk_cumsum_kernel(SsdArgs<T> a, SpanItems items) {
  // One column per head, padded: a warp reading a head's 32 tokens hits 32 banks.
  __shared__ float dt_s[kCumsumSeg][kCumsumHeads + 1];
  const Chunk ch = chunk_of(items, blockIdx.x);
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31);
  const int h0 = int(blockIdx.y) * kCumsumHeads, h = h0 + warp;
  const bool active = h < a.H;  // a warp past the last head only stages dt and joins the barriers
  const float A = active ? a.A[h] : 0.0f;
  // Staging: thread (token sr, head h0 + sh) of each 32-token round, dt_of split in two (the
  // loads, then dt_from_raw): every load of the segment is issued before softplus branches on the
  // first value. A thread past the last head stages a copy of it, which no warp reads.
  const int sh = int(threadIdx.x) % kCumsumHeads, sr = int(threadIdx.x) / kCumsumHeads;
  const int hs = min(h0 + sh, a.H - 1);
  const float bias = a.dt_bias.get(hs, 0.0f);
  const int64_t base = (int64_t(blockIdx.x) * a.H + h) * a.Q;
  double carry = 0.0;  // cs of the token before the round
  for (int s0 = 0; s0 < ch.L; s0 += kCumsumSeg) {
    if (s0 > 0) __syncthreads();  // the previous segment's reads of dt_s are done
    float raw[kCumsumRounds];
#pragma unroll
    for (int r = 0; r < kCumsumRounds; ++r)  // clamped to the chunk: no branch between the loads
      raw[r] = to_f32(a.dt[(ch.t0 + min(s0 + r * 32 + sr, ch.L - 1)) * a.dts + hs]);
#pragma unroll
    for (int r = 0; r < kCumsumRounds; ++r) {
      const float v = dt_from_raw(a, raw[r], bias);
      if (s0 + r * 32 + sr < ch.L) dt_s[r * 32 + sr][sh] = v;
    }
    __syncthreads();
    if (!active) continue;
#pragma unroll
    for (int r = 0; r < kCumsumRounds; ++r) {
      const int i0 = s0 + r * 32, i = i0 + lane;
      if (i0 >= ch.L) break;  // uniform across the warp
      const float dt = i < ch.L ? dt_s[r * 32 + lane][warp] : 0.0f;
      double incl = double(dt * A);  // inclusive prefix sum over the round's lanes
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const double v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
      }
      const double cs = carry + incl;
      // The sum up to the round's last token (lane 31's adds the zeros past L in another order):
      // the final carry is then cs_{L−1} bit for bit.
      carry += __shfl_sync(0xffffffffu, incl, min(31, ch.L - 1 - i0));
      if (i < ch.L) {
        a.dtc[base + i] = dt;
        a.cs[base + i] = cs;
        a.cs2[base + i] = float(cs * 1.4426950408889634);
      }
    }
  }
  if (!active) return;
  // w needs the chunk's total, known only now: each lane reads back the cs and dt it wrote
  // itself (still in L1/L2), rather than holding a chunk's worth of them in registers.
  const double total = carry;  // cs_{L−1}
  for (int i = lane; i < ch.L; i += 32) a.w[base + i] = expf(float(total - a.cs[base + i])) * a.dtc[base + i];
}

// ---- stage 4: pass states along each span's chunks ----------------------------------------
// Pure streaming (S_loc read once, S_in written once: ~250 MB at 16K tokens × 80 heads), so the
// kernel is shaped for bytes in flight. One thread per V consecutive state elements of a
// (span, head), flat index p·N + n as S_loc is laid out, walking the span's chunks in order; V =
// 4 when P·N % 4 == 0 (16-byte S_loc loads), else 1. kPassBatch chunks at a time: their S_loc
// loads are all issued before the first is used (a chunk's load does not wait for the previous
// chunk's store, which the compiler cannot prove itself), 128 bytes in flight per thread at V =
// 4: 4× one element's, so that the last, partial wave of these long-lived blocks still streams
// (16K tokens × 80 heads: 640 blocks, 4 per SM resident). S_in goes to st_in16 (bf16, the
// tensor-core path's operand) or over S_loc in st (fp32 path).
constexpr int kPassBatch = 8;

template <typename T, typename S, int V>
__global__ void __launch_bounds__(kThreads) state_passing_kernel(SsdArgs<T> a, S* state, int64_t ss0, int64_t ss1,
                                                                  int64_t ss2, SpanItems items) {
  const int span = blockIdx.x, h = blockIdx.z;
  const SeqSpan sp = items.spans[span];
  if (sp.len < items.min_len) return;
  const int PN = a.P * a.N, e0 = (int(blockIdx.y) * kThreads + int(threadIdx.x)) * V;
  if (e0 >= PN) return;  // PN % V == 0: the thread's V elements are all in range
  int first = 0;  // this span's first chunk: the chunks of the spans before it
  for (int s = 0; s < span; ++s) {
    const int len = items.spans[s].len;
    if (len >= items.min_len) first += (len + a.Q - 1) / a.Q;
  }
  const int end = first + (sp.len + a.Q - 1) / a.Q;
  // The slot's elements one by one: V of them may straddle rows of N, and each is read and
  // written once (the address is recomputed at the end rather than held through the loop).
  S* slot = state + int64_t(sp.slot) * ss0 + int64_t(h) * ss1;
  auto slot_at = [&](int j) { return slot + int64_t((e0 + j) / a.N) * ss2 + (e0 + j) % a.N; };
  float S_run[V];
#pragma unroll
  for (int j = 0; j < V; ++j) S_run[j] = to_f32(*slot_at(j));
  const int64_t chunk_stride = int64_t(a.H) * PN, own = int64_t(h) * PN + e0;
  for (int c0 = first; c0 < end; c0 += kPassBatch) {
    // The loads take no branch and no use of a loaded value between them, so all are in flight
    // at once: chunks past the span's end load its last chunk again (never used), and the decay
    // e^{cs_{L−1}} is taken in the second loop.
    float s_loc[kPassBatch][V], cs_end[kPassBatch];
#pragma unroll
    for (int k = 0; k < kPassBatch; ++k) {
      const int c = min(c0 + k, end - 1);
      const int L = min(a.Q, sp.len - (c - first) * a.Q);
      cs_end[k] = float(a.cs[(int64_t(c) * a.H + h) * a.Q + L - 1]);
      load_f32<float, V>(a.st + c * chunk_stride + own, s_loc[k]);
    }
#pragma unroll
    for (int k = 0; k < kPassBatch; ++k) {
      const int c = c0 + k;
      if (c >= end) break;
      const int64_t at = c * chunk_stride + own;
      if (a.st_in16)
        store_f32<bf16, V>(a.st_in16 + at, S_run);
      else
        store_f32<float, V>(a.st + at, S_run);
      const float decay = expf(cs_end[k]);
#pragma unroll
      for (int j = 0; j < V; ++j) S_run[j] = fmaf(decay, S_run[j], s_loc[k][j]);
    }
  }
#pragma unroll
  for (int j = 0; j < V; ++j) *slot_at(j) = from_f32<S>(S_run[j]);
}

// ---- decode: the recurrence for spans of one token ----------------------------------------
// Pure state traffic: each (slot, head) state is read and written once (168 MB per sequence
// for the 2.7B model in fp32), so the kernel is shaped for memory parallelism: a warp owns
// kRowsPerWarp head channels p (N-wide state rows) and issues all of their loads before it
// computes; 4 warps per block; a grid of spans × heads × P / (4 · kRowsPerWarp) blocks (one short
// block per item: a wave-sized grid walking the items with the next item's loads in flight was
// measured much slower, bench/RESULTS.md). Each lane moves 16 bytes of a row per access: 4 fp32
// or 8 bf16/fp16 state elements, a 2-byte row of 128 then being half a warp (against 8-byte
// accesses: bf16 state b=16 / 128 15.9 → 15.5 / 118.2 → 116.5 µs on the H200); a 2-byte state
// whose N is a multiple of 4 but not of 8 takes 4 elements (8 bytes), and any other N, or N past
// 128, one element per access. B, C, x and dt are tiny and come through L1.
constexpr int kDecodeWarps = 4, kRowsPerWarp = 4, kDecodeRows = kDecodeWarps * kRowsPerWarp;

// The decode kernel's output for head channel c = h · P + p of token t: y, or with a gate
// y · silu(z) · w, returning the square of y · silu(z) for the norm's sum (0 without a gate).
template <typename T>
__device__ __forceinline__ float emit_y(const SsdArgs<T>& a, int64_t t, int h, int p, float y) {
  T* at = a.out + t * a.os0 + int64_t(h) * a.os1 + p;
  if (!a.z) {
    *at = from_f32<T>(y);
    return 0.0f;
  }
  const int64_t c = int64_t(h) * a.P + p;
  const float u = y * silu(to_f32(a.z[t * a.zs + c]));
  *at = from_f32<T>(u * a.gate_w[c]);
  return u * u;
}

template <typename T, typename S, int kVec>
__global__ void __launch_bounds__(kDecodeWarps * 32) decode_kernel(SsdArgs<T> a, S* state, int64_t ss0, int64_t ss1,
                                                                   int64_t ss2, const SeqSpan* spans) {
  const SeqSpan sp = spans[blockIdx.x];
  if (sp.len != 1) return;  // uniform across the block
  // The linear layer after this kernel (a programmatic launch) may start streaming its weights.
  pdl_allow_dependents();
  const int h = blockIdx.y, g = h / (a.H / a.G);
  const int p0 = blockIdx.z * kDecodeRows + int(threadIdx.x >> 5) * kRowsPerWarp, lane = int(threadIdx.x & 31);
  const int rows = max(0, min(kRowsPerWarp, a.P - p0));  // 0: a warp past the head's last channel
  const int64_t t = sp.start;
  const float A = a.A[h], dskip = a.D.get(h, 0.0f);
  const T* xh = a.x + t * a.xs0 + int64_t(h) * a.xs1;
  const T* Bg = a.B + t * a.Bs0 + int64_t(g) * a.Bs1;
  const T* Cg = a.C + t * a.Cs0 + int64_t(g) * a.Cs1;
  S* st = state + int64_t(sp.slot) * ss0 + int64_t(h) * ss1 + int64_t(min(p0, a.P - 1)) * ss2;
  float sq = 0.0f;  // the gate's sum of squares over the rows this lane emits
  if constexpr (kVec > 1) {
    // N <= 128, one pass over N (y summed in registers, never re-read from out): a row is
    // kLanes lanes, each covering state elements [kVec l, kVec l + kVec) with one 16-byte
    // (fp32: 4 elements; 2-byte states: 8) access, so a warp holds kRowsAtOnce rows at a time.
    constexpr int kLanes = 128 / kVec, kRowsAtOnce = 32 / kLanes, kPasses = kRowsPerWarp / kRowsAtOnce;
    const int n = (lane % kLanes) * kVec, sub = lane / kLanes;
    const bool active = n < a.N;
    float s[kPasses][kVec], b[kVec] = {}, c[kVec] = {};
#pragma unroll
    for (int i = 0; i < kPasses; ++i)
      if (active && i * kRowsAtOnce + sub < rows) load_f32<S, kVec>(st + int64_t(i * kRowsAtOnce + sub) * ss2 + n, s[i]);
    // Launched as a programmatic dependent (pdl.cuh): the state (last written by the previous
    // step) is in flight; dt, x, B and C come from the kernels ahead.
    pdl_wait();
    const float dt = dt_of(a, t, h), dA = expf(dt * A);
    if (active) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) b[j] = to_f32(Bg[n + j]), c[j] = to_f32(Cg[n + j]);
    }
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      if (i * kRowsAtOnce >= rows) break;  // uniform across the warp
      const int r = i * kRowsAtOnce + sub;
      const bool row_ok = r < rows;
      const float xp = row_ok ? to_f32(xh[p0 + r]) : 0.0f, xdt = xp * dt;
      float acc = 0.0f;
      if (active && row_ok) {
#pragma unroll
        for (int j = 0; j < kVec; ++j) {
          s[i][j] = fmaf(dA, s[i][j], xdt * b[j]);
          acc = fmaf(c[j], s[i][j], acc);
        }
        store_f32<S, kVec>(st + int64_t(r) * ss2 + n, s[i]);
      }
#pragma unroll
      for (int o = kLanes / 2; o > 0; o /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, o);  // the row's lanes
      if (lane % kLanes == 0 && row_ok) sq += emit_y(a, t, h, p0 + r, fmaf(dskip, xp, acc));
    }
    if constexpr (kRowsAtOnce > 1) sq = warp_sum(sq);  // lane 0: the warp's rows
  } else {
    pdl_wait();
    const float dt = dt_of(a, t, h), dA = expf(dt * A);
    for (int r = 0; r < rows; ++r) {
      S* row = st + int64_t(r) * ss2;
      const float xp = to_f32(xh[p0 + r]), xdt = xp * dt;
      float acc = 0.0f;
      for (int n = lane; n < a.N; n += 32) {
        const float s_new = fmaf(dA, to_f32(row[n]), xdt * to_f32(Bg[n]));
        row[n] = from_f32<S>(s_new);
        acc = fmaf(to_f32(Cg[n]), s_new, acc);
      }
      acc = warp_sum(acc);
      if (lane == 0) sq += emit_y(a, t, h, p0 + r, fmaf(dskip, xp, acc));
    }
  }
  if (!a.z) return;  // uniform
  // One partial sum per block (its column of sumsq), no atomics: matmul_row_rms adds them up.
  __shared__ float warp_sq[kDecodeWarps];
  if (lane == 0) warp_sq[threadIdx.x >> 5] = sq;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) total += warp_sq[w];
    a.sumsq[t * a.sumsq_ld + int64_t(h) * gridDim.z + blockIdx.z] = total;
  }
}

// SsdGate for batches with prefill spans (whose outputs the chunked stages write as plain y):
// one block per token gates its row in place and writes the whole sum of squares into column 0
// of sumsq, zeros into the others.
template <typename T>
__global__ void gate_rows_kernel(SsdArgs<T> a, int64_t partials) {
  __shared__ float shared[32];
  const int64_t t = blockIdx.x;
  float sq = 0.0f;
  for (int c = threadIdx.x; c < a.H * a.P; c += blockDim.x) {
    const int h = c / a.P, p = c % a.P;
    T* at = a.out + t * a.os0 + int64_t(h) * a.os1 + p;
    const float u = to_f32(*at) * silu(to_f32(a.z[t * a.zs + c]));
    *at = from_f32<T>(u * a.gate_w[c]);
    sq += u * u;
  }
  const float total = block_sum(sq, shared);
  for (int64_t j = threadIdx.x; j < partials; j += blockDim.x) a.sumsq[t * a.sumsq_ld + j] = j == 0 ? total : 0.0f;
}

template <typename T, typename S>
void run(const SsdParams& p, const BatchView& batch, Scratch& scratch, cudaStream_t stream) {
  const char* op = "ssd";
  SsdArgs<T> a{};
  a.x = static_cast<const T*>(p.x.data);
  a.dt = static_cast<const T*>(p.dt.data);
  a.B = static_cast<const T*>(p.B.data);
  a.C = static_cast<const T*>(p.C.data);
  a.out = static_cast<T*>(p.out.data);
  a.dt_bias = param_of(p.dt_bias, op, "dt_bias");
  a.A = param_of(p.A, op, "A");
  a.D = param_of(p.D, op, "D");
  a.xs0 = p.x.stride[0];
  a.xs1 = p.x.stride[1];
  a.dts = p.dt.stride[0];
  a.Bs0 = p.B.stride[0];
  a.Bs1 = p.B.stride[1];
  a.Cs0 = p.C.stride[0];
  a.Cs1 = p.C.stride[1];
  a.os0 = p.out.stride[0];
  a.os1 = p.out.stride[1];
  a.H = int(p.x.shape[1]);
  a.P = int(p.x.shape[2]);
  a.G = int(p.B.shape[1]);
  a.N = int(p.B.shape[2]);
  a.dt_min = p.dt_min;
  a.dt_max = p.dt_max;
  a.dt_limited = p.dt_limited;
  const bool gated = p.gate.z.defined();
  if (gated) {
    a.z = static_cast<const T*>(p.gate.z.data);
    a.zs = p.gate.z.stride[0];
    a.gate_w = p.gate.weight.ptr<const float>();
    a.sumsq = p.gate.sumsq.ptr<float>();
    a.sumsq_ld = p.gate.sumsq.stride[0];
  }
  S* state = static_cast<S*>(p.state.data);
  const int64_t ss0 = p.state.stride[0], ss1 = p.state.stride[1], ss2 = p.state.stride[2];

  int max_len = 0;
  bool any_decode = false;
  // A batch of decode spans only gates inside the decode kernel; with prefill spans the rows
  // are gated after the chunked stages (gate_rows_kernel).
  SsdArgs<T> decode_args = a;
  for (const SeqSpan& s : batch.spans) {
    max_len = std::max(max_len, int(s.len));
    any_decode = any_decode || s.len == 1;
  }
  // Chunks never longer than the longest span: a short prefill gets a short chunk, and the
  // scratch and grids shrink with it.
  a.Q = int(std::min<int64_t>(p.chunk_size, std::max(max_len, 1)));
  int64_t n_chunks = 0;
  const SpanItems items = plan_items(batch, a.Q, 2, &n_chunks);
  const int n_spans = int(batch.spans.size());

  const bool gate_in_decode = gated && max_len == 1;
  if (!gate_in_decode) decode_args.z = nullptr;
  auto gate_rows = [&] {
    if (!gated || gate_in_decode) return;
    gate_rows_kernel<T><<<unsigned(p.x.shape[0]), 256, 0, stream>>>(a, p.gate.sumsq.shape[1]);
    STATELM_CUDA_LAUNCHED(op, " gate rows, z ", p.gate.z.describe());
  };
  if (any_decode) {
    const dim3 grid(unsigned(n_spans), unsigned(a.H), unsigned((a.P + kDecodeRows - 1) / kDecodeRows));
    // 16-byte state accesses (4 fp32 or 8 two-byte elements) need N a multiple of them and every
    // row start aligned to them, and the vector path one pass over N (N <= 128); 2-byte states
    // that miss 16 bytes may still take 4 elements (8 bytes) per access; else one element.
    constexpr int kVec = 16 / int(sizeof(S));
    auto takes = [&](int vec) {
      return a.N % vec == 0 && a.N <= 128 && ss2 % vec == 0 && ss1 % vec == 0 && ss0 % vec == 0 &&
             reinterpret_cast<uintptr_t>(state) % (vec * sizeof(S)) == 0;
    };
    const auto kernel = takes(kVec) ? decode_kernel<T, S, kVec>
                        : takes(4)  ? decode_kernel<T, S, 4>
                                    : decode_kernel<T, S, 1>;
    STATELM_CUDA_CHECK(launch_pdl_if(pdl_chain(), kernel, grid, dim3(kDecodeWarps * 32), stream, decode_args, state,
                                     ss0, ss1, ss2, batch.device_spans),
                       op, " decode, x ", p.x.describe());
    STATELM_CUDA_LAUNCHED(op, " decode, x ", p.x.describe(), " state ", p.state.describe());
  }
  if (n_chunks == 0) return gate_rows();

  // One scratch region: dtc, cs, cb, st and (bf16 activations) st_in16, each 256-byte aligned.
  // runtime/memory_plan.cpp (cuda_ssd_scratch) counts the same bytes: keep the two in step.
  constexpr bool kMma = std::is_same_v<T, bf16>;
  auto align = [](size_t bytes) { return (bytes + 255) / 256 * 256; };
  const size_t per_head = size_t(n_chunks) * a.H * a.Q, states = size_t(n_chunks) * a.H * a.P * a.N;
  const size_t b_dtc = align(per_head * sizeof(float)), b_cs = align(per_head * sizeof(double));
  const size_t b_cb = align(size_t(n_chunks) * a.G * a.Q * a.Q * sizeof(T));
  const size_t b_st = align(states * sizeof(float)), b_st16 = kMma ? align(states * sizeof(bf16)) : 0;
  char* at = static_cast<char*>(scratch.get(3 * b_dtc + b_cs + b_cb + b_st + b_st16));
  auto take = [&at](size_t bytes) { return std::exchange(at, at + bytes); };
  a.dtc = reinterpret_cast<float*>(take(b_dtc));
  a.cs2 = reinterpret_cast<float*>(take(b_dtc));
  a.w = reinterpret_cast<float*>(take(b_dtc));
  a.cs = reinterpret_cast<double*>(take(b_cs));
  a.cb = reinterpret_cast<T*>(take(b_cb));
  a.st = reinterpret_cast<float*>(take(b_st));
  a.st_in16 = kMma ? reinterpret_cast<bf16*>(take(b_st16)) : nullptr;
  auto vec16 = [](const void* ptr, int64_t s0, int64_t s1) {
    return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && s0 % 8 == 0 && s1 % 8 == 0;
  };
  a.x_vec16 = vec16(a.x, a.xs0, a.xs1);
  a.B_vec16 = vec16(a.B, a.Bs0, a.Bs1);
  a.C_vec16 = vec16(a.C, a.Cs0, a.Cs1);

  chunk_cumsum_kernel<T><<<dim3(unsigned(n_chunks), unsigned((a.H + kCumsumHeads - 1) / kCumsumHeads)),
                           kCumsumHeads * 32, 0, stream>>>(a, items);
  STATELM_CUDA_LAUNCHED(op, " chunk_cumsum");
  if constexpr (kMma)
    chunk_states_mma(a, items, n_chunks, stream);
  else
    chunk_states_f32(a, items, n_chunks, stream);
  // 4 state elements per thread when every head's and chunk's P·N block starts on 16 bytes.
  const int pass_vec = (a.P * a.N) % 4 == 0 ? 4 : 1;
  const unsigned pn_blocks = blocks_for(int64_t(a.P) * a.N / pass_vec, kThreads);
  (pass_vec == 4 ? state_passing_kernel<T, S, 4> : state_passing_kernel<T, S, 1>)<<<
      dim3(unsigned(n_spans), pn_blocks, unsigned(a.H)), kThreads, 0, stream>>>(a, state, ss0, ss1, ss2, items);
  STATELM_CUDA_LAUNCHED(op, " state_passing");
  if constexpr (kMma)
    chunk_outputs_mma(a, items, n_chunks, stream);
  else
    chunk_outputs_f32(a, items, n_chunks, stream);
  gate_rows();
}

}  // namespace

int64_t ssd_gate_partials(int64_t heads, int64_t head_dim) {
  return heads * ((head_dim + kDecodeRows - 1) / kDecodeRows);
}

void ssd(const SsdParams& p, const BatchView& batch, Scratch& scratch, cudaStream_t stream) {
  const char* op = "ssd";
  const int64_t T = p.x.shape[0], H = p.x.shape[1], P = p.x.shape[2], G = p.B.shape[1], N = p.B.shape[2];
  STATELM_CHECK(p.x.ndim == 3 && p.B.ndim == 3 && p.C.ndim == 3 && p.out.ndim == 3 && p.state.ndim == 4, op,
                ": ranks x ", p.x.describe(), " B ", p.B.describe(), " state ", p.state.describe());
  STATELM_CHECK(p.dt.shape[0] == T && p.dt.shape[1] == H && p.A.shape[0] == H && p.C.shape[0] == T &&
                    p.C.shape[1] == G && p.C.shape[2] == N && p.B.shape[0] == T && p.out.shape[0] == T &&
                    p.out.shape[1] == H && p.out.shape[2] == P && p.state.shape[1] == H && p.state.shape[2] == P &&
                    p.state.shape[3] == N,
                op, ": shapes x ", p.x.describe(), " B ", p.B.describe(), " state ", p.state.describe());
  STATELM_CHECK(G >= 1 && H % G == 0, op, ": ", H, " heads do not split into ", G, " groups");
  STATELM_CHECK(p.chunk_size >= 1, op, ": chunk_size ", p.chunk_size);
  for (const Tensor* t : {&p.x, &p.dt, &p.B, &p.C, &p.out, &p.state}) require_last_contiguous(*t, op, "input");
  for (const Tensor* t : {&p.dt, &p.B, &p.C, &p.out})
    STATELM_CHECK(t->dtype == p.x.dtype, op, ": activations must share one dtype, got ", t->describe(), " and x ",
                  p.x.describe());
  if (p.gate.z.defined()) {
    STATELM_CHECK(p.gate.z.ndim == 2 && p.gate.z.shape[0] == T && p.gate.z.shape[1] == H * P &&
                      p.gate.z.dtype == p.x.dtype && p.gate.weight.dtype == DType::F32 &&
                      p.gate.weight.is_contiguous() && p.gate.weight.numel() == H * P &&
                      p.gate.sumsq.dtype == DType::F32 && p.gate.sumsq.ndim == 2 && p.gate.sumsq.shape[0] == T &&
                      p.gate.sumsq.shape[1] == ssd_gate_partials(H, P),
                  op, ": gate z ", p.gate.z.describe(), " weight ", p.gate.weight.describe(), " sumsq ",
                  p.gate.sumsq.describe(), " (", ssd_gate_partials(H, P), " partial sums per token)");
    require_last_contiguous(p.gate.z, op, "gate z");
    require_last_contiguous(p.gate.sumsq, op, "gate sumsq");
  }
  if (batch.spans.empty() || H == 0 || P == 0) return;
  dispatch_float(p.x.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    dispatch_state(p.state, op, [&](auto stag) {
      using S = decltype(stag);
      run<T, S>(p, batch, scratch, stream);
    });
  });
}

}  // namespace statelm::cuda
