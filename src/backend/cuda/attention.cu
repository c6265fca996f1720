// Causal GQA attention over the paged KV cache on CUDA (the op of CpuBackend::attention,
// cpu_attention.cpp):
//
//   1. the span's new k, v rows go into the cache at positions pos .. pos + len − 1
//      (block_tables[s][p / block_size], row p % block_size);
//   2. query t of span s (position pos + t), head h, reads KV head g = h / (Hq / Hkv):
//        out = Σ_{j ≤ pos + t} softmax_j(q · k_j · scale) v_j
//
// Step 2, for bf16 with head_dim a multiple of 16 up to 128, is attention_prefill.cu's FlashAttention kernel on
// Hopper's tensor cores (wgmma); everything else (fp32, other head dims) runs the SIMT kernel of this file. Both
// take the same work items and key splits (attention_tile.cuh), so the planning and the merge
// below serve both.
//
// The SIMT kernel is FlashAttention-style (fp32 CUDA cores, fp32 accumulators): a block takes
// a tile of 64 query rows that share one KV head — kTokens = 64 / group tokens × the group's
// heads, so each K/V tile read from the cache serves every query head of the group — and walks
// the keys in tiles of 32 from the paged cache, keeping per row the running max m, the running
// sum l and the unnormalised output O (online softmax: when m grows to m', O and l are scaled
// by 2^(m − m'); scores are pre-multiplied by log2 e so exp is exp2). Causality: a row's keys
// stop at its own position, and a tile's walk stops after the last row's position.
//
// Spans of one token (decode steps) go to attention_decode.cu when it takes the shape: a kernel
// that streams the cache at memory bandwidth and appends its own k, v. Then the append and the
// tile kernel here take only the spans of two tokens or more (SpanItems::min_len = 2).
//
// A batch with too few tiles for the GPU (decode of a shape the decode kernel does not take)
// splits the key range: block z of n_splits takes a contiguous range of key tiles and writes its
// (m, l, O) to scratch; a merge kernel combines the splits, O = Σ_z 2^(m_z − m*) O_z /
// Σ_z 2^(m_z − m*) l_z. A split whose range is past a row's keys leaves (−inf, 0, 0), which the
// merge weighs as 0.
//
// Thread layout of the 64 × 32 score tile and the 64 × Dh output: thread (ty, tx) = (tid / 16,
// tid % 16) owns rows ty + 16 r (r < 4), keys tx + 16 c (c < 2) and output dims tx + 16 c; a
// row's 16 owners are one half-warp, so row maxima and sums are 4 shuffles. Shared rows are
// padded by one word so that the K reads (16 rows at once) fall in distinct banks.
#include <algorithm>
#include <cmath>

#include <type_traits>

#include "backend/cuda/attention_decode.h"
#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/span_kernels.cuh"

namespace statelm::cuda {

namespace {

using attn::AttnArgs;
using attn::kRows;

constexpr int kThreads = 256;
constexpr int kKeys = 32;  // keys per tile of the SIMT kernel

template <typename T>
__device__ __forceinline__ const T* cache_row(const T* cache, const AttnArgs<T>& a, int span, int pos, int g) {
  return cache + attn::cache_offset(a, span, pos, g);
}

// ---- 1. append the span's k, v to the cache -------------------------------------------------
// A block moves kAppendTokens tokens of k and v, a thread V elements at a time: 16 bytes when
// every row involved starts 16-byte aligned (append_vector_ok), single elements otherwise. One
// element at a time, the copy ran at 1.25 TB/s (430 µs of a 16K-token, 32-head prefill's 5 ms,
// bench/RESULTS.md session 15).
constexpr int kAppendTokens = 16;

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) append_kv_kernel(AttnArgs<T> a, SpanItems items) {
  using Chunk = std::conditional_t<V == 1, T, uint4>;
  static_assert(V == 1 || V * sizeof(T) == sizeof(uint4), "a chunk is one element or 16 bytes");
  const ItemRef it = find_item(items, blockIdx.x);
  const SeqSpan sp = items.spans[it.span];
  const int t0 = it.piece * kAppendTokens, n_tok = min(kAppendTokens, sp.len - t0);
  const int per_row = a.dh / V, per_tok = a.hkv * per_row;
  for (int e = threadIdx.x; e < n_tok * per_tok; e += kThreads) {
    const int t = t0 + e / per_tok, r = e % per_tok, g = r / per_row, d = V * (r % per_row);
    const int64_t tok = int64_t(sp.start) + t;
    const int64_t dst = attn::cache_offset(a, it.span, sp.pos + t, g) + d;
    const Chunk k = *reinterpret_cast<const Chunk*>(a.k + tok * a.ks0 + int64_t(g) * a.ks1 + d);
    const Chunk v = *reinterpret_cast<const Chunk*>(a.v + tok * a.vs0 + int64_t(g) * a.vs1 + d);
    *reinterpret_cast<Chunk*>(a.k_cache + dst) = k;
    *reinterpret_cast<Chunk*>(a.v_cache + dst) = v;
  }
}

// Whether every k, v and cache row starts 16-byte aligned and head_dim is whole 16-byte chunks.
template <typename T>
bool append_vector_ok(const AttnArgs<T>& a) {
  const auto rows16 = [](const void* p, std::initializer_list<int64_t> strides) {
    return aligned_for(p, strides, sizeof(T), 16);
  };
  return a.dh % (16 / int(sizeof(T))) == 0 && rows16(a.k, {a.ks0, a.ks1}) && rows16(a.v, {a.vs0, a.vs1}) &&
         rows16(a.k_cache, {a.cs0, a.cs1, a.cs2}) && rows16(a.v_cache, {a.cs0, a.cs1, a.cs2});
}

// ---- 2. attention of a 64-row tile over a range of key tiles --------------------------------
template <int DH>
struct AttnSmem {
  float q[kRows][DH + 1];
  float k[kKeys][DH + 1];
  float v[kKeys][DH + 1];
  float p[kRows][kKeys + 1];
};

template <typename T, int DH>
__global__ void __launch_bounds__(kThreads) attention_kernel(AttnArgs<T> a, SpanItems items) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  AttnSmem<DH>& s = *reinterpret_cast<AttnSmem<DH>*>(smem_raw);
  constexpr int kDc = DH / 16;  // output dims per thread
  const ItemRef it = find_item(items, blockIdx.x);
  const SeqSpan sp = items.spans[it.span];
  const int g = blockIdx.y, split = blockIdx.z;
  const int t0 = it.piece * a.tokens;
  const int n_tok = min(a.tokens, sp.len - t0);
  const int rows = n_tok * a.group;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;

  // Q tile, pre-scaled; rows past `rows` and dims past dh are zero.
  for (int e = threadIdx.x; e < kRows * DH; e += kThreads) {
    const int r = e / DH, d = e % DH;
    float val = 0.0f;
    if (r < rows && d < a.dh) {
      const int64_t tok = int64_t(sp.start) + t0 + r / a.group;
      const int h = g * a.group + r % a.group;
      val = to_f32(a.q[tok * a.qs0 + int64_t(h) * a.qs1 + d]) * a.scale_log2;
    }
    s.q[r][d] = val;
  }

  int qpos[4];  // position of each owned row (−1: not a row)
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int row = ty + 16 * r;
    qpos[r] = row < rows ? sp.pos + t0 + row / a.group : -1;
  }
  const int n_keys = sp.pos + t0 + n_tok;  // keys the last row sees
  const int tile_begin = split * a.tiles_per_split;
  const int tile_end = min((n_keys + kKeys - 1) / kKeys, tile_begin + a.tiles_per_split);

  float m[4], l[4], o[4][kDc];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < kDc; ++c) o[r][c] = 0.0f;
  }

  for (int kt = tile_begin; kt < tile_end; ++kt) {
    const int key0 = kt * kKeys;
    __syncthreads();  // the previous tile's K, V, P reads are done (and the Q tile is written)
    for (int e = threadIdx.x; e < kKeys * DH; e += kThreads) {
      const int kk = e / DH, d = e % DH;
      const int pos = key0 + kk;
      float kv = 0.0f, vv = 0.0f;  // zero past the keys: a NaN there would survive p = 0
      if (pos < n_keys && d < a.dh) {
        kv = to_f32(cache_row(a.k_cache, a, it.span, pos, g)[d]);
        vv = to_f32(cache_row(a.v_cache, a, it.span, pos, g)[d]);
      }
      s.k[kk][d] = kv;
      s.v[kk][d] = vv;
    }
    __syncthreads();

    float sc[4][2];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 2; ++c) sc[r][c] = 0.0f;
    // Threads none of whose rows exist (decode: a tile holds only `group` rows) skip the
    // products, a saving of up to 15/16 of the work there; they still join the shuffles below.
    const bool has_rows = ty < rows;
#pragma unroll 8
    for (int d = 0; d < (has_rows ? DH : 0); ++d) {
      float qv[4], kv[2];
#pragma unroll
      for (int r = 0; r < 4; ++r) qv[r] = s.q[ty + 16 * r][d];
#pragma unroll
      for (int c = 0; c < 2; ++c) kv[c] = s.k[tx + 16 * c][d];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 2; ++c) sc[r][c] = fmaf(qv[r], kv[c], sc[r][c]);
    }

    float alpha[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int pos = key0 + tx + 16 * c;
        if (pos > qpos[r]) sc[r][c] = -INFINITY;  // also every key of a non-row (qpos −1)
        mx = fmaxf(mx, sc[r][c]);
      }
#pragma unroll
      for (int o2 = 8; o2 >= 1; o2 >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o2, 16));
      const float m_new = fmaxf(m[r], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with no key yet
      alpha[r] = exp2f(m[r] - m_use);
      float sum = 0.0f;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const float pv = exp2f(sc[r][c] - m_use);
        s.p[ty + 16 * r][tx + 16 * c] = pv;
        sum += pv;
      }
#pragma unroll
      for (int o2 = 8; o2 >= 1; o2 >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o2, 16);
      l[r] = l[r] * alpha[r] + sum;
      m[r] = m_new;
    }
    __syncthreads();

#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < kDc; ++c) o[r][c] *= alpha[r];
#pragma unroll 4
    for (int kk = 0; kk < (has_rows ? kKeys : 0); ++kk) {
      float pv[4], vv[kDc];
#pragma unroll
      for (int r = 0; r < 4; ++r) pv[r] = s.p[ty + 16 * r][kk];
#pragma unroll
      for (int c = 0; c < kDc; ++c) vv[c] = s.v[kk][tx + 16 * c];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < kDc; ++c) o[r][c] = fmaf(pv[r], vv[c], o[r][c]);
    }
  }

  const bool split_mode = gridDim.z > 1;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int row = ty + 16 * r;
    if (row >= rows) continue;
    if (split_mode) {
      const int64_t base = attn::split_row(int(blockIdx.x), a.hkv, g, int(gridDim.z), split, row, kRows);
#pragma unroll
      for (int c = 0; c < kDc; ++c) {
        const int d = tx + 16 * c;
        if (d < a.dh) a.o_part[base * a.dh + d] = o[r][c];
      }
      if (tx == 0) {
        a.ml_part[2 * base] = m[r];
        a.ml_part[2 * base + 1] = l[r];
      }
    } else {
      const int64_t tok = int64_t(sp.start) + t0 + row / a.group;
      const int h = g * a.group + row % a.group;
      const float inv = 1.0f / l[r];  // l ≥ 1: the row's own key is always in range
#pragma unroll
      for (int c = 0; c < kDc; ++c) {
        const int d = tx + 16 * c;
        if (d < a.dh) a.out[tok * a.os0 + int64_t(h) * a.os1 + d] = from_f32<T>(o[r][c] * inv);
      }
    }
  }
}

// ---- 3. merge the splits of each row --------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kThreads) merge_kernel(AttnArgs<T> a, SpanItems items, int n_splits) {
  const ItemRef it = find_item(items, blockIdx.x);
  const SeqSpan sp = items.spans[it.span];
  const int g = blockIdx.y;
  const int t0 = it.piece * a.tokens;
  const int rows = min(a.tokens, sp.len - t0) * a.group;
  for (int e = threadIdx.x; e < rows * a.dh; e += kThreads) {
    const int row = e / a.dh, d = e % a.dh;
    const int64_t base0 = attn::split_row(int(blockIdx.x), a.hkv, g, n_splits, 0, row, a.tile_rows);
    float m_max = -INFINITY;
    for (int z = 0; z < n_splits; ++z) m_max = fmaxf(m_max, a.ml_part[2 * (base0 + int64_t(z) * a.tile_rows)]);
    float l_sum = 0.0f, acc = 0.0f;
    for (int z = 0; z < n_splits; ++z) {
      const int64_t base = base0 + int64_t(z) * a.tile_rows;
      const float mz = a.ml_part[2 * base];
      if (mz == -INFINITY) continue;  // a split with no key for this row
      const float w = exp2f(mz - m_max);
      l_sum += w * a.ml_part[2 * base + 1];
      acc += w * a.o_part[base * a.dh + d];
    }
    const int64_t tok = int64_t(sp.start) + t0 + row / a.group;
    const int h = g * a.group + row % a.group;
    a.out[tok * a.os0 + int64_t(h) * a.os1 + d] = from_f32<T>(acc / l_sum);
  }
}

template <typename T>
void merge(const AttnArgs<T>& a, const SpanItems& items, int64_t n_items, int n_splits, cudaStream_t stream) {
  if (n_splits <= 1) return;
  merge_kernel<T><<<dim3(unsigned(n_items), unsigned(a.hkv)), kThreads, 0, stream>>>(a, items, n_splits);
  STATELM_CUDA_LAUNCHED("attention merge");
}

template <typename T, int DH>
void run(AttnArgs<T> a, const BatchView& batch, int min_len, Scratch& scratch, cudaStream_t stream) {
  // bf16 at head_dim 16..128 (multiples of 16) runs on tensor cores (attention_prefill.cu), in key tiles of 64
  // and tiles of 64 (or, forced, 128) query rows.
  bool mma = false;
  if constexpr (std::is_same_v<T, bf16>) mma = attn::prefill_mma_supported(a);  // any DH instantiation: the kernel pads a.dh itself
  if (mma) {
    a.tile_rows = attn::prefill_tile_rows();
    a.tokens = a.tile_rows / a.group;
  }
  int64_t n_items = 0;
  const SpanItems items = plan_items(batch, a.tokens, min_len, &n_items);
  if (n_items == 0) return;
  int max_keys = 0;
  for (const SeqSpan& s : batch.spans) max_keys = std::max(max_keys, int(s.pos + s.len));
  max_keys = std::max(max_keys, batch.key_capacity);  // a graph's plan outlives this batch
  const int tile_keys = mma ? attn::kPrefillKeys : kKeys;
  const int key_tiles = (max_keys + tile_keys - 1) / tile_keys;
  // Split the keys when the tiles alone leave the GPU short of blocks (decode, or a short chunk
  // late in a long prefill), keeping at least 256 keys per split so that the merge stays cheap.
  const int min_split_tiles = 256 / tile_keys;
  const int64_t blocks = n_items * a.hkv;
  const int64_t want = 2 * int64_t(sm_count());
  int n_splits = 1;
  if (blocks < want && key_tiles >= 2 * min_split_tiles)
    n_splits = int(std::min<int64_t>((want + blocks - 1) / blocks, key_tiles / min_split_tiles));
  a.tiles_per_split = (key_tiles + n_splits - 1) / n_splits;
  n_splits = (key_tiles + a.tiles_per_split - 1) / a.tiles_per_split;
  if (n_splits > 1) {
    const size_t rows = size_t(n_items) * a.hkv * n_splits * a.tile_rows;
    const size_t o_floats = (rows * a.dh + 63) / 64 * 64;
    a.o_part = static_cast<float*>(scratch.get((o_floats + 2 * rows) * sizeof(float)));
    a.ml_part = a.o_part + o_floats;
  }
  if constexpr (std::is_same_v<T, bf16>) {
    if (mma) {
      attn::prefill_mma(a, items, n_items, n_splits, stream);
      merge(a, items, n_items, n_splits, stream);
      return;
    }
  }
  const size_t smem = sizeof(AttnSmem<DH>);
  static const bool configured = [&] {
    return cudaFuncSetAttribute(attention_kernel<T, DH>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) ==
           cudaSuccess;
  }();
  STATELM_CHECK(configured, "attention: cannot allow ", smem, " bytes of shared memory per block");
  attention_kernel<T, DH><<<dim3(unsigned(n_items), unsigned(a.hkv), unsigned(n_splits)), kThreads, smem, stream>>>(
      a, items);
  STATELM_CUDA_LAUNCHED("attention, head_dim ", a.dh, " splits ", n_splits);
  merge(a, items, n_items, n_splits, stream);
}

}  // namespace

void attention(const AttentionParams& p, const BatchView& batch, Scratch& scratch, cudaStream_t stream) {
  const int64_t hq = p.q.shape[1], hkv = p.k.shape[1], dh = p.q.shape[2];
  STATELM_CHECK(p.q.ndim == 3 && p.k.ndim == 3 && p.v.ndim == 3 && p.out.ndim == 3 && p.k_cache.ndim == 4 &&
                    p.v_cache.ndim == 4,
                "attention: ranks q ", p.q.describe(), " cache ", p.k_cache.describe());
  STATELM_CHECK(batch.device_block_tables && batch.block_size > 0, "attention needs a device KV block table");
  STATELM_CHECK(hkv >= 1 && hq % hkv == 0 && hq / hkv <= kRows, "attention: ", hq, " query heads over ", hkv,
                " KV heads (at most ", kRows, " per KV head)");
  STATELM_CHECK(dh >= 1 && dh <= 128, "attention: CUDA kernel supports head_dim <= 128, got ", dh);
  STATELM_CHECK(p.k_cache.shape[1] == batch.block_size && p.k_cache.shape[2] == hkv && p.k_cache.shape[3] == dh &&
                    p.v_cache.shape[1] == batch.block_size && p.v_cache.shape[2] == hkv && p.v_cache.shape[3] == dh,
                "attention: cache ", p.k_cache.describe(), " for ", hkv, " KV heads of ", dh, ", block ",
                batch.block_size);
  for (const Tensor* t : {&p.k_cache, &p.v_cache})
    STATELM_CHECK(t->stride[0] == p.k_cache.stride[0] && t->stride[1] == p.k_cache.stride[1] &&
                      t->stride[2] == p.k_cache.stride[2] && t->stride[3] == 1,
                  "attention: k and v caches must share one layout, got ", p.k_cache.describe(), " and ",
                  p.v_cache.describe());
  for (const Tensor* t : {&p.q, &p.k, &p.v, &p.out}) require_last_contiguous(*t, "attention", "input");
  for (const Tensor* t : {&p.k, &p.v, &p.out, &p.k_cache, &p.v_cache})
    STATELM_CHECK(t->dtype == p.q.dtype, "attention: q, k, v, out and the caches must share one dtype, got ",
                  t->describe(), " and q ", p.q.describe());
  for (const SeqSpan& s : batch.spans)
    STATELM_CHECK((int64_t(s.pos) + s.len + batch.block_size - 1) / batch.block_size <= batch.max_blocks_per_seq,
                  "attention: span beyond its block table");
  if (batch.spans.empty()) return;

  // The decode kernel takes the one-token spans (rotates their q and k, appends their k, v);
  // the rest stay here, rotated in place first.
  const bool decode = decode_attention_supported(p) &&
                      std::any_of(batch.spans.begin(), batch.spans.end(), [](const SeqSpan& s) { return s.len == 1; });
  const int min_len = decode ? 2 : 1;
  rope({p.q, p.k, p.rope}, batch, stream, min_len);
  if (decode) decode_attention(p, batch, scratch, stream);

  dispatch_float(p.q.dtype, "attention", [&](auto tag) {
    using T = decltype(tag);
    AttnArgs<T> a{};
    attn::fill_paged_args(a, p, batch);
    a.tile_rows = kRows;
    a.tokens = kRows / a.group;

    int64_t n_append = 0;
    const SpanItems append_items = plan_items(batch, kAppendTokens, min_len, &n_append);
    if (n_append > 0) {
      if (append_vector_ok(a))
        append_kv_kernel<T, 16 / sizeof(T)><<<unsigned(n_append), kThreads, 0, stream>>>(a, append_items);
      else
        append_kv_kernel<T, 1><<<unsigned(n_append), kThreads, 0, stream>>>(a, append_items);
      STATELM_CUDA_LAUNCHED("attention append, k ", p.k.describe(), " cache ", p.k_cache.describe());
    }
    if (dh <= 32)
      run<T, 32>(a, batch, min_len, scratch, stream);
    else if (dh <= 64)
      run<T, 64>(a, batch, min_len, scratch, stream);
    else
      run<T, 128>(a, batch, min_len, scratch, stream);
  });
}

}  // namespace statelm::cuda
