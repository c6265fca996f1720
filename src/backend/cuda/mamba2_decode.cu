// Mamba-2's decode step in one kernel: Backend::conv_ssd on a batch whose spans are all one
// token long. It fuses the conv1d step on xBC (conv1d.cu) and the SSD recurrence (ssd.cu's
// decode_kernel), which a decode step would otherwise run as two launches of a few µs each,
// mostly launch gap and tail (the state traffic itself is ~1 µs a layer at batch 1). Per span
// (token t, slot), head h (group g), head channel p, state n:
//
//   xBC[c]    = act(bias[c] + Σ_{k<K−1} w[c, k] · win[c, k] + w[c, K−1] · in[t, c])   (conv step)
//   win[c]   ← (win[c, 1..K−2], in[t, c])                                             (conv state)
//   x = xBC[0, HP), B = xBC[HP + gN, …), C = xBC[HP + GN + gN, …)
//   S[h, p, n] ← exp(dt · A[h]) · S[h, p, n] + dt · x[h, p] · B[n];  y[h, p] = C · S[h, p] + D[h] x[h, p]
//
// with exactly conv1d.cu's and decode_kernel's arithmetic: xBC is rounded to the activation
// dtype before the SSD reads it (as when conv1d stores it), so the fused and the two-kernel paths
// agree to the bit. xBC is still written to conv.out (the forward's debug dumps read it).
//
// Parallelisation: decode_kernel's grid, spans × heads × row groups of 16 head channels (4 warps
// of 4 rows; lanes move 4 consecutive state elements when N ≤ 128). The SSM state loads are
// issued first; the conv work hides under them:
//   - x channels: head h's channel p belongs to exactly one block, which reads its conv window,
//     computes xBC (lane r of the warp owning rows p0..p0+3 computes row p0 + r and shuffles it to
//     the warp) and writes the new window. No other block touches that window.
//   - B and C: every block of the group needs all 2N of them, so every block computes them from
//     the old windows (2N channels × K taps, two channels per thread, into shared memory).
//
// The B/C windows are the one race: they must be updated once, and only after every block of
// the (span, group) has read the old ones (the new window drops the oldest input, which the
// readers still need). Blocks run in no guaranteed order, so the update is done by the *last*
// block of the group to finish reading, found with a counter per (slot, group):
//   1. each block reads the windows (into bc[]), __syncthreads(), then thread 0 makes the reads
//      visible-before (__threadfence) its atomicAdd on the counter;
//   2. the block whose atomicAdd returns blocks_per_group − 1 is the last: every other block of
//      the group has already read (their reads precede their increments), so after a fence it
//      writes the new B/C windows and xBC's B/C columns, and resets the counter to 0.
// No block waits for another (no spinning, so no dependence on which blocks are resident), and
// the counters are zero again when the kernel ends: the next layer's launch (on the same stream,
// hence after this one) reuses them. The counters are CudaBackend's, allocated and zeroed once
// outside any graph capture; a recorded decode graph replays this kernel unchanged.
#include <cstdint>

#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/span_kernels.cuh"
#include "backend/cuda/ssd_args.cuh"

namespace statelm::cuda {

namespace {

using namespace ssd_detail;

constexpr int kWarps = 4, kRowsPerWarp = 4, kRows = kWarps * kRowsPerWarp;
constexpr int kMaxK = 8;                   // as conv1d.cu
constexpr int kMaxSharedBytes = 48 << 10;  // bc[2N] in static-limit shared memory

// The conv side: xBC in (in_proj's columns) and out (the SSD's x | B | C), the depthwise filter,
// the windows, and the counters that elect each group's B/C window writer.
template <typename T>
struct ConvArgs {
  const T* in;
  T* out;
  int64_t ins, outs;  // row strides
  Param w, bias;      // [C, K] (row stride ws), [C] or absent
  int64_t ws;
  void* state;        // [n_slots, C, K−1] fp32 or bf16, oldest input first
  int64_t ss0, ss1;
  bool state_bf16, silu;
  int K;
  int x_channels;     // H·P: B's columns start here, C's at H·P + G·N
  unsigned* counters;  // [n_slots · G], zero between launches
};

template <typename T>
__device__ __forceinline__ float window_at(const ConvArgs<T>& c, int64_t i) {
  return c.state_bf16 ? __bfloat162float(static_cast<const bf16*>(c.state)[i]) : static_cast<const float*>(c.state)[i];
}

template <typename T>
__device__ __forceinline__ void set_window(const ConvArgs<T>& c, int64_t i, float v) {
  if (c.state_bf16)
    static_cast<bf16*>(c.state)[i] = __float2bfloat16_rn(v);
  else
    static_cast<float*>(c.state)[i] = v;
}

// Channel ch's conv output for token t of the span in `slot`, from its old window: conv1d.cu's
// sum in its order, rounded to T as conv1d stores it.
template <typename T>
__device__ __forceinline__ float conv_step(const ConvArgs<T>& c, int64_t t, int slot, int ch) {
  const int64_t win = int64_t(slot) * c.ss0 + int64_t(ch) * c.ss1, w = int64_t(ch) * c.ws;
  float acc = c.bias.get(ch, 0.0f);
#pragma unroll
  for (int k = 0; k < kMaxK - 1; ++k)
    if (k < c.K - 1) acc = fmaf(c.w[w + k], window_at(c, win + k), acc);
  acc = fmaf(c.w[w + c.K - 1], to_f32(c.in[t * c.ins + ch]), acc);
  return to_f32(from_f32<T>(c.silu ? silu_accurate(acc) : acc));
}

// Channel ch's window after the step: the oldest input dropped, token t's appended.
template <typename T>
__device__ __forceinline__ void shift_window(const ConvArgs<T>& c, int64_t t, int slot, int ch) {
  const int64_t win = int64_t(slot) * c.ss0 + int64_t(ch) * c.ss1;
#pragma unroll
  for (int k = 0; k < kMaxK - 2; ++k)
    if (k < c.K - 2) set_window(c, win + k, window_at(c, win + k + 1));
  set_window(c, win + c.K - 2, to_f32(c.in[t * c.ins + ch]));
}

// Column of xBC for entry j of bc[2N] (B of group g, then C of group g).
__device__ __forceinline__ int bc_channel(int j, int g, int G, int N, int x_channels) {
  return j < N ? x_channels + g * N + j : x_channels + (G + g) * N + (j - N);
}

template <typename T, typename S, bool kVec4>
__global__ void __launch_bounds__(kWarps * 32) conv_ssd_decode_kernel(SsdArgs<T> a, ConvArgs<T> cv, S* state,
                                                                      int64_t ss0, int64_t ss1, int64_t ss2,
                                                                      const SeqSpan* spans) {
  extern __shared__ float bc[];  // [2N]: the group's B then C after the conv step
  __shared__ bool last;          // this block updates the group's B/C windows
  const SeqSpan sp = spans[blockIdx.x];
  const int heads_per_group = a.H / a.G, h = blockIdx.y, g = h / heads_per_group;
  const int p0 = blockIdx.z * kRows + int(threadIdx.x >> 5) * kRowsPerWarp, lane = int(threadIdx.x & 31);
  const int rows = min(kRowsPerWarp, a.P - p0);  // ≤ 0: a warp past the head's last channel
  const int64_t t = sp.start;
  unsigned* counter = cv.counters + int64_t(sp.slot) * a.G + g;
  S* st = state + int64_t(sp.slot) * ss0 + int64_t(h) * ss1 + int64_t(p0) * ss2;
  T* yh = a.out + t * a.os0 + int64_t(h) * a.os1;

  // The conv step: B/C of the group into bc[], this warp's x channels into lanes 0..rows−1 (the
  // return value), the x windows updated; then this block counts itself as done reading.
  auto conv = [&]() -> float {
    for (int j = int(threadIdx.x); j < 2 * a.N; j += int(blockDim.x))
      bc[j] = conv_step(cv, t, sp.slot, bc_channel(j, g, a.G, a.N, cv.x_channels));
    float xv = 0.0f;
    if (lane < rows) {
      const int ch = h * a.P + p0 + lane;
      xv = conv_step(cv, t, sp.slot, ch);
      cv.out[t * cv.outs + ch] = from_f32<T>(xv);
      shift_window(cv, t, sp.slot, ch);
    }
    __syncthreads();  // bc[] complete; every read of the B/C windows by this block done
    if (threadIdx.x == 0) {
      __threadfence();
      last = atomicAdd(counter, 1u) == unsigned(heads_per_group) * gridDim.z - 1;
    }
    return xv;
  };

  const float dt = dt_of(a, t, h);
  const float dA = expf(dt * a.A[h]);
  const float dskip = a.D.get(h, 0.0f);
  if constexpr (kVec4) {  // N <= 128: lane covers state elements [4 lane, 4 lane + 4)
    const int n = lane * 4;
    const bool active = n < a.N;
    float s[kRowsPerWarp][4], b[4] = {}, c[4] = {};
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
      if (active && r < rows) load4<S>(st + int64_t(r) * ss2 + n, s[r]);
    const float xv = conv();
    if (active) {
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = bc[n + j], c[j] = bc[a.N + n + j];
    }
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (r >= rows) break;  // uniform across the warp
      const float xp = __shfl_sync(0xffffffffu, xv, r), xdt = xp * dt;
      float acc = 0.0f;
      if (active) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          s[r][j] = fmaf(dA, s[r][j], xdt * b[j]);
          acc = fmaf(c[j], s[r][j], acc);
        }
        store4<S>(st + int64_t(r) * ss2 + n, s[r]);
      }
      acc = warp_sum(acc);
      if (lane == 0) yh[p0 + r] = from_f32<T>(fmaf(dskip, xp, acc));
    }
  } else {
    const float xv = conv();
    for (int r = 0; r < kRowsPerWarp; ++r) {
      if (r >= rows) break;
      S* row = st + int64_t(r) * ss2;
      const float xp = __shfl_sync(0xffffffffu, xv, r), xdt = xp * dt;
      float acc = 0.0f;
      for (int n = lane; n < a.N; n += 32) {
        const float s_new = fmaf(dA, to_f32(row[n]), xdt * bc[n]);
        row[n] = from_f32<S>(s_new);
        acc = fmaf(bc[a.N + n], s_new, acc);
      }
      acc = warp_sum(acc);
      if (lane == 0) yh[p0 + r] = from_f32<T>(fmaf(dskip, xp, acc));
    }
  }

  __syncthreads();  // `last` set
  if (last) {       // every other block of the group has read the old B/C windows
    __threadfence();
    for (int j = int(threadIdx.x); j < 2 * a.N; j += int(blockDim.x)) {
      const int ch = bc_channel(j, g, a.G, a.N, cv.x_channels);
      cv.out[t * cv.outs + ch] = from_f32<T>(bc[j]);
      shift_window(cv, t, sp.slot, ch);
    }
    if (threadIdx.x == 0) *counter = 0u;
  }
}

template <typename T, typename S>
void run(const Conv1dParams& conv, const SsdParams& p, const BatchView& batch, unsigned* counters,
         cudaStream_t stream) {
  const char* op = "conv_ssd";
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

  ConvArgs<T> cv{};
  cv.in = static_cast<const T*>(conv.x.data);
  cv.out = static_cast<T*>(conv.out.data);
  cv.ins = conv.x.stride[0];
  cv.outs = conv.out.stride[0];
  cv.w = param_of(conv.weight, op, "conv weight");
  cv.bias = param_of(conv.bias, op, "conv bias");
  cv.ws = conv.weight.stride[0];
  cv.state = conv.state.data;
  cv.ss0 = conv.state.stride[0];
  cv.ss1 = conv.state.stride[1];
  cv.state_bf16 = conv.state.dtype == DType::BF16;
  cv.silu = conv.silu;
  cv.K = int(conv.weight.shape[1]);
  cv.x_channels = a.H * a.P;
  cv.counters = counters;

  S* state = static_cast<S*>(p.state.data);
  const int64_t ss0 = p.state.stride[0], ss1 = p.state.stride[1], ss2 = p.state.stride[2];
  const dim3 grid(unsigned(batch.spans.size()), unsigned(a.H), unsigned((a.P + kRows - 1) / kRows));
  const size_t smem = size_t(2 * a.N) * sizeof(float);
  // As ssd.cu's decode: 4-element state accesses need N % 4 == 0, rows aligned to 4 elements,
  // and one pass over N (N <= 128).
  const bool vec4 = a.N % 4 == 0 && a.N <= 128 && ss2 % 4 == 0 && ss1 % 4 == 0 && ss0 % 4 == 0 &&
                    reinterpret_cast<uintptr_t>(state) % (4 * sizeof(S)) == 0;
  if (vec4)
    conv_ssd_decode_kernel<T, S, true><<<grid, kWarps * 32, smem, stream>>>(a, cv, state, ss0, ss1, ss2,
                                                                            batch.device_spans);
  else
    conv_ssd_decode_kernel<T, S, false><<<grid, kWarps * 32, smem, stream>>>(a, cv, state, ss0, ss1, ss2,
                                                                             batch.device_spans);
  STATELM_CUDA_LAUNCHED(op, " decode, xBC ", conv.x.describe(), " state ", p.state.describe(), " conv state ",
                        conv.state.describe());
}

// Whether `v` is the [T, rows, cols] view of conv.out's columns [col0, col0 + rows·cols).
bool is_xbc_view(const Tensor& v, const Tensor& out, int64_t col0, int64_t rows, int64_t cols) {
  const auto* at = static_cast<const char*>(out.data) + col0 * int64_t(dtype_size(out.dtype));
  return v.data == at && v.dtype == out.dtype && v.ndim == 3 && v.shape[0] == out.shape[0] && v.shape[1] == rows &&
         v.shape[2] == cols && v.stride[0] == out.stride[0] && v.stride[1] == cols && v.stride[2] == 1;
}

}  // namespace

bool conv_ssd_fusable(const Conv1dParams& conv, const SsdParams& ssd, const BatchView& batch) {
  if (batch.spans.empty()) return false;
  for (const SeqSpan& s : batch.spans)
    if (s.len != 1) return false;
  if (conv.weight.ndim != 2 || conv.out.ndim != 2 || ssd.x.ndim != 3 || ssd.B.ndim != 3) return false;
  const int64_t K = conv.weight.shape[1], H = ssd.x.shape[1], P = ssd.x.shape[2], G = ssd.B.shape[1],
                N = ssd.B.shape[2];
  if (K < 2 || K > kMaxK || conv.weight.stride[1] != 1 || G < 1 || H % G != 0) return false;
  if (conv.out.shape[1] != H * P + 2 * G * N || conv.out.stride[1] != 1) return false;
  if (size_t(2 * N) * sizeof(float) > size_t(kMaxSharedBytes)) return false;
  return is_xbc_view(ssd.x, conv.out, 0, H, P) && is_xbc_view(ssd.B, conv.out, H * P, G, N) &&
         is_xbc_view(ssd.C, conv.out, H * P + G * N, G, N);
}

void conv_ssd_decode(const Conv1dParams& conv, const SsdParams& ssd, const BatchView& batch, unsigned* counters,
                     cudaStream_t stream) {
  const char* op = "conv_ssd";
  STATELM_CHECK(conv_ssd_fusable(conv, ssd, batch), op, ": not a decode batch over xBC views of conv.out");
  for (const Tensor* t : {&conv.x, &conv.out, &conv.state, &ssd.dt, &ssd.out, &ssd.state})
    require_last_contiguous(*t, op, "input");
  STATELM_CHECK(conv.x.dtype == conv.out.dtype && ssd.dt.dtype == conv.out.dtype && ssd.out.dtype == conv.out.dtype, op,
                ": activations must share one dtype, got xBC ", conv.x.describe(), " and out ", ssd.out.describe());
  STATELM_CHECK(conv.state.dtype == DType::F32 || conv.state.dtype == DType::BF16, op,
                ": conv state must be float32 or bfloat16, got ", conv.state.describe());
  if (ssd.x.shape[1] == 0 || ssd.x.shape[2] == 0) return;
  dispatch_float(conv.out.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    dispatch_state(ssd.state, op, [&](auto stag) {
      using S = decltype(stag);
      run<T, S>(conv, ssd, batch, counters, stream);
    });
  });
}

}  // namespace statelm::cuda
