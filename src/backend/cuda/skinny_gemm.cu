// Linear layers of decode steps: out[T, N] = x[T, K] · w[N, K]ᵀ (+ bias) for T ≤ 8 tokens,
// optionally divided row by row by an RMS whose squares the kernel ahead summed (RowScale: the
// gated norm of Mamba-2, whose division moves out of the SSD's output and into this epilogue).
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
// is issued before the kernel waits for the one ahead (a norm, which lets it start at once), so
// in a decode step the weight stream overlaps the small kernels instead of following them.
//
// The residual add after the layer (ResidualSums, a decode step's split block norm): out is the
// residual stream; warp 0 adds the rounded products to it (the old values are loaded right after
// the wait, while the weights stream), stores the new values times the next norm's weight for the
// next layer to read as its x, and sums their squares, one partial per block and token, for the
// next layer's 1/rms (RowScale). No add_rms_norm launch between two linear layers.
//
// The conv step after a Mamba block's in_proj (kConv, ConvStep): the thread that stores a conv
// channel's output also runs the channel's conv on it, with the taps and the slot's window loaded
// before the wait; the decode step's conv1d launch is gone (Mamba-2 2.7B b1: 2.10-2.11 -> 2.06 ms).
//
// SwiGLU (kSwiglu): w holds the gate rows, then the up rows, of F features each; a block takes
// kRows / 2 features, their gate rows and their up rows, and writes silu(g) · u of each, with g
// and u rounded to the output dtype first as the product would be stored for the swiglu kernel.
// The product (2F columns) never goes to memory, and the swiglu launch is gone.
//
// Used when T ≤ kSkinnyMaxTokens and every row is 16-byte aligned (K, the strides and the
// pointers); Gemm::run offers bf16 batches of 2-16 tokens to skinny_gemm_mma.cu first (which
// takes every one this kernel would) and sends what neither takes to cuBLASLt.
#include <algorithm>

#include "backend/cuda/core_kernels.h"
#include "backend/cuda/cuda_common.h"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/span_kernels.cuh"

namespace statelm::cuda {

namespace {

// Threads per block (they split K between them): 128, or more where K has more 16-byte vectors
// than 128 threads load in one batch (the 2.7B model's out_proj, K = 5120 bf16): each block then
// still waits for one round trip, not two (measured: Mamba-2 2.7B decode b1 2.22 → 2.16 ms with
// 256 threads).
constexpr int kThreadsSmallK = 128, kThreadsLargeK = 256;
constexpr int kRows = 4;       // output features per block
constexpr int kBatch = 4;      // K-steps of loads each thread issues before it computes

// Threads a block for K of `vectors` 16-byte packs: 128 where one batch of loads covers K; else,
// for one token, the fewest warps that cover K in one batch (K = 5120 bf16: 160, 112 registers:
// 3 blocks an SM where 256 threads fit 2, so 396 blocks are resident instead of 264 and the
// out_proj's 640 make 1.6 waves instead of 2.4; all loads of a thread are real, where 256 threads
// left a third of their batch empty). Measured on the H200, Mamba-2 2.7B decode b1: 2.058-2.072
// → 2.025-2.026 ms; Llama 2.5B (down_proj, K = 6912: 224 threads) unchanged. Batches keep 256.
int block_threads(int vectors, int tokens) {
  if (vectors <= kThreadsSmallK * kBatch) return kThreadsSmallK;
  if (tokens != 1) return kThreadsLargeK;
  const int warps = (vectors + 32 * kBatch - 1) / (32 * kBatch);
  return warps * 32 >= kThreadsLargeK ? kThreadsLargeK : warps * 32;
}

// Block = kRows consecutive features; its threads split K in 16-byte vectors (thread i takes
// vectors i, i + kThreads, ...), issue kBatch × kRows loads at once (one memory round trip for
// K up to kThreads · kBatch vectors: 4096 bf16 with 128 threads), then reduce across the block.
// N: output features (F with kSwiglu, whose w has 2F rows).
// The one-token SwiGLU kernel is held to 96 registers (no spills): five blocks an SM rather than
// four keep more of a decode step's largest weight stream (gate_up) in flight.
// kConv: the conv step after the product (ConvStep); its window is loaded before the wait.
template <typename T, typename TO, int M, int kThreads, bool kSwiglu = false, bool kConv = false>
__global__ void __launch_bounds__(kThreads, kSwiglu && M == 1 && kThreads == 128 ? 5 : 1)
    skinny_gemm_kernel(const T* x, int64_t ldx, const T* __restrict__ w, int64_t ldw, TO* __restrict__ out,
                       int64_t ldo, const float* __restrict__ bias, RowScale scale, ResidualSums sums, ConvStep conv,
                       int N, int K, bool trigger) {
  static_assert(!(kSwiglu && kConv), "the conv step follows a plain product");
  constexpr int V = 16 / sizeof(T);  // elements per 16-byte load
  constexpr int kOut = kSwiglu ? kRows / 2 : kRows;  // output features per block
  static_assert(M * kOut <= 32, "the residual epilogue's outputs fit warp 0");
  // Per warp: the M × kRows dot products, then the M rows' sums of squares (RowScale).
  __shared__ float partial[kThreads / 32][M * kRows + M];
  const int n0 = blockIdx.x * kOut;
  const int vectors = K / V;
  // Weight row r of the block (a feature past N is read, not stored): with kSwiglu, gate rows
  // of features n0, n0 + 1, then their up rows.
  auto weight_row = [&](int r) {
    const int f = min(n0 + r % kOut, N - 1);
    return kSwiglu && r >= kOut ? N + f : f;
  };
  const T* wr[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wr[r] = w + int64_t(weight_row(r)) * ldw;
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
  if (trigger) pdl_allow_dependents();
  // The conv step of this thread's output (thread i < M · kOut: token i / kOut, feature
  // n0 + i % kOut), where that feature is a conv channel: its taps and the slot's stored inputs,
  // which an earlier step wrote (every step starts with an ordinary launch), loaded before the wait.
  constexpr int kTaps = kConvStepTaps;
  float conv_w[kTaps] = {}, conv_b = 0.0f, window[kTaps - 1] = {};
  float* conv_state = nullptr;
  int channel = 0;
  if constexpr (kConv) {
    channel = n0 + int(threadIdx.x) % kOut - conv.begin;
    if (threadIdx.x < M * kOut && channel >= 0 && channel < conv.C) {
      conv_state = conv.state + int64_t(conv.spans[threadIdx.x / kOut].slot) * conv.ss0 + int64_t(channel) * conv.ss1;
#pragma unroll
      for (int k = 0; k < kTaps; ++k) conv_w[k] = conv.w[int64_t(channel) * conv.ws + k];
      conv_b = conv.bias.get(channel, 0.0f);
#pragma unroll
      for (int k = 0; k < kTaps - 1; ++k) window[k] = conv_state[k];
    }
  }
  pdl_wait();
  // The row scale's partial sums (written by the kernel ahead) are read now, while the first
  // weights are in flight: at the end they would cost one more round trip.
  float ss[M] = {};
  if (scale.sumsq) {
#pragma unroll
    for (int m = 0; m < M; ++m) ss[m] = strided_sum(scale.sumsq + m * scale.ld, scale.partials, threadIdx.x, kThreads);
  }
  // The residual value and norm weight this thread's output meets (thread i < M · kOut: token
  // i / kOut, feature n0 + i % kOut): loaded now, used after the product.
  float res_old = 0.0f, norm_w = 0.0f;
  if (!kSwiglu && sums.sumsq && threadIdx.x < M * kOut && n0 + int(threadIdx.x) % kOut < N) {
    res_old = to_f32(out[(threadIdx.x / kOut) * ldo + n0 + threadIdx.x % kOut]);
    norm_w = sums.weight[n0 + threadIdx.x % kOut];
  }
  for (int v0 = threadIdx.x; v0 < vectors; v0 += kBatch * kThreads) {
    if (v0 != int(threadIdx.x)) load_weights(v0);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int v = v0 + u * kThreads;
      if (v >= vectors) break;
#pragma unroll
      for (int m = 0; m < M; ++m) {
        float xf[V];
        // A coherent load, not __ldg: ld.global.nc declares x read-only for the whole kernel, so
        // the compiler may hoist it above pdl_wait() and read the previous step's activations
        // (an unrolled variant did: decode steps went wrong). For the same reason x is not
        // __restrict__, which lets the compiler choose ld.global.nc by itself.
        unpack16<T>(reinterpret_cast<const uint4*>(x + m * ldx)[v], xf);
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
          float wf[V];
          unpack16<T>(wv[u][r], wf);
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
  if (scale.sumsq) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      const float s = warp_sum(ss[m]);
      if (lane == 0) partial[warp][M * kRows + m] = s;
    }
  }
  __syncthreads();
  auto product = [&](int m, int row) {  // x[m] · w[block row `row`], summed over the warps
    float sum = 0.0f;
#pragma unroll
    for (int q = 0; q < kThreads / 32; ++q) sum += partial[q][m * kRows + row];
    return sum;
  };
  auto inv_rms = [&](int m) {
    float s = 0.0f;
#pragma unroll
    for (int q = 0; q < kThreads / 32; ++q) s += partial[q][M * kRows + m];
    return rsqrtf(s * scale.inv_n + scale.eps);
  };
  auto output = [&](int m, int r) {  // the product scaled by the row's 1/rms, plus the bias
    float sum = product(m, r);
    if (scale.sumsq) sum *= inv_rms(m);
    return bias ? sum + bias[n0 + r] : sum;
  };
  if constexpr (!kSwiglu) {
    if (sums.sumsq) {  // into the residual: warp 0 holds the block's M * kOut outputs
      if (warp != 0) return;
      const int m = lane / kOut, r = lane % kOut;
      float sq = 0.0f;
      if (m < M && n0 + r < N) {
        const float h = to_f32(from_f32<TO>(res_old + to_f32(from_f32<TO>(output(m, r)))));
        out[m * ldo + n0 + r] = from_f32<TO>(h);
        static_cast<TO*>(sums.normed)[m * sums.ld_normed + n0 + r] = from_f32<TO>(h * norm_w);
        sq = h * h;
      }
#pragma unroll
      for (int o = 1; o < kOut; o *= 2) sq += __shfl_xor_sync(0xffffffffu, sq, o);
      if (m < M && r == 0) sums.sumsq[m * sums.ld + blockIdx.x] = sq;
      return;
    }
  }
  for (int i = threadIdx.x; i < M * kOut; i += kThreads) {
    const int m = i / kOut, r = i % kOut;
    if (n0 + r >= N) continue;
    if constexpr (kSwiglu) {
      float g = product(m, r), u = product(m, r + kOut);
      if (scale.sumsq) {
        const float inv = inv_rms(m);
        g *= inv;
        u *= inv;
      }
      if (bias) {
        g += bias[n0 + r];
        u += bias[N + n0 + r];
      }
      out[m * ldo + n0 + r] = from_f32<TO>(silu(to_f32(from_f32<TO>(g))) * to_f32(from_f32<TO>(u)));
    } else {
      const TO v = from_f32<TO>(output(m, r));
      out[m * ldo + n0 + r] = v;
      if (kConv && conv_state) {  // i is this thread's own output (M · kOut ≤ 32 < kThreads)
        float acc = conv_b;
#pragma unroll
        for (int k = 0; k < kTaps - 1; ++k) acc = fmaf(conv_w[k], window[k], acc);
        acc = fmaf(conv_w[kTaps - 1], to_f32(v), acc);
        static_cast<TO*>(conv.out)[m * conv.ldo + channel] = from_f32<TO>(conv.silu ? silu_conv(acc) : acc);
#pragma unroll
        for (int k = 0; k < kTaps - 2; ++k) conv_state[k] = window[k + 1];
        conv_state[kTaps - 2] = to_f32(v);
      }
    }
  }
}

template <typename T, typename TO, int M, bool kSwiglu, bool kConv>
void launch(const Tensor& x, const Tensor& w, const float* bias, const RowScale& scale, const ResidualSums& sums,
            const ConvStep& conv, const Tensor& out, cudaStream_t stream) {
  const int N = int(out.shape[1]), K = int(x.shape[1]), per_block = kSwiglu ? kRows / 2 : kRows;
  const unsigned blocks = unsigned((N + per_block - 1) / per_block);
  // The instance of kThreads threads, launched with that many (the block size is its template
  // argument, so the two cannot disagree).
  auto with_threads = [&]<int kThreads>() {
    STATELM_CUDA_CHECK(launch_programmatic(skinny_gemm_kernel<T, TO, M, kThreads, kSwiglu, kConv>, dim3(blocks),
                                           dim3(kThreads), stream, x.ptr<const T>(), x.stride[0], w.ptr<const T>(),
                                           w.stride[0], out.ptr<TO>(), out.stride[0], bias, scale, sums, conv, N, K,
                                           pdl_gemm_trigger()),
                       "matmul (decode) x ", x.describe(), " w ", w.describe());
  };
  const int threads = block_threads(K / (16 / int(sizeof(T))), M);
  if (threads == kThreadsSmallK) return with_threads.template operator()<kThreadsSmallK>();
  if constexpr (M == 1) {  // block_threads sizes one-token blocks to K
    if (threads == 160) return with_threads.template operator()<160>();
    if (threads == 192) return with_threads.template operator()<192>();
    if (threads == 224) return with_threads.template operator()<224>();
  }
  STATELM_CHECK(threads == kThreadsLargeK, "skinny_gemm: no kernel of ", threads, " threads for ", M, " tokens");
  with_threads.template operator()<kThreadsLargeK>();
}

// The conv step is instantiated where Gemm::run_conv reaches this kernel: one bf16 token, fp32
// batches up to kSkinnyMaxTokens, out of x's dtype.
template <typename T, typename TO, int M>
constexpr bool kConvInstance = std::is_same_v<T, TO> && (M == 1 || std::is_same_v<T, float>);

template <typename T, typename TO, bool kSwiglu, bool kConv, int M = 1>
void launch_for_tokens(int64_t tokens, const Tensor& x, const Tensor& w, const float* bias, const RowScale& scale,
                       const ResidualSums& sums, const ConvStep& conv, const Tensor& out, cudaStream_t stream) {
  if constexpr (M <= kSkinnyMaxTokens) {
    if (tokens == M) {
      if constexpr (!kConv || kConvInstance<T, TO, M>)
        launch<T, TO, M, kSwiglu, kConv>(x, w, bias, scale, sums, conv, out, stream);
      else
        fail(ErrorKind::Internal, "skinny_gemm: no conv-step kernel for ", M, " tokens of these dtypes");
      return;
    }
    launch_for_tokens<T, TO, kSwiglu, kConv, M + 1>(tokens, x, w, bias, scale, sums, conv, out, stream);
  }
}

template <bool kSwiglu, bool kConv = false>
void run(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const ResidualSums& sums,
         const Tensor& out, cudaStream_t stream, const ConvStep& conv = {}) {
  const float* b = bias.defined() ? bias.ptr<const float>() : nullptr;
  dispatch_float(x.dtype, "matmul", [&](auto in_tag) {
    using T_ = decltype(in_tag);
    dispatch_float(out.dtype, "matmul", [&](auto out_tag) {
      using TO = decltype(out_tag);
      launch_for_tokens<T_, TO, kSwiglu, kConv>(x.shape[0], x, w, b, scale, sums, conv, out, stream);
    });
  });
}

}  // namespace

bool skinny_operands_fit(const Tensor& x, const Tensor& w, const Tensor& bias, int64_t max_tokens) {
  const int64_t T = x.shape[0], K = x.shape[1];
  if (T < 1 || T > max_tokens || x.dtype != w.dtype || K > (int64_t(1) << 30) || w.shape[0] > (int64_t(1) << 30))
    return false;
  if (bias.defined() && (bias.dtype != DType::F32 || !bias.is_contiguous())) return false;
  const size_t es = dtype_size(x.dtype);
  return (size_t(K) * es) % 16 == 0 && aligned_for(x.data, x.stride[0], es, 16) &&
         aligned_for(w.data, w.stride[0], es, 16);
}

bool skinny_gemm_fits(const Tensor& x, const Tensor& w, const Tensor& bias) {
  return skinny_operands_fit(x, w, bias, kSkinnyMaxTokens);
}

int64_t skinny_gemm_blocks(int64_t n) { return (n + kRows - 1) / kRows; }

bool skinny_gemm(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const Tensor& out,
                 cudaStream_t stream, const ResidualSums& sums) {
  // Into the residual stream: of x's dtype.
  if (!skinny_gemm_fits(x, w, bias) || (sums.sumsq && out.dtype != x.dtype)) return false;
  run<false>(x, w, bias, scale, sums, out, stream);
  return true;
}

bool skinny_gemm_conv(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const Tensor& out,
                      const ConvStep& conv, cudaStream_t stream) {
  if (!skinny_gemm_fits(x, w, bias) || out.dtype != x.dtype || (x.dtype == DType::BF16 && x.shape[0] != 1))
    return false;
  run<false, true>(x, w, bias, scale, ResidualSums{}, out, stream, conv);
  return true;
}

bool skinny_gemm_swiglu(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const Tensor& out,
                        cudaStream_t stream) {
  if (!skinny_gemm_fits(x, w, bias) || w.shape[0] != 2 * out.shape[1] || out.dtype == DType::F16) return false;
  run<true>(x, w, bias, scale, ResidualSums{}, out, stream);
  return true;
}

}  // namespace statelm::cuda
