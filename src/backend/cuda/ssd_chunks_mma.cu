// Mamba-2 SSD chunk products on Hopper's warpgroup tensor cores (wgmma, fp32 accumulation), for
// bf16 activations. Stages 2, 3 and 5 of ssd.cu's algorithm, each a product of 64 × 64 tiles per
// block of one warpgroup (wgmma.cuh), operands staged in shared memory 64 deep along the reduced
// index, in the swizzled tile layout the tensor cores read directly:
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
// 16-byte copies when they are 16-byte aligned (SsdArgs::*_vec16), one element at a time
// otherwise (odd test shapes); out-of-range rows and columns are staged as zeros, so any P, N,
// Q and partial chunk work. Each block runs its slabs through a ring of shared-memory stages
// (ring_pipeline): the copies of the next slabs are in flight while the current one multiplies.
// The per-token decay factors a block needs (w, or cs2 and dt) are copied into shared memory once.
#include <type_traits>

#include "backend/cuda/mma.cuh"
#include "backend/cuda/wgmma.cuh"
#include "backend/cuda/ssd_args.cuh"

namespace statelm::cuda::ssd_detail {

namespace {

using wgmma::Major;
using wgmma::swizzled;
constexpr int kTileEdge = wgmma::kEdge;
constexpr int kTileThreads = wgmma::kThreads;

// ---- staging: global -> shared memory, a ring of slabs in flight ---------------------------
// A slab is a 64 × 64 bf16 operand tile. Thread e of the block moves packs of 8 consecutive
// columns (16 bytes): pack q is row (e + 128 q) / 8, columns 8 ((e + 128 q) % 8) .. + 8, so 8
// threads cover a 128-byte row and a warp reads four rows in full lines.
//
// Slabs go straight from global to shared memory by 16-byte asynchronous copies (cp.async), a
// ring of S slabs deep: while slab k multiplies, the copies of the next S − 1 are in
// flight and hold no registers. Measured before this (H200, 16K tokens): with one slab in flight
// in registers the tensor cores waited on L2 latency, and moving the products from mma.sync to
// wgmma alone left chunk_scan at 407 µs against 390. The slabs that need a per-row factor or the
// mask (w x, v x, M) are rewritten in place by the thread that copied each pack (its own copies
// are complete after its cp.async wait: no barrier needed) before the block synchronises.
constexpr int kPacks = kTileEdge * kTileEdge / 8 / kTileThreads;
// Ring depth per kernel (each block's shared memory is S · 16 KB): 3 for chunk_scan and chunk_cb
// (4 blocks an SM, limited by chunk_scan's 128 registers), 2 for chunk_state, whose 96 registers
// allow 5 blocks when its ring fits 5 times (measured: session 13 in bench/RESULTS.md).
constexpr int kScanStages = 3, kStateStages = 2, kCbStages = 3;
constexpr int kScanBlocks = 4, kStateBlocks = 5;

struct Stage {
  bf16 a[wgmma::kTileElems];
  bf16 b[wgmma::kTileElems];
};
constexpr size_t kRingAlign = 1024;  // the swizzle's period: each tile starts on it

__device__ __forceinline__ int pack_row(int q) { return (int(threadIdx.x) + kTileThreads * q) / 8; }
__device__ __forceinline__ int pack_col(int q) { return (int(threadIdx.x) + kTileThreads * q) % 8 * 8; }

// The ring at the start of the block's dynamic shared memory, rounded up to 1024 bytes (the
// launch asks for kRingAlign more); what follows it is the kernel's float arrays.
__device__ __forceinline__ Stage* ring_of(unsigned char* dynamic) {
  const uint32_t at = static_cast<uint32_t>(__cvta_generic_to_shared(dynamic));
  return reinterpret_cast<Stage*>(dynamic + ((kRingAlign - at % kRingAlign) % kRingAlign));
}
template <int kStages>
__device__ __forceinline__ float* floats_after_ring(Stage* ring) {
  return reinterpret_cast<float*>(ring + kStages);
}

// p[0 .. n) then zeros (n ≤ 8), one element at a time: rows that are not 16-byte aligned, and
// the last pack of a row whose width is not a multiple of 8.
__device__ __forceinline__ uint4 gather8(const bf16* p, int n) {
  const bf16 zero = __float2bfloat16_rn(0.0f);
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) w[k] = mma::pack_bf16x2(2 * k < n ? p[2 * k] : zero, 2 * k + 1 < n ? p[2 * k + 1] : zero);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Starts copying src[r · stride + c] for r < rows, c < cols into the swizzled tile dst, zeros
// elsewhere: asynchronous 16-byte copies for whole packs of 16-byte aligned rows, ordinary loads
// and stores for the rest (odd test shapes). kLower: only packs that reach the diagonal (c ≤ r);
// the others are zeros. kFull: the caller knows the slab is whole (rows, cols ≥ 64) and its rows
// 16-byte aligned, so no pack is checked.
template <bool kLower = false, bool kFull = false>
__device__ __forceinline__ void copy_slab(bf16* dst, const bf16* src, int64_t stride, int rows, int cols, bool vec16) {
#pragma unroll
  for (int q = 0; q < kPacks; ++q) {
    const int r = pack_row(q), c = pack_col(q);
    bf16* to = dst + swizzled(r, c);
    const bf16* from = src + int64_t(r) * stride + c;
    const bool in = (kFull || (r < rows && c < cols)) && (!kLower || c <= r);
    if (in && (kFull || (vec16 && c + 8 <= cols)))
      mma::cp_async16(to, from, true);
    else
      *reinterpret_cast<uint4*>(to) = in ? gather8(from, cols - c) : make_uint4(0, 0, 0, 0);
  }
}

// 8 bf16 values times s, rounded to bf16 again.
__device__ __forceinline__ uint4 scale_pack(uint4 v, float s) {
  float f[8];
  unpack16<bf16>(v, f);
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) w[k] = mma::pack_bf16x2(f[2 * k] * s, f[2 * k + 1] * s);
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Rows of this thread's packs of the staged tile times scale(row), in place. scale must be
// finite for every row of the tile (the packs of rows past the operand are zeros).
template <typename Scale>
__device__ __forceinline__ void scale_slab(bf16* tile, Scale&& scale) {
#pragma unroll
  for (int q = 0; q < kPacks; ++q) {
    uint4* at = reinterpret_cast<uint4*>(tile + swizzled(pack_row(q), pack_col(q)));
    *at = scale_pack(*at, scale(pack_row(q)));
  }
}

// n slab products into acc through the ring: copy(k, stage) starts slab k's copies into a stage,
// prepare(k, stage) rewrites this thread's own packs of slab k once they have landed,
// multiply(k, stage) starts the product of the staged slab (wgmma::tile_mma_issue). The
// accumulators are complete when multiply is called (slab k − 1's product is waited for before
// the barrier) and when ring_pipeline returns; slab k − 1's product runs while slab k is waited
// for and prepared.
template <int kStages, typename Copy, typename Prepare, typename Multiply>
__device__ __forceinline__ void ring_pipeline(int n, Stage* ring, wgmma::Acc& acc, Copy&& copy, Prepare&& prepare,
                                              Multiply&& multiply) {
#pragma unroll
  for (int k = 0; k < kStages - 1; ++k) {
    if (k < n) copy(k, ring[k]);
    mma::cp_async_commit();  // one group per slab, empty past the end: the wait count stays fixed
  }
  for (int k = 0; k < n; ++k) {
    Stage& st = ring[k % kStages];
    mma::cp_async_wait<kStages - 2>();  // this thread's copies of slab k are complete
    prepare(k, st);
    wgmma::wait_all(acc);   // slab k − 1's product: its stage is refilled below
    wgmma::fence_stores();  // the tensor cores read what the copies and stores wrote
    __syncthreads();        // slab k is whole; every warp is done with slab k − 1's stage
    if (k + kStages - 1 < n) copy(k + kStages - 1, ring[(k + kStages - 1) % kStages]);
    mma::cp_async_commit();
    multiply(k, st);
  }
  wgmma::wait_all(acc);
}

// Copies v[0 .. n) into the block's shared array dst[0 .. padded), zeros after n (the caller
// synchronises before reading it).
__device__ __forceinline__ void stage_floats(float* dst, const float* v, int n, int padded) {
  for (int j = int(threadIdx.x); j < padded; j += kTileThreads) dst[j] = j < n ? v[j] : 0.0f;
}

// Tiles (or slabs) of kTileEdge that cover n.
__host__ __device__ constexpr int tiles(int n) { return (n + kTileEdge - 1) / kTileEdge; }
int padded_chunk(int Q) { return tiles(Q) * kTileEdge; }

// The lower-triangle tile (ti, tj), tj ≤ ti, numbered row by row: 0 → (0,0), 1 → (1,0), 2 → (1,1)...
__device__ __forceinline__ void lower_tile(int index, int& ti, int& tj) {
  ti = 0;
  while (index > ti) index -= ++ti;
  tj = index;
}

// f(std::true_type{}) or f(std::false_type{}): a block-uniform choice (a whole tile or not) made
// a compile-time one inside f.
template <typename F>
__device__ __forceinline__ void branch_on(bool flag, F&& f) {
  if (flag)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// ---- stage 2: CB = C Bᵀ per (chunk, group), tiles on or below the diagonal ----------------
// Dynamic shared memory: the ring.
__global__ void __launch_bounds__(kTileThreads) chunk_cb_kernel(SsdArgs<bf16> a, SpanItems items) {
  extern __shared__ unsigned char dynamic_s[];
  Stage* ring = ring_of(dynamic_s);
  const int chunk = blockIdx.x / a.G, g = blockIdx.x % a.G;
  const Chunk ch = chunk_of(items, chunk);
  int ti, tj;
  lower_tile(int(blockIdx.y), ti, tj);
  const int i0 = ti * kTileEdge, j0 = tj * kTileEdge;
  if (i0 >= ch.L) return;  // uniform per block
  const bf16* Cg = a.C + (ch.t0 + i0) * a.Cs0 + int64_t(g) * a.Cs1;
  const bf16* Bg = a.B + (ch.t0 + j0) * a.Bs0 + int64_t(g) * a.Bs1;
  wgmma::Acc acc;
  wgmma::zero(acc);
  ring_pipeline<kCbStages>(
      tiles(a.N), ring, acc,
      [&](int k, Stage& st) {
        const int n0 = k * kTileEdge;
        copy_slab(st.a, Cg + n0, a.Cs0, ch.L - i0, a.N - n0, a.C_vec16);
        copy_slab(st.b, Bg + n0, a.Bs0, ch.L - j0, a.N - n0, a.B_vec16);
      },
      [](int, Stage&) {}, [&](int, Stage& st) { wgmma::tile_mma_issue<Major::K, Major::K>(st.a, st.b, acc); });
  bf16* cb = a.cb + (int64_t(chunk) * a.G + g) * a.Q * a.Q;
  wgmma::store_tile(acc, [&](int row, int col, float v) {
    const int i = i0 + row, j = j0 + col;
    if (i < ch.L && j < ch.L) cb[int64_t(i) * a.Q + j] = __float2bfloat16_rn(v);
  });
}

// ---- stage 3: the chunk's own state S_loc[p, n] = Σ_j w_j x_j[p] B_j[n] ---------------------
// Dynamic shared memory: the ring, then w of the chunk's tokens, zero-padded to whole slabs.
__global__ void __launch_bounds__(kTileThreads, kStateBlocks) chunk_state_kernel(SsdArgs<bf16> a, SpanItems items) {
  extern __shared__ unsigned char dynamic_s[];
  Stage* ring = ring_of(dynamic_s);
  float* w_s = floats_after_ring<kStateStages>(ring);
  const int n_tiles_n = tiles(a.N), n_tiles = tiles(a.P) * n_tiles_n;
  const int item = int(blockIdx.x) / n_tiles, tile = int(blockIdx.x) % n_tiles;  // see chunk_scan_kernel
  const int chunk = item / a.H, h = item % a.H, g = h / (a.H / a.G);
  const Chunk ch = chunk_of(items, chunk);
  const int p0 = tile / n_tiles_n * kTileEdge, n0 = tile % n_tiles_n * kTileEdge;
  const int slabs = tiles(ch.L);
  stage_floats(w_s, a.w + (int64_t(chunk) * a.H + h) * a.Q, ch.L, slabs * kTileEdge);
  const bf16* xh = a.x + ch.t0 * a.xs0 + int64_t(h) * a.xs1 + p0;
  const bf16* Bg = a.B + ch.t0 * a.Bs0 + int64_t(g) * a.Bs1 + n0;
  wgmma::Acc acc;
  wgmma::zero(acc);
  auto pipeline = [&](auto full_tag) {
    constexpr bool kFull = decltype(full_tag)::value;
    ring_pipeline<kStateStages>(
        slabs, ring, acc,
        [&](int k, Stage& st) {
          const int j0 = k * kTileEdge;
          copy_slab<false, kFull>(st.a, xh + int64_t(j0) * a.xs0, a.xs0, ch.L - j0, a.P - p0, a.x_vec16);
          copy_slab<false, kFull>(st.b, Bg + int64_t(j0) * a.Bs0, a.Bs0, ch.L - j0, a.N - n0, a.B_vec16);
        },
        [&](int k, Stage& st) {
          const float* wk = w_s + k * kTileEdge;
          scale_slab(st.a, [&](int r) { return wk[r]; });
        },
        [&](int, Stage& st) { wgmma::tile_mma_issue<Major::MN, Major::MN>(st.a, st.b, acc); });
  };
  __syncthreads();  // w_s is staged (the first prepare reads it)
  // Whole slabs, 16-byte rows: unchecked staging (copy_slab's kFull), uniform per block.
  branch_on(ch.L % kTileEdge == 0 && a.P - p0 >= kTileEdge && a.N - n0 >= kTileEdge && a.x_vec16 && a.B_vec16,
            pipeline);
  float* st = a.st + (int64_t(chunk) * a.H + h) * a.P * a.N;
  wgmma::store_tile(acc, [&](int row, int col, float v) {
    const int p = p0 + row, n = n0 + col;
    if (p < a.P && n < a.N) st[int64_t(p) * a.N + n] = v;
  });
}

// The diagonal slab's M[i][j] = CB[i][j] 2^(cs2_i − cs2_j) dt_j for keys j ≤ i < rows, zero
// elsewhere, in place of this thread's packs of the staged CB; cs2 and dt of the row tile's own tokens.
__device__ __forceinline__ void mask_slab(bf16* tile, int rows, const float* cs2, const float* dt) {
  // A thread's packs all cover the same 8 key columns (pack_col does not depend on q): their cs2
  // and dt are read once.
  const int c = pack_col(0);
  float cs2_j[8], dt_j[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) cs2_j[k] = cs2[c + k], dt_j[k] = dt[c + k];
#pragma unroll
  for (int q = 0; q < kPacks; ++q) {
    const int r = pack_row(q);
    uint4* at = reinterpret_cast<uint4*>(tile + swizzled(r, c));
    const uint4 v = *at;
    uint32_t w[4] = {v.x, v.y, v.z, v.w};
    if (r < rows) {  // rows past the chunk stay zero (their padded cs2 could overflow the decay)
      const float ci = cs2[r];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[k]));
        const int j = c + 2 * k;
        w[k] = mma::pack_bf16x2(j <= r ? f.x * exp2f(ci - cs2_j[2 * k]) * dt_j[2 * k] : 0.0f,
                                j + 1 <= r ? f.y * exp2f(ci - cs2_j[2 * k + 1]) * dt_j[2 * k + 1] : 0.0f);
      }
    }
    *at = make_uint4(w[0], w[1], w[2], w[3]);
  }
}

// acc[i][·] *= u(i) for the tile rows i of this thread's accumulators (two rows: Coord).
template <typename RowScale>
__device__ __forceinline__ void scale_rows(wgmma::Acc& acc, RowScale&& u) {
  const wgmma::Coord tc;
  const float u0 = u(tc.row(0)), u1 = u(tc.row(2));
#pragma unroll
  for (int i = 0; i < 32; ++i) acc.d[i] *= (i & 2) ? u1 : u0;
}

// ---- stage 5: outputs of a (chunk, head) tile of 64 rows × 64 channels --------------------
// The decays factor through a reference r = ⌊cs2_{i0−1}⌋ (the cumsum just before the row tile,
// rounded down to an integer; 0 for the first tile): for a key j before the tile,
// 2^(cs2_i − cs2_j) = 2^(cs2_i − r) · 2^(r − cs2_j), where the second factor is ≤ 1 and the first
// < 2, since cs2 does not increase along the chunk (A < 0). So the keys before the tile are a plain
// product CB · (v ∘ X) with v_j = 2^(r − cs2_j) dt_j scaling X's rows as they are staged, the
// state term is 2^r (C · S_inᵀ) (an integer power of two on the fp32 sum: exact), and both are scaled by
// u_i = 2^(cs2_i − r) once at the end. Only the diagonal slab (keys inside the row tile, where a strongly
// decaying head could overflow such factors) builds M[i][j] = CB[i][j] 2^(cs2_i − cs2_j) dt_j
// element by element.
//
// One pipeline of slabs: the state slabs (C, S_in over n), the key slabs before the row tile
// (CB, v ∘ X), the diagonal slab (M, X). Dynamic shared memory: cs2 and dt of the keys up to the
// end of the row tile (zero-padded). The diagonal slab leaves the tile's own rows of X staged,
// which the D · x term reads.
// At most 128 registers (4 blocks an SM): measured on the H200 at 16K tokens, 4 blocks 1.14 ms for
// the whole SSD, 3 blocks (168 registers) 1.24 ms, 2 (201) 1.49 ms.
__global__ void __launch_bounds__(kTileThreads, kScanBlocks) chunk_scan_kernel(SsdArgs<bf16> a, SpanItems items) {
  extern __shared__ unsigned char dynamic_s[];
  Stage* ring = ring_of(dynamic_s);
  float* decay_s = floats_after_ring<kScanStages>(ring);
  // The tiles of one (chunk, head) are neighbours in the grid, so the blocks that re-read its X
  // and S_in slabs run in the same wave and find them in L2 (with the item in the slow grid
  // index, a wave held one row tile of many heads and each re-read came from DRAM); the row
  // tiles with the most slabs start first.
  const int n_tiles_p = tiles(a.P), n_tiles = tiles(a.Q) * n_tiles_p;
  const int item = int(blockIdx.x) / n_tiles, tile = n_tiles - 1 - int(blockIdx.x) % n_tiles;
  const int chunk = item / a.H, h = item % a.H, g = h / (a.H / a.G);
  const Chunk ch = chunk_of(items, chunk);
  const int i0 = tile / n_tiles_p * kTileEdge, p0 = tile % n_tiles_p * kTileEdge;
  if (i0 >= ch.L) return;  // uniform per block
  const int rows = ch.L - i0;
  const int64_t hb = (int64_t(chunk) * a.H + h) * a.Q;
  const float ref = i0 > 0 ? floorf(a.cs2[hb + i0 - 1]) : 0.0f;
  // cs2 of the keys up to the end of the row tile; in place of dt, v_j = 2^(r − cs2_j) dt_j for
  // the keys before the tile and dt_j for the tile's own (zero-padded).
  float* cs2 = decay_s;                  // [0, i0 + 64)
  float* dtv = decay_s + i0 + kTileEdge;  // [0, i0 + 64)
  for (int j = int(threadIdx.x); j < i0 + kTileEdge; j += kTileThreads) {
    const bool in = j < min(ch.L, i0 + kTileEdge);
    const float c = in ? a.cs2[hb + j] : 0.0f, d = in ? a.dtc[hb + j] : 0.0f;
    cs2[j] = c;
    dtv[j] = j < i0 ? exp2f(ref - c) * d : d;
  }
  __syncthreads();  // the first prepare may read them
  const bf16* Ci = a.C + (ch.t0 + i0) * a.Cs0 + int64_t(g) * a.Cs1;
  const bf16* xh = a.x + ch.t0 * a.xs0 + int64_t(h) * a.xs1 + p0;
  const bf16* s_in = a.st_in16 + ((int64_t(chunk) * a.H + h) * a.P + p0) * a.N;
  const bf16* cb = a.cb + ((int64_t(chunk) * a.G + g) * a.Q + i0) * a.Q;  // row i0
  const bool cb_vec16 = a.Q % 8 == 0;
  const float s_scale = exp2f(ref);
  const int n_state = tiles(a.N), n_before = i0 / kTileEdge;
  const int n_slabs = n_state + n_before + 1;
  // A whole tile (the common case: every block of a long prompt but a sequence's last chunk)
  // stages its slabs unchecked (copy_slab's kFull); the choice is uniform per block.
  const bool full = rows >= kTileEdge && a.P - p0 >= kTileEdge && a.N % kTileEdge == 0 && a.C_vec16 && a.x_vec16 &&
                    cb_vec16;

  wgmma::Acc acc;
  wgmma::zero(acc);
  auto pipeline = [&](auto full_tag) {
    constexpr bool kFull = decltype(full_tag)::value;
    ring_pipeline<kScanStages>(
        n_slabs, ring, acc,
        [&](int k, Stage& st) {
          if (k < n_state) {  // acc = C · S_inᵀ; S_in rows are 16-byte aligned when N % 8 == 0
            const int n0 = k * kTileEdge;
            copy_slab<false, kFull>(st.a, Ci + n0, a.Cs0, rows, a.N - n0, a.C_vec16);
            copy_slab<false, kFull>(st.b, s_in + n0, a.N, a.P - p0, a.N - n0, a.N % 8 == 0);
          } else if (k < n_state + n_before) {  // acc += CB[tile rows, j] · (v ∘ X)[j]
            const int j0 = (k - n_state) * kTileEdge;
            copy_slab<false, kFull>(st.a, cb + j0, a.Q, rows, kTileEdge, cb_vec16);
            copy_slab<false, kFull>(st.b, xh + int64_t(j0) * a.xs0, a.xs0, kTileEdge, a.P - p0, a.x_vec16);
          } else {  // the diagonal slab: keys j ≤ i inside the row tile
            copy_slab<true, kFull>(st.a, cb + i0, a.Q, rows, rows, cb_vec16);
            copy_slab<false, kFull>(st.b, xh + int64_t(i0) * a.xs0, a.xs0, rows, a.P - p0, a.x_vec16);
          }
        },
        [&](int k, Stage& st) {
          if (k < n_state) return;
          if (k < n_state + n_before) {
            const float* vk = dtv + (k - n_state) * kTileEdge;
            return scale_slab(st.b, [&](int r) { return vk[r]; });
          }
          mask_slab(st.a, rows, cs2 + i0, dtv + i0);
        },
        [&](int k, Stage& st) {
          if (k < n_state) return wgmma::tile_mma_issue<Major::K, Major::K>(st.a, st.b, acc);
          // 2^r S_in, exactly (a power of two), on the fp32 sum rather than on bf16 operands
          if (k == n_state) scale_rows(acc, [&](int) { return s_scale; });
          if (k < n_state + n_before) return wgmma::tile_mma_issue<Major::K, Major::MN>(st.a, st.b, acc);
          scale_rows(acc, [&](int i) { return i < rows ? exp2f(cs2[i0 + i] - ref) : 0.0f; });
          wgmma::tile_mma_issue<Major::K, Major::MN>(st.a, st.b, acc);
        });
  };
  branch_on(full, pipeline);

  // y = acc + D x, with x from the staged diagonal slab (the last stage used).
  Stage& s = ring[(n_slabs - 1) % kScanStages];
  const float dskip = a.D.get(h, 0.0f);
  bf16* yh = a.out + (ch.t0 + i0) * a.os0 + int64_t(h) * a.os1 + p0;
  const wgmma::Coord tc;
  // y0, y1 of the accumulator pair (i, i + 1): row tc.row(i), columns p, p + 1 (p even).
  auto y_pair = [&](int i, float& y0, float& y1) {
    const __nv_bfloat162 x2 = *reinterpret_cast<const __nv_bfloat162*>(s.b + swizzled(tc.row(i), tc.col(i)));
    y0 = fmaf(dskip, __low2float(x2), acc.d[i]);
    y1 = fmaf(dskip, __high2float(x2), acc.d[i + 1]);
  };
  if (full && reinterpret_cast<uintptr_t>(yh) % 16 == 0 && a.os0 % 8 == 0) {
    // A whole tile whose rows of y start on 16 bytes goes out through shared memory (the A
    // tile, free after the last product) in 16-byte packs of full 32-byte sectors: an
    // accumulator's bf16 pairs fill only half a sector per store instruction.
    __syncthreads();  // every warp is done reading s.a
#pragma unroll
    for (int i = 0; i < 32; i += 2) {
      float y0, y1;
      y_pair(i, y0, y1);
      *reinterpret_cast<__nv_bfloat162*>(s.a + swizzled(tc.row(i), tc.col(i))) = __floats2bfloat162_rn(y0, y1);
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < kPacks; ++q) {
      const int r = pack_row(q), c = pack_col(q);
      *reinterpret_cast<uint4*>(yh + int64_t(r) * a.os0 + c) = *reinterpret_cast<const uint4*>(s.a + swizzled(r, c));
    }
    return;
  }
  // Otherwise pairs of columns stored as one bf16x2 where they start on 4 bytes.
  const bool pairs = full && reinterpret_cast<uintptr_t>(yh) % 4 == 0 && a.os0 % 2 == 0;
#pragma unroll
  for (int i = 0; i < 32; i += 2) {
    const int r = tc.row(i), p = tc.col(i);  // p even
    if (!pairs && r >= rows) continue;
    float y0, y1;
    y_pair(i, y0, y1);
    bf16* at = yh + int64_t(r) * a.os0 + p;
    if (pairs || (p0 + p + 1 < a.P && reinterpret_cast<uintptr_t>(at) % 4 == 0)) {
      *reinterpret_cast<__nv_bfloat162*>(at) = __floats2bfloat162_rn(y0, y1);
    } else {
      if (p0 + p < a.P) at[0] = __float2bfloat16_rn(y0);
      if (p0 + p + 1 < a.P) at[1] = __float2bfloat16_rn(y1);
    }
  }
}

// A kernel's dynamic shared memory: the ring (aligned) and float_bytes of its own arrays. The ring
// alone is past the 48 KB a launch gets without asking, so the kernel's limit is raised.
template <typename Kernel>
size_t dynamic_shared(Kernel kernel, int stages, size_t float_bytes) {
  const size_t bytes = kRingAlign + stages * sizeof(Stage) + float_bytes;
  if (bytes > 48 * 1024)
    STATELM_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
                       "ssd: ", bytes, " bytes of shared memory per block");
  return bytes;
}

}  // namespace

void chunk_states_mma(const SsdArgs<bf16>& a, const SpanItems& items, int64_t n_chunks, cudaStream_t stream) {
  const unsigned q_tiles = unsigned(tiles(a.Q));
  const size_t cb_bytes = dynamic_shared(chunk_cb_kernel, kCbStages, 0);
  chunk_cb_kernel<<<dim3(unsigned(n_chunks * a.G), q_tiles * (q_tiles + 1) / 2), kTileThreads, cb_bytes, stream>>>(
      a, items);
  STATELM_CUDA_LAUNCHED("ssd chunk_cb (mma)");
  const size_t state_bytes =
      dynamic_shared(chunk_state_kernel, kStateStages, size_t(padded_chunk(a.Q)) * sizeof(float));
  chunk_state_kernel<<<unsigned(n_chunks * a.H * tiles(a.P) * tiles(a.N)), kTileThreads, state_bytes, stream>>>(
      a, items);
  STATELM_CUDA_LAUNCHED("ssd chunk_state (mma)");
}

void chunk_outputs_mma(const SsdArgs<bf16>& a, const SpanItems& items, int64_t n_chunks, cudaStream_t stream) {
  const size_t bytes = dynamic_shared(chunk_scan_kernel, kScanStages, 2 * size_t(padded_chunk(a.Q)) * sizeof(float));
  chunk_scan_kernel<<<unsigned(n_chunks * a.H * tiles(a.Q) * tiles(a.P)), kTileThreads, bytes, stream>>>(a, items);
  STATELM_CUDA_LAUNCHED("ssd chunk_scan (mma)");
}

}  // namespace statelm::cuda::ssd_detail
