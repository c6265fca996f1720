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
// The block table is read per key (key / block_size), any block size works.
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
#include <cmath>

#include <cooperative_groups.h>

#include "backend/cuda/attention_args.cuh"
#include "backend/cuda/attention_decode.h"
#include "backend/cuda/cuda_common.h"
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
  static constexpr size_t kReduceBytes = size_t(kWarps) * GMAX * (DH + 2) * sizeof(float);
  // The warps' reduction area, then a cluster split's partial (O and (m, l) of each head).
  static constexpr size_t kPartialBytes = kReduceBytes + size_t(GMAX) * (DH + 2) * sizeof(float);
  static constexpr size_t kSmem = std::max(kSlots * 16 * kThreads, kPartialBytes);
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

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool fill) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(fill ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

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
    const float m_new = fmaxf(st.m[h], cm);  // finite (a live key); the same in every lane
    const float alpha = exp2f(st.m[h] - m_new);
    st.m[h] = m_new;
    float sum = 0.0f;
#pragma unroll
    for (int u = 0; u < NU; ++u) {
      s[u][h] = exp2f(s[u][h] - m_new);  // 0 for a key that is not live
      sum += s[u][h];
    }
    st.l[h] = st.l[h] * alpha + sum;
#pragma unroll
    for (int d = 0; d < C::kDims; ++d) st.o[h][d] *= alpha;
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
  const int pos = sp.pos, n_keys = pos + 1;
  const int per = split_keys(n_keys, a.n_splits, a.key_round, a.cluster);
  const int begin = split * per;
  // Past this sequence's keys: the merge kernel skips the split; in a cluster the block stays
  // for the barriers and offers an empty partial.
  const bool idle = begin >= n_keys;
  if (idle && !a.cluster) return;
  // A block may write another's shared memory only once that block has started: this arrive
  // and the wait before send_partial make the cluster's first barrier (passed long before).
  if (a.cluster) cluster_arrive_relaxed();
  const int end = min(begin + per, n_keys);
  const int stop = min(end, pos);  // keys [begin, stop) come from the cache, key pos from k, v
  const bool has_new = !idle && end == n_keys;

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
      int64_t row = head;
      if (live) {
        const int32_t blk = table[key / a.block_size];
        row += int64_t(blk) * a.cs0 + int64_t(key % a.block_size) * a.cs1;
      }
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
  // cos/sin of the rotary pairs at pos (they need only the position).
  __shared__ float rope_cos[DH / 2], rope_sin[DH / 2];
  const int half = a.rope_half;
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

  // q and the new k, v come from the kernel ahead (the qkv projection, or rope); the cache rows
  // above were written by earlier steps. Launched the ordinary way (see launch()), this wait
  // returns at once; it keeps the kernel correct as a programmatic dependent.
  pdl_wait();
  // q of the group's heads and the new k, rotated, go through shared memory: each element is
  // read (with its rotary partner) by one thread, in consecutive order, and a lane's dims come
  // from there (rotating in the lanes' own layout held too many loads live: it spilled).
  __shared__ float q_s[GMAX * DH], k_s[DH];
  for (int e = tid; e < a.group * a.dh; e += kThreads)
    q_s[e] = rotated(a.q + tok * a.qs0 + int64_t(g * a.group + e / a.dh) * a.qs1, e % a.dh);
  const T* k_new = a.k + tok * a.ks0 + int64_t(g) * a.ks1;
  if (has_new)
    for (int d = tid; d < a.dh; d += kThreads) k_s[d] = rotated(k_new, d);
  __syncthreads();
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
  if (has_new) {
    const int32_t blk = table[pos / a.block_size];
    const int64_t row = head + int64_t(blk) * a.cs0 + int64_t(pos % a.block_size) * a.cs1;
    const T* v_new = a.v + tok * a.vs0 + int64_t(g) * a.vs1;
    for (int d = tid; d < a.dh; d += kThreads) {
      a.k_cache[row + d] = from_f32<T>(k_s[d]);  // exact: k_s holds T's values
      a.v_cache[row + d] = v_new[d];
    }
    if (warp == 0) {
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

  // Merge the warps through shared memory (the slots are free: every copy has landed and every
  // thread passes the barrier after its last read).
  __syncthreads();
  float* red_o = reinterpret_cast<float*>(smem_raw);  // [warp][GMAX][DH]
  float* red_ml = red_o + kWarps * GMAX * DH;          // [warp][GMAX][2]
  float* part_o = red_ml + kWarps * GMAX * 2;          // [group · dh] this split's, in a cluster
  float2* part_ml = reinterpret_cast<float2*>(part_o + GMAX * DH);  // [group]
  // What the cluster's splits send this block (not in the dynamic area: they may arrive while
  // this block still streams keys through its slots).
  __shared__ ClusterMerge<GMAX, DH> merge;
  if (kg == 0) {
#pragma unroll
    for (int h = 0; h < GMAX; ++h)
#pragma unroll
      for (int j = 0; j < C::kNv; ++j)
#pragma unroll
        for (int e = 0; e < C::kVec; ++e)
          red_o[(warp * GMAX + h) * DH + (j * C::kTpk + t) * C::kVec + e] = st.o[h][j * C::kVec + e];
  }
  if (lane == 0) {
#pragma unroll
    for (int h = 0; h < GMAX; ++h) {
      red_ml[(warp * GMAX + h) * 2] = st.m[h];  // −inf for a warp that saw no key
      red_ml[(warp * GMAX + h) * 2 + 1] = st.l[h];
    }
  }
  __syncthreads();
  for (int e = tid; e < a.group * a.dh; e += kThreads) {
    const int h = e / a.dh, d = e % a.dh;
    float m_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_max = fmaxf(m_max, red_ml[(w * GMAX + h) * 2]);
    float l_sum = 0.0f, acc = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float wt = exp2f(red_ml[(w * GMAX + h) * 2] - m_max);  // 0 for an idle warp
      l_sum += wt * red_ml[(w * GMAX + h) * 2 + 1];
      acc += wt * red_o[(w * GMAX + h) * DH + d];
    }
    if (a.n_splits == 1) {
      a.out[tok * a.os0 + int64_t(g * a.group + h) * a.os1 + d] = from_f32<T>(acc / l_sum);
    } else if (a.cluster) {  // an idle split offers (−∞, 0) and zeros
      part_o[e] = idle ? 0.0f : acc;
      if (d == 0) part_ml[h] = idle ? make_float2(-INFINITY, 0.0f) : make_float2(m_max, l_sum);
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
    send_partial(a, merge, split, part_o, part_ml);
    cluster_arrive_release();  // this block's partials are sent
    cluster_wait();            // ... and every other block's have arrived
    merge_cluster(a, merge, split, tok, g);  // the cluster spans the splits: its block rank is split
  }
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

template <typename T, int DH, int GMAX>
void launch(DecodeArgs<T> a, int n_spans, int max_keys, Scratch& scratch, cudaStream_t stream) {
  using C = DecodeTile<T, DH, GMAX>;
  // Blocks of this kernel an SM holds at once (shared memory and registers), asked once.
  static const int per_sm = [] {
    if (cudaFuncSetAttribute(decode_kernel<T, DH, GMAX>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(C::kSmem)) !=
        cudaSuccess)
      return 0;
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, decode_kernel<T, DH, GMAX>, kThreads, C::kSmem) != cudaSuccess)
      return 0;
    return n;
  }();
  STATELM_CHECK(per_sm > 0, "attention decode: cannot run blocks of ", kThreads, " threads with ", C::kSmem,
                " bytes of shared memory");
  // The largest cluster of these blocks that the GPU can place (16, 8, or 1: none), asked once.
  static const int cluster_limit = [] {
    const auto kernel = decode_kernel<T, DH, GMAX>;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
      cudaGetLastError();  // clusters of 8 at most
    for (unsigned size : {unsigned(kMaxCluster), 8u}) {
      cudaLaunchAttribute attr = cluster_dims(dim3(1, 1, size));
      cudaLaunchConfig_t cfg{};
      cfg.gridDim = dim3(1, 1, size);
      cfg.blockDim = dim3(kThreads);
      cfg.dynamicSmemBytes = C::kSmem;
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
  a.key_round = C::kRound;
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
  STATELM_CUDA_CHECK(launch_clusters_pdl_if(cluster, false, decode_kernel<T, DH, GMAX>,
                                            dim3(unsigned(n_spans), unsigned(a.hkv), unsigned(a.n_splits)),
                                            dim3(kThreads), C::kSmem, stream, a),
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

template <typename T, int DH>
void launch_group(const DecodeArgs<T>& a, int n_spans, int max_keys, Scratch& scratch, cudaStream_t stream) {
  if (a.group == 1)
    launch<T, DH, 1>(a, n_spans, max_keys, scratch, stream);
  else if (a.group == 2)
    launch<T, DH, 2>(a, n_spans, max_keys, scratch, stream);
  else if (a.group <= 4)
    launch<T, DH, 4>(a, n_spans, max_keys, scratch, stream);
  else
    launch<T, DH, 8>(a, n_spans, max_keys, scratch, stream);
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
