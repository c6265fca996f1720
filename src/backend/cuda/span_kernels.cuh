// Helpers shared by the varlen kernel families (conv1d, selective_scan, ssd, rope, attention):
// mapping a block to its (span, piece of span) without a host-built work list, per-channel
// parameters that may be fp32 or bf16, the state element types (fp32, bf16, f16), and the
// activation functions with the CPU backend's definitions (cpu_vec_math.h).
//
// Work lists. A launcher knows from the host copy of the spans (batch.spans) how many work
// items there are (Σ_s ceil(len_s / per_item)) and so sizes its grid, but it may not copy a
// list to the device (no allocation, no host synchronisation; conv1d and rope get no Scratch).
// So each block finds its own item from batch.device_spans: warp 0 walks the spans 32 at a
// time, a warp prefix sum of the items per span locating the one that holds the block's item.
// That costs ceil(n_spans / 32) steps of L2-resident reads per block, small next to the work of
// an item; when every span is a single item (a decode step) the item is the span index and no
// walk happens (SpanItems::identity).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_common.h"
#include "ops/ops.h"

namespace statelm::cuda {

// How the items of a launch are cut out of the spans: span s gives ceil(len / per_item) items
// when len >= min_len (0 otherwise).
struct SpanItems {
  const SeqSpan* spans = nullptr;  // device copy
  int n_spans = 0;
  int per_item = 1;     // tokens per item
  int min_len = 1;      // spans shorter than this have no items (ssd: decode spans run elsewhere)
  bool identity = false;  // every span is exactly one item: item index = span index
};

inline int64_t items_of_span(const SeqSpan& s, const SpanItems& m) {
  return s.len >= m.min_len && s.len > 0 ? (int64_t(s.len) + m.per_item - 1) / m.per_item : 0;
}

// Host side: the longest span of the batch (0 for none); 1 means a batch of decode steps only.
inline int longest_span(const BatchView& batch) {
  int longest = 0;
  for (const SeqSpan& s : batch.spans) longest = std::max(longest, int(s.len));
  return longest;
}

// Host side: counts the items of `batch` and fills the map; identity when it applies.
inline SpanItems plan_items(const BatchView& batch, int per_item, int min_len, int64_t* n_items) {
  SpanItems m;
  m.spans = batch.device_spans;
  m.n_spans = int(batch.spans.size());
  m.per_item = per_item;
  m.min_len = min_len;
  int64_t total = 0;
  bool identity = true;
  for (const SeqSpan& s : batch.spans) {
    const int64_t k = items_of_span(s, m);
    identity = identity && k == 1;
    total += k;
  }
  m.identity = identity;
  *n_items = total;
  return m;
}

struct ItemRef {
  int span;   // index into spans
  int piece;  // item number within its span: tokens [piece * per_item, ...)
};

// The (span, piece) of work item `item`, found by one warp alone (every lane of it must call it;
// all get the same answer): a warp-uniform walk over the spans, 32 at a time. `item` must be
// below the planned item count. For kernels whose warps go their own ways (attention_prefill.cu's
// persistent blocks: each warp decodes its block's next item itself).
__device__ __forceinline__ ItemRef find_item_in_warp(const SpanItems& m, int item) {
  if (m.identity) return {item, 0};
  const int lane = int(threadIdx.x) % 32;
  int base = 0;
  for (int s0 = 0; s0 < m.n_spans; s0 += 32) {
    const int s = s0 + lane;
    int count = 0;
    if (s < m.n_spans) {
      const int len = m.spans[s].len;
      count = len >= m.min_len && len > 0 ? (len + m.per_item - 1) / m.per_item : 0;
    }
    int incl = count;  // inclusive prefix sum over the lanes
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    const int total = __shfl_sync(0xffffffffu, incl, 31);
    if (item < base + total) {  // uniform: base and total are the same in every lane
      const unsigned mine = __ballot_sync(0xffffffffu, item >= base + incl - count && item < base + incl);
      const int owner = __ffs(int(mine)) - 1;
      const int first = base + __shfl_sync(0xffffffffu, incl - count, owner);  // the span's first item
      return {s0 + owner, item - first};
    }
    base += total;
  }
  return {0, 0};  // not reached for a planned item
}

// The same for a whole block: warp 0 walks, the others read its answer. Every thread of the
// block must call it (it contains a __syncthreads).
__device__ __forceinline__ ItemRef find_item(const SpanItems& m, int item) {
  if (m.identity) return {item, 0};
  __shared__ ItemRef found;
  if (threadIdx.x < 32) {
    const ItemRef r = find_item_in_warp(m, item);
    if (threadIdx.x == 0) found = r;
  }
  __syncthreads();
  const ItemRef r = found;
  return r;
}

// softplus with torch's threshold (v > 20 → v), as the CPU backend and transformers.
__device__ __forceinline__ float softplus(float v) { return v > 20.0f ? v : log1pf(expf(v)); }
// SiLU with an accurate exp (the CPU reference is within a few ulp; __expf is not).
__device__ __forceinline__ float silu_accurate(float v) { return v / (1.0f + expf(-v)); }
// SiLU of conv1d's outputs (conv1d.cu, and its decode step folded into a linear layer,
// skinny_gemm.cu): the accurate expf, but the division as __fdividef (within 2 ulp; 0 when
// 1 + e^−v > 2^126, i.e. v < −87, where the quotient is below 1e−36). The IEEE division's
// out-of-line slow path kept the conv kernels issue-bound: measured on the H200, a 16K-token
// prefill at C = 5376 took 368 µs with it and 116 µs without SiLU at all.
__device__ __forceinline__ float silu_conv(float v) { return __fdividef(v, 1.0f + expf(-v)); }

// Calls f(S{}) with S = float, bf16 or f16 for the recurrent state's dtype: the CPU's set
// (cpu_state_dtype.h), so the drift benchmark measures every state dtype on either backend.
template <typename F>
void dispatch_state(const Tensor& state, const char* op, F&& f) {
  switch (state.dtype) {
    case DType::F32: f(float{}); return;
    case DType::BF16: f(bf16{}); return;
    case DType::F16: f(f16{}); return;
    default:
      fail(ErrorKind::Unsupported, op, ": CUDA state must be float32, bfloat16 or float16, got ", state.describe());
  }
}

inline void require_last_contiguous(const Tensor& t, const char* op, const char* name) {
  STATELM_CHECK(t.ndim >= 1 && t.stride[t.ndim - 1] == 1, op, ": ", name, " needs a contiguous last dimension, got ",
                t.describe());
}

}  // namespace statelm::cuda
