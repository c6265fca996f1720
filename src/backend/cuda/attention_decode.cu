// Paged GQA attention of decode steps (spans of one token) on CUDA, at the bandwidth of the KV
// cache. The math is attention.cu's (and cpu_attention.cpp's): the token at position pos, query
// head h, reads KV head g = h / group over the keys 0..pos,
//   out = Σ_j softmax_j(q · k_j · scale) v_j.
//
// Why a kernel of its own: a decode step reads the whole cache of every sequence and does
// 2 · group FLOPs per byte, so it is a streaming problem. The tiled kernel (attention.cu) pads a
// 64-row query tile to hold `group` rows and loads K/V one scalar at a time; here every byte
// counts.
//
// Work: a block takes (sequence, KV head g, key split z) and all `group` query heads of g, so
// each K/V row is read from memory once. The splits come from the host (n_splits: enough
// blocks to fill the GPU once, from the span count, the KV heads and batch.key_capacity, so a
// recorded graph stays valid); each sequence cuts its own keys 0..pos into ranges on the device
// (split_keys: at least 256 keys a range, or for a short sequence half the splits, down to 64
// keys), so a graph planned for a large capacity still spreads a short sequence over many
// blocks, and blocks past the keys return at once.
//
// Two kernels do the products (launch_group picks): decode_mma_kernel on the tensor cores (bf16
// caches with padded rows or 8 heads a KV head; its comment has the layout) and the CUDA-core
// decode_kernel (fp32 caches, and bf16 ones whose rows fill its lanes), described here.
//
// Lanes: a row of head_dim elements is read as 16-byte vectors (8 bf16 or 4 fp32). kTpk lanes
// share a key, each holding kNv vectors of it (lane t of the key holds vectors t, t + kTpk, ...,
// so one load instruction of the kTpk lanes reads kTpk · 16 contiguous bytes), and a warp holds
// kKpw = 32 / kTpk keys at once. A lane keeps the pre-scaled q of its dims for every head of the
// group and its share of the output, q and O each group · kNv · kVec floats (≤ 64: kNv shrinks as
// the group grows). q · k is summed over the key's lanes with shuffles.
//
// Memory pipeline: each warp walks chunks of kSteps · kKpw keys (chunks of the four warps
// interleave: a block round covers 4 chunks). The chunk's K and V vectors go global → shared
// memory with cp.async, kStages chunks ahead, into slots that only the issuing lane reads, so no
// barrier is needed in the loop; cp.async zero-fills the vectors past the keys or past head_dim.
// The block table is read per key (key / block_size, a shift for powers of two), any block
// size works.
//
// Softmax: online, per warp, in fp32, with scores pre-multiplied by log2 e (exp2): per chunk the
// running max m (warp-uniform), the running sum l and O are scaled by 2^(m − m'). At the end
// the warps' key groups are summed with shuffles, the four warps merged in shared memory, and
// the block writes either the output (one split) or its (m, l, O) for the merge:
//   out = Σ_z 2^(m_z − M) O_z / Σ_z 2^(m_z − M) l_z over the splits holding keys.
// When a (sequence, KV head) has 8 to kMaxCluster splits (short contexts, few sequences: e.g.
// Llama 2.5B at 2K keys, batch 1 to 4), they form one thread-block cluster and merge through
// distributed shared memory: each block sends the slices of its (m, l, O) to the blocks that
// combine them, and after one cluster barrier each block computes its slice of the outputs from
// its own shared memory. Otherwise the partials go to scratch and a merge kernel combines them.
// The cluster takes a kernel boundary and its round trips to L2 off the decode step's critical
// path (Llama 2.5B at 2K keys: the merge kernel, or the last block merging from L2, cost ~7 µs a
// layer in the step, the L2 slow behind the output projection's weights).
//
// The new key: the block whose range holds pos takes k, v of the token from the inputs (which
// need not be aligned), stores them in the cache, and folds them in as a one-key chunk; no other
// block reads the cache row at pos, so the append needs no kernel of its own.
//
// RoPE (AttentionParams::rope): q and the new k are rotated here as they are read, so a decode
// step has no rope kernel (one launch and one dependent wait less per layer). The block fills a
// table of cos/sin at pos before its dependent wait, rotates with rope.cu's arithmetic
// (rope_math.cuh) and rounds each rotated element to T as rope.cu stores it: the same values as
// the rope kernel followed by this one.
#include <algorithm>
#include <bit>
#include <cmath>
#include <type_traits>

#include <cooperative_groups.h>

#include "backend/cuda/attention_args.cuh"
#include "backend/cuda/attention_decode.h"
#include "backend/cuda/cuda_common.h"
#include "backend/cuda/mma.cuh"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/rope_math.cuh"

namespace statelm::cuda {

namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kStages = 4;           // chunks in flight per warp (cp.async groups)
constexpr int kMinSplitKeys = 256;   // keys per split at least: the merge stays small
constexpr int kShortSplitKeys = 64;  // ... unless the sequence is short (split_keys)
constexpr int kMaxSplits = 256;
constexpr int kMaxCluster = 16;      // blocks of a cluster (the most Hopper allows, non-portable)
constexpr int kMinClusterSplits = 8;  // fewer splits merge in a kernel (launch() says why)
constexpr int kMaxGroup = 8;
constexpr unsigned kFull = 0xffffffffu;

template <typename T>
struct DecodeArgs : attn::PagedAttnArgs<T> {
  const SeqSpan* spans;  // device copy
  int n_splits;          // gridDim.z
  int key_round;         // keys per block round: split lengths are multiples of it
  float* o_part;         // [span][hkv][split][group][dh] unnormalised O of each split
  float* ml_part;        // [span][hkv][split][group][2]  its (m, l)
  bool cluster;          // the splits of (span, g) form a cluster (n_splits ≤ kMaxCluster)
  int rope_half;         // rotary pairs per head (rotary_dim / 2 ≤ DH / 2; 0: no rotation)
  InvFreq rope_inv;      // their inverse frequencies
  int block_shift;       // log2 of block_size when a power of two, else -1 (key / block_size)
};

// The reduction area at the start of the dynamic shared memory, once the warps' key loop is
// over: each warp's O (unnormalised) and (m, l) per head, then a cluster split's partial.
template <int GMAX, int DH>
struct Reduce {
  float* o;       // [warp][GMAX][DH]
  float* ml;      // [warp][GMAX][2]
  float* part_o;  // [group · dh] this split's, in a cluster
  float2* part_ml;  // [group]
  __device__ explicit Reduce(unsigned char* smem)
      : o(reinterpret_cast<float*>(smem)),
        ml(o + kWarps * GMAX * DH),
        part_o(ml + kWarps * GMAX * 2),
        part_ml(reinterpret_cast<float2*>(part_o + GMAX * DH)) {}
  static constexpr size_t kBytes = size_t(kWarps + 1) * GMAX * (DH + 2) * sizeof(float);
};

// The lane layout and pipeline of one instantiation (see the file comment). DH: head_dim padded
// to 64 or 128; GMAX: query heads per KV head padded to 1, 2, 4 or 8.
template <typename T, int DH, int GMAX>
struct DecodeTile {
  static constexpr int kVec = 16 / int(sizeof(T));  // elements per 16-byte vector
  static constexpr int kRowVecs = DH / kVec;        // vectors per (padded) row
  static constexpr int pick_nv() {
    int nv = 4;
    while (nv > 1 && (GMAX * nv * kVec > 64 || nv > kRowVecs)) nv /= 2;
    return nv;
  }
  static constexpr int kNv = pick_nv();           // vectors per lane per row
  static constexpr int kDims = kNv * kVec;        // dims per lane
  static constexpr int kTpk = kRowVecs / kNv;     // lanes per key
  static constexpr int kKpw = 32 / kTpk;          // keys per warp step
  static constexpr int kSteps = 4 / kNv;          // steps per chunk: 4 vectors of K per lane
  static constexpr int kChunk = kSteps * kKpw;    // keys per warp chunk
  static constexpr int kRound = kWarps * kChunk;  // keys per block round
  static constexpr size_t kSlots = size_t(kStages) * kSteps * kNv * 2;  // 16-byte slots per thread
  static constexpr size_t kSmem = std::max(kSlots * 16 * kThreads, Reduce<GMAX, DH>::kBytes);
  static_assert(kRowVecs * kVec == DH && kNv * kTpk == kRowVecs, "a row splits evenly over a key's lanes");
  static_assert(kTpk >= 1 && kTpk <= 32 && 32 % kTpk == 0, "a warp holds whole keys");
  static_assert(GMAX * kDims <= 64, "q and O stay in registers");
  static_assert(kMinSplitKeys % kRound == 0 && kShortSplitKeys % kRound == 0, "splits are whole block rounds");
};

// Keys per split of a sequence with n_keys keys: equal whole rounds, at least kMinSplitKeys —
// unless that would leave more than half of the sequence's splits idle (a short context with
// few sequences: Llama 2.5B at 2K keys, batch 1, filled 8 of 49 splits), when the keys spread
// over half the splits, down to kShortSplitKeys. (A flat 64-key minimum was measured faster at
// 512 and 2K keys but slower at 8K, where 256-key splits already fill the GPU.) A cluster's
// merge costs little: its splits take equal shares, down to kShortSplitKeys. The decode kernel
// and the merge kernel must agree on it.
__device__ __forceinline__ int split_keys(int n_keys, int n_splits, int round, bool cluster) {
  auto whole_rounds = [&](int keys) { return (keys + round - 1) / round * round; };
  if (cluster) return max(kShortSplitKeys, whole_rounds((n_keys + n_splits - 1) / n_splits));
  const int keys = max(kMinSplitKeys, whole_rounds((n_keys + n_splits - 1) / n_splits));
  const int half = n_splits / 2;
  if (2 * ((n_keys + keys - 1) / keys) >= n_splits || half < 2) return keys;
  return max(kShortSplitKeys, whole_rounds((n_keys + half - 1) / half));
}

using mma::cp_async16;
using mma::cp_async_commit;
using mma::cp_async_wait;

// A 16-byte vector of T as floats.
__device__ __forceinline__ void unpack(const uint4& w, float (&f)[4], float) {
  f[0] = __uint_as_float(w.x);
  f[1] = __uint_as_float(w.y);
  f[2] = __uint_as_float(w.z);
  f[3] = __uint_as_float(w.w);
}
__device__ __forceinline__ void unpack(const uint4& w, float (&f)[8], bf16) {
  const unsigned u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {  // element 2i is the low half of word i
    f[2 * i] = __uint_as_float(u[i] << 16);
    f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
  }
}
// One warp's online-softmax state over the keys it has seen, for its lane's dims.
template <int GMAX, int D>
struct WarpState {
  float m[GMAX], l[GMAX], o[GMAX][D];
};

// Folds NU steps of keys into the state: load_k(u, f) / load_v(u, f) give this lane's dims of
// step u's key (zeros past head_dim), live[u] whether that key exists. At least the first key of
// step 0 (key group 0) must be live, so that the chunk's max is finite.
template <typename C, int GMAX, int NU, typename LoadK, typename LoadV>
__device__ __forceinline__ void absorb(WarpState<GMAX, C::kDims>& st, const float (&q)[GMAX][C::kDims], LoadK&& load_k,
                                       LoadV&& load_v, const bool (&live)[NU]) {
  float s[NU][GMAX];
#pragma unroll
  for (int u = 0; u < NU; ++u) {
    float kf[C::kDims];
    load_k(u, kf);
#pragma unroll
    for (int h = 0; h < GMAX; ++h) {
      float acc = 0.0f;
#pragma unroll
      for (int d = 0; d < C::kDims; ++d) acc = fmaf(q[h][d], kf[d], acc);
      s[u][h] = acc;
    }
  }
#pragma unroll
  for (int u = 0; u < NU; ++u)
#pragma unroll
    for (int h = 0; h < GMAX; ++h) {
#pragma unroll
      for (int off = C::kTpk / 2; off > 0; off /= 2) s[u][h] += __shfl_xor_sync(kFull, s[u][h], off);
      if (!live[u]) s[u][h] = -INFINITY;
    }
#pragma unroll
  for (int h = 0; h < GMAX; ++h) {
    float cm = -INFINITY;
#pragma unroll
    for (int u = 0; u < NU; ++u) cm = fmaxf(cm, s[u][h]);
#pragma unroll
    for (int off = C::kTpk; off < 32; off *= 2) cm = fmaxf(cm, __shfl_xor_sync(kFull, cm, off));
    if (cm > st.m[h]) {  // warp-uniform; past the first keys the running max rarely moves
      const float alpha = exp2f(st.m[h] - cm);
      st.m[h] = cm;
      st.l[h] *= alpha;
#pragma unroll
      for (int d = 0; d < C::kDims; ++d) st.o[h][d] *= alpha;
    }
    float sum = 0.0f;
#pragma unroll
    for (int u = 0; u < NU; ++u) {
      s[u][h] = exp2f(s[u][h] - st.m[h]);  // 0 for a key that is not live
      sum += s[u][h];
    }
    st.l[h] += sum;
  }
#pragma unroll
  for (int u = 0; u < NU; ++u) {
    float vf[C::kDims];
    load_v(u, vf);
#pragma unroll
    for (int h = 0; h < GMAX; ++h)
#pragma unroll
      for (int d = 0; d < C::kDims; ++d) st.o[h][d] = fmaf(s[u][h], vf[d], st.o[h][d]);
  }
}

// A barrier of the whole cluster, in halves: arrive (release: after this thread's writes to
// shared memory, its own or another block's), then wait for every thread of the cluster.
__device__ __forceinline__ void cluster_arrive_release() {
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory"); }

// The cluster merge's inputs in each block's shared memory: block r combines outputs
// [r · slice, (r + 1) · slice) of the group's heads × dims, and every split sends it its O of
// those outputs and its (m, l) of every head (remote stores: they need no round trip, and the
// barrier's release orders them before the merge reads its own memory; remote loads, a round
// trip each, measured 2 µs slower per kernel).
template <int GMAX, int DH>
struct ClusterMerge {
  float o[GMAX * DH + kMaxCluster];  // [split][slice]: n · slice < GMAX · DH + n
  float2 ml[kMaxCluster * GMAX];     // [split][head]
  __device__ static int slice(int n, int total) { return (total + n - 1) / n; }
};

// Split `split` of a cluster of n sends its partial (O of the group's heads × dims, and (m, l)
// of each head, in its own shared memory) to the blocks that combine it: O of output e to the
// block whose slice holds e, (m, l) to every block.
template <int GMAX, int DH, typename T>
__device__ void send_partial(const DecodeArgs<T>& a, ClusterMerge<GMAX, DH>& mine, int split, const float* part_o,
                             const float2* part_ml) {
  cg::cluster_group cluster = cg::this_cluster();
  const int n = a.n_splits, total = a.group * a.dh, slice = ClusterMerge<GMAX, DH>::slice(n, total);
  for (int e = threadIdx.x; e < total; e += kThreads) {
    const int r = e / slice;
    cluster.map_shared_rank(&mine, r)->o[split * slice + e - r * slice] = part_o[e];
  }
  for (int i = threadIdx.x; i < n * a.group; i += kThreads) {
    const int to = i / a.group, h = i % a.group;
    cluster.map_shared_rank(&mine, to)->ml[split * GMAX + h] = part_ml[h];
  }
}

// Block `rank` of the cluster, past the barrier that follows every send_partial, combines its
// slice: out = Σ_z 2^(m_z − M) O_z / Σ_z 2^(m_z − M) l_z over the n splits. Split 0 always holds
// keys, so M is finite, and an idle split's weight 2^(−∞ − M) is 0.
template <int GMAX, int DH, typename T>
__device__ void merge_cluster(const DecodeArgs<T>& a, const ClusterMerge<GMAX, DH>& mine, int rank, int64_t tok,
                              int g) {
  const int n = a.n_splits, total = a.group * a.dh, slice = ClusterMerge<GMAX, DH>::slice(n, total);
  const int first = rank * slice, count = min(total - first, slice);
  for (int i = threadIdx.x; i < count; i += kThreads) {
    const int e = first + i, h = e / a.dh;
    float m_max = -INFINITY;
#pragma unroll 4
    for (int z = 0; z < n; ++z) m_max = fmaxf(m_max, mine.ml[z * GMAX + h].x);
    float l_sum = 0.0f, acc = 0.0f;
#pragma unroll 4
    for (int z = 0; z < n; ++z) {
      const float w = exp2f(mine.ml[z * GMAX + h].x - m_max);
      l_sum = fmaf(w, mine.ml[z * GMAX + h].y, l_sum);
      acc = fmaf(w, mine.o[z * slice + i], acc);
    }
    a.out[tok * a.os0 + int64_t(g * a.group + h) * a.os1 + e % a.dh] = from_f32<T>(acc / l_sum);
  }
}

// What a split (block z of (span, g)) covers: keys [begin, end) of the sequence's 0..pos,
// [begin, stop) from the cache and key pos (has_new) from the step's k, v.
struct SplitKeys {
  int pos, begin, end, stop;
  bool idle;     // past the sequence's keys
  bool has_new;  // holds key pos
};
template <typename T>
__device__ __forceinline__ SplitKeys split_of(const DecodeArgs<T>& a, const SeqSpan& sp, int split) {
  SplitKeys s;
  s.pos = sp.pos;
  const int n_keys = sp.pos + 1, per = split_keys(n_keys, a.n_splits, a.key_round, a.cluster);
  s.begin = split * per;
  s.idle = s.begin >= n_keys;
  s.end = min(s.begin + per, n_keys);
  s.stop = min(s.end, s.pos);
  s.has_new = !s.idle && s.end == n_keys;
  return s;
}

// Where `key` of a sequence sits in the paged cache: its block-table entry and its row in that
// block (a shift and a mask for power-of-two block sizes).
struct KeySlot {
  int entry, row;
};
template <typename T>
__device__ __forceinline__ KeySlot key_slot(const DecodeArgs<T>& a, int key) {
  if (a.block_shift >= 0) return {key >> a.block_shift, key & (a.block_size - 1)};
  const int entry = key / a.block_size;
  return {entry, key - entry * a.block_size};
}
// Cache row offset of `key` of a sequence (block table `table`) at KV head offset `head`.
template <typename T>
__device__ __forceinline__ int64_t cache_row(const DecodeArgs<T>& a, const int32_t* table, int64_t head, int key) {
  const KeySlot s = key_slot(a, key);
  return head + int64_t(table[s.entry]) * a.cs0 + int64_t(s.row) * a.cs1;
}

// q of the group's heads (q_s[h · dh + d]) and, for the split holding key pos, the new k (k_s),
// rotated, as floats holding T's values. Fills a table of cos/sin at pos first (it needs only
// the position), then waits for the kernel ahead (pdl_wait: q, k, v come from the qkv
// projection; launched the ordinary way, the wait returns at once). Each element is read (with
// its rotary partner) by one thread, in consecutive order; the lanes take their dims from shared
// memory (rotating in the lanes' own layout held too many loads live: it spilled).
template <typename T, int DH>
__device__ void load_q_and_new_k(const DecodeArgs<T>& a, int64_t tok, int g, int pos, bool has_new, float* q_s,
                                 float* k_s) {
  __shared__ float rope_cos[DH / 2], rope_sin[DH / 2];
  const int half = a.rope_half, tid = threadIdx.x;
  for (int i = tid; i < half; i += kThreads) rope_angle(a.rope_inv, i, pos, &rope_sin[i], &rope_cos[i]);
  __syncthreads();
  // Element d of a head row src of q or the new k, rotated (as rope.cu rotates and stores it).
  auto rotated = [&](const T* src, int d) -> float {
    const float x = to_f32(src[d]);
    if (d >= 2 * half) return x;
    const bool first = d < half;
    const int i = first ? d : d - half;
    const float partner = to_f32(src[first ? d + half : d - half]);
    return to_f32(from_f32<T>(rope_rotate(x, partner, rope_cos[i], rope_sin[i], first)));
  };
  pdl_wait();
  for (int e = tid; e < a.group * a.dh; e += kThreads)
    q_s[e] = rotated(a.q + tok * a.qs0 + int64_t(g * a.group + e / a.dh) * a.qs1, e % a.dh);
  const T* k_new = a.k + tok * a.ks0 + int64_t(g) * a.ks1;
  if (has_new)
    for (int d = tid; d < a.dh; d += kThreads) k_s[d] = rotated(k_new, d);
  __syncthreads();
}

// The split holding key pos stores the new k (rotated, k_s) and v in the cache; no other block
// reads that row.
template <typename T>
__device__ void store_new_kv(const DecodeArgs<T>& a, const int32_t* table, int64_t head, int pos, int64_t tok, int g,
                             const float* k_s) {
  const int64_t row = cache_row(a, table, head, pos);
  const T* v_new = a.v + tok * a.vs0 + int64_t(g) * a.vs1;
  for (int d = threadIdx.x; d < a.dh; d += kThreads) {
    a.k_cache[row + d] = from_f32<T>(k_s[d]);  // exact: k_s holds T's values
    a.v_cache[row + d] = v_new[d];
  }
}

// After every warp has written its (m, l, O) into `r` (and a barrier), the block merges its
// warps and writes either the output (one split), its (m, l, O) for the merge kernel, or, in a
// cluster, sends it to the blocks that combine it and combines its own slice.
template <typename T, int DH, int GMAX>
__device__ void finish_split(const DecodeArgs<T>& a, const Reduce<GMAX, DH>& r, int span, int g, int split,
                             int64_t tok, bool idle) {
  // What the cluster's splits send this block (not in the dynamic area: they may arrive while
  // this block still streams keys through it).
  __shared__ ClusterMerge<GMAX, DH> merge;
  for (int e = threadIdx.x; e < a.group * a.dh; e += kThreads) {
    const int h = e / a.dh, d = e % a.dh;
    float m_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_max = fmaxf(m_max, r.ml[(w * GMAX + h) * 2]);
    float l_sum = 0.0f, acc = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float wt = exp2f(r.ml[(w * GMAX + h) * 2] - m_max);  // 0 for an idle warp
      l_sum += wt * r.ml[(w * GMAX + h) * 2 + 1];
      acc += wt * r.o[(w * GMAX + h) * DH + d];
    }
    if (a.n_splits == 1) {
      a.out[tok * a.os0 + int64_t(g * a.group + h) * a.os1 + d] = from_f32<T>(acc / l_sum);
    } else if (a.cluster) {  // an idle split offers (−∞, 0) and zeros
      r.part_o[e] = idle ? 0.0f : acc;
      if (d == 0) r.part_ml[h] = idle ? make_float2(-INFINITY, 0.0f) : make_float2(m_max, l_sum);
    } else {
      const int64_t part = ((int64_t(span) * a.hkv + g) * a.n_splits + split) * a.group + h;
      a.o_part[part * a.dh + d] = acc;
      if (d == 0) {
        a.ml_part[2 * part] = m_max;
        a.ml_part[2 * part + 1] = l_sum;
      }
    }
  }
  if (a.cluster) {
    __syncthreads();
    cluster_wait();  // every block of the cluster has started
    send_partial(a, merge, split, r.part_o, r.part_ml);
    cluster_arrive_release();  // this block's partials are sent
    cluster_wait();            // ... and every other block's have arrived
    merge_cluster(a, merge, split, tok, g);  // the cluster spans the splits: its block rank is split
  }
}

// The CUDA-core kernel (fp32 caches, and bf16 ones whose rows fill the lanes: launch_group).
// Three blocks fill an SM's shared memory (64 KiB each), which leaves 168 registers a thread;
// with 8 heads the q and O registers alone are 128, so it runs at two blocks rather than spill.
template <typename T, int DH, int GMAX>
__global__ void __launch_bounds__(kThreads, GMAX <= 4 ? 3 : 2) decode_kernel(DecodeArgs<T> a) {
  using C = DecodeTile<T, DH, GMAX>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint4* slots = reinterpret_cast<uint4*>(smem_raw);

  const int span = blockIdx.x, g = blockIdx.y, split = blockIdx.z;
  const SeqSpan sp = a.spans[span];
  if (sp.len != 1) return;  // a prefill span: the tiled kernel's
  const SplitKeys sk = split_of(a, sp, split);
  const int pos = sk.pos, begin = sk.begin, stop = sk.stop;
  // Past this sequence's keys: the merge kernel skips the split; in a cluster the block stays
  // for the barriers and offers an empty partial.
  if (sk.idle && !a.cluster) return;
  // A block may write another's shared memory only once that block has started: this arrive
  // and the wait before send_partial make the cluster's first barrier (passed long before).
  if (a.cluster) cluster_arrive_relaxed();

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int kg = lane / C::kTpk, t = lane % C::kTpk;  // the lane's key in a step, its part of the row
  const int n_vecs = a.dh / C::kVec;                  // real vectors per row
  const int64_t tok = sp.start;
  const int32_t* table = a.block_tables + int64_t(span) * a.max_blocks;
  const int64_t head = int64_t(g) * a.cs2;

  WarpState<GMAX, C::kDims> st;
#pragma unroll
  for (int h = 0; h < GMAX; ++h) {
    st.m[h] = -INFINITY;
    st.l[h] = 0.0f;
#pragma unroll
    for (int d = 0; d < C::kDims; ++d) st.o[h][d] = 0.0f;
  }

  // Slot of (stage, step, vector, K or V) of this thread: consecutive threads, consecutive
  // 16 bytes (conflict-free 128-bit shared accesses).
  auto slot = [&](int stage, int u, int j, int kv) -> uint4* {
    return slots + ((((stage * C::kSteps + u) * C::kNv + j) * 2 + kv) * kThreads + tid);
  };
  // Warp `warp`'s chunk i: keys [chunk_key(i), chunk_key(i) + kChunk) ∩ [begin, stop).
  auto chunk_key = [&](int i) { return begin + (i * kWarps + warp) * C::kChunk; };
  auto issue = [&](int i) {
    const int stage = i % kStages, key0 = chunk_key(i);
#pragma unroll
    for (int u = 0; u < C::kSteps; ++u) {
      const int key = key0 + u * C::kKpw + kg;
      const bool live = key < stop;
      const int64_t row = live ? cache_row(a, table, head, key) : head;
#pragma unroll
      for (int j = 0; j < C::kNv; ++j) {
        const int c = j * C::kTpk + t;
        const bool fill = live && c < n_vecs;
        const int64_t at = fill ? row + c * C::kVec : 0;  // a valid address even when not read
        cp_async16(slot(stage, u, j, 0), a.k_cache + at, fill);
        cp_async16(slot(stage, u, j, 1), a.v_cache + at, fill);
      }
    }
  };

  // This lane's dims of step u's K (kv 0) or V (kv 1) from the stage's slots.
  auto read_slots = [&](int stage, int u, int kv, float (&f)[C::kDims]) {
#pragma unroll
    for (int j = 0; j < C::kNv; ++j) {
      float part[C::kVec];
      unpack(*slot(stage, u, j, kv), part, T{});
#pragma unroll
      for (int e = 0; e < C::kVec; ++e) f[j * C::kVec + e] = part[e];
    }
  };

  const int ahead = stop - chunk_key(0);
  const int n_mine = ahead > 0 ? (ahead + C::kRound - 1) / C::kRound : 0;  // warp-uniform
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < n_mine) issue(i);
    cp_async_commit();  // empty groups too: group i is chunk i
  }
  __shared__ float q_s[GMAX * DH], k_s[DH];
  load_q_and_new_k<T, DH>(a, tok, g, pos, sk.has_new, q_s, k_s);
  // q of the group's heads for this lane's dims, pre-scaled; zero past head_dim and the group.
  float q[GMAX][C::kDims];
#pragma unroll
  for (int h = 0; h < GMAX; ++h)
#pragma unroll
    for (int j = 0; j < C::kNv; ++j)
#pragma unroll
      for (int e = 0; e < C::kVec; ++e) {
        const int c = j * C::kTpk + t;
        q[h][j * C::kVec + e] = h < a.group && c < n_vecs ? q_s[h * a.dh + c * C::kVec + e] * a.scale_log2 : 0.0f;
      }

  for (int i = 0; i < n_mine; ++i) {
    // Chunk i + kStages − 1 goes where chunk i − 1 was, which this thread has read.
    if (i + kStages - 1 < n_mine) issue(i + kStages - 1);
    cp_async_commit();
    cp_async_wait<kStages - 1>();  // groups 0..i are complete
    const int stage = i % kStages, key0 = chunk_key(i);
    bool live[C::kSteps];
#pragma unroll
    for (int u = 0; u < C::kSteps; ++u) live[u] = key0 + u * C::kKpw + kg < stop;
    absorb<C, GMAX, C::kSteps>(
        st, q,
        [&](int u, float (&f)[C::kDims]) { read_slots(stage, u, 0, f); },
        [&](int u, float (&f)[C::kDims]) { read_slots(stage, u, 1, f); }, live);
  }
  cp_async_wait<0>();
  pdl_allow_dependents();  // the merge (or the output projection) may launch and wait

  // The new key: stored in the cache, and folded in by warp 0 (key group 0 of one step).
  if (sk.has_new) {
    store_new_kv(a, table, head, pos, tok, g, k_s);
    if (warp == 0) {
      const T* v_new = a.v + tok * a.vs0 + int64_t(g) * a.vs1;
      const bool live[1] = {kg == 0};
      auto lane_dims = [&](auto&& value, float (&f)[C::kDims]) {
#pragma unroll
        for (int j = 0; j < C::kNv; ++j)
#pragma unroll
          for (int e = 0; e < C::kVec; ++e) {
            const int c = j * C::kTpk + t;
            f[j * C::kVec + e] = live[0] && c < n_vecs ? value(c * C::kVec + e) : 0.0f;
          }
      };
      absorb<C, GMAX, 1>(
          st, q, [&](int, float (&f)[C::kDims]) { lane_dims([&](int d) { return k_s[d]; }, f); },
          [&](int, float (&f)[C::kDims]) { lane_dims([&](int d) { return to_f32(v_new[d]); }, f); }, live);
    }
  }

  // Sum the warp's key groups (m is already warp-uniform).
#pragma unroll
  for (int h = 0; h < GMAX; ++h)
#pragma unroll
    for (int off = C::kTpk; off < 32; off *= 2) {
      st.l[h] += __shfl_xor_sync(kFull, st.l[h], off);
#pragma unroll
      for (int d = 0; d < C::kDims; ++d) st.o[h][d] += __shfl_xor_sync(kFull, st.o[h][d], off);
    }

  // The warps' results into the reduction area (the slots are free: every copy has landed and
  // every thread passes the barrier after its last read).
  __syncthreads();
  const Reduce<GMAX, DH> r(smem_raw);
  if (kg == 0) {
#pragma unroll
    for (int h = 0; h < GMAX; ++h)
#pragma unroll
      for (int j = 0; j < C::kNv; ++j)
#pragma unroll
        for (int e = 0; e < C::kVec; ++e)
          r.o[(warp * GMAX + h) * DH + (j * C::kTpk + t) * C::kVec + e] = st.o[h][j * C::kVec + e];
  }
  if (lane == 0) {
#pragma unroll
    for (int h = 0; h < GMAX; ++h) {
      r.ml[(warp * GMAX + h) * 2] = st.m[h];  // −inf for a warp that saw no key
      r.ml[(warp * GMAX + h) * 2 + 1] = st.l[h];
    }
  }
  __syncthreads();
  finish_split<T, DH, GMAX>(a, r, span, g, split, tok, sk.idle);
}

// bf16 caches on the tensor cores. A decode step does 2 · group FLOPs per byte of the cache,
// yet the CUDA-core loop above issues ~70 instructions per key and KV head (ncu, batch 16, 32K
// keys, head_dim 128: 352 M instructions, issue slots 62% busy), and more per byte when a row
// leaves lanes idle (head_dim 80) or the group is 8; this kernel issues 129 M there. Here the
// products run as mma.sync m16n8k16 (FlashAttention-2's register layout), the query heads of
// the group as the 16 rows (padded: rows past the group are zeros, rows 8-15 always), 16 keys a
// warp chunk:
//   S[head][key] = q · k_key: A = q (fragments built once), B = K rows via ldmatrix (k = dims);
//   O[head][dim] += P · V: A = P straight from S's accumulators (rounded to bf16, as the
//     prefill kernels do), B = V rows via ldmatrix.trans (k = keys).
// Lane (g = lane / 4, q4 = lane % 4) holds head g's scores of keys 2 q4, 2 q4 + 1 of each 8-key
// half and its O of dims 8 dt + 2 q4, + 1; a head's running max is shared by its 4 lanes (two
// shuffles), its sum l is summed over them at the end. Each warp streams its chunks through its
// own ring of kMmaStages K and V tiles (cp.async, the 16-byte pieces of a row XOR-swizzled by the
// row so that ldmatrix's 8 rows hit 8 different banks); only the warp reads its ring, so a
// __syncwarp orders the copies of one lane before the ldmatrix of another.
template <int DH>
struct MmaTile {
  static constexpr int kKeys = 16;                        // keys per warp chunk
  static constexpr int kPieces = DH / 8;                  // 16-byte pieces per row
  static constexpr int kRowsPerPass = 32 / kPieces;       // rows one copy instruction covers
  static constexpr int kPasses = kKeys / kRowsPerPass;
  static constexpr int kRound = kWarps * kKeys;           // keys per block round
  static constexpr int kTile = kKeys * kPieces;           // 16-byte pieces of a K or V tile
  // Three stages at 96 KiB a block leave room for two blocks an SM (six stages at one block
  // measured 2.1× slower at batch 1, 32K keys: half the blocks, each waiting on its chunks).
  static constexpr int kStages = 3;
  static constexpr size_t kRing = size_t(kStages) * kWarps * 2 * kTile * 16;
  static constexpr size_t kSmem = std::max(kRing, Reduce<kMaxGroup, DH>::kBytes);
  static_assert(kMinSplitKeys % kRound == 0 && kShortSplitKeys % kRound == 0, "splits are whole block rounds");
  // Piece p of row r of a tile: XOR-swizzled within the row (8 rows × the same piece: 8 banks).
  __device__ static int at(int r, int p) { return r * kPieces + (p ^ (r & 7)); }
};

template <int DH>
__global__ void __launch_bounds__(kThreads, 2) decode_mma_kernel(DecodeArgs<bf16> a) {
  using C = MmaTile<DH>;
  constexpr int GMAX = kMaxGroup;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint4* ring = reinterpret_cast<uint4*>(smem_raw);

  const int span = blockIdx.x, g = blockIdx.y, split = blockIdx.z;
  const SeqSpan sp = a.spans[span];
  if (sp.len != 1) return;
  const SplitKeys sk = split_of(a, sp, split);
  const int begin = sk.begin, stop = sk.stop;
  if (sk.idle && !a.cluster) return;
  if (a.cluster) cluster_arrive_relaxed();  // the cluster's first barrier (see decode_kernel)

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int qg = lane / 4, q4 = lane % 4;  // mma fragment row (head) and column pair
  const int n_pieces = a.dh / 8;           // real 16-byte pieces per row
  const int64_t tok = sp.start;
  const int32_t* table = a.block_tables + int64_t(span) * a.max_blocks;
  const int64_t head = int64_t(g) * a.cs2;

  auto tile = [&](int stage, int kv) { return ring + ((stage * kWarps + warp) * 2 + kv) * C::kTile; };
  auto chunk_key = [&](int i) { return begin + (i * kWarps + warp) * C::kKeys; };
  // Chunks start at multiples of 16 keys; with a block size that 16 divides, a chunk's rows share
  // one cache block (one table lookup), else each row looks up its own. The shared lookups run
  // ahead of their copies: lane j holds the cache block of chunk w0 + j (window `cur`) and of
  // chunk w0 + 32 + j (`nxt`, loaded 32 chunks before it is needed). A lookup at issue time
  // stalled the warp on a dependent load before every chunk's copies (ncu: 3.2 long-scoreboard
  // stalls per instruction, 74% of the DRAM rate).
  const bool one_block = a.block_size % C::kKeys == 0;
  auto block_of = [&](int i) -> int32_t {  // chunk i's cache block, or 0 past the keys
    const int key0 = chunk_key(i);
    return key0 < stop ? table[key_slot(a, key0).entry] : 0;
  };
  int w0 = 0;
  int32_t cur = 0, nxt = 0;
  if (one_block) {
    cur = block_of(lane);
    nxt = block_of(32 + lane);
  }
  auto issue = [&](int i) {
    const int stage = i % C::kStages, key0 = chunk_key(i);
    const int piece = lane % C::kPieces, r0 = lane / C::kPieces;
    int64_t base = head;
    if (one_block) {
      if (i >= w0 + 32) {  // warp-uniform: i grows by one a call
        w0 += 32;
        cur = nxt;
        nxt = block_of(w0 + 32 + lane);
      }
      const int32_t blk = __shfl_sync(kFull, cur, i - w0);
      base = head + int64_t(blk) * a.cs0 + int64_t(key_slot(a, key0).row) * a.cs1;
    }
    uint4* kt = tile(stage, 0);
    uint4* vt = tile(stage, 1);
#pragma unroll
    for (int p = 0; p < C::kPasses; ++p) {
      const int r = r0 + p * C::kRowsPerPass, key = key0 + r;
      const bool fill = key < stop && piece < n_pieces;
      int64_t at = 0;  // a valid address even when not read
      if (fill) at = (one_block ? base + int64_t(r) * a.cs1 : cache_row(a, table, head, key)) + piece * 8;
      cp_async16(kt + C::at(r, piece), a.k_cache + at, fill);
      cp_async16(vt + C::at(r, piece), a.v_cache + at, fill);
    }
  };

  const int ahead = stop - chunk_key(0);
  const int n_mine = ahead > 0 ? (ahead + C::kRound - 1) / C::kRound : 0;  // warp-uniform
#pragma unroll
  for (int i = 0; i < C::kStages - 1; ++i) {
    if (i < n_mine) issue(i);
    cp_async_commit();  // empty groups too: group i is chunk i
  }
  __shared__ float q_s[GMAX * DH], k_s[DH];
  load_q_and_new_k<bf16, DH>(a, tok, g, sk.pos, sk.has_new, q_s, k_s);
  // A fragments of q (row qg; rows qg + 8 are zero): q_s holds bf16 values, so they are exact,
  // and the scale goes on the fp32 scores.
  uint32_t qa[DH / 16][2];
#pragma unroll
  for (int ks = 0; ks < DH / 16; ++ks)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int d = ks * 16 + half * 8 + 2 * q4;
      const bool real = qg < a.group && d < a.dh;  // dh is even (a multiple of 8)
      qa[ks][half] = real ? mma::pack_bf16x2(q_s[qg * a.dh + d], q_s[qg * a.dh + d + 1]) : 0u;
    }

  float m = -INFINITY, l = 0.0f;  // head qg's running max (the quad's) and this lane's share of l
  float o[DH / 8][4];             // O of head qg ([0], [1]) and of padding row qg + 8 ([2], [3])
#pragma unroll
  for (int dt = 0; dt < DH / 8; ++dt)
#pragma unroll
    for (int c = 0; c < 4; ++c) o[dt][c] = 0.0f;
  // ldmatrix addresses: lanes 8 mi .. 8 mi + 7 give the rows of matrix mi.
  const int mi = lane / 8, mr = lane % 8;
  const int k_row = (mi / 2) * 8 + mr, k_piece = mi % 2;  // K: matrices (keys 0-7 | 8-15) × (dims lo | hi)
  const int v_row = (mi % 2) * 8 + mr, v_piece = mi / 2;  // V: matrices (dims lo | hi) × (keys 0-7 | 8-15)

  for (int i = 0; i < n_mine; ++i) {
    if (i + C::kStages - 1 < n_mine) issue(i + C::kStages - 1);
    cp_async_commit();
    cp_async_wait<C::kStages - 1>();  // this lane's copies of chunk i have landed
    __syncwarp();                     // ... and every lane's
    const int stage = i % C::kStages, key0 = chunk_key(i);
    const uint4* kt = tile(stage, 0);
    const uint4* vt = tile(stage, 1);
    float s[2][4] = {};
#pragma unroll
    for (int ks = 0; ks < DH / 16; ++ks) {
      uint32_t kb[4];
      mma::ldmatrix_x4(kb, kt + C::at(k_row, 2 * ks + k_piece));
      const uint32_t a4[4] = {qa[ks][0], 0u, qa[ks][1], 0u};
      mma::mma_bf16(s[0], a4, kb[0], kb[1]);
      mma::mma_bf16(s[1], a4, kb[2], kb[3]);
    }
    // Scores of this lane's keys (key0 + 8 nt + 2 q4 + c), masked past stop; the chunk's max
    // over the quad. The chunk's first key is live, so the max is finite.
    float cm = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        s[nt][c] = key0 + nt * 8 + 2 * q4 + c < stop ? s[nt][c] * a.scale_log2 : -INFINITY;
        cm = fmaxf(cm, s[nt][c]);
      }
    cm = fmaxf(cm, __shfl_xor_sync(kFull, cm, 1));
    cm = fmaxf(cm, __shfl_xor_sync(kFull, cm, 2));
    const float m_new = fmaxf(m, cm), alpha = exp2f(m - m_new);
    m = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        s[nt][c] = exp2f(s[nt][c] - m_new);
        sum += s[nt][c];
      }
    l = l * alpha + sum;
#pragma unroll
    for (int dt = 0; dt < DH / 8; ++dt) {
      o[dt][0] *= alpha;
      o[dt][1] *= alpha;
    }
    const uint32_t pa[4] = {mma::pack_bf16x2(s[0][0], s[0][1]), 0u, mma::pack_bf16x2(s[1][0], s[1][1]), 0u};
#pragma unroll
    for (int dp = 0; dp < DH / 16; ++dp) {
      uint32_t vb[4];
      mma::ldmatrix_x4_trans(vb, vt + C::at(v_row, 2 * dp + v_piece));
      mma::mma_bf16(o[2 * dp], pa, vb[0], vb[1]);
      mma::mma_bf16(o[2 * dp + 1], pa, vb[2], vb[3]);
    }
    __syncwarp();  // every lane has read the stage before the next issue refills it
  }
  cp_async_wait<0>();
  pdl_allow_dependents();  // the merge (or the output projection) may launch and wait

  // The new key: stored in the cache, and folded in by warp 0 in fp32 (its q · k over the
  // quad's lanes, dims q4, q4 + 4, ...).
  if (sk.has_new) {
    store_new_kv(a, table, head, sk.pos, tok, g, k_s);
    if (warp == 0) {
      float dot = 0.0f;
      if (qg < a.group)
        for (int d = q4; d < a.dh; d += 4) dot = fmaf(q_s[qg * a.dh + d], k_s[d], dot);
      dot += __shfl_xor_sync(kFull, dot, 1);
      dot += __shfl_xor_sync(kFull, dot, 2);
      const float sc = dot * a.scale_log2, m_new = fmaxf(m, sc), alpha = exp2f(m - m_new);
      const float p = exp2f(sc - m_new);
      m = m_new;
      l = l * alpha + (q4 == 0 ? p : 0.0f);
      const bf16* v_new = a.v + tok * a.vs0 + int64_t(g) * a.vs1;
#pragma unroll
      for (int dt = 0; dt < DH / 8; ++dt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int d = dt * 8 + 2 * q4 + c;
          o[dt][c] = fmaf(p, d < a.dh ? to_f32(v_new[d]) : 0.0f, o[dt][c] * alpha);
        }
    }
  }
  l += __shfl_xor_sync(kFull, l, 1);
  l += __shfl_xor_sync(kFull, l, 2);

  __syncthreads();  // the ring is free: every copy has landed, every warp has read its tiles
  const Reduce<GMAX, DH> r(smem_raw);
  if (qg < GMAX) {
#pragma unroll
    for (int dt = 0; dt < DH / 8; ++dt) {
      r.o[(warp * GMAX + qg) * DH + dt * 8 + 2 * q4] = o[dt][0];
      r.o[(warp * GMAX + qg) * DH + dt * 8 + 2 * q4 + 1] = o[dt][1];
    }
    if (q4 == 0) {
      r.ml[(warp * GMAX + qg) * 2] = m;  // −inf for a warp that saw no key
      r.ml[(warp * GMAX + qg) * 2 + 1] = l;
    }
  }
  __syncthreads();
  finish_split<bf16, DH, GMAX>(a, r, span, g, split, tok, sk.idle);
}

// Combines the splits of (span, KV head g, query head h of the group): block (span, g, h),
// thread d. The splits holding keys are the first ceil(n_keys / split_keys) ones.
template <typename T>
__global__ void __launch_bounds__(kThreads) decode_merge_kernel(DecodeArgs<T> a) {
  __shared__ float weight[kMaxSplits];  // 2^(m_z − M) / L of split z
  pdl_allow_dependents();  // the output projection may start streaming its weights
  pdl_wait();              // the partials come from the decode kernel ahead
  const int span = blockIdx.x, g = blockIdx.y, h = blockIdx.z;
  const SeqSpan sp = a.spans[span];
  if (sp.len != 1) return;
  const int n_keys = sp.pos + 1;
  const int per = split_keys(n_keys, a.n_splits, a.key_round, false);
  const int n_valid = (n_keys + per - 1) / per;
  const int64_t part0 = (int64_t(span) * a.hkv + g) * a.n_splits * a.group + h;  // split z: part0 + z · group
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    float m_max = -INFINITY;
    for (int z = lane; z < n_valid; z += 32) m_max = fmaxf(m_max, a.ml_part[2 * (part0 + int64_t(z) * a.group)]);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) m_max = fmaxf(m_max, __shfl_xor_sync(kFull, m_max, off));
    float l_sum = 0.0f;
    for (int z = lane; z < n_valid; z += 32) {
      const int64_t part = part0 + int64_t(z) * a.group;
      l_sum += exp2f(a.ml_part[2 * part] - m_max) * a.ml_part[2 * part + 1];
    }
    l_sum = warp_sum(l_sum);
    for (int z = lane; z < n_valid; z += 32)
      weight[z] = exp2f(a.ml_part[2 * (part0 + int64_t(z) * a.group)] - m_max) / l_sum;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < a.dh; d += kThreads) {
    float acc = 0.0f;
#pragma unroll 8
    for (int z = 0; z < n_valid; ++z) acc = fmaf(weight[z], a.o_part[(part0 + int64_t(z) * a.group) * a.dh + d], acc);
    a.out[int64_t(sp.start) * a.os0 + int64_t(g * a.group + h) * a.os1 + d] = from_f32<T>(acc);
  }
}

// Launches `kernel` (decode_kernel or decode_mma_kernel: kSmem bytes of dynamic shared memory,
// split lengths in multiples of kRound keys) and, for splits outside a cluster, the merge.
template <typename T, auto kernel, size_t kSmem, int kRound>
void launch(DecodeArgs<T> a, int n_spans, int max_keys, Scratch& scratch, cudaStream_t stream) {
  // Blocks of this kernel an SM holds at once (shared memory and registers), asked once.
  static const int per_sm = [] {
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem)) != cudaSuccess) return 0;
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, kSmem) != cudaSuccess) return 0;
    return n;
  }();
  STATELM_CHECK(per_sm > 0, "attention decode: cannot run blocks of ", kThreads, " threads with ", kSmem,
                " bytes of shared memory");
  // The largest cluster of these blocks that the GPU can place (16, 8, or 1: none), asked once.
  static const int cluster_limit = [] {
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
      cudaGetLastError();  // clusters of 8 at most
    for (unsigned size : {unsigned(kMaxCluster), 8u}) {
      cudaLaunchAttribute attr = cluster_dims(dim3(1, 1, size));
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(1, 1, size);
      cfg.blockDim = dim3(kThreads);
      cfg.dynamicSmemBytes = kSmem;
      cfg.attrs = &attr;
      cfg.numAttrs = 1;
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) == cudaSuccess && clusters > 0) return int(size);
      cudaGetLastError();
    }
    return 1;
  }();
  // One wave: as many splits as leave every block resident at once (a memory-bound stream
  // wants all its loads in flight, not a second wave), within the keys.
  const int64_t base = int64_t(n_spans) * a.hkv;
  const int64_t resident = int64_t(per_sm) * sm_count();
  const int64_t most =
      std::min<int64_t>(kMaxSplits, std::max<int64_t>(1, (max_keys + kShortSplitKeys - 1) / kShortSplitKeys));
  a.n_splits = int(std::clamp<int64_t>(resident / base, 1, most));
  a.key_round = kRound;
  // A cluster merges the splits when they fit one, or when the keys are few enough that
  // cluster_limit splits cover them in kMinSplitKeys each (fewer, longer splits than one wave
  // would have, but no merge kernel) — and they are not few: with 3 splits (Llama 2.5B, batch
  // 16 at 2K keys) the cluster measured ~1% slower a step than the merge kernel; with 16
  // (batch 1) 3-5% faster.
  a.cluster = a.n_splits >= kMinClusterSplits && cluster_limit > 1 &&
              (a.n_splits <= cluster_limit || max_keys <= int64_t(cluster_limit) * kMinSplitKeys);
  if (a.cluster) a.n_splits = std::min(a.n_splits, cluster_limit);
  if (a.n_splits > 1 && !a.cluster) {
    const size_t parts = size_t(base) * a.n_splits * a.group;
    const size_t o_floats = (parts * a.dh + 63) / 64 * 64;
    a.o_part = static_cast<float*>(scratch.get((o_floats + 2 * parts) * sizeof(float)));
    a.ml_part = a.o_part + o_floats;
  }
  // Launched the ordinary way, after the qkv projection has finished, not as its programmatic
  // dependent: the skinny projection releases its dependents as its blocks start, and decode
  // blocks resident that early cost it more than their first chunks gain. Llama 2.5B, batch 1,
  // ms/step early vs after (one device call, 2 rounds): 2.066 vs 2.006 at 512 keys, 2.064 vs
  // 2.014 at 1K, 2.100 vs 2.107 at 2K, 2.351 vs 2.293 at 8K, 3.153 vs 3.190 at 32K (mixed at
  // long contexts, where another H200 also measured the early form slower).
  const dim3 cluster(1, 1, a.cluster ? unsigned(a.n_splits) : 1);
  STATELM_CUDA_CHECK(launch_clusters_pdl_if(cluster, false, kernel,
                                            dim3(unsigned(n_spans), unsigned(a.hkv), unsigned(a.n_splits)),
                                            dim3(kThreads), kSmem, stream, a),
                     "attention decode launch");
  STATELM_CUDA_LAUNCHED("attention decode, head_dim ", a.dh, " group ", a.group, " splits ", a.n_splits,
                        a.cluster ? " (one cluster)" : "");
  if (a.n_splits > 1 && !a.cluster) {
    STATELM_CUDA_CHECK(launch_pdl_if(pdl_chain(), decode_merge_kernel<T>,
                                     dim3(unsigned(n_spans), unsigned(a.hkv), unsigned(a.group)), dim3(kThreads),
                                     stream, a),
                       "attention decode merge launch");
    STATELM_CUDA_LAUNCHED("attention decode merge");
  }
}

template <typename T, int DH, int GMAX>
void launch_simt(const DecodeArgs<T>& a, int n_spans, int max_keys, Scratch& scratch, cudaStream_t stream) {
  using C = DecodeTile<T, DH, GMAX>;
  launch<T, decode_kernel<T, DH, GMAX>, C::kSmem, C::kRound>(a, n_spans, max_keys, scratch, stream);
}

// Which kernel: the SIMT one streams a bf16 cache faster when its lanes hold whole rows and
// few heads (head_dim 64 or 128, group ≤ 4: 3.9 TB/s at batch 16, 32K keys, against 3.46 TB/s
// on the tensor cores, whose warps each wait on a whole 8 KiB chunk), the tensor-core one when
// the SIMT loop would be issue-bound: padded rows (Llama 2.5B's head_dim 80 leaves 6 of 16 lanes
// of a key idle: decode b16 at 32K keys 20.1 → 15.5 ms a step) or 8 heads a KV head (twice the
// FMAs per byte, at two blocks an SM).
template <typename T, int DH>
void launch_group(const DecodeArgs<T>& a, int n_spans, int max_keys, Scratch& scratch, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, bf16>) {
    if (a.dh != DH || a.group > 4) {
      using C = MmaTile<DH>;
      launch<T, decode_mma_kernel<DH>, C::kSmem, C::kRound>(a, n_spans, max_keys, scratch, stream);
      return;
    }
  }
  if (a.group == 1) {
    launch_simt<T, DH, 1>(a, n_spans, max_keys, scratch, stream);
  } else if (a.group == 2) {
    launch_simt<T, DH, 2>(a, n_spans, max_keys, scratch, stream);
  } else if (a.group <= 4) {
    launch_simt<T, DH, 4>(a, n_spans, max_keys, scratch, stream);
  } else {
    launch_simt<T, DH, 8>(a, n_spans, max_keys, scratch, stream);
  }
}

}  // namespace

bool decode_attention_supported(const AttentionParams& p) {
  if (p.q.dtype != DType::F32 && p.q.dtype != DType::BF16) return false;
  const int64_t hq = p.q.shape[1], hkv = p.k.shape[1], dh = p.q.shape[2];
  const size_t es = dtype_size(p.q.dtype);
  const int64_t vec = int64_t(16 / es);
  if (hkv < 1 || hq % hkv != 0 || hq / hkv > kMaxGroup || dh > 128 || dh % vec != 0) return false;
  if (p.rope.kind != RopeKind::None && p.rope.rotary_dim > dh) return false;  // its cos/sin table: DH / 2
  for (const Tensor* c : {&p.k_cache, &p.v_cache})
    if (reinterpret_cast<uintptr_t>(c->data) % 16 != 0 || c->stride[0] % vec != 0 || c->stride[1] % vec != 0 ||
        c->stride[2] % vec != 0)
      return false;
  return true;
}

void decode_attention(const AttentionParams& p, const BatchView& batch, Scratch& scratch, cudaStream_t stream) {
  STATELM_CHECK(decode_attention_supported(p), "attention decode: unsupported shapes, q ", p.q.describe());
  int n_decode = 0, max_keys = batch.key_capacity;
  for (const SeqSpan& s : batch.spans)
    if (s.len == 1) {
      ++n_decode;
      max_keys = std::max(max_keys, s.pos + 1);
    }
  if (n_decode == 0) return;
  const int n_spans = int(batch.spans.size());  // the grid covers every span; others return
  dispatch_float(p.q.dtype, "attention decode", [&](auto tag) {
    using T = decltype(tag);
    DecodeArgs<T> a{};
    attn::fill_paged_args(a, p, batch);
    a.spans = batch.device_spans;
    const unsigned bs = unsigned(a.block_size);
    a.block_shift = std::has_single_bit(bs) ? std::countr_zero(bs) : -1;
    if (p.rope.kind != RopeKind::None) {
      a.rope_half = int(p.rope.rotary_dim / 2);
      a.rope_inv = inv_freq_table(p.rope);
    }
    if (a.dh <= 64)
      launch_group<T, 64>(a, n_spans, max_keys, scratch, stream);
    else
      launch_group<T, 128>(a, n_spans, max_keys, scratch, stream);
  });
}

}  // namespace statelm::cuda
