// Causal GQA attention of prefill spans on bf16 tensor cores (mma.sync m16n8k16, fp32
// accumulators): the FlashAttention-2 loop over attention.cu's work items (attention_tile.cuh),
// for bf16 q/k/v/caches with head_dim a multiple of 16 up to 128 (64 and 128 native, others
// padded to them). attention.cu appends the spans' k, v to the paged cache first, plans the
// items and the key splits, and merges the splits; this file runs the tiles.
//
// A block of 4 warps takes a tile of 64 or 128 query rows (token, head) that share KV head g
// (tokens × the group's heads, head fastest; attention.cu picks the height, prefill_tile_rows);
// warp w owns 16 · MT rows (MT = 1 or 2 m16 tiles). MT 1 keeps the warp's Q as mma A fragments
// in registers for the whole walk; MT 2 (FlashAttention-2's shape: each K or V fragment read
// from shared memory feeds two mma, half the shared-memory traffic per mma) keeps the Q tile
// in shared memory and reads its fragments per k step. Q is unscaled bf16. The keys
// 0 .. (last row's position) are walked in tiles of kPrefillKeys = 64, gathered row by row from
// the paged cache (block table lookup per key) into shared memory with cp.async, two stages:
// tile j + 1 is in flight while tile j is multiplied. Per tile and warp:
//
//   S = Q Kᵀ            16 × 64, K as the mma B operand through ldmatrix (non-trans) of K[key][dim]
//   S ← S · scale·log2e, keys past a row's position → −inf (only on tiles that reach the
//                       warp's first row: the diagonal)
//   m' = max(m, rowmax S); α = 2^(m − m'); P = 2^(S − m'); l ← α l + rowsum P; O ← α O
//   O += P V            P rounded to bf16 in registers (the accumulator layout of n-tiles 2k and
//                       2k + 1 is the A fragment of keys 16k .. 16k + 15), V through ldmatrix.trans
//
// The row statistics: a thread holds rows lane / 4 and lane / 4 + 8 of its warp's 16, the four
// lanes of a quad share them, so row maxima are two xor-shuffles; l stays a per-thread partial
// sum until the end. At the end O / l is written as bf16 (or, with key splits, O, m, l to the
// split-K scratch for attention.cu's merge).
//
// Shared memory: K and V tiles of 64 rows × (DH + 8) bf16 per stage (the 16-byte pad puts the 8
// row addresses of an ldmatrix phase in distinct bank groups): 36 KiB for DH 64, 68 KiB for DH
// 128, plus the 128-row Q tile for MT 2 (18 / 34 KiB). Registers (ptxas, sm_90a, no spills):
// MT 1 167 (DH 64) / 211 (DH 128), MT 2 241 / 255. Keys past the tile's last row read as zeros (cp.async zero-fill), never as what the cache
// holds there: a NaN would survive P = 0.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/wgmma.cuh"

namespace statelm::cuda::attn {

namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kWarps = kThreads / 32;
constexpr int kKeys = kPrefillKeys;

// MT: m16 tiles of rows per warp (1: 64-row tiles, 2: 128-row tiles).
template <int DH, int MT>
struct PrefillSmem {
  static constexpr int kLd = DH + 8;  // row pitch in bf16
  bf16 k[2][kKeys][kLd];
  bf16 v[2][kKeys][kLd];
  bf16 q[MT == 1 ? 1 : kWarps * 16 * MT][kLd];  // MT > 1: the Q tile (MT = 1 keeps Q in registers)
};

// How q and out may be accessed: bf16 pairs as one 32-bit word when the pointer and both row
// strides allow it, single elements otherwise (the op tests slice q from odd-width rows).
struct Access {
  bool q_pairs, out_pairs;
};

__device__ __forceinline__ uint32_t load_pair(const bf16* p, bool pairs) {
  return pairs ? *reinterpret_cast<const uint32_t*>(p) : mma::pack_bf16x2(p[0], p[1]);
}

// Blocks per SM the registers are sized for. MT 1: O (DH / 2), Q (DH / 4) and S (32) registers
// per thread; DH 128 fits 2 blocks without spills (3 spill), DH 64 fits 3. MT 2: O (DH), S (64),
// Q read from shared memory per k step; 2 blocks.
template <int DH, int MT>
constexpr int kMinBlocks = MT == 1 && DH == 64 ? 3 : 2;

template <int DH, int MT>
__global__ void __launch_bounds__(kThreads, kMinBlocks<DH, MT>)
    prefill_kernel(AttnArgs<bf16> a, SpanItems items, int n_items, Access acc) {
  using Smem = PrefillSmem<DH, MT>;
  constexpr int kDk = DH / 16;    // k16 steps of Q Kᵀ (over dims)
  constexpr int kSn = kKeys / 8;  // n8 tiles of S (over keys)
  constexpr int kOn = DH / 8;     // n8 tiles of O (over dims)
  constexpr int kWarpRows = 16 * MT;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Smem& s = *reinterpret_cast<Smem*>(smem_raw);

  // Items in reverse: a span's later tiles see more keys, so the longest blocks start first.
  const int g = int(blockIdx.x) % a.hkv;
  const int item = n_items - 1 - int(blockIdx.x) / a.hkv;
  const ItemRef it = find_item(items, item);
  const SeqSpan sp = items.spans[it.span];
  const int split = int(blockIdx.z);
  const int t0 = it.piece * a.tokens;
  const int n_tok = min(a.tokens, sp.len - t0);
  const int rows = n_tok * a.group;
  const int pos0 = sp.pos + t0;  // position of the tile's first token
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int mat = lane / 8, in_mat = lane % 8;  // ldmatrix: which 8 × 8 matrix this lane addresses
  const int fr = lane / 4, fc = 2 * (lane % 4);  // fragment row and column of this lane
  const int r0 = kWarpRows * warp;               // the warp's rows: r0 .. r0 + 16 MT − 1

  // The query row of fragment row half h of m-tile mt, its token and head.
  const auto row_of = [&](int mt, int h) { return r0 + 16 * mt + fr + 8 * h; };
  const auto q_ptr = [&](int row) {
    const int64_t tok = int64_t(sp.start) + t0 + row / a.group;
    const int head = g * a.group + row % a.group;
    return a.q + tok * a.qs0 + int64_t(head) * a.qs1;
  };

  // Position of each row this thread holds, or −1 past the tile (masks every key).
  int qpos[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) qpos[mt][h] = row_of(mt, h) < rows ? pos0 + row_of(mt, h) / a.group : -1;
  // The warp's last row position (no key tile past it does anything) and its first one when
  // all its rows exist (tiles wholly before it need no mask), −1 otherwise.
  const int warp_last = r0 < rows ? pos0 + (min(r0 + kWarpRows - 1, rows - 1)) / a.group : -1;
  const int warp_first = r0 + kWarpRows <= rows ? pos0 + r0 / a.group : -1;

  // Q as A fragments. MT 1: in registers, qf[kd] = rows (fr, fr + 8) × dims 16 kd + (fc, fc + 8).
  // MT > 1: the tile in shared memory (written here, visible after the walk's first barrier),
  // fragments loaded per k step. Zero past the tile.
  uint32_t qf[MT == 1 ? kDk : 1][4];
  if constexpr (MT == 1) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row_of(0, h);
      const bf16* qrow = row < rows ? q_ptr(row) : nullptr;
#pragma unroll
      for (int kd = 0; kd < kDk; ++kd)
#pragma unroll
        for (int j = 0; j < 2; ++j)
          qf[kd][h + 2 * j] = qrow && 16 * kd + 8 * j < a.dh ? load_pair(qrow + 16 * kd + 8 * j + fc, acc.q_pairs) : 0u;
    }
  } else {
    constexpr int kPairs = DH / 2;
    for (int e = int(threadIdx.x); e < kWarps * kWarpRows * kPairs; e += kThreads) {
      const int row = e / kPairs, d = 2 * (e % kPairs);
      *reinterpret_cast<uint32_t*>(&s.q[row][d]) = row < rows && d < a.dh ? load_pair(q_ptr(row) + d, acc.q_pairs) : 0u;
    }
  }

  const int n_keys = pos0 + n_tok;  // keys the last row sees
  const int tile_begin = split * a.tiles_per_split;
  const int tile_end = min((n_keys + kKeys - 1) / kKeys, tile_begin + a.tiles_per_split);

  // Gathers key tile kt into `stage`: thread moves 16-byte piece c of rows rr, rr + kPass, ...
  // A warp covers kSub consecutive rr, so 16 distinct rows per tile; lane L < 16 looks up the
  // cache offset of one of them (block table, division by the block size) and the lanes that
  // copy that row read it by shuffle: one lookup per lane instead of one per row and thread.
  auto load_tile = [&](int kt, int stage) {
    constexpr int kPieces = DH / 8, kPass = kThreads / kPieces, kSub = 32 / kPieces;
    static_assert(kSub * (kKeys / kPass) == 16, "16 rows per warp and tile");
    const int c = int(threadIdx.x) % kPieces, rr = int(threadIdx.x) / kPieces;
    const int key0 = kt * kKeys;
    int64_t my_off = -1;  // −1: past the keys
    {
      const int r = warp * kSub + (lane % kSub) + kPass * ((lane % 16) / kSub);
      if (key0 + r < n_keys) my_off = cache_offset(a, it.span, key0 + r, g);
    }
#pragma unroll
    for (int i = 0; i < kKeys / kPass; ++i) {
      const int r = rr + i * kPass;
      const int64_t row_off = __shfl_sync(0xffffffffu, my_off, kSub * i + lane / kPieces);
      const bool in = row_off >= 0 && 8 * c < a.dh;  // dims past head_dim (padded up to DH): zeros
      const int64_t off = in ? row_off + 8 * c : 0;
      mma::cp_async16(&s.k[stage][r][8 * c], a.k_cache + off, in);
      mma::cp_async16(&s.v[stage][r][8 * c], a.v_cache + off, in);
    }
  };

  float o[MT][kOn][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int n = 0; n < kOn; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[mt][n][e] = 0.0f;
#pragma unroll
    for (int h = 0; h < 2; ++h) m[mt][h] = -INFINITY, l[mt][h] = 0.0f;
  }

  if (tile_begin < tile_end) load_tile(tile_begin, 0);
  mma::cp_async_commit();
  for (int kt = tile_begin; kt < tile_end; ++kt) {
    const int stage = (kt - tile_begin) & 1;
    // The other stage was last read in the previous iteration, before its closing barrier.
    if (kt + 1 < tile_end) load_tile(kt + 1, stage ^ 1);
    mma::cp_async_commit();  // possibly empty: keeps one group per iteration
    mma::cp_async_wait<1>();  // this tile's group has landed (for this thread's copies) ...
    __syncthreads();          // ... and for everyone's
    const int key0 = kt * kKeys;
    if (key0 <= warp_last) {  // warp-uniform: a warp whose rows all precede the tile skips it
      // S = Q Kᵀ.
      float sc[MT][kSn][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < kSn; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) sc[mt][n][e] = 0.0f;
#pragma unroll
      for (int kd = 0; kd < kDk; ++kd) {
        uint32_t qa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if constexpr (MT == 1) {
#pragma unroll
            for (int e = 0; e < 4; ++e) qa[mt][e] = qf[kd][e];
          } else {  // matrices (rows 0-7, dims 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15)
            mma::ldmatrix_x4(qa[mt], &s.q[r0 + 16 * mt + lane % 16][16 * kd + (lane / 16) * 8]);
          }
        }
#pragma unroll
        for (int np = 0; np < kSn / 2; ++np) {  // keys 16 np .. 16 np + 15: two n8 tiles
          uint32_t b[4];  // (keys 0-7, dims 0-7), (keys 0-7, dims 8-15), (keys 8-15, dims 0-7), (8-15, 8-15)
          mma::ldmatrix_x4(b, &s.k[stage][16 * np + (mat / 2) * 8 + in_mat][16 * kd + (mat % 2) * 8]);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma::mma_bf16(sc[mt][2 * np], qa[mt], b[0], b[1]);
            mma::mma_bf16(sc[mt][2 * np + 1], qa[mt], b[2], b[3]);
          }
        }
      }

      // Scale to log2 units, mask, new row maxima; P = 2^(S − m'), l and O rescaled.
      const bool masked = key0 + kKeys - 1 > warp_first;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < kSn; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float v = sc[mt][n][e] * a.scale_log2;
            if (masked && key0 + 8 * n + fc + (e & 1) > qpos[mt][e >> 1]) v = -INFINITY;
            sc[mt][n][e] = v;
            mx[e >> 1] = fmaxf(mx[e >> 1], v);
          }
        float m_use[2], alpha[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
          mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
          const float m_new = fmaxf(m[mt][h], mx[h]);
          m_use[h] = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet: P = 0, α = 0
          alpha[h] = exp2f(m[mt][h] - m_use[h]);
          m[mt][h] = m_new;
          l[mt][h] *= alpha[h];
        }
#pragma unroll
        for (int n = 0; n < kSn; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float p = exp2f(sc[mt][n][e] - m_use[e >> 1]);
            sc[mt][n][e] = p;
            l[mt][e >> 1] += p;
          }
#pragma unroll
        for (int n = 0; n < kOn; ++n)
#pragma unroll
          for (int e = 0; e < 4; ++e) o[mt][n][e] *= alpha[e >> 1];
      }

      // O += P V, keys 16 kk .. 16 kk + 15 at a time.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          pa[mt][0] = mma::pack_bf16x2(sc[mt][2 * kk][0], sc[mt][2 * kk][1]);          // row fr,     keys fc
          pa[mt][1] = mma::pack_bf16x2(sc[mt][2 * kk][2], sc[mt][2 * kk][3]);          // row fr + 8, keys fc
          pa[mt][2] = mma::pack_bf16x2(sc[mt][2 * kk + 1][0], sc[mt][2 * kk + 1][1]);  // row fr,     keys fc + 8
          pa[mt][3] = mma::pack_bf16x2(sc[mt][2 * kk + 1][2], sc[mt][2 * kk + 1][3]);  // row fr + 8, keys fc + 8
        }
#pragma unroll
        for (int dp = 0; dp < DH / 16; ++dp) {  // dims 16 dp .. 16 dp + 15: two n8 tiles
          uint32_t b[4];  // (keys 0-7, dims 0-7), (keys 8-15, dims 0-7), (keys 0-7, dims 8-15), (8-15, 8-15)
          mma::ldmatrix_x4_trans(b, &s.v[stage][16 * kk + (mat % 2) * 8 + in_mat][16 * dp + (mat / 2) * 8]);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            mma::mma_bf16(o[mt][2 * dp], pa[mt], b[0], b[1]);
            mma::mma_bf16(o[mt][2 * dp + 1], pa[mt], b[2], b[3]);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  mma::cp_async_wait<0>();

  const bool split_mode = gridDim.z > 1;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float lsum = l[mt][h];
      lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
      lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
      const int row = row_of(mt, h);
      if (row >= rows) continue;
      if (split_mode) {
        const int64_t base = split_row(item, a.hkv, g, int(gridDim.z), split, row, a.tile_rows);
        float* dst = a.o_part + base * a.dh;
#pragma unroll
        for (int n = 0; n < kOn; ++n)
          if (8 * n < a.dh) *reinterpret_cast<float2*>(dst + 8 * n + fc) = make_float2(o[mt][n][2 * h], o[mt][n][2 * h + 1]);
        if (fc == 0) {
          a.ml_part[2 * base] = m[mt][h];
          a.ml_part[2 * base + 1] = lsum;
        }
      } else {
        const int64_t tok = int64_t(sp.start) + t0 + row / a.group;
        const int head = g * a.group + row % a.group;
        bf16* dst = a.out + tok * a.os0 + int64_t(head) * a.os1;
        const float inv = 1.0f / lsum;  // l ≥ 1: the row's own key is always in range
#pragma unroll
        for (int n = 0; n < kOn; ++n) {
          if (8 * n >= a.dh) break;  // padded dims
          const float v0 = o[mt][n][2 * h] * inv, v1 = o[mt][n][2 * h + 1] * inv;
          bf16* d = dst + 8 * n + fc;
          if (acc.out_pairs) {
            *reinterpret_cast<__nv_bfloat162*>(d) = __floats2bfloat162_rn(v0, v1);
          } else {
            d[0] = __float2bfloat16_rn(v0);
            d[1] = __float2bfloat16_rn(v1);
          }
        }
      }
    }
}

// ---- Hopper: warpgroup products (wgmma) ------------------------------------------------------
//
// A warpgroup (128 threads) owns 64 query rows; a block of WG warpgroups takes a tile of 64 · WG
// rows and shares every K/V tile among them. Q stays in registers as wgmma A fragments (the
// layout the mma.sync kernel above loads too), P goes from the S accumulators to A fragments
// without leaving the registers (wgmma::a_fragment), K and V are read by the tensor cores straight
// from shared memory: per 64-key tile a thread issues 4 · DT products for S and as many for P V,
// where the mma.sync kernel loads every B fragment with ldmatrix and issues 64 mma per warp.
//
// K/V tiles land with cp.async in a ring of kStages, kAhead tiles ahead, in the swizzled layout
// (key rows of 64 dims: K is the K-major B of S = Q Kᵀ, V the MN-major B of P V). Per key tile j
// a warpgroup issues S_j = Q K_jᵀ and then O += P_{j−1} V_{j−1} (the previous tile's), waits for
// S_j only, computes P_j's exponentials while P_{j−1} V_{j−1} still runs, then waits for it and
// rescales O: the softmax of one tile overlaps the tensor cores' work on the other.
template <int WG>
constexpr int kWgStages = WG == 1 ? 3 : 4;  // WG 1: 2 blocks per SM fit in shared memory

template <int DT>
struct WgStage {  // one key tile: DT tiles of 64 dims for K and for V
  bf16 k[DT][wgmma::kTileElems];
  bf16 v[DT][wgmma::kTileElems];
};

template <int DT, int WG>
constexpr size_t wg_smem_bytes() {
  return kWgStages<WG> * sizeof(WgStage<DT>) + 1024;  // + alignment of the ring to 1024 bytes
}

template <int DT, int WG>
__global__ void __launch_bounds__(128 * WG, WG == 1 ? 2 : 1)
    prefill_wgmma_kernel(AttnArgs<bf16> a, SpanItems items, int n_items, Access acc) {
  namespace wg = wgmma;
  constexpr int kBlockThreads = 128 * WG;
  constexpr int DH = 64 * DT;
  constexpr int kStages = kWgStages<WG>, kAhead = kStages - 2;
  constexpr int kSteps = kKeys / 16;  // k16 steps of P V (over keys); S has 4 · DT (over dims)
  extern __shared__ unsigned char smem_raw[];
  WgStage<DT>* ring = reinterpret_cast<WgStage<DT>*>(
      smem_raw + ((1024 - mma::smem_addr(smem_raw) % 1024) % 1024));

  const int g = int(blockIdx.x) % a.hkv;
  const int item = n_items - 1 - int(blockIdx.x) / a.hkv;
  const ItemRef it = find_item(items, item);
  const SeqSpan sp = items.spans[it.span];
  const int split = int(blockIdx.z);
  const int t0 = it.piece * a.tokens;
  const int n_tok = min(a.tokens, sp.len - t0);
  const int rows = n_tok * a.group;
  const int pos0 = sp.pos + t0;
  // This thread's warpgroup, through a shuffle so that the compiler sees a warp-uniform value: a
  // product in a branch it cannot prove uniform gets serialised (ptxas C7520).
  const int wgi = __shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0);
  const int warp = (int(threadIdx.x) / 32) % 4, lane = int(threadIdx.x) % 32;
  const int fr = lane / 4, fc = 2 * (lane % 4);
  const int w0 = 64 * wgi;       // the warpgroup's rows: w0 .. w0 + 63
  const int r0 = w0 + 16 * warp;  // the warp's rows: r0 .. r0 + 15

  const auto q_ptr = [&](int row) {
    const int64_t tok = int64_t(sp.start) + t0 + row / a.group;
    const int head = g * a.group + row % a.group;
    return a.q + tok * a.qs0 + int64_t(head) * a.qs1;
  };
  int qpos[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) qpos[h] = r0 + fr + 8 * h < rows ? pos0 + (r0 + fr + 8 * h) / a.group : -1;
  const int warp_first = r0 + 16 <= rows ? pos0 + r0 / a.group : -1;  // −1: some rows missing, always mask
  const int wg_last = w0 < rows ? pos0 + min(w0 + 63, rows - 1) / a.group : -1;

  // Q as A fragments: qf[kd] covers dims 16 kd .. 16 kd + 15. Zero past the tile and head_dim.
  uint32_t qf[4 * DT][4];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = r0 + fr + 8 * h;
    const bf16* qrow = row < rows ? q_ptr(row) : nullptr;
#pragma unroll
    for (int kd = 0; kd < 4 * DT; ++kd)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        qf[kd][h + 2 * j] = qrow && 16 * kd + 8 * j < a.dh ? load_pair(qrow + 16 * kd + 8 * j + fc, acc.q_pairs) : 0u;
  }

  const int n_keys = pos0 + n_tok;
  const int tile_begin = split * a.tiles_per_split;
  const int tile_end = min((n_keys + kKeys - 1) / kKeys, tile_begin + a.tiles_per_split);
  // Key tiles from wg_end on hold no key this warpgroup's rows see (uniform: see wgi).
  const int wg_end = __shfl_sync(0xffffffffu, max(tile_begin, min(tile_end, wg_last < 0 ? 0 : wg_last / kKeys + 1)), 0);

  // Gathers key tile kt into ring stage `stage`: thread moves 16-byte piece c of rows
  // rr, rr + kPass, ...; the rows' cache offsets are looked up once per warp and row by kDistinct
  // lanes and passed by shuffle (the block-table lookup and the division cost more than the copy).
  auto load_tile = [&](int kt, int stage) {
    constexpr int kPieces = DH / 8, kPass = kBlockThreads / kPieces, kSub = 32 / kPieces;
    constexpr int kDistinct = kSub * (kKeys / kPass);
    static_assert(kDistinct <= 32, "one lookup per lane");
    const int c = int(threadIdx.x) % kPieces, rr = int(threadIdx.x) / kPieces;
    const int gw = int(threadIdx.x) / 32;
    const int key0 = kt * kKeys;
    int64_t my_off = -1;
    if (lane < kDistinct) {
      const int r = gw * kSub + lane % kSub + kPass * (lane / kSub);
      if (key0 + r < n_keys) my_off = cache_offset(a, it.span, key0 + r, g);
    }
    WgStage<DT>& st = ring[stage];
    const int t = c / 8, cc = c % 8;  // dim tile and 16-byte chunk within its row
#pragma unroll
    for (int i = 0; i < kKeys / kPass; ++i) {
      const int r = rr + i * kPass;
      const int64_t row_off = __shfl_sync(0xffffffffu, my_off, kSub * i + lane / kPieces);
      const bool in = row_off >= 0 && 8 * c < a.dh;
      const int64_t off = in ? row_off + 8 * c : 0;
      const int dst = r * wg::kEdge + (((cc ^ r) & 7) << 3);  // wgmma::swizzled(r, 8 cc)
      mma::cp_async16(&st.k[t][dst], a.k_cache + off, in);
      mma::cp_async16(&st.v[t][dst], a.v_cache + off, in);
    }
  };

  wg::Acc o[DT];
#pragma unroll
  for (int t = 0; t < DT; ++t) wg::zero(o[t]);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  uint32_t pf[kSteps][4];  // P of the previous key tile as A fragments
  bool have_p = false;     // warpgroup-uniform
  int p_stage = 0;

  // O += P V of the tile in ring stage p_stage.
  const auto issue_pv = [&]() {
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks)
#pragma unroll
      for (int t = 0; t < DT; ++t)
        wg::mma_async<wg::Major::MN>(pf[ks], wg::descriptor(ring[p_stage].v[t]) + (ks * wg::kStepBytes<wg::Major::MN> >> 4),
                                     o[t], true);
  };
  const auto wait_pv = [&]() {
    wg::wait<0>();
#pragma unroll
    for (int t = 0; t < DT; ++t) wg::fence_operands(o[t]);
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks) wg::fence_operands(pf[ks]);
  };

#pragma unroll
  for (int p = 0; p < kAhead; ++p) {
    if (tile_begin + p < tile_end) load_tile(tile_begin + p, p);
    mma::cp_async_commit();
  }
  for (int kt = tile_begin; kt < tile_end; ++kt) {
    const int j = kt - tile_begin;
    mma::cp_async_wait<kAhead - 1>();  // tile kt has landed (this thread's copies) ...
    wg::fence_stores();                // ... visible to the tensor cores' reads ...
    __syncthreads();                   // ... for everyone's copies; and tile kt − 2's stage is free
    if (kt + kAhead < tile_end) load_tile(kt + kAhead, (j + kAhead) % kStages);
    mma::cp_async_commit();  // possibly empty: one group per iteration
    const int stage = j % kStages;
    if (kt < wg_end) {
      wg::Acc s;
      wg::zero(s);
      wg::fence_operands(s);
#pragma unroll
      for (int t = 0; t < DT; ++t) wg::fence_operands(o[t]);  // o's rescale stays before the products
      wg::fence();
#pragma unroll
      for (int t = 0; t < DT; ++t)
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)
          wg::mma_async<wg::Major::K>(qf[4 * t + ks], wg::descriptor(ring[stage].k[t]) + (ks * wg::kStepBytes<wg::Major::K> >> 4),
                                      s, t > 0 || ks > 0);
      wg::commit();
      if (have_p) issue_pv();
      wg::commit();  // possibly empty
      wg::wait<1>();  // S is complete; P V may still run
      wg::fence_operands(s);

      // Scale to log2 units, mask, new row maxima, P = 2^(S − m') in place, l rescaled and summed.
      const int key0 = kt * kKeys;
      const bool masked = key0 + kKeys - 1 > warp_first;
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const int h = (i >> 1) & 1;
        float v = s.d[i] * a.scale_log2;
        if (masked && key0 + 8 * (i >> 2) + fc + (i & 1) > qpos[h]) v = -INFINITY;
        s.d[i] = v;
        mx[h] = fmaxf(mx[h], v);
      }
      float m_use[2], alpha[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        const float m_new = fmaxf(m[h], mx[h]);
        m_use[h] = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet: P = 0, α = 0
        alpha[h] = exp2f(m[h] - m_use[h]);
        m[h] = m_new;
        l[h] *= alpha[h];
      }
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const float p = exp2f(s.d[i] - m_use[(i >> 1) & 1]);
        s.d[i] = p;
        l[(i >> 1) & 1] += p;
      }
      wait_pv();  // unconditional: the compiler must see every product waited for on every path (C7515)
#pragma unroll
      for (int t = 0; t < DT; ++t)
#pragma unroll
        for (int i = 0; i < 32; ++i) o[t].d[i] *= alpha[(i >> 1) & 1];
#pragma unroll
      for (int ks = 0; ks < kSteps; ++ks) wg::a_fragment(s, ks, pf[ks]);
      have_p = true;
      p_stage = stage;
    } else if (have_p) {  // the warpgroup's last key tile is behind it: finish its P V now,
      wg::fence();        // before the ring reuses that stage
      issue_pv();
      wg::commit();
      wait_pv();
      have_p = false;
    }
  }
  if (have_p) {
    wg::fence();
    issue_pv();
    wg::commit();
    wait_pv();
  }
  mma::cp_async_wait<0>();

  const bool split_mode = gridDim.z > 1;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float lsum = l[h];
    lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
    lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
    const int row = r0 + fr + 8 * h;
    if (row >= rows) continue;
    if (split_mode) {
      const int64_t base = split_row(item, a.hkv, g, int(gridDim.z), split, row, a.tile_rows);
      float* dst = a.o_part + base * a.dh;
#pragma unroll
      for (int t = 0; t < DT; ++t)
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const int col = 64 * t + 8 * n + fc;
          if (col < a.dh)
            *reinterpret_cast<float2*>(dst + col) = make_float2(o[t].d[4 * n + 2 * h], o[t].d[4 * n + 2 * h + 1]);
        }
      if (fc == 0) {
        a.ml_part[2 * base] = m[h];
        a.ml_part[2 * base + 1] = lsum;
      }
    } else {
      const int64_t tok = int64_t(sp.start) + t0 + row / a.group;
      const int head = g * a.group + row % a.group;
      bf16* dst = a.out + tok * a.os0 + int64_t(head) * a.os1;
      const float inv = 1.0f / lsum;
#pragma unroll
      for (int t = 0; t < DT; ++t)
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const int col = 64 * t + 8 * n + fc;
          if (col >= a.dh) continue;  // padded dims
          const float v0 = o[t].d[4 * n + 2 * h] * inv, v1 = o[t].d[4 * n + 2 * h + 1] * inv;
          bf16* d = dst + col;
          if (acc.out_pairs) {
            *reinterpret_cast<__nv_bfloat162*>(d) = __floats2bfloat162_rn(v0, v1);
          } else {
            d[0] = __float2bfloat16_rn(v0);
            d[1] = __float2bfloat16_rn(v1);
          }
        }
    }
  }
}

bool pairs_ok(const void* p, int64_t s0, int64_t s1) {
  return reinterpret_cast<uintptr_t>(p) % 4 == 0 && s0 % 2 == 0 && s1 % 2 == 0;
}

template <int DH, int MT>
void launch(const AttnArgs<bf16>& a, const SpanItems& items, int64_t n_items, int n_splits, cudaStream_t stream) {
  const size_t smem = sizeof(PrefillSmem<DH, MT>);
  static const bool configured = [&] {
    return cudaFuncSetAttribute(prefill_kernel<DH, MT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) ==
               cudaSuccess &&
           cudaFuncSetAttribute(prefill_kernel<DH, MT>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                int(cudaSharedmemCarveoutMaxShared)) == cudaSuccess;
  }();
  STATELM_CHECK(configured, "attention prefill: cannot allow ", smem, " bytes of shared memory per block");
  const int64_t blocks = n_items * a.hkv;
  STATELM_CHECK(blocks < (int64_t(1) << 31), "attention prefill: ", n_items, " tiles × ", a.hkv,
                " KV heads is too many blocks");
  const Access acc{pairs_ok(a.q, a.qs0, a.qs1), pairs_ok(a.out, a.os0, a.os1)};
  prefill_kernel<DH, MT><<<dim3(unsigned(blocks), 1, unsigned(n_splits)), kThreads, smem, stream>>>(
      a, items, int(n_items), acc);
  STATELM_CUDA_LAUNCHED("attention prefill (tensor cores), head_dim ", DH, " rows ", a.tile_rows, " splits ",
                        n_splits);
}

template <int DT, int WG>
void launch_wgmma(const AttnArgs<bf16>& a, const SpanItems& items, int64_t n_items, int n_splits, cudaStream_t stream) {
  constexpr size_t smem = wg_smem_bytes<DT, WG>();
  static const bool configured = [&] {
    return cudaFuncSetAttribute(prefill_wgmma_kernel<DT, WG>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) ==
               cudaSuccess &&
           cudaFuncSetAttribute(prefill_wgmma_kernel<DT, WG>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                int(cudaSharedmemCarveoutMaxShared)) == cudaSuccess;
  }();
  STATELM_CHECK(configured, "attention prefill: cannot allow ", smem, " bytes of shared memory per block");
  const int64_t blocks = n_items * a.hkv;
  STATELM_CHECK(blocks < (int64_t(1) << 31), "attention prefill: ", n_items, " tiles × ", a.hkv,
                " KV heads is too many blocks");
  const Access acc{pairs_ok(a.q, a.qs0, a.qs1), pairs_ok(a.out, a.os0, a.os1)};
  prefill_wgmma_kernel<DT, WG><<<dim3(unsigned(blocks), 1, unsigned(n_splits)), 128 * WG, smem, stream>>>(
      a, items, int(n_items), acc);
  STATELM_CUDA_LAUNCHED("attention prefill (wgmma), head_dim ", 64 * DT, " rows ", a.tile_rows, " splits ", n_splits);
}

bool use_wgmma() {
  static const bool on = [] {
    const char* e = std::getenv("STATELM_ATTN_PREFILL_KERNEL");
    return !(e && std::strcmp(e, "mma") == 0);
  }();
  return on;
}

// The forced tile height: 64 or 128, 0 for prefill_tile_rows' own choice. It starts as
// STATELM_ATTN_PREFILL_ROWS says, read from the environment once (the first call), not at every
// attention call; force_attention_prefill_rows changes it later (tests).
std::atomic<int>& forced_tile_rows() {
  static std::atomic<int> rows{[] {
    const char* e = std::getenv("STATELM_ATTN_PREFILL_ROWS");
    if (e && std::strcmp(e, "64") == 0) return 64;
    if (e && std::strcmp(e, "128") == 0) return 128;
    return 0;
  }()};
  return rows;
}

}  // namespace

bool prefill_mma_supported(const AttnArgs<bf16>& a) {
  const auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return a.dh % 16 == 0 && a.dh <= 128 && aligned16(a.k_cache) && aligned16(a.v_cache) && a.cs0 % 8 == 0 &&
         a.cs1 % 8 == 0 && a.cs2 % 8 == 0;
}

int prefill_tile_rows(int64_t tiles_128, int sm_count) {
  if (const int forced = forced_tile_rows().load(std::memory_order_relaxed)) return forced;
  return tiles_128 >= 2 * int64_t(sm_count) ? 128 : 64;
}

void prefill_mma(const AttnArgs<bf16>& a, const SpanItems& items, int64_t n_items, int n_splits, cudaStream_t stream) {
  STATELM_CHECK(a.tile_rows == kWarps * 16 || a.tile_rows == kWarps * 32, "attention prefill: ", a.tile_rows,
                " rows per tile");
  const bool wide = a.tile_rows == kWarps * 32;
  if (use_wgmma()) {
    if (a.dh <= 64)
      wide ? launch_wgmma<1, 2>(a, items, n_items, n_splits, stream) : launch_wgmma<1, 1>(a, items, n_items, n_splits, stream);
    else
      wide ? launch_wgmma<2, 2>(a, items, n_items, n_splits, stream) : launch_wgmma<2, 1>(a, items, n_items, n_splits, stream);
    return;
  }
  // Other head_dims (multiples of 16: 80 for the 2.5B Llama shape, 96, 112) run padded to the
  // next instantiation: dims past head_dim are staged as zeros and never written out.
  if (a.dh <= 64)
    wide ? launch<64, 2>(a, items, n_items, n_splits, stream) : launch<64, 1>(a, items, n_items, n_splits, stream);
  else
    wide ? launch<128, 2>(a, items, n_items, n_splits, stream) : launch<128, 1>(a, items, n_items, n_splits, stream);
}

}  // namespace statelm::cuda::attn

namespace statelm::cuda {

int force_attention_prefill_rows(int rows) {
  STATELM_CHECK(rows == 0 || rows == 64 || rows == 128, "attention prefill: cannot force ", rows,
                " rows per tile (64, 128, or 0 for the automatic choice)");
  return attn::forced_tile_rows().exchange(rows);
}

}  // namespace statelm::cuda
