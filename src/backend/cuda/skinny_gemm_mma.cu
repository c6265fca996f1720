// Linear layers of decode batches on the tensor cores: out[T, N] = x[T, K] · w[N, K]ᵀ (+ bias)
// for bf16 and 2 ≤ T ≤ kSkinnyMmaMaxTokens, optionally divided row by row by an RMS whose squares
// the kernel ahead summed (RowScale, Mamba-2's gated norm).
//
// A decode batch of T sequences still reads each weight once per step, so the product should
// stream w at the copy bandwidth, as skinny_gemm.cu does for one token. That kernel spends T
// FMAs per weight per thread and becomes compute-bound past a few tokens (2.7B in_proj / out_proj:
// 64% / 48% of the copy rate at T = 4, 39% / 34% at T = 8), and cuBLASLt's choice for T = 16
// ran out_proj as a split-K GEMM, a reduction kernel and the row scale kernel (17.6 µs for
// 26 MB in ncu). Here every warp multiplies with mma.sync m16n8k16, the weights as the m16
// side (16 features a block) and the tokens as the n8 side, fed straight from global loads:
//
//   lane (g = lane / 4, q = lane % 4) loads w[n0 + g][32 s + 8 q .. + 7] and w[n0 + g + 8][..]
//   (16 bytes each) and, for token g of each n8 tile, x[g][32 s + 8 q .. + 7]. Under one
//   permutation of k shared by both operands (a dot product does not care about the order)
//   those 8 consecutive k are the lane's A and B fragments of two k16 steps: elements 0-1 play
//   mma's k = 2q, 2q + 1 and elements 2-3 k = 2q + 8, 2q + 9 in the first step, elements 4-7
//   the same in the second.
//
// so no shuffle, ldmatrix or shared memory sits between a load and its mma. The kWarps warps of
// a block split K in 32-element slices (warp i takes slices i, i + kWarps, ...), each issuing
// kBatch slices of loads at once; their fp32 partial products are summed through shared memory
// at the end, where the row scale and the bias are applied. Tokens past T and k past K read as
// zeros; features past N are read (clamped) and not stored.
//
// Launched as a programmatic dependent (pdl.cuh), like skinny_gemm.cu: the first batch of weight
// loads is in flight before the wait for the kernel ahead, x and the row sums are read after it.
//
// Measured (H200, kernel bench, 2.7B in_proj 10576 × 2560 / out_proj 2560 × 5120): T = 2-8
// 14.5-15.0 / 9.5-10.1 µs (86-88% / 61-65% of the copy rate), against 14.5-32.4 / 9.0-18.3 µs
// before; T = 16 18.2 / 11.9 µs (cuBLASLt: 15.2 / 10.8 µs, and after out_proj its split-K
// reduction and the row scale kernel, 3.4 + 4.1 µs in ncu). At T = 16 in_proj (no row scale) is
// slower here than on cuBLASLt, yet it stays here: sending the unscaled 9-16-token products to
// cuBLASLt made the decode step slower (b12 3.91 → 4.07, b16 4.45 → 4.60 ms; its kernels are not
// programmatic dependents, so the next kernel's prologue no longer overlaps them). One token
// stays on skinny_gemm.cu (13.5 / 8.3 µs, against 14.4 / 9.6 here).
// Past 16 tokens every block re-reads all of x (16 features a block), so cuBLASLt keeps them.
#include <algorithm>

#include "backend/cuda/core_kernels.h"
#include "backend/cuda/cuda_common.h"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/pdl.cuh"

namespace statelm::cuda {

namespace {

constexpr int kFeatures = 16;  // output features a block: the m16 side of its mma

template <typename TO, int NTok, int kWarps, int kBatch, int kMinBlocks>
__global__ void __launch_bounds__(kWarps * 32, kMinBlocks)
    skinny_mma_kernel(const bf16* x, int64_t ldx, int M, const bf16* __restrict__ w, int64_t ldw, TO* __restrict__ out,
                      int64_t ldo, const float* __restrict__ bias, RowScale scale, int N, int K, bool trigger) {
  constexpr int MR = 8 * NTok;
  // Each warp's fp32 partial products, [feature][token]; the + 1 spreads a warp's stores (8
  // features × 4 token pairs) over more banks than a power-of-two pitch would.
  __shared__ float partial[kWarps][kFeatures][MR + 1];
  __shared__ float inv_rms[MR];
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5), g = lane >> 2, q = lane & 3;
  const int n0 = int(blockIdx.x) * kFeatures;
  const int slices = (K + 31) / 32;
  // Features g and g + 8 of the block's 16 (past N: read, not stored).
  const bf16* wr[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) wr[h] = w + int64_t(min(n0 + g + 8 * h, N - 1)) * ldw + 8 * q;
  // Whether slice s holds this lane's 8 elements (K is a multiple of 8).
  auto in_k = [&](int s) { return s < slices && 32 * s + 8 * q < K; };
  uint4 wv[kBatch][2];
  auto load_weights = [&](int s0) {
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int s = s0 + u * kWarps;
      const bool ok = in_k(s);
#pragma unroll
      for (int h = 0; h < 2; ++h)
        wv[u][h] = ok ? __ldcs(reinterpret_cast<const uint4*>(wr[h] + 32 * s)) : make_uint4(0, 0, 0, 0);
    }
  };
  load_weights(warp);
  if (trigger) pdl_allow_dependents();
  pdl_wait();
  if (scale.sumsq) {  // the rows' sums of squares, written by the kernel ahead, while the weights fly
    for (int m = warp; m < M; m += kWarps) {
      const float s = warp_sum(strided_sum(scale.sumsq + m * scale.ld, scale.partials, lane, 32));
      if (lane == 0) inv_rms[m] = rsqrtf(s * scale.inv_n + scale.eps);
    }
  }
  // Token g of each n8 tile. A coherent load, not __ldg, and x not __restrict__: ld.global.nc
  // could be hoisted above pdl_wait() (skinny_gemm.cu says how that went wrong).
  const bf16* xr[NTok];
  bool row_ok[NTok];
#pragma unroll
  for (int j = 0; j < NTok; ++j) {
    row_ok[j] = 8 * j + g < M;
    xr[j] = x + int64_t(min(8 * j + g, M - 1)) * ldx + 8 * q;
  }
  float acc[NTok][4] = {};
  for (int s0 = warp; s0 < slices; s0 += kBatch * kWarps) {
    if (s0 != warp) load_weights(s0);
    uint4 xv[kBatch][NTok];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const bool ok = in_k(s0 + u * kWarps);
#pragma unroll
      for (int j = 0; j < NTok; ++j)
        xv[u][j] = ok && row_ok[j] ? *reinterpret_cast<const uint4*>(xr[j] + 32 * (s0 + u * kWarps))
                                   : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (s0 + u * kWarps >= slices) break;  // uniform across the warp
      const uint4 lo = wv[u][0], hi = wv[u][1];
      const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y}, a1[4] = {lo.z, hi.z, lo.w, hi.w};
#pragma unroll
      for (int j = 0; j < NTok; ++j) {
        mma::mma_bf16(acc[j], a0, xv[u][j].x, xv[u][j].y);
        mma::mma_bf16(acc[j], a1, xv[u][j].z, xv[u][j].w);
      }
    }
  }
  // Accumulator element r of n-tile j: feature g + 8 (r / 2), token 8 j + 2 q + r % 2.
#pragma unroll
  for (int j = 0; j < NTok; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) partial[warp][g + 8 * (r / 2)][8 * j + 2 * q + (r % 2)] = acc[j][r];
  __syncthreads();
  for (int i = int(threadIdx.x); i < MR * kFeatures; i += kWarps * 32) {
    const int row = i / kFeatures, col = i % kFeatures, n = n0 + col;
    if (row >= M || n >= N) continue;
    float sum = 0.0f;
#pragma unroll
    for (int v = 0; v < kWarps; ++v) sum += partial[v][col][row];
    if (scale.sumsq) sum *= inv_rms[row];
    if (bias) sum += bias[n];
    out[int64_t(row) * ldo + n] = from_f32<TO>(sum);
  }
}

// Block shape, measured on the H200 (statelm_cuda_kernel_bench --filter gemm and decode steps of
// the Mamba-2 2.7B shape, bench/RESULTS.md): 16 features and 8 warps a block, 5 slices of loads
// per warp in flight. Fewer features a block (8 or 4: more blocks, each m16 tile half or three
// quarters empty), 10 slices in flight, 4 or 16 warps all measured slower; more registers than
// 3 blocks an SM hold (one n8 tile of tokens) cost a second wave of blocks.
template <typename TO, int NTok>
void launch(const Tensor& x, const Tensor& w, const float* bias, const RowScale& scale, const Tensor& out,
            cudaStream_t stream) {
  constexpr int kWarps = 8, kBatch = 5, kMinBlocks = NTok == 1 ? 3 : 1;  // two n8 tiles spill at 3
  const int N = int(w.shape[0]), K = int(x.shape[1]), M = int(x.shape[0]);
  const unsigned blocks = unsigned((N + kFeatures - 1) / kFeatures);
  STATELM_CUDA_CHECK(launch_programmatic(skinny_mma_kernel<TO, NTok, kWarps, kBatch, kMinBlocks>, dim3(blocks),
                                         dim3(kWarps * 32), stream, x.ptr<const bf16>(), x.stride[0], M,
                                         w.ptr<const bf16>(), w.stride[0], out.ptr<TO>(), out.stride[0], bias, scale, N,
                                         K, pdl_gemm_trigger()),
                     "matmul (decode, tensor cores) x ", x.describe(), " w ", w.describe());
}

}  // namespace

bool skinny_gemm_mma_fits(const Tensor& x, const Tensor& w, const Tensor& bias) {
  return x.shape[0] >= 2 && x.dtype == DType::BF16 && skinny_operands_fit(x, w, bias, kSkinnyMmaMaxTokens);
}

bool skinny_gemm_mma(const Tensor& x, const Tensor& w, const Tensor& bias, const RowScale& scale, const Tensor& out,
                     cudaStream_t stream) {
  if (!skinny_gemm_mma_fits(x, w, bias)) return false;
  const int64_t T = x.shape[0];
  const float* b = bias.defined() ? bias.ptr<const float>() : nullptr;
  dispatch_float(out.dtype, "matmul", [&](auto out_tag) {
    using TO = decltype(out_tag);
    if (T <= 8)
      launch<TO, 1>(x, w, b, scale, out, stream);
    else
      launch<TO, 2>(x, w, b, scale, out, stream);
  });
  return true;
}

}  // namespace statelm::cuda
