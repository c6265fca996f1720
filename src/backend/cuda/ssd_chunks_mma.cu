// Mamba-2 SSD chunk products on bf16 tensor cores (mma.sync, fp32 accumulation), for bf16
// activations. Stages 2, 3 and 5 of ssd.cu's algorithm, each a product of 64 × 64 tiles per
// block of 4 warps (mma.cuh), operands staged in shared memory 64 deep along the reduced index:
//
//   2. CB[i][j]     = Σ_n C[i][n] B[j][n]              A = C  [i][n], B = B [j][n]  (both K-major)
//   3. S_loc[p][n]  = Σ_j (w_j x[j][p]) B[j][n]        A = wx [j][p], B = B [j][n]  (MN-major)
//   5. y[i][p]      = e^{cs_i} Σ_n C[i][n] S_in[p][n]  A = C  [i][n], B = S_in [p][n] (K-major)
//                   + Σ_{j ≤ i} M[i][j] x[j][p]        A = CB or M [i][j], B = x [j][p] (MN-major)
//      with w_j = e^{cs_{L−1} − cs_j} dt_j and M[i][j] = CB[i][j] e^{cs_i − cs_j} dt_j.
//
// Operands are rounded to bf16 where they enter a product (w_j x_j, S_in, CB, v_j x_j, M), as
// mamba_ssm's Triton kernels round theirs; accumulators, S_loc and the passed states stay fp32
// (CB is kept in bf16: it is only ever an operand). Stage 5 factors most decays out of the
// product (see there). The decays
// inside a chunk are exp2f of float differences of cs2 (cs in base 2, written by ssd.cu's
// cumsum stage with w_j): a float's error at |cs| ~ 1000 is ~1e-4 relative in the decay, well
// under the bf16 rounding of M. Rows of x, B, C and S_in are staged with
// 16-byte loads when they are 16-byte aligned (SsdArgs::*_vec16), one element at a time
// otherwise (odd test shapes); out-of-range rows and columns are staged as zeros, so any P, N,
// Q and partial chunk work.
#include "backend/cuda/mma.cuh"
#include "backend/cuda/ssd_args.cuh"

namespace statelm::cuda::ssd_detail {

namespace {

using mma::kLdTile;
using mma::kTileEdge;
using mma::kTileThreads;

struct Operands {
  bf16 a[kTileEdge * kLdTile];
  bf16 b[kTileEdge * kLdTile];
};

// dst[r][c] = scale(r) · src[r · stride + c] for r < rows, c < cols; 0 elsewhere (64 × 64).
// Thread e of the block moves packs of 8 consecutive columns: 8 threads cover a 128-byte row,
// so a warp reads four rows in full 128-byte lines.
template <bool kScaled, typename Scale>
__device__ __forceinline__ void stage_rows(bf16* dst, const bf16* src, int64_t stride, int rows, int cols, bool vec16,
                                           Scale scale) {
#pragma unroll
  for (int q = 0; q < kTileEdge * kTileEdge / 8 / kTileThreads; ++q) {
    const int e = int(threadIdx.x) + kTileThreads * q;
    const int r = e / 8, c = (e % 8) * 8;
    bf16* d = dst + r * kLdTile + c;
    if (vec16 && r < rows && c + 8 <= cols) {
      uint4 v = *reinterpret_cast<const uint4*>(src + int64_t(r) * stride + c);
      if constexpr (kScaled) {
        const float s = scale(r);
        __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&v);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 f = __bfloat1622float2(h[k]);
          h[k] = __floats2bfloat162_rn(f.x * s, f.y * s);
        }
      }
      *reinterpret_cast<uint4*>(d) = v;
    } else {
      const float s = kScaled && r < rows ? scale(r) : 1.0f;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const bool in = r < rows && c + k < cols;
        const bf16 v = in ? src[int64_t(r) * stride + c + k] : __float2bfloat16_rn(0.0f);
        d[k] = kScaled && in ? __float2bfloat16_rn(__bfloat162float(v) * s) : v;
      }
    }
  }
}

__device__ __forceinline__ void stage_rows(bf16* dst, const bf16* src, int64_t stride, int rows, int cols, bool vec16) {
  stage_rows<false>(dst, src, stride, rows, cols, vec16, [](int) { return 1.0f; });
}

// The lower-triangle tile (ti, tj), tj ≤ ti, numbered row by row: 0 → (0,0), 1 → (1,0), 2 → (1,1)...
__device__ __forceinline__ void lower_tile(int index, int& ti, int& tj) {
  ti = 0;
  while (index > ti) index -= ++ti;
  tj = index;
}

// ---- stage 2: CB = C Bᵀ per (chunk, group), tiles on or below the diagonal ----------------
__global__ void __launch_bounds__(kTileThreads) chunk_cb_kernel(SsdArgs<bf16> a, SpanItems items) {
  __shared__ __align__(16) Operands s;
  const int chunk = blockIdx.x / a.G, g = blockIdx.x % a.G;
  const Chunk ch = chunk_of(items, chunk);
  int ti, tj;
  lower_tile(int(blockIdx.y), ti, tj);
  const int i0 = ti * kTileEdge, j0 = tj * kTileEdge;
  if (i0 >= ch.L) return;  // uniform per block
  const bf16* Cg = a.C + (ch.t0 + i0) * a.Cs0 + int64_t(g) * a.Cs1;
  const bf16* Bg = a.B + (ch.t0 + j0) * a.Bs0 + int64_t(g) * a.Bs1;
  mma::Acc acc;
  mma::zero(acc);
  for (int n0 = 0; n0 < a.N; n0 += kTileEdge) {
    __syncthreads();
    stage_rows(s.a, Cg + n0, a.Cs0, ch.L - i0, a.N - n0, a.C_vec16);
    stage_rows(s.b, Bg + n0, a.Bs0, ch.L - j0, a.N - n0, a.B_vec16);
    __syncthreads();
    mma::slab_mma<true, true>(s.a, s.b, acc);
  }
  bf16* cb = a.cb + (int64_t(chunk) * a.G + g) * a.Q * a.Q;
  mma::store_tile(acc, [&](int row, int col, float v) {
    const int i = i0 + row, j = j0 + col;
    if (i < ch.L && j < ch.L) cb[int64_t(i) * a.Q + j] = __float2bfloat16_rn(v);
  });
}

// ---- stage 3: the chunk's own state S_loc[p, n] = Σ_j w_j x_j[p] B_j[n] ---------------------
__global__ void __launch_bounds__(kTileThreads) chunk_state_kernel(SsdArgs<bf16> a, SpanItems items) {
  __shared__ __align__(16) Operands s;
  const int chunk = blockIdx.x / a.H, h = blockIdx.x % a.H, g = h / (a.H / a.G);
  const Chunk ch = chunk_of(items, chunk);
  const int n_tiles_n = (a.N + kTileEdge - 1) / kTileEdge;
  const int p0 = int(blockIdx.y / n_tiles_n) * kTileEdge, n0 = int(blockIdx.y % n_tiles_n) * kTileEdge;
  const float* w = a.w + (int64_t(chunk) * a.H + h) * a.Q;
  const bf16* xh = a.x + ch.t0 * a.xs0 + int64_t(h) * a.xs1 + p0;
  const bf16* Bg = a.B + ch.t0 * a.Bs0 + int64_t(g) * a.Bs1 + n0;
  mma::Acc acc;
  mma::zero(acc);
  for (int j0 = 0; j0 < ch.L; j0 += kTileEdge) {
    __syncthreads();
    stage_rows<true>(s.a, xh + int64_t(j0) * a.xs0, a.xs0, ch.L - j0, a.P - p0, a.x_vec16,
                     [&](int r) { return w[j0 + r]; });
    stage_rows(s.b, Bg + int64_t(j0) * a.Bs0, a.Bs0, ch.L - j0, a.N - n0, a.B_vec16);
    __syncthreads();
    mma::slab_mma<false, false>(s.a, s.b, acc);
  }
  float* st = a.st + (int64_t(chunk) * a.H + h) * a.P * a.N;
  mma::store_tile(acc, [&](int row, int col, float v) {
    const int p = p0 + row, n = n0 + col;
    if (p < a.P && n < a.N) st[int64_t(p) * a.N + n] = v;
  });
}

// ---- stage 5: outputs of a (chunk, head) tile of 64 rows × 64 channels --------------------
// The decays factor through a reference r = ⌊cs2_{i0−1}⌋ (the cumsum just before the row tile,
// rounded down to an integer; 0 for the first tile): for a key j before the tile,
// 2^(cs2_i − cs2_j) = 2^(cs2_i − r) · 2^(r − cs2_j), where the second factor is ≤ 1 and the first
// < 2, since cs2 does not increase along the chunk (A < 0). So the keys before the tile are a plain
// product CB · (v ∘ X) with v_j = 2^(r − cs2_j) dt_j scaling X's rows as they are staged, the
// state term is C · (2^r S_in)ᵀ (an integer power of two: exact in bf16), and both are scaled by
// u_i = 2^(cs2_i − r) once at the end. Only the diagonal slab (keys inside the row tile, where a strongly
// decaying head could overflow such factors) builds M[i][j] = CB[i][j] 2^(cs2_i − cs2_j) dt_j
// element by element.
__global__ void __launch_bounds__(kTileThreads) chunk_scan_kernel(SsdArgs<bf16> a, SpanItems items) {
  __shared__ __align__(16) Operands s;
  const int chunk = blockIdx.x / a.H, h = blockIdx.x % a.H, g = h / (a.H / a.G);
  const Chunk ch = chunk_of(items, chunk);
  const int n_tiles_p = (a.P + kTileEdge - 1) / kTileEdge;
  const int i0 = int(blockIdx.y / n_tiles_p) * kTileEdge, p0 = int(blockIdx.y % n_tiles_p) * kTileEdge;
  if (i0 >= ch.L) return;  // uniform per block
  const int rows = ch.L - i0;
  const int64_t hb = (int64_t(chunk) * a.H + h) * a.Q;
  const float *cs2 = a.cs2 + hb, *dt = a.dtc + hb;  // read through L1: a row's 8 threads share them
  const float ref = i0 > 0 ? floorf(cs2[i0 - 1]) : 0.0f;
  const bf16* Ci = a.C + (ch.t0 + i0) * a.Cs0 + int64_t(g) * a.Cs1;
  const bf16* xh = a.x + ch.t0 * a.xs0 + int64_t(h) * a.xs1 + p0;
  const bf16* s_in = a.st_in16 + ((int64_t(chunk) * a.H + h) * a.P + p0) * a.N;
  const bf16* cb = a.cb + ((int64_t(chunk) * a.G + g) * a.Q + i0) * a.Q;  // row i0
  const bool cb_vec16 = a.Q % 8 == 0;

  // acc = C · (2^r S_in)ᵀ. S_in rows are 16-byte aligned when N % 8 == 0.
  mma::Acc acc;
  mma::zero(acc);
  const float s_scale = exp2f(ref);
  for (int n0 = 0; n0 < a.N; n0 += kTileEdge) {
    __syncthreads();
    stage_rows(s.a, Ci + n0, a.Cs0, rows, a.N - n0, a.C_vec16);
    stage_rows<true>(s.b, s_in + n0, a.N, a.P - p0, a.N - n0, a.N % 8 == 0, [&](int) { return s_scale; });
    __syncthreads();
    mma::slab_mma<true, true>(s.a, s.b, acc);
  }
  // acc += CB[tile rows, j] · (v ∘ X)[j] over the keys before the row tile (full slabs).
  for (int j0 = 0; j0 < i0; j0 += kTileEdge) {
    __syncthreads();
    stage_rows(s.a, cb + j0, a.Q, rows, kTileEdge, cb_vec16);
    stage_rows<true>(s.b, xh + int64_t(j0) * a.xs0, a.xs0, kTileEdge, a.P - p0, a.x_vec16,
                     [&](int r) { return exp2f(ref - cs2[j0 + r]) * dt[j0 + r]; });
    __syncthreads();
    mma::slab_mma<true, false>(s.a, s.b, acc);
  }
  const mma::TileCoord tc;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = tc.row(mi, 2 * half);
      const float u = i < rows ? exp2f(cs2[i0 + i] - ref) : 0.0f;
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) acc[mi][ni][2 * half] *= u, acc[mi][ni][2 * half + 1] *= u;
    }

  // The diagonal slab: M built element by element (8 consecutive j per thread), keys j ≤ i.
  __syncthreads();
#pragma unroll
  for (int q = 0; q < kTileEdge * kTileEdge / 8 / kTileThreads; ++q) {
    const int e = int(threadIdx.x) + kTileThreads * q;
    const int r = e / 8, c = (e % 8) * 8;
    __align__(16) bf16 m[8];
    if (r < rows && c <= r) {  // some of the 8 keys are on or below the diagonal
      const bf16* row = cb + int64_t(r) * a.Q + i0 + c;
      if (cb_vec16 && c + 8 <= rows) {
        *reinterpret_cast<uint4*>(m) = *reinterpret_cast<const uint4*>(row);
      } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) m[k] = c + k < rows ? row[k] : __float2bfloat16_rn(0.0f);
      }
      const float ci = cs2[i0 + r];
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const int j = i0 + c + k;
        m[k] = __float2bfloat16_rn(c + k <= r ? __bfloat162float(m[k]) * exp2f(ci - cs2[j]) * dt[j] : 0.0f);
      }
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) m[k] = __float2bfloat16_rn(0.0f);
    }
    *reinterpret_cast<uint4*>(s.a + r * kLdTile + c) = *reinterpret_cast<const uint4*>(m);
  }
  stage_rows(s.b, xh + int64_t(i0) * a.xs0, a.xs0, rows, a.P - p0, a.x_vec16);
  __syncthreads();
  mma::slab_mma<true, false>(s.a, s.b, acc);

  const float dskip = a.D.get(h, 0.0f);
  bf16* yh = a.out + (ch.t0 + i0) * a.os0 + int64_t(h) * a.os1 + p0;
  const bf16* xi = xh + int64_t(i0) * a.xs0;
  mma::store_tile(acc, [&](int i, int p, float v) {
    if (i < rows && p0 + p < a.P) {
      const float xv = __bfloat162float(xi[int64_t(i) * a.xs0 + p]);
      yh[int64_t(i) * a.os0 + p] = __float2bfloat16_rn(fmaf(dskip, xv, v));
    }
  });
}

unsigned tiles(int n) { return unsigned((n + kTileEdge - 1) / kTileEdge); }

}  // namespace

void chunk_states_mma(const SsdArgs<bf16>& a, const SpanItems& items, int64_t n_chunks, cudaStream_t stream) {
  const unsigned q_tiles = tiles(a.Q);
  chunk_cb_kernel<<<dim3(unsigned(n_chunks * a.G), q_tiles * (q_tiles + 1) / 2), kTileThreads, 0, stream>>>(a, items);
  STATELM_CUDA_LAUNCHED("ssd chunk_cb (mma)");
  chunk_state_kernel<<<dim3(unsigned(n_chunks * a.H), tiles(a.P) * tiles(a.N)), kTileThreads, 0, stream>>>(a, items);
  STATELM_CUDA_LAUNCHED("ssd chunk_state (mma)");
}

void chunk_outputs_mma(const SsdArgs<bf16>& a, const SpanItems& items, int64_t n_chunks, cudaStream_t stream) {
  chunk_scan_kernel<<<dim3(unsigned(n_chunks * a.H), tiles(a.Q) * tiles(a.P)), kTileThreads, 0, stream>>>(a, items);
  STATELM_CUDA_LAUNCHED("ssd chunk_scan (mma)");
}

}  // namespace statelm::cuda::ssd_detail
