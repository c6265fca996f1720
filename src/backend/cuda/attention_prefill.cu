// Causal GQA attention of prefill spans on Hopper's warpgroup tensor-core products (wgmma,
// sm_90a; bf16 operands, fp32 accumulators): the FlashAttention loop over attention.cu's work
// items (attention_tile.cuh), for bf16 q/k/v/caches with head_dim a multiple of 16 up to 128
// (64 and 128 native, others padded to them: dims past head_dim are staged as zeros and never
// written out). attention.cu appends the spans' k, v to the paged cache first, plans the items
// and the key splits, and merges the splits; this file runs the tiles.
//
// A block is WG computing warpgroups (128 threads each) and one copying warpgroup. Blocks are
// persistent: as many as fit at once, each dealt its share of the work items (query tile, KV
// head, key split), heaviest first, and looping over them. A computing warpgroup owns 64 query
// rows (token, head) of the item's tile that share KV head g (tokens × the group's heads, head
// fastest); the tile of 64 · WG rows shares every K/V tile (WG is tile_rows / 64: attention.cu
// picks it, prefill_tile_rows). The copying warpgroup stages the tile's Q in shared memory
// (unscaled bf16, the K-major A operand of S = Q Kᵀ) and gathers the keys 0 .. (last row's
// position) in tiles of kPrefillKeys = 128 row by row from the paged cache (block table lookup
// per key) with cp.async into a ring of kStages = 3 in wgmma.cuh's swizzled layout (key rows of
// 64 dims: K the K-major B operand of S, V the MN-major B operand of P V). It signals a barrier
// ("full", "Q full") when its copies have landed; the computing warps signal another ("empty",
// "Q empty") when no product reads a stage or Q any more. No block-wide barrier in the loop: each
// warpgroup runs at its own pace, and the copying warpgroup runs ahead into the next item (its
// first key tile and Q land while the computing warps finish the last tile and write out).
// Per key tile j a computing warpgroup
//
//   waits for "full"
//   issues S_j = Q K_jᵀ          (two 64-key halves, 4 · DT products of 64 × 64 × 16 each)
//   issues O += P_{j−1} V_{j−1}  (the previous tile's, 8 · DT products, P from registers)
//   waits for S_j only; masks (the diagonal), row maxima m' (log2 units), P = 2^(S·scale − m')
//                                 and l ← α l + rowsum P, while P_{j−1} V_{j−1} still runs
//   waits for P V; O ← α O        (skipped when no row maximum of the warp changed); tile j − 1's
//                                 stage is released
//   P_j → A fragments             (the accumulator layout is the A fragment layout: no trip
//                                 through shared memory, wgmma::a_fragment)
//
// so the softmax of one tile overlaps the tensor cores' work on the other. Registers move from
// the copying warpgroup (kCopyRegisters) to the computing ones (kMathRegisters, setmaxnreg). The
// row statistics: a thread holds rows lane / 4 and lane / 4 + 8 of its warp's 16, the four
// lanes of a quad share them, so row maxima are two xor-shuffles; l stays a per-thread partial
// sum until the end. At the end O / l is written as bf16 (or, with key splits, O, m, l to the
// split-K scratch for attention.cu's merge). Keys past the tile's last row read as zeros
// (cp.async zero-fill), never as what the cache holds there: a NaN would survive P = 0.
//
// Shapes and structure, measured (H200, b1 h32 d128 causal, TFLOP/s at 4K / 16K / 64K, bench/
// RESULTS.md session 14): the mma.sync kernel this replaced (FlashAttention-2's loop, ldmatrix
// fragments) 154 / 252 / 278. wgmma with every warp copying and a block barrier per tile, Q in
// registers: 64 keys per tile 207 / 331 / 360 at 128-row tiles, 226 / 379 / 373 at 64-row tiles
// (two blocks per SM, but every K/V byte crosses from L2 twice as often: at 16K the L2 runs at
// 96% of its throughput); 128 keys per tile, 128-row tiles 221 / 373 / 401. A copying
// warpgroup, Q in shared memory so that the computing warps fit in their registers, one block per
// work item: 209 / 432 / 460 — slower at 4K, where blocks are short and each one staged Q and
// filled its ring anew. Persistent blocks whose copying warpgroup stages Q and runs ahead into the
// next item (this kernel, session 15): the kernel alone (ncu) 435 → 306 µs at 4K, 4.62 → 4.05 ms
// at 16K; with attention.cu's append of k, v, 401 / 485 / 487 TFLOP/s.
// Measured slower and dropped: K/V copies by the TMA (boxes of one cache block, 16 rows: 184 /
// 276 / 279 at 64-row tiles), a two-deep software pipeline (S of tile j + 1 issued before the
// softmax of tile j; ptxas serialises its products, C7515: 193 / 295 / 316), tree-shaped row
// maxima and sums (−2%), Q in registers with the copying warpgroup (spills: 212 / 377 / 404).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/mbarrier.cuh"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/wgmma.cuh"

namespace statelm::cuda::attn {

namespace {

constexpr int kKeys = kPrefillKeys;

// How out may be written: bf16 pairs as one 32-bit word when the pointer and both row strides
// allow it, single elements otherwise.
struct Access {
  bool out_pairs;
};

// 2^x on the special-function unit, subnormal results flushed to zero (weights below 2^-126 of
// the row maximum add nothing to an fp32 sum that holds at least 1).
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

constexpr int kHalves = kKeys / wgmma::kEdge;  // 64-key halves of a key tile (one S accumulator each)

// The ring: tile j − 1 (its P V runs during tile j's softmax), tile j, tile j + 1 (in flight).
constexpr int kRingStages = 3;

template <int DT>
struct WgStage {  // one key tile: DT column tiles of 64 dims × kKeys key rows, for K and for V
  bf16 k[DT][kHalves * wgmma::kTileElems];
  bf16 v[DT][kHalves * wgmma::kTileElems];
};

// The ring, Q, their barriers (full and empty per stage and for Q) and the slack to align the
// ring to 1024 bytes.
template <int DT, int WG>
constexpr size_t wg_smem_bytes() {
  return kRingStages * sizeof(WgStage<DT>) + size_t(WG) * DT * wgmma::kTileElems * sizeof(bf16) +
         (2 * kRingStages + 2) * sizeof(uint64_t) + 1024;
}

// Registers per thread of the copying and the computing warpgroups (setmaxnreg): together no
// more than the block holds at launch (__launch_bounds__(128 · (WG + 1), 1): 168 a thread for
// WG = 2), or setmaxnreg.inc would wait for registers no warp gives back. WG = 2: 128 · 72 +
// 256 · 216 = 384 · 168; the copying warps spill below 72 (64-bit addresses, the work item),
// the computing ones fit in 216 since Q lives in shared memory. WG = 1 has room to spare.
template <int WG>
constexpr int kCopyRegisters = WG == 1 ? 96 : 72;
template <int WG>
constexpr int kMathRegisters = WG == 1 ? 240 : 216;
template <int WG>
constexpr bool registers_fit() {
  constexpr int threads = 128 * (WG + 1), at_launch = std::min(248, 65536 / threads / 8 * 8);
  return 128 * kCopyRegisters<WG> + 128 * WG * kMathRegisters<WG> <= threads * at_launch;
}
static_assert(registers_fit<1>() && registers_fit<2>(), "setmaxnreg asks for more registers than the block holds");

// A block's work item u (0 .. n_work − 1): query tile `item` of the planned items, KV head g, key
// split `split`. Items run heaviest first (a span's last tile sees the most keys); every warp
// decodes it for itself (find_item_in_warp: the copying warpgroup runs ahead of the computing
// ones, so no block-wide barrier may sit in the loop). Fields are made warp-uniform through a
// shuffle where a product's branch depends on them (ptxas C7520).
struct Work {
  int item, g, split;
  int span;       // index into items.spans
  int64_t tok0;   // the tile's first token (row of q and out)
  int rows;       // query rows (token, head) of the tile
  int pos0;       // position of the tile's first token
  int n_keys;     // keys its last token sees: pos0 + tokens
  int tile_begin, tile_end;  // the split's key tiles
};

__device__ __forceinline__ Work work_at(const AttnArgs<bf16>& a, const SpanItems& items, int n_items, int n_splits,
                                        int u) {
  Work w;
  const int per_item = a.hkv * n_splits;
  w.item = n_items - 1 - u / per_item;
  w.g = u % a.hkv;
  w.split = (u % per_item) / a.hkv;
  const ItemRef it = find_item_in_warp(items, w.item);
  const SeqSpan sp = items.spans[it.span];
  const int t0 = it.piece * a.tokens;
  const int n_tok = __shfl_sync(0xffffffffu, min(a.tokens, sp.len - t0), 0);
  w.span = it.span;
  w.tok0 = int64_t(sp.start) + t0;
  w.rows = n_tok * a.group;
  w.pos0 = __shfl_sync(0xffffffffu, sp.pos + t0, 0);
  w.n_keys = w.pos0 + n_tok;
  w.tile_begin = w.split * a.tiles_per_split;
  w.tile_end = min((w.n_keys + kKeys - 1) / kKeys, w.tile_begin + a.tiles_per_split);
  return w;
}

// Block b's r-th work item: blocks deal the heaviest-first list in a snake (b, then from the far
// end of the next round), so that each block's sum of key tiles comes out about equal.
__device__ __forceinline__ int work_index(int r) {
  const int b = int(blockIdx.x), n = int(gridDim.x);
  return r * n + ((r & 1) ? n - 1 - b : b);
}

// The end of a work item: rows row and row + 8 of the tile (this thread's two) out of the
// accumulators. O / l as bf16 into out, or, with key splits, O, m, l to the split-K scratch for
// attention.cu's merge. l is a per-thread partial sum until here (the quad's four lanes share a row).
template <int DT>
__device__ __forceinline__ void store_rows(const AttnArgs<bf16>& a, const Work& w, int n_splits,
                                           const wgmma::Acc (&o)[DT], const float (&m)[2], const float (&l)[2],
                                           int row0, int fc, bool out_pairs) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float lsum = l[h];
    lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
    lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
    const int row = row0 + 8 * h;
    if (row >= w.rows) continue;
    if (n_splits > 1) {
      const int64_t base = split_row(w.item, a.hkv, w.g, n_splits, w.split, row, a.tile_rows);
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
      const int head = w.g * a.group + row % a.group;
      bf16* dst = a.out + (w.tok0 + row / a.group) * a.os0 + int64_t(head) * a.os1;
      const float inv = 1.0f / lsum;
#pragma unroll
      for (int t = 0; t < DT; ++t)
#pragma unroll
        for (int n = 0; n < 8; ++n) {
          const int col = 64 * t + 8 * n + fc;
          if (col >= a.dh) continue;  // padded dims
          const float v0 = o[t].d[4 * n + 2 * h] * inv, v1 = o[t].d[4 * n + 2 * h + 1] * inv;
          bf16* d = dst + col;
          if (out_pairs) {
            *reinterpret_cast<__nv_bfloat162*>(d) = __floats2bfloat162_rn(v0, v1);
          } else {
            d[0] = __float2bfloat16_rn(v0);
            d[1] = __float2bfloat16_rn(v1);
          }
        }
    }
  }
}

// Persistent blocks (as many as fit at once, each looping over its work items) of WG computing
// warpgroups and one copying warpgroup (the last).
template <int DT, int WG>
__global__ void __launch_bounds__(128 * (WG + 1), 1)
    prefill_wgmma_kernel(AttnArgs<bf16> a, SpanItems items, int n_items, int n_splits, Access acc) {
  namespace wg = wgmma;
  constexpr int kCopyThreads = 128;
  constexpr int DH = 64 * DT;
  constexpr int kStages = kRingStages;
  constexpr int kSteps = kKeys / 16;  // k16 steps of P V (over keys); S has 4 · DT (over dims)
  extern __shared__ unsigned char smem_raw[];
  WgStage<DT>* ring = reinterpret_cast<WgStage<DT>*>(
      smem_raw + ((1024 - mma::smem_addr(smem_raw) % 1024) % 1024));
  bf16* q_tiles = reinterpret_cast<bf16*>(ring + kStages);  // [WG][DT] 64 × 64 tiles of Q
  uint64_t* full = reinterpret_cast<uint64_t*>(q_tiles + WG * DT * wgmma::kTileElems);  // stage s has landed
  uint64_t* empty = full + kStages;    // stage s is free again
  uint64_t* q_full = empty + kStages;  // the item's Q has landed
  uint64_t* q_empty = q_full + 1;      // no product reads Q any more

  const int n_work = n_items * a.hkv * n_splits;
  // This thread's warpgroup, through a shuffle so that the compiler sees a warp-uniform value: a
  // product in a branch it cannot prove uniform gets serialised (ptxas C7520).
  const int wgi = __shfl_sync(0xffffffffu, int(threadIdx.x) / 128, 0);
  const int warp = (int(threadIdx.x) / 32) % 4, lane = int(threadIdx.x) % 32;
  const int fr = lane / 4, fc = 2 * (lane % 4);
  const int w0 = 64 * wgi;        // the warpgroup's rows: w0 .. w0 + 63
  const int r0 = w0 + 16 * warp;  // the warp's rows: r0 .. r0 + 15

  const auto q_ptr = [&](const Work& w, int row) {
    const int head = w.g * a.group + row % a.group;
    return a.q + (w.tok0 + row / a.group) * a.qs0 + int64_t(head) * a.qs1;
  };

  if (threadIdx.x == 0) {
    for (int st = 0; st < kStages; ++st) {
      mbar::init(&full[st], kCopyThreads);  // every copying thread's copies
      mbar::init(&empty[st], 4 * WG);       // every computing warp
    }
    mbar::init(q_full, kCopyThreads);
    mbar::init(q_empty, 4 * WG);
    mbar::publish_inits();
  }
  __syncthreads();

  if (wgi == WG) {  // the copying warpgroup
    mbar::shrink_registers<kCopyRegisters<WG>>();
    const int ct = int(threadIdx.x) - 128 * WG;
    // Key tile kt of item w into ring stage `stage`: thread ct moves 16-byte piece c of rows rr,
    // rr + kPass, ...; the rows' cache offsets are looked up once per warp and row by kDistinct
    // lanes and passed by shuffle (the block-table lookup and the division cost more than the
    // copy).
    const auto load_tile = [&](const Work& w, int kt, int stage) {
      constexpr int kPieces = DH / 8, kPass = kCopyThreads / kPieces, kSub = 32 / kPieces;
      constexpr int kDistinct = kSub * (kKeys / kPass);
      static_assert(kDistinct <= 32, "one lookup per lane");
      const int c = ct % kPieces, rr = ct / kPieces;
      const int gw = ct / 32;
      const int key0 = kt * kKeys;
      int64_t my_off = -1;
      if (lane < kDistinct) {
        const int r = gw * kSub + lane % kSub + kPass * (lane / kSub);
        if (key0 + r < w.n_keys) my_off = cache_offset(a, w.span, key0 + r, w.g);
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
    // Q of item w in shared memory, the K-major A operand of S = Q Kᵀ: the tile's rows in
    // [WG][DT] swizzled tiles of 64 rows × 64 dims, zero past the tile and head_dim, in 16-byte
    // cp.async pieces (prefill_mma_supported: q's rows are 16-byte aligned).
    const auto load_q = [&](const Work& w) {
      constexpr int kPieces = DH / 8;
#pragma unroll 4
      for (int p = ct; p < 64 * WG * kPieces; p += kCopyThreads) {
        const int r = p / kPieces, c = p % kPieces;
        const bool in = r < w.rows && 8 * c < a.dh;
        bf16* dst = &q_tiles[((r / 64) * DT + c / 8) * wg::kTileElems + wg::swizzled(r % 64, 8 * (c % 8))];
        mma::cp_async16(dst, in ? q_ptr(w, r) + 8 * c : a.q, in);
      }
      mbar::arrive_copies(q_full);
    };
    int j = 0, q_uses = 0;  // key tiles and Q stagings so far: the ring's and Q's barrier phases
    for (int round = 0;; ++round) {
      const int u = work_index(round);
      if (u >= n_work) break;
      const Work w = work_at(a, items, n_items, n_splits, u);
      if (w.tile_begin >= w.tile_end) continue;  // no keys in this split: the computing warps need nothing
      const auto copy_tile = [&](int kt) {
        const int stage = j % kStages;
        if (j >= kStages) mbar::wait(&empty[stage], uint32_t(j / kStages - 1) & 1);
        load_tile(w, kt, stage);
        mbar::arrive_copies(&full[stage]);
        ++j;
      };
      // Q after the item's first key tile: that tile may go to a stage freed early in the
      // previous item's last tile; Q waits until that tile's S = Q Kᵀ has completed.
      copy_tile(w.tile_begin);
      if (q_uses > 0) mbar::wait(q_empty, uint32_t(q_uses - 1) & 1);
      load_q(w);
      ++q_uses;
      for (int kt = w.tile_begin + 1; kt < w.tile_end; ++kt) copy_tile(kt);
    }
    mma::cp_async_wait<0>();
    return;
  }
  mbar::grow_registers<kMathRegisters<WG>>();

  wg::Acc o[DT];
  float m[2], l[2];
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
  // The last P V of this warpgroup's walk, issued and waited for.
  const auto finish_pv = [&]() {
    wg::fence();
    issue_pv();
    wg::commit();
    wait_pv();
  };

  // Consumers: per key tile, wait until it has landed; release a stage (one arrival per warp)
  // once no product reads it any more: tile j − 1's after its P V completed during tile j, a tile
  // this warpgroup skips at once (after it landed: arrivals must not run ahead into the stage's
  // next use). Q likewise, once the warpgroup's last S of the item has completed.
  const auto release = [&](uint64_t* bar) {
    __syncwarp();
    if (lane == 0) mbar::arrive(bar);
  };
  int j = 0, q_uses = 0;
  for (int round = 0;; ++round) {
    const int u = work_index(round);
    if (u >= n_work) break;
    const Work w = work_at(a, items, n_items, n_splits, u);
    const int rows = w.rows;
    int qpos[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) qpos[h] = r0 + fr + 8 * h < rows ? w.pos0 + (r0 + fr + 8 * h) / a.group : -1;
    const int warp_first = r0 + 16 <= rows ? w.pos0 + r0 / a.group : -1;  // −1: some rows missing, always mask
    const int wg_last = w0 < rows ? w.pos0 + min(w0 + 63, rows - 1) / a.group : -1;
    // Key tiles from wg_end on hold no key this warpgroup's rows see (uniform: see wgi).
    const int wg_end =
        __shfl_sync(0xffffffffu, max(w.tile_begin, min(w.tile_end, wg_last < 0 ? 0 : wg_last / kKeys + 1)), 0);

#pragma unroll
    for (int t = 0; t < DT; ++t) wg::zero(o[t]);
#pragma unroll
    for (int h = 0; h < 2; ++h) m[h] = -INFINITY, l[h] = 0.0f;
    const bool has_tiles = w.tile_begin < w.tile_end;
    bool q_held = has_tiles;
    if (has_tiles) {
      mbar::wait(q_full, uint32_t(q_uses) & 1);
      wg::fence_stores();  // the copies' writes, now seen by this thread, before the tensor cores' reads
      ++q_uses;
    }
    for (int kt = w.tile_begin; kt < w.tile_end; ++kt, ++j) {
      const int stage = j % kStages;
      mbar::wait(&full[stage], uint32_t(j / kStages) & 1);
      wg::fence_stores();
      if (kt < wg_end) {
        wg::Acc s[kHalves];  // S of keys 64 hf .. 64 hf + 63 of the tile
#pragma unroll
        for (int hf = 0; hf < kHalves; ++hf) {
          wg::zero(s[hf]);
          wg::fence_operands(s[hf]);
        }
#pragma unroll
        for (int t = 0; t < DT; ++t) wg::fence_operands(o[t]);  // o's rescale stays before the products
        wg::fence();
#pragma unroll
        for (int hf = 0; hf < kHalves; ++hf)
#pragma unroll
          for (int t = 0; t < DT; ++t)
            wg::tile_mma_async<wg::Major::K, wg::Major::K>(wg::descriptor(&q_tiles[(wgi * DT + t) * wg::kTileElems]),
                                                           wg::descriptor(&ring[stage].k[t][hf * wg::kTileElems]),
                                                           s[hf], t > 0);
        wg::commit();
        if (have_p) issue_pv();
        wg::commit();   // possibly empty
        wg::wait<1>();  // S is complete; P V may still run
#pragma unroll
        for (int hf = 0; hf < kHalves; ++hf) wg::fence_operands(s[hf]);
        if (kt == wg_end - 1) {  // the warpgroup's last S of the item: Q is free for the next one
          release(q_empty);
          q_held = false;
        }

        // Row maxima of the raw scores (masked keys −inf), m' in log2 units (scale > 0 commutes with
        // max), P = 2^(S·scale − m') in place with one FFMA and one MUFU per score, l rescaled and
        // summed.
        const int key0 = kt * kKeys;
        if (key0 + kKeys - 1 > warp_first) {  // the diagonal (or a partial tile): mask
#pragma unroll
          for (int hf = 0; hf < kHalves; ++hf)
#pragma unroll
            for (int i = 0; i < 32; ++i)
              if (key0 + 64 * hf + 8 * (i >> 2) + fc + (i & 1) > qpos[(i >> 1) & 1]) s[hf].d[i] = -INFINITY;
        }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int hf = 0; hf < kHalves; ++hf)
#pragma unroll
          for (int i = 0; i < 32; ++i) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[hf].d[i]);
        float m_use[2], alpha[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
          mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
          const float m_new = fmaxf(m[h], mx[h] * a.scale_log2);
          m_use[h] = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet: P = 0, α = 0
          alpha[h] = exp2_approx(m[h] - m_use[h]);
          m[h] = m_new;
          l[h] *= alpha[h];
        }
#pragma unroll
        for (int hf = 0; hf < kHalves; ++hf)
#pragma unroll
          for (int i = 0; i < 32; ++i) {
            const float p = exp2_approx(fmaf(s[hf].d[i], a.scale_log2, -m_use[(i >> 1) & 1]));
            s[hf].d[i] = p;
            l[(i >> 1) & 1] += p;
          }
        // Once the row maxima settle most tiles leave them unchanged (α = 1 for all the warp's rows):
        // no rescale of O then.
        const bool rescale = __any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f);
        wait_pv();  // unconditional: the compiler must see every product waited for on every path (C7515)
        if (rescale) {
#pragma unroll
          for (int t = 0; t < DT; ++t)
#pragma unroll
            for (int i = 0; i < 32; ++i) o[t].d[i] *= alpha[(i >> 1) & 1];
        }
#pragma unroll
        for (int ks = 0; ks < kSteps; ++ks) wg::a_fragment(s[ks / 4], ks % 4, pf[ks]);
        if (have_p) release(&empty[p_stage]);  // its P V is complete (wait_pv above)
        have_p = true;
        p_stage = stage;
      } else {
        if (have_p) {  // the warpgroup's last key tile is behind it: finish its P V now
          finish_pv();
          release(&empty[p_stage]);
          have_p = false;
        }
        release(&empty[stage]);
      }
    }
    if (have_p) {
      finish_pv();
      release(&empty[p_stage]);
      have_p = false;
    }
    if (q_held) release(q_empty);  // no S of this warpgroup in the split
    store_rows<DT>(a, w, n_splits, o, m, l, r0 + fr, fc, acc.out_pairs);
  }
}

bool pairs_ok(const void* p, int64_t s0, int64_t s1) { return aligned_for(p, {s0, s1}, sizeof(bf16), 4); }


template <int DT, int WG>
void launch(const AttnArgs<bf16>& a, const SpanItems& items, int64_t n_items, int n_splits, cudaStream_t stream) {
  constexpr size_t smem = wg_smem_bytes<DT, WG>();
  static const bool configured = [&] {
    return cudaFuncSetAttribute(prefill_wgmma_kernel<DT, WG>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) ==
               cudaSuccess &&
           cudaFuncSetAttribute(prefill_wgmma_kernel<DT, WG>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                int(cudaSharedmemCarveoutMaxShared)) == cudaSuccess;
  }();
  STATELM_CHECK(configured, "attention prefill: cannot allow ", smem, " bytes of shared memory per block");
  const int64_t n_work = n_items * a.hkv * n_splits;
  STATELM_CHECK(n_work < (int64_t(1) << 31), "attention prefill: ", n_items, " tiles × ", a.hkv, " KV heads × ",
                n_splits, " splits is too many work items");
  // Persistent blocks: as many as fit on the GPU at once, each looping over its share of the work.
  static const int per_sm = [&] {
    int n = 0;
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, prefill_wgmma_kernel<DT, WG>, 128 * (WG + 1), smem) ==
                       cudaSuccess && n > 0
               ? n
               : 1;
  }();
  const int64_t blocks = std::min<int64_t>(n_work, int64_t(per_sm) * sm_count());
  const Access acc{pairs_ok(a.out, a.os0, a.os1)};
  prefill_wgmma_kernel<DT, WG><<<unsigned(blocks), 128 * (WG + 1), smem, stream>>>(a, items, int(n_items), n_splits,
                                                                                   acc);
  STATELM_CUDA_LAUNCHED("attention prefill (wgmma), head_dim ", 64 * DT, " rows ", a.tile_rows, " splits ", n_splits);
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
  // Q, K and V rows are copied in 16-byte pieces (cp.async): they must start 16-byte aligned.
  const auto rows16 = [](const void* p, std::initializer_list<int64_t> strides) {
    return aligned_for(p, strides, sizeof(bf16), 16);
  };
  return a.dh % 16 == 0 && a.dh <= 128 && rows16(a.q, {a.qs0, a.qs1}) && rows16(a.k_cache, {a.cs0, a.cs1, a.cs2}) &&
         rows16(a.v_cache, {a.cs0, a.cs1, a.cs2});
}

int prefill_tile_rows() {
  if (const int forced = forced_tile_rows().load(std::memory_order_relaxed)) return forced;
  return 128;
}

void prefill_mma(const AttnArgs<bf16>& a, const SpanItems& items, int64_t n_items, int n_splits, cudaStream_t stream) {
  STATELM_CHECK(a.tile_rows == 64 || a.tile_rows == 128, "attention prefill: ", a.tile_rows, " rows per tile");
  const bool wide = a.tile_rows == 128;
  if (a.dh <= 64)
    wide ? launch<1, 2>(a, items, n_items, n_splits, stream) : launch<1, 1>(a, items, n_items, n_splits, stream);
  else
    wide ? launch<2, 2>(a, items, n_items, n_splits, stream) : launch<2, 1>(a, items, n_items, n_splits, stream);
}

}  // namespace statelm::cuda::attn

namespace statelm::cuda {

int force_attention_prefill_rows(int rows) {
  STATELM_CHECK(rows == 0 || rows == 64 || rows == 128, "attention prefill: cannot force ", rows,
                " rows per tile (64, 128, or 0 for the automatic choice)");
  return attn::forced_tile_rows().exchange(rows);
}

}  // namespace statelm::cuda
