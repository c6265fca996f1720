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
// waits once; x (T rows, small) comes through L1 (coherent loads: see load_activation); fp32
// partial sums are reduced across the block and the bias is added on the way out.
//
// Launched as a programmatic dependent launch (pdl.cuh): each thread's first batch of weight loads
// is issued before the kernel waits for the one ahead, and each block lets the next linear layer
// launch at once, so in a decode step one matrix's weight stream overlaps the tail of the one
// before and the small kernels between them.
//
// Backend::linear's residual add (out += product, the residual prefetched at the start) and
// SwiGLU of the MLP's down projection are folded in (skinny_linear). The norms are not: folded in
// (each block summing the squares of x first, then normalizing as it loads) they were measured
// slower than a norm kernel ahead of the product on the H200 — the 2.7B Mamba-2 decode step
// 2.61 vs 2.58 ms with the RMSNorm folded in, 3.21 vs 2.55 ms with the gated norm (5120 channels
// re-gated by every block); Llama 2.5B 2.54 vs 2.47 ms. Each block is a chain of memory round
// trips and a decode GEMM runs several waves of blocks, so a round trip added to a block costs
// more than the launch of a small kernel it saves.
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

// A 16-byte load of an activation: a coherent load, issued where it stands. x is written by the
// kernel ahead, which may still run until pdl_wait() returns; a non-coherent load (__ldg,
// ld.global.nc) promises data that is read-only for the whole kernel, and the compiler may hoist
// it above the wait (it did, once the prepass below was unrolled: decode steps read stale x).
__device__ __forceinline__ uint4 load_activation(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));  // volatile: stays after griddepcontrol.wait (also volatile asm)
  return v;
}

template <typename T, typename TO>
struct SkinnyArgs {
  const T* x;
  int64_t ldx;
  const T* w;
  int64_t ldw;
  TO* out;
  int64_t ldo;
  const float* bias;
  int N, K;
  bool accumulate;       // out += product
};

// in(x) for the V elements of 16-byte vector v of token m (LinearInput in ops.h: Plain or SwiGlu),
// rounded to T as the SwiGLU kernel rounds what it writes, so that a decode step multiplies the
// operands a prefill chunk does.
template <LinearInput kIn, typename T, typename TO>
__device__ __forceinline__ void input_vector(const SkinnyArgs<T, TO>& a, int m, int v, float (&xf)[16 / sizeof(T)]) {
  constexpr int V = 16 / sizeof(T);
  const uint4* xr = reinterpret_cast<const uint4*>(a.x + m * a.ldx);
  unpack<T>(load_activation(xr + v), xf);
  if constexpr (kIn == LinearInput::SwiGlu) {
    float up[V];
    unpack<T>(load_activation(xr + a.K / V + v), up);
#pragma unroll
    for (int j = 0; j < V; ++j) xf[j] = to_f32(from_f32<T>(silu(xf[j]) * up[j]));
  }
}

// Block = kRows consecutive features; its threads split K in 16-byte vectors (thread i takes
// vectors i, i + kThreads, ...), issue kBatch × kRows loads at once (one memory round trip for
// K up to kThreads · kBatch vectors: 4096 bf16), then reduce across the block.
template <typename T, typename TO, int M, LinearInput kIn>
__global__ void __launch_bounds__(kThreads) skinny_gemm_kernel(SkinnyArgs<T, TO> a) {
  constexpr int V = 16 / sizeof(T);  // elements per 16-byte load
  __shared__ float partial[kThreads / 32][M * kRows];
  // The next linear layer (a dependent launch) may start streaming its weights now.
  pdl_allow_dependents();
  const int N = a.N, n0 = blockIdx.x * kRows;
  const int vectors = a.K / V;
  const T* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wr[r] = a.w + int64_t(min(n0 + r, N - 1)) * a.ldw;  // a row past N is read, not stored
  float acc[M][kRows] = {};
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
  // The residual this block adds into, fetched now rather than after the reduction at the end (a
  // round trip there is a microsecond on every block of the last wave). Thread i < M·kRows
  // stores output i.
  float residual = 0.0f;
  if (a.accumulate && int(threadIdx.x) < M * kRows && n0 + int(threadIdx.x) % kRows < N)
    residual = to_f32(a.out[(int(threadIdx.x) / kRows) * a.ldo + n0 + int(threadIdx.x) % kRows]);
  for (int v0 = threadIdx.x; v0 < vectors; v0 += kBatch * kThreads) {
    if (v0 != int(threadIdx.x)) load_weights(v0);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int v = v0 + u * kThreads;
      if (v >= vectors) break;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[V];
        input_vector<kIn>(a, m, v, xf);
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
  static_assert(M * kRows <= kThreads, "one output per thread");
  const int i = threadIdx.x, m = i / kRows, r = i % kRows;
  if (i < M * kRows && n0 + r < N) {
    float sum = 0.0f;
#pragma unroll
    for (int q = 0; q < kThreads / 32; ++q) sum += partial[q][i];
    if (a.bias) sum += a.bias[n0 + r];
    a.out[m * a.ldo + n0 + r] = from_f32<TO>(sum + residual);
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

// The inputs this kernel folds in: none into out of either dtype (fp32: the LM head), SwiGLU
// into out of x's dtype (the MLP's down projection).
template <typename T, typename TO>
bool launch_input(LinearInput input, const SkinnyArgs<T, TO>& a, int64_t tokens, cudaStream_t stream) {
  if (input == LinearInput::Plain) {
    launch_for_tokens<T, TO, LinearInput::Plain>(tokens, a, stream);
    return true;
  }
  if constexpr (std::is_same_v<T, TO>) {
    if (input == LinearInput::SwiGlu) {
      launch_for_tokens<T, TO, LinearInput::SwiGlu>(tokens, a, stream);
      return true;
    }
  }
  return false;  // the norms: see the top of this file
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
  if (p.input != LinearInput::Plain && p.input != LinearInput::SwiGlu) return false;
  if (p.accumulate && out.dtype != x.dtype) return false;
  bool launched = false;
  dispatch_float(x.dtype, "linear", [&](auto in_tag) {
    using T_ = decltype(in_tag);
    dispatch_float(out.dtype, "linear", [&](auto out_tag) {
      using TO = decltype(out_tag);
      SkinnyArgs<T_, TO> a{};
      a.x = x.ptr<const T_>();
      a.ldx = x.stride[0];
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
