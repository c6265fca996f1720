// The decode path of attention.cu: spans of one token (a decode step) on a kernel that streams
// the paged KV cache at memory bandwidth (attention_decode.cu). attention.cu routes a call's
// one-token spans here when decode_attention_supported() says yes and keeps every other span on
// its tiled kernel.
#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/cuda_kernels.h"
#include "ops/ops.h"

namespace statelm::cuda {

// Whether decode_attention takes this call's one-token spans: float32 or bfloat16, head_dim a
// multiple of 16 bytes' worth of elements and at most 128, at most 8 query heads per KV head,
// caches 16-byte aligned, a rotation of at most 128 dims. The caller has checked shapes and
// dtypes (attention()).
bool decode_attention_supported(const AttentionParams& p);

// For every span of length 1 in `batch`: rotates its q and k by p.rope (as rope.cu would), stores
// its k (rotated) and v in the cache at position pos and writes out = softmax(q K^T scale) V over
// the keys 0..pos; q and k themselves are not written. Requires decode_attention_supported(p).
// Spans of other lengths are left alone (neither their cache nor their output is touched). The
// grid depends on the number of spans, the heads and batch.key_capacity, never on the
// device-side lengths (graph-safe).
void decode_attention(const AttentionParams& p, const BatchView& batch, Scratch& scratch, cudaStream_t stream);

}  // namespace statelm::cuda
