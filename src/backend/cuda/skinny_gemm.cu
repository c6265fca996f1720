// Linear layers of decode steps: out[T, N] = x[T, K] · w[N, K]ᵀ (+ bias) for T ≤ 8 tokens.
//
// At a handful of tokens a linear layer is a read of its weight matrix and nothing else (2·T
// FLOPs per 2-byte weight), so what matters is streaming w at the copy bandwidth. cuBLASLt's
// choices for these shapes were measured at 2-3.3 TB/s on the H200 (the 2.7B model's out_proj,
// 5120 → 2560, ran as a split-K GEMM plus a reduction kernel: 13 µs for 26 MB). What limits a
// small matrix is not the bytes but the round trips each thread waits for: a first version with
// one warp per two features walked K in 4 dependent batches and reached only 2.2-3 TB/s (the
// 257 MB LM head 4.2). Here a block of 128 threads takes kRows features and splits K between its
// threads, so each thread issues all of its 16-byte weight loads at once (K ≤ 4096 bf16) and
// waits once; x (T rows, small) comes through L1; fp32 partial sums are reduced across the
// block and the bias is added on the way out.
//
// Launched as a programmatic dependent launch (pdl.cuh): each thread's first batch of weight loads
// is issued before the kernel waits for the one ahead, and each block lets the next linear layer
// launch at once, so in a decode step one matrix's weight stream overlaps the tail of the one
// before and the small kernels between them.
//
// Backend::linear's input transforms and residual add are folded in (skinny_linear): the RMSNorm
// of a block's input (each block first sums the squares of the few rows of x, then normalizes
// them as it loads them), Mamba-2's gated norm (one group), SwiGLU of the MLP's down
// projection, and out += product. A decode step of a pre-norm block then has no norm or add
// kernel left: a Mamba-2 layer is in_proj, conv, SSD, out_proj.
//
// Used when T ≤ kMaxTokens and every row is 16-byte aligned (K, the strides and the pointers);
// Gemm::run sends everything else to cuBLASLt, and CudaBackend::linear composes the other cases.
#include <algorithm>
#include <type_traits>

#include "backend/cuda/core_kernels.h"
#include "backend/cuda/cuda_common.h"
#include "backend/cuda/pdl.cuh"

namespace statelm::cuda {

namespace {

constexpr int kThreads = 128;  // per block: they split K between them
constexpr int kRows = 4;       // output features per block
constexpr int kBatch = 4;      // K-steps of loads each thread issues before it computes

template <typename T>
__device__ __forceinline__ void unpack(const uint4& v, float (&out)[16 / sizeof(T)]) {
  if constexpr (sizeof(T) == 4) {
    out[0] = __uint_as_float(v.x), out[1] = __uint_as_float(v.y), out[2] = __uint_as_float(v.z),
    out[3] = __uint_as_float(v.w);
  } else {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
      out[2 * i] = f.x, out[2 * i + 1] = f.y;
    }
  }
}

// What the kernel reads: x and, per LinearInput, the gate and the norm weight.
template <typename T, typename TO>
struct SkinnyArgs {
  const T* x;
  int64_t ldx;
  const T* gate;         // GatedRmsNorm
  int64_t ldgate;
  const float* norm_w;   // RmsNorm, GatedRmsNorm
  float eps;
  const T* w;
  int64_t ldw;
  TO* out;
  int64_t ldo;
  const float* bias;
  int N, K;
  bool accumulate;       // out += product
};

// The V elements of 16-byte vector v of token m, before the norm's scale: x, or x * silu(gate).
template <LinearInput kIn, typename T, typename TO>
__device__ __forceinline__ void load_vector(const SkinnyArgs<T, TO>& a, int m, int v, float (&xf)[16 / sizeof(T)]) {
  constexpr int V = 16 / sizeof(T);
  const uint4* xr = reinterpret_cast<const uint4*>(a.x + m * a.ldx);
  unpack<T>(__ldg(xr + v), xf);
  if constexpr (kIn == LinearInput::SwiGlu) {
    float up[V];
    unpack<T>(__ldg(xr + a.K / V + v), up);
#pragma unroll
    for (int j = 0; j < V; ++j) xf[j] = silu(xf[j]) * up[j];
  } else if constexpr (kIn == LinearInput::GatedRmsNorm) {
    float z[V];
    unpack<T>(__ldg(reinterpret_cast<const uint4*>(a.gate + m * a.ldgate) + v), z);
#pragma unroll
    for (int j = 0; j < V; ++j) xf[j] *= silu(z[j]);
  }
}

// in(x) for vector v of token m (LinearInput in ops.h), rounded to T as the composed path's norm
// or SwiGLU kernel rounds what it writes: a decode step multiplies the very operands a prefill
// chunk does, so the two agree as closely as before the fusion (the MoE router's top-k of a
// later layer is not moved by a rounding the other path lacks). inv: the token's 1/rms.
template <LinearInput kIn, typename T, typename TO>
__device__ __forceinline__ void input_vector(const SkinnyArgs<T, TO>& a, int m, int v, float inv,
                                             float (&xf)[16 / sizeof(T)]) {
  constexpr int V = 16 / sizeof(T);
  load_vector<kIn>(a, m, v, xf);
  if constexpr (kIn == LinearInput::RmsNorm || kIn == LinearInput::GatedRmsNorm) {
    const float4* g = reinterpret_cast<const float4*>(a.norm_w + v * V);
#pragma unroll
    for (int q = 0; q < V / 4; ++q) {
      const float4 gq = __ldg(g + q);
      const float gs[4] = {gq.x, gq.y, gq.z, gq.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) xf[4 * q + j] = gs[j] * (xf[4 * q + j] * inv);
    }
  }
  if constexpr (kIn != LinearInput::Plain) {
#pragma unroll
    for (int j = 0; j < V; ++j) xf[j] = to_f32(from_f32<T>(xf[j]));
  }
}

// Per token, 1/rms of the norm's input over the K channels (RmsNorm: x; GatedRmsNorm:
// x * silu(gate)), as norm.cu computes it: the block's threads sum the squares of their own
// vectors (those they multiply next, which this pass leaves in L1), then reduce across the block.
template <LinearInput kIn, typename T, typename TO, int M>
__device__ __forceinline__ void inverse_rms(const SkinnyArgs<T, TO>& a, int vectors, float (&inv)[M]) {
  constexpr int V = 16 / sizeof(T);
  __shared__ float sums[kThreads / 32][M];
  float ss[M] = {};
  for (int v = threadIdx.x; v < vectors; v += kThreads)
#pragma unroll
    for (int m = 0; m < M; ++m) {
      float xf[V];
      load_vector<kIn>(a, m, v, xf);
#pragma unroll
      for (int j = 0; j < V; ++j) ss[m] = fmaf(xf[j], xf[j], ss[m]);
    }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const float s = warp_sum(ss[m]);
    if (lane == 0) sums[warp][m] = s;
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < M; ++m) {
    float s = 0.0f;
#pragma unroll
    for (int q = 0; q < kThreads / 32; ++q) s += sums[q][m];
    inv[m] = 1.0f / sqrtf(s / float(a.K) + a.eps);
  }
}

// Block = kRows consecutive features; its threads split K in 16-byte vectors (thread i takes
// vectors i, i + kThreads, ...), issue kBatch × kRows loads at once (one memory round trip for
// K up to kThreads · kBatch vectors: 4096 bf16), then reduce across the block.
template <typename T, typename TO, int M, LinearInput kIn>
__global__ void __launch_bounds__(kThreads) skinny_gemm_kernel(SkinnyArgs<T, TO> a) {
  constexpr int V = 16 / sizeof(T);  // elements per 16-byte load
  constexpr bool kNorm = kIn == LinearInput::RmsNorm || kIn == LinearInput::GatedRmsNorm;
  __shared__ float partial[kThreads / 32][M * kRows];
  // The next linear layer (a dependent launch) may start streaming its weights now.
  pdl_allow_dependents();
  const int N = a.N, n0 = blockIdx.x * kRows;
  const int vectors = a.K / V;
  const T* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wr[r] = a.w + int64_t(min(n0 + r, N - 1)) * a.ldw;  // a row past N is read, not stored
  float acc[M][kRows] = {}, inv[M];
  uint4 wv[kBatch][kRows];
  auto load_weights = [&](int v0) {
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int v = v0 + u * kThreads;
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        wv[u][r] = v < vectors ? __ldcs(reinterpret_cast<const uint4*>(wr[r]) + v) : make_uint4(0, 0, 0, 0);
    }
  };
  // The first batch of weights is in flight before the wait for the kernel ahead (launched as a
  // programmatic dependent launch, pdl.cuh): x is read only after it.
  load_weights(threadIdx.x);
  pdl_wait();
  if constexpr (kNorm) inverse_rms<kIn>(a, vectors, inv);
  for (int v0 = threadIdx.x; v0 < vectors; v0 += kBatch * kThreads) {
    if (v0 != int(threadIdx.x)) load_weights(v0);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int v = v0 + u * kThreads;
      if (v >= vectors) break;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[V];
        input_vector<kIn>(a, m, v, kNorm ? inv[m] : 1.0f, xf);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          float wf[V];
          unpack<T>(wv[u][r], wf);
#pragma unroll
          for (int j = 0; j < V; ++j) acc[m][r] = fmaf(xf[j], wf[j], acc[m][r]);
        }
      }
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float s = warp_sum(acc[m][r]);
      if (lane == 0) partial[warp][m * kRows + r] = s;
    }
  __syncthreads();
  for (int i = threadIdx.x; i < M * kRows; i += kThreads) {
    const int m = i / kRows, r = i % kRows;
    if (n0 + r >= N) continue;
    float sum = 0.0f;
#pragma unroll
    for (int q = 0; q < kThreads / 32; ++q) sum += partial[q][i];
    if (a.bias) sum += a.bias[n0 + r];
    TO* o = a.out + m * a.ldo + n0 + r;
    if (a.accumulate) sum += to_f32(*o);
    *o = from_f32<TO>(sum);
  }
}

template <typename T, typename TO, int M, LinearInput kIn>
void launch(const SkinnyArgs<T, TO>& a, cudaStream_t stream) {
  const unsigned blocks = unsigned((a.N + kRows - 1) / kRows);
  STATELM_CUDA_CHECK(launch_programmatic(skinny_gemm_kernel<T, TO, M, kIn>, dim3(blocks), dim3(kThreads), stream, a),
                     "linear (decode) N ", a.N, " K ", a.K, " tokens ", M);
}

template <typename T, typename TO, LinearInput kIn, int M = 1>
void launch_for_tokens(int64_t tokens, const SkinnyArgs<T, TO>& a, cudaStream_t stream) {
  if constexpr (M <= kSkinnyMaxTokens) {
    if (tokens == M) return launch<T, TO, M, kIn>(a, stream);
    launch_for_tokens<T, TO, kIn, M + 1>(tokens, a, stream);
  }
}

// The inputs this kernel fuses, per out dtype: any input into an output of x's dtype (the
// block's projections and their residual adds); a norm or nothing into fp32 (the LM head).
template <typename T, typename TO>
bool launch_input(LinearInput input, const SkinnyArgs<T, TO>& a, int64_t tokens, cudaStream_t stream) {
  switch (input) {
    case LinearInput::Plain: launch_for_tokens<T, TO, LinearInput::Plain>(tokens, a, stream); return true;
    case LinearInput::RmsNorm: launch_for_tokens<T, TO, LinearInput::RmsNorm>(tokens, a, stream); return true;
    case LinearInput::GatedRmsNorm:
      if constexpr (std::is_same_v<T, TO>) {
        launch_for_tokens<T, TO, LinearInput::GatedRmsNorm>(tokens, a, stream);
        return true;
      }
      return false;
    case LinearInput::SwiGlu:
      if constexpr (std::is_same_v<T, TO>) {
        launch_for_tokens<T, TO, LinearInput::SwiGlu>(tokens, a, stream);
        return true;
      }
      return false;
  }
  return false;
}

bool aligned16(const Tensor& t, size_t es) { return aligned_for(t.data, t.stride[0], es, 16); }

}  // namespace

bool skinny_linear(const LinearParams& p, cudaStream_t stream) {
  const Tensor &x = p.x, &w = p.w, &out = p.out;
  const int64_t T = x.shape[0], K = w.shape[1];
  if (T < 1 || T > kSkinnyMaxTokens || x.dtype != w.dtype || K > (int64_t(1) << 30) || w.shape[0] > (int64_t(1) << 30))
    return false;
  if (p.bias.defined() && (p.bias.dtype != DType::F32 || !p.bias.is_contiguous())) return false;
  const size_t es = dtype_size(x.dtype);
  if ((size_t(K) * es) % 16 || !aligned16(x, es) || !aligned16(w, es)) return false;
  const bool norm = p.input == LinearInput::RmsNorm || p.input == LinearInput::GatedRmsNorm;
  if (norm && (!p.norm_weight.is_contiguous() || reinterpret_cast<uintptr_t>(p.norm_weight.data) % 16)) return false;
  if (p.input == LinearInput::GatedRmsNorm && (p.norm_group != K || p.gate.dtype != x.dtype || !aligned16(p.gate, es)))
    return false;  // one group: a per-group scale would not factor out of the product
  if (p.accumulate && out.dtype != x.dtype) return false;
  bool launched = false;
  dispatch_float(x.dtype, "linear", [&](auto in_tag) {
    using T_ = decltype(in_tag);
    dispatch_float(out.dtype, "linear", [&](auto out_tag) {
      using TO = decltype(out_tag);
      SkinnyArgs<T_, TO> a{};
      a.x = x.ptr<const T_>();
      a.ldx = x.stride[0];
      if (p.gate.defined()) a.gate = p.gate.ptr<const T_>(), a.ldgate = p.gate.stride[0];
      if (norm) a.norm_w = p.norm_weight.ptr<const float>();
      a.eps = p.norm_eps;
      a.w = w.ptr<const T_>();
      a.ldw = w.stride[0];
      a.out = out.ptr<TO>();
      a.ldo = out.stride[0];
      a.bias = p.bias.defined() ? p.bias.ptr<const float>() : nullptr;
      a.N = int(w.shape[0]);
      a.K = int(K);
      a.accumulate = p.accumulate;
      launched = launch_input(p.input, a, T, stream);
    });
  });
  return launched;
}

bool skinny_gemm(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out, cudaStream_t stream) {
  LinearParams p;
  p.x = x;
  p.w = w;
  p.bias = bias;
  p.out = out;
  return skinny_linear(p, stream);
}

}  // namespace statelm::cuda
