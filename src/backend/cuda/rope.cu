// Rotary position embedding of q and k in place, on CUDA (transformers' Llama layout,
// non-interleaved "rotate_half"), matching CpuBackend::rope (cpu_attention.cpp):
//
//   for the first rotary_dim dims of a head split in halves a | b, pair i at position p:
//     f = inv_freq[i] · p,   a' = a cos f − b sin f,   b' = b cos f + a sin f
//
// Token t of span s sits at p = spans[s].pos + t. inv_freq, with the RoPE variant's scaling
// (default, linear, llama3) folded in, is computed on the host by exactly the CPU's code (fp32
// pow, then the llama3 wavelength bands in double) and passed by value, so both backends rotate
// by the same frequencies; f is the same fp32 product, and only sin/cos differ (CUDA's sincosf
// is within 2 ulp). The arithmetic is rope_math.cuh's, which the attention decode kernel shares.
//
// Parallelisation: a block per item of kTokens tokens of a span (several per item in a decode
// step); the block first fills a table of cos/sin per (token, pair) in shared memory, then
// rotates its (token, head, pairs)s of q and k with consecutive threads on consecutive pairs
// (coalesced halves of each head row), V pairs a thread: 4 (or 2) when the halves and the rows
// allow 8-byte (4-byte) bf16 accesses. One pair a thread, 8 tokens a block, a 2048-token chunk
// of Llama 2.5B (40 heads × 40 pairs) took 40 µs; 4 pairs a thread 16 µs, and 4 tokens a block
// 12.7 µs (ncu, bench/RESULTS.md session 15).
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/pdl.cuh"
#include "backend/cuda/rope_math.cuh"
#include "backend/cuda/span_kernels.cuh"

namespace statelm::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kTokens = 4;  // tokens per item

// V consecutive elements of a row, loaded and stored as one access.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Pairs i .. i + V − 1 of a head row (a = row[i + j], b = row[i + j + half]).
template <typename T, int V>
__device__ __forceinline__ void rotate_pairs(T* row, int i, int half, const float* c, const float* s) {
  Pack<T, V>& pa = *reinterpret_cast<Pack<T, V>*>(row + i);
  Pack<T, V>& pb = *reinterpret_cast<Pack<T, V>*>(row + i + half);
  Pack<T, V> a = pa, b = pb;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const float x = to_f32(a.v[j]), y = to_f32(b.v[j]);
    a.v[j] = from_f32<T>(rope_rotate(x, y, c[j], s[j], true));
    b.v[j] = from_f32<T>(rope_rotate(y, x, c[j], s[j], false));
  }
  pa = a;
  pb = b;
}

template <typename T, int V>
__global__ void __launch_bounds__(kThreads) rope_kernel(T* q, int64_t qs0, int64_t qs1, int hq, T* k, int64_t ks0,
                                                         int64_t ks1, int hkv, int half, InvFreq inv, SpanItems items) {
  __shared__ float cos_t[kTokens][kMaxRopeHalf];
  __shared__ float sin_t[kTokens][kMaxRopeHalf];
  const ItemRef it = find_item(items, blockIdx.x);
  const SeqSpan sp = items.spans[it.span];
  const int t0 = it.piece * kTokens;
  const int n_tok = min(kTokens, sp.len - t0);
  for (int e = threadIdx.x; e < n_tok * half; e += kThreads) {
    const int t = e / half, i = e % half;
    rope_angle(inv, i, sp.pos + t0 + t, &sin_t[t][i], &cos_t[t][i]);
  }
  // Launched as a programmatic dependent (pdl_chain): the angles above need only the positions;
  // q and k come from the kernel ahead.
  pdl_wait();
  __syncthreads();
  const int heads = hq + hkv;
  const int packs = half / V;  // per head
  const int per_token = heads * packs;
  // Blocks y = 0 .. gridDim.y − 1 of an item share its pairs (gridDim.y > 1 for decode steps).
  for (int e = blockIdx.y * kThreads + threadIdx.x; e < n_tok * per_token; e += gridDim.y * kThreads) {
    const int t = e / per_token, r = e % per_token;
    const int h = r / packs, i = V * (r % packs);
    const int64_t tok = int64_t(sp.start) + t0 + t;
    T* row = h < hq ? q + tok * qs0 + h * qs1 : k + tok * ks0 + (h - hq) * ks1;
    rotate_pairs<T, V>(row, i, half, &cos_t[t][i], &sin_t[t][i]);
  }
}

// Pairs a thread rotates at once: 4 or 2 when half splits evenly and every head row of q and k
// starts aligned to that many elements, else 1.
template <typename T>
int pairs_per_thread(const RopeParams& p, int64_t half) {
  for (int v : {4, 2}) {
    const size_t bytes = sizeof(T) * size_t(v);
    if (half % v == 0 && aligned_for(p.q.data, {p.q.stride[0], p.q.stride[1]}, sizeof(T), bytes) &&
        aligned_for(p.k.data, {p.k.stride[0], p.k.stride[1]}, sizeof(T), bytes))
      return v;
  }
  return 1;
}

}  // namespace

void rope(const RopeParams& p, const BatchView& batch, cudaStream_t stream, int min_len) {
  if (p.rope.kind == RopeKind::None) return;
  const int64_t half = p.rope.rotary_dim / 2;
  STATELM_CHECK(p.q.ndim == 3 && p.k.ndim == 3 && p.q.stride[2] == 1 && p.k.stride[2] == 1 &&
                    p.q.shape[2] == p.k.shape[2] && 2 * half <= p.q.shape[2],
                "rope: q ", p.q.describe(), " k ", p.k.describe(), " rotary_dim ", p.rope.rotary_dim);
  STATELM_CHECK(p.q.dtype == p.k.dtype, "rope: q and k dtypes differ");
  if (half == 0 || batch.spans.empty()) return;
  int64_t n_items = 0;
  const SpanItems items = plan_items(batch, kTokens, min_len, &n_items);
  if (n_items == 0) return;
  const InvFreq inv = inv_freq_table(p.rope);
  // A decode step (every item one token; here when attention's decode kernel cannot rotate it on
  // the fly) is one block's worth of pairs or a little more, and a block walking them in turn
  // waits on a load round trip per pass (6.3 µs under ncu for Llama 2.5B's 40 heads · 40 pairs at
  // 256 threads); spread over blocks, each thread rotates one pair.
  // Longer items keep one block each: their work already fills the GPU, and every block of an
  // item recomputes the item's angles.
  const int64_t pairs = (p.q.shape[1] + p.k.shape[1]) * half;
  const unsigned ny = longest_span(batch) == 1 ? unsigned((pairs + kThreads - 1) / kThreads) : 1u;
  dispatch_float(p.q.dtype, "rope", [&](auto tag) {
    using T = decltype(tag);
    const int v = pairs_per_thread<T>(p, half);
    const auto kernel = v == 4 ? rope_kernel<T, 4> : v == 2 ? rope_kernel<T, 2> : rope_kernel<T, 1>;
    STATELM_CUDA_CHECK(launch_pdl_if(pdl_chain(), kernel, dim3(unsigned(n_items), ny), dim3(kThreads), stream,
                                     static_cast<T*>(p.q.data), p.q.stride[0], p.q.stride[1], int(p.q.shape[1]),
                                     static_cast<T*>(p.k.data), p.k.stride[0], p.k.stride[1], int(p.k.shape[1]),
                                     int(half), inv, items),
                       "rope q ", p.q.describe());
  });
  STATELM_CUDA_LAUNCHED("rope q ", p.q.describe());
}

}  // namespace statelm::cuda
