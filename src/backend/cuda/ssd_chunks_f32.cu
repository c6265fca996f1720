// Mamba-2 SSD chunk products on fp32 CUDA cores, for float activations (the exact path: it
// matches the CPU backend to ~1e-5). bf16 activations take ssd_chunks_mma.cu instead.
//
// Stages 2, 3 and 5 of ssd.cu's algorithm are tiled matrix products: 64 × 64 output tiles per
// block of 256 threads, 4 × 4 outputs per thread, operands staged through shared memory in
// slabs of 16 along the reduced dimension, fp32 accumulation.
#include <type_traits>

#include "backend/cuda/ssd_args.cuh"

namespace statelm::cuda::ssd_detail {

namespace {

constexpr int kThreads = 256;
constexpr int kTile = 64;  // output tile edge of the chunk products
constexpr int kSlab = 16;  // reduced-dimension depth staged per step
constexpr int kLd = kTile + 1;

// ---- tiled products -----------------------------------------------------------------------
// Thread (ty, tx) = (tid / 16, tid % 16) owns rows ty + 16 r and columns tx + 16 c (r, c < 4)
// of a 64 × 64 tile: in a warp, the A reads are two broadcast addresses and the B reads 16
// consecutive words, so the slab reads are free of bank conflicts.
struct Slabs {
  float a[kSlab][kLd];  // a[k][m]: row m of the left operand, reduced index k
  float b[kSlab][kLd];  // b[k][n]: column n of the right operand
};

__device__ __forceinline__ void slab_fma(const Slabs& s, float (&acc)[4][4]) {
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int k = 0; k < kSlab; ++k) {
    float av[4], bv[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) av[r] = s.a[k][ty + 16 * r];
#pragma unroll
    for (int c = 0; c < 4; ++c) bv[c] = s.b[k][tx + 16 * c];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(av[r], bv[c], acc[r][c]);
  }
}

// dst[k][m] = f(k, m) for the whole slab. kAlongK: consecutive threads take consecutive k (the
// source is contiguous along the reduced index, e.g. C[i][n] reduced over n); otherwise
// consecutive m (e.g. x[j][p] reduced over j). Either way global reads are coalesced.
template <bool kAlongK, typename F>
__device__ __forceinline__ void fill_slab(float (*dst)[kLd], F&& f) {
#pragma unroll
  for (int q = 0; q < kSlab * kTile / kThreads; ++q) {
    const int e = threadIdx.x + kThreads * q;
    const int k = kAlongK ? e % kSlab : e / kTile;
    const int m = kAlongK ? e / kSlab : e % kTile;
    dst[k][m] = f(k, m);
  }
}

// What stage_slab multiplies a staged element by: nothing (the default), or scale(row) of the
// source row.
struct Unscaled {};

// Stages one slab of a row-major source matrix: element (row, col) = src[row · stride + col]
// for row < rows, col < cols (0 past them, partial chunks and tiles), times scale(row) when a
// scale is given. src points at the slab's first element. kAlongK: the source's rows are the
// tile's m and its columns the reduced index k (C[i][n] reduced over n); otherwise its rows are
// k and its columns m (x[j][p] reduced over j). fill_slab keeps the reads coalesced either way.
template <bool kAlongK, typename T, typename Scale = Unscaled>
__device__ __forceinline__ void stage_slab(float (*dst)[kLd], const T* src, int64_t stride, int rows, int cols,
                                           Scale scale = {}) {
  fill_slab<kAlongK>(dst, [&](int k, int m) {
    const int row = kAlongK ? m : k, col = kAlongK ? k : m;
    if (row >= rows || col >= cols) return 0.0f;
    const float v = to_f32(src[int64_t(row) * stride + col]);
    if constexpr (std::is_same_v<Scale, Unscaled>)
      return v;
    else
      return scale(row) * v;
  });
}

// The epilogue of a tile product: store(row, col, value) for each of this thread's 16 outputs,
// row and col its place in the 64 × 64 tile (ty + 16 r, tx + 16 c). store checks the bounds.
template <typename Store>
__device__ __forceinline__ void store_tile(const float (&acc)[4][4], Store&& store) {
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) store(ty + 16 * r, tx + 16 * c, acc[r][c]);
}

__device__ __forceinline__ void zero(float (&acc)[4][4]) {
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
}

// ---- stage 2: CB = C Bᵀ per (chunk, group), tiles on or below the diagonal ----------------
template <typename T>
__global__ void __launch_bounds__(kThreads) chunk_cb_kernel(SsdArgs<T> a, SpanItems items) {
  __shared__ Slabs s;
  const int chunk = blockIdx.x / a.G, g = blockIdx.x % a.G;
  const Chunk ch = chunk_of(items, chunk);
  const int n_tiles = (a.Q + kTile - 1) / kTile;
  const int ti = blockIdx.y / n_tiles, tj = blockIdx.y % n_tiles;
  if (tj > ti || ti * kTile >= ch.L) return;  // uniform per block
  const int i0 = ti * kTile, j0 = tj * kTile;
  const T* Cg = a.C + ch.t0 * a.Cs0 + int64_t(g) * a.Cs1;
  const T* Bg = a.B + ch.t0 * a.Bs0 + int64_t(g) * a.Bs1;
  float acc[4][4];
  zero(acc);
  for (int n0 = 0; n0 < a.N; n0 += kSlab) {
    __syncthreads();
    stage_slab<true>(s.a, Cg + int64_t(i0) * a.Cs0 + n0, a.Cs0, ch.L - i0, a.N - n0);
    stage_slab<true>(s.b, Bg + int64_t(j0) * a.Bs0 + n0, a.Bs0, ch.L - j0, a.N - n0);
    __syncthreads();
    slab_fma(s, acc);
  }
  float* cb = a.cb + (int64_t(chunk) * a.G + g) * a.Q * a.Q;
  store_tile(acc, [&](int row, int col, float v) {
    const int i = i0 + row, j = j0 + col;
    if (i < ch.L && j < ch.L) cb[int64_t(i) * a.Q + j] = v;
  });
}

// ---- stage 3: the chunk's own state S_loc[p, n] = Σ_j w_j x_j[p] B_j[n] ---------------------
template <typename T>
__global__ void __launch_bounds__(kThreads) chunk_state_kernel(SsdArgs<T> a, SpanItems items) {
  __shared__ Slabs s;
  __shared__ float w[kSlab];
  const int chunk = blockIdx.x / a.H, h = blockIdx.x % a.H, g = h / (a.H / a.G);
  const Chunk ch = chunk_of(items, chunk);
  const int n_tiles_n = (a.N + kTile - 1) / kTile;
  const int p0 = (blockIdx.y / n_tiles_n) * kTile, n0 = (blockIdx.y % n_tiles_n) * kTile;
  const int64_t hb = (int64_t(chunk) * a.H + h) * a.Q;
  const double cs_last = a.cs[hb + ch.L - 1];
  const T* xh = a.x + ch.t0 * a.xs0 + int64_t(h) * a.xs1;
  const T* Bg = a.B + ch.t0 * a.Bs0 + int64_t(g) * a.Bs1;
  float acc[4][4];
  zero(acc);
  for (int j0 = 0; j0 < ch.L; j0 += kSlab) {
    __syncthreads();
    if (threadIdx.x < kSlab) {
      const int j = j0 + threadIdx.x;
      w[threadIdx.x] = j < ch.L ? expf(float(cs_last - a.cs[hb + j])) * a.dtc[hb + j] : 0.0f;
    }
    __syncthreads();
    stage_slab<false>(s.a, xh + int64_t(j0) * a.xs0 + p0, a.xs0, ch.L - j0, a.P - p0, [&](int k) { return w[k]; });
    stage_slab<false>(s.b, Bg + int64_t(j0) * a.Bs0 + n0, a.Bs0, ch.L - j0, a.N - n0);
    __syncthreads();
    slab_fma(s, acc);
  }
  float* st = a.st + (int64_t(chunk) * a.H + h) * a.P * a.N;
  store_tile(acc, [&](int row, int col, float v) {
    const int p = p0 + row, n = n0 + col;
    if (p < a.P && n < a.N) st[int64_t(p) * a.N + n] = v;
  });
}

// ---- stage 5: outputs of a (chunk, head) tile of rows × channels --------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads) chunk_scan_kernel(SsdArgs<T> a, SpanItems items) {
  __shared__ Slabs s;
  __shared__ double cs_i[kTile];
  __shared__ double cs_j[kSlab];
  __shared__ float dt_j[kSlab];
  const int chunk = blockIdx.x / a.H, h = blockIdx.x % a.H, g = h / (a.H / a.G);
  const Chunk ch = chunk_of(items, chunk);
  const int n_tiles_p = (a.P + kTile - 1) / kTile;
  const int ti = blockIdx.y / n_tiles_p;
  const int i0 = ti * kTile, p0 = (blockIdx.y % n_tiles_p) * kTile;
  if (i0 >= ch.L) return;  // uniform per block
  const int64_t hb = (int64_t(chunk) * a.H + h) * a.Q;
  const T* Cg = a.C + ch.t0 * a.Cs0 + int64_t(g) * a.Cs1;
  const T* xh = a.x + ch.t0 * a.xs0 + int64_t(h) * a.xs1;
  const float* s_in = a.st + (int64_t(chunk) * a.H + h) * a.P * a.N;
  const float* cb = a.cb + (int64_t(chunk) * a.G + g) * a.Q * a.Q;
  const int ty = threadIdx.x / 16;
  if (threadIdx.x < kTile) {
    const int i = i0 + threadIdx.x;
    cs_i[threadIdx.x] = i < ch.L ? a.cs[hb + i] : 0.0;
  }

  // y = C · S_inᵀ, then each row scaled by e^{cs_i}.
  float acc[4][4];
  zero(acc);
  for (int n0 = 0; n0 < a.N; n0 += kSlab) {
    __syncthreads();
    stage_slab<true>(s.a, Cg + int64_t(i0) * a.Cs0 + n0, a.Cs0, ch.L - i0, a.N - n0);
    stage_slab<true>(s.b, s_in + int64_t(p0) * a.N + n0, a.N, a.P - p0, a.N - n0);
    __syncthreads();
    slab_fma(s, acc);
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const float e = expf(float(cs_i[ty + 16 * r]));
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[r][c] *= e;
  }

  // y += (CB ∘ e^{cs_i − cs_j} ∘ dt_j, j ≤ i) · X over the key columns up to this row tile.
  const int j_end = min(ch.L, i0 + kTile);
  for (int j0 = 0; j0 < j_end; j0 += kSlab) {
    __syncthreads();
    if (threadIdx.x < kSlab) {
      const int j = j0 + threadIdx.x;
      cs_j[threadIdx.x] = j < ch.L ? a.cs[hb + j] : 0.0;
      dt_j[threadIdx.x] = j < ch.L ? a.dtc[hb + j] : 0.0f;
    }
    __syncthreads();
    fill_slab<true>(s.a, [&](int k, int m) {
      const int i = i0 + m, j = j0 + k;
      if (i >= ch.L || j > i) return 0.0f;
      return cb[int64_t(i) * a.Q + j] * expf(float(cs_i[m] - cs_j[k])) * dt_j[k];
    });
    stage_slab<false>(s.b, xh + int64_t(j0) * a.xs0 + p0, a.xs0, ch.L - j0, a.P - p0);
    __syncthreads();
    slab_fma(s, acc);
  }

  const float dskip = a.D.get(h, 0.0f);
  T* yh = a.out + ch.t0 * a.os0 + int64_t(h) * a.os1;
  store_tile(acc, [&](int row, int col, float v) {
    const int i = i0 + row, p = p0 + col;
    if (i < ch.L && p < a.P) {
      const float xv = to_f32(xh[int64_t(i) * a.xs0 + p]);
      yh[int64_t(i) * a.os0 + p] = from_f32<T>(fmaf(dskip, xv, v));
    }
  });
}

}  // namespace

void chunk_states_f32(const SsdArgs<float>& a, const SpanItems& items, int64_t n_chunks, cudaStream_t stream) {
  const char* op = "ssd";
  const unsigned q_tiles = unsigned((a.Q + kTile - 1) / kTile);
  chunk_cb_kernel<float><<<dim3(unsigned(n_chunks * a.G), q_tiles * q_tiles), kThreads, 0, stream>>>(a, items);
  STATELM_CUDA_LAUNCHED(op, " chunk_cb");
  const unsigned p_tiles = unsigned((a.P + kTile - 1) / kTile), n_tiles = unsigned((a.N + kTile - 1) / kTile);
  chunk_state_kernel<float><<<dim3(unsigned(n_chunks * a.H), p_tiles * n_tiles), kThreads, 0, stream>>>(a, items);
  STATELM_CUDA_LAUNCHED(op, " chunk_state");
}

void chunk_outputs_f32(const SsdArgs<float>& a, const SpanItems& items, int64_t n_chunks, cudaStream_t stream) {
  const unsigned q_tiles = unsigned((a.Q + kTile - 1) / kTile), p_tiles = unsigned((a.P + kTile - 1) / kTile);
  chunk_scan_kernel<float><<<dim3(unsigned(n_chunks * a.H), q_tiles * p_tiles), kThreads, 0, stream>>>(a, items);
  STATELM_CUDA_LAUNCHED("ssd chunk_scan");
}

}  // namespace statelm::cuda::ssd_detail
