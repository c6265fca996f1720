// Causal GQA attention of prefill spans on Hopper's warpgroup tensor-core products (wgmma,
// sm_90a; bf16 operands, fp32 accumulators): the FlashAttention loop over attention.cu's work
// items (attention_tile.cuh), for bf16 q/k/v/caches with head_dim a multiple of 16 up to 128
// (64 and 128 native, others padded to them: dims past head_dim are staged as zeros and never
// written out). attention.cu appends the spans' k, v to the paged cache first, plans the items
// and the key splits, and merges the splits; this file runs the tiles.
//
// A block is WG computing warpgroups (128 threads each) and one copying warpgroup. A computing
// warpgroup owns 64 query rows (token, head) that share KV head g (tokens × the group's heads,
// head fastest); the block's tile of 64 · WG rows shares every K/V tile (WG is tile_rows / 64:
// attention.cu picks it, prefill_tile_rows). Q is staged once in shared memory (unscaled bf16,
// the K-major A operand of S = Q Kᵀ). The keys 0 .. (last row's position) are walked in tiles of
// kPrefillKeys = 128: the copying warpgroup gathers them row by row from the paged cache (block
// table lookup per key) with cp.async into a ring of kStages = 3 in wgmma.cuh's swizzled layout
// (key rows of 64 dims: K the K-major B operand of S, V the MN-major B operand of P V) and
// signals each stage's barrier ("full") when its copies have landed; the computing warps signal
// another ("empty") when no product reads a stage any more. No block-wide barrier in the loop:
// each warpgroup runs at its own pace. Per key tile j a computing warpgroup
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
// 96% of its throughput); 128 keys per tile, 128-row tiles 221 / 373 / 401. This kernel (a
// copying warpgroup, Q in shared memory so that the computing warps fit in 224 registers):
// 209 / 432 / 460 — slower at 4K, where blocks are short and each one fills its ring anew.
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

// How q and out may be accessed: bf16 pairs as one 32-bit word when the pointer and both row
// strides allow it, single elements otherwise (the op tests slice q from odd-width rows).
struct Access {
  bool q_pairs, out_pairs;
};

__device__ __forceinline__ uint32_t load_pair(const bf16* p, bool pairs) {
  return pairs ? *reinterpret_cast<const uint32_t*>(p) : mma::pack_bf16x2(p[0], p[1]);
}

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

// The ring, its barriers (full and empty per stage) and the slack to align the ring to 1024 bytes.
template <int DT, int WG>
constexpr size_t wg_smem_bytes() {
  return kRingStages * sizeof(WgStage<DT>) + size_t(WG) * DT * wgmma::kTileElems * sizeof(bf16) +
         2 * kRingStages * sizeof(uint64_t) + 1024;
}

// 128 · 56 + 256 · 224 ≤ 65536; the copy loop's 64-bit addresses spill at 40, the computing warps fit
// in 224 since Q lives in shared memory.
constexpr int kCopyRegisters = 56, kMathRegisters = 224;

// WG computing warpgroups and one copying warpgroup (the last).
template <int DT, int WG>
__global__ void __launch_bounds__(128 * (WG + 1), 1)
    prefill_wgmma_kernel(AttnArgs<bf16> a, SpanItems items, int n_items, Access acc) {
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
  uint64_t* empty = full + kStages;                                // stage s is free again

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

  // Q in shared memory, the K-major A operand of S = Q Kᵀ: the warpgroup's 64 rows in DT swizzled
  // tiles of 64 dims (registers are what the computing warpgroups run short of). Zero past the
  // tile and head_dim. Visible to the tensor cores after the barrier below.
  if (wgi < WG) {
    bf16* qt = q_tiles + wgi * DT * wg::kTileElems;
    for (int e = int(threadIdx.x) % 128; e < 64 * DH / 2; e += 128) {
      const int r = e / (DH / 2), d = 2 * (e % (DH / 2));
      const uint32_t pair = w0 + r < rows && d < a.dh ? load_pair(q_ptr(w0 + r) + d, acc.q_pairs) : 0u;
      *reinterpret_cast<uint32_t*>(&qt[(d / 64) * wg::kTileElems + wg::swizzled(r, d % 64)]) = pair;
    }
    wg::fence_stores();
  }

  const int n_keys = pos0 + n_tok;
  const int tile_begin = split * a.tiles_per_split;
  const int tile_end = min((n_keys + kKeys - 1) / kKeys, tile_begin + a.tiles_per_split);
  // Key tiles from wg_end on hold no key this warpgroup's rows see (uniform: see wgi).
  const int wg_end = __shfl_sync(0xffffffffu, max(tile_begin, min(tile_end, wg_last < 0 ? 0 : wg_last / kKeys + 1)), 0);

  // The copying warpgroup gathers key tile kt into ring stage `stage`: its thread ct moves 16-byte
  // piece c of rows rr, rr + kPass, ...; the rows' cache offsets are looked up once per warp and
  // row by kDistinct lanes and passed by shuffle (the block-table lookup and the division cost
  // more than the copy).
  auto load_tile = [&](int kt, int stage) {
    constexpr int kPieces = DH / 8, kPass = kCopyThreads / kPieces, kSub = 32 / kPieces;
    constexpr int kDistinct = kSub * (kKeys / kPass);
    static_assert(kDistinct <= 32, "one lookup per lane");
    const int ct = int(threadIdx.x) - 128 * WG;
    const int c = ct % kPieces, rr = ct / kPieces;
    const int gw = ct / 32;
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

  if (threadIdx.x == 0) {
    for (int st = 0; st < kStages; ++st) {
      mbar::init(&full[st], kCopyThreads);  // every copying thread's copies
      mbar::init(&empty[st], 4 * WG);       // every computing warp
    }
    mbar::publish_inits();
  }
  __syncthreads();
  if (wgi == WG) {  // the copying warpgroup
    mbar::shrink_registers<kCopyRegisters>();
    for (int kt = tile_begin; kt < tile_end; ++kt) {
      const int j = kt - tile_begin, stage = j % kStages;
      if (j >= kStages) mbar::wait(&empty[stage], uint32_t(j / kStages - 1) & 1);
      load_tile(kt, stage);
      mbar::arrive_copies(&full[stage]);
    }
    mma::cp_async_wait<0>();
    return;
  }
  mbar::grow_registers<kMathRegisters>();

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
  // next use).
  const auto release = [&](int stage) {
    __syncwarp();
    if (lane == 0) mbar::arrive(&empty[stage]);
  };
  for (int kt = tile_begin; kt < tile_end; ++kt) {
    const int j = kt - tile_begin;
    const int stage = j % kStages;
    mbar::wait(&full[stage], uint32_t(j / kStages) & 1);
    wg::fence_stores();  // the copies' writes, now seen by this thread, before the tensor cores' reads
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
      wg::commit();  // possibly empty
      wg::wait<1>();  // S is complete; P V may still run
#pragma unroll
      for (int hf = 0; hf < kHalves; ++hf) wg::fence_operands(s[hf]);

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
      if (have_p) release(p_stage);  // its P V is complete (wait_pv above)
      have_p = true;
      p_stage = stage;
    } else {
      if (have_p) {  // the warpgroup's last key tile is behind it: finish its P V now
        finish_pv();
        release(p_stage);
        have_p = false;
      }
      release(stage);
    }
  }
  if (have_p) finish_pv();

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
  const int64_t blocks = n_items * a.hkv;
  STATELM_CHECK(blocks < (int64_t(1) << 31), "attention prefill: ", n_items, " tiles × ", a.hkv,
                " KV heads is too many blocks");
  const Access acc{pairs_ok(a.q, a.qs0, a.qs1), pairs_ok(a.out, a.os0, a.os1)};
  prefill_wgmma_kernel<DT, WG><<<dim3(unsigned(blocks), 1, unsigned(n_splits)), 128 * (WG + 1), smem, stream>>>(
      a, items, int(n_items), acc);
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
  const auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return a.dh % 16 == 0 && a.dh <= 128 && aligned16(a.k_cache) && aligned16(a.v_cache) && a.cs0 % 8 == 0 &&
         a.cs1 % 8 == 0 && a.cs2 % 8 == 0;
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
