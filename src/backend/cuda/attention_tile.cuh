// What attention.cu's tile kernels share with the tensor-core prefill kernel
// (attention_prefill.cu): the launch arguments (attention_args.cuh's common ones and the tile
// plan), the work item of a block (a tile of kRows query rows (token, head) of one span that
// share one KV head: tokens = kRows / group tokens × the group's heads, head fastest), the
// paged-cache addressing, and the layout of the split-K scratch that attention.cu's merge
// kernel reads.
//
// Split-K scratch: a block of item i, KV head g, split z writes, for each of its rows r, the
// unnormalised output O and the running (m, l) of the online softmax (scores in log2 units, i.e.
// already multiplied by scale · log2 e) at row ((i · hkv + g) · n_splits + z) · tile_rows + r of
// o_part ([.][dh] floats) and ml_part ([.][2] floats). A row none of whose keys fall in the
// split writes (−inf, 0, 0).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/attention_args.cuh"
#include "backend/cuda/span_kernels.cuh"

namespace statelm::cuda::attn {

constexpr int kRows = 64;  // query rows (token, head) per tile of the SIMT kernel

template <typename T>
struct AttnArgs : PagedAttnArgs<T> {
  int tile_rows;                   // query rows per tile: kRows, or 64 / 128 on tensor cores
  int tokens;                      // query tokens per tile: tile_rows / group
  int tiles_per_split;             // key tiles per split (n_splits = gridDim.z)
  float* o_part;                   // split-K scratch (see the top of this file)
  float* ml_part;
};

// Element offset of key `pos` of span `span`, KV head g, in either cache.
template <typename T>
__device__ __forceinline__ int64_t cache_offset(const AttnArgs<T>& a, int span, int pos, int g) {
  const int32_t blk = a.block_tables[int64_t(span) * a.max_blocks + pos / a.block_size];
  return int64_t(blk) * a.cs0 + int64_t(pos % a.block_size) * a.cs1 + int64_t(g) * a.cs2;
}

// Row index into o_part / ml_part (see the top of this file).
__device__ __forceinline__ int64_t split_row(int item, int hkv, int g, int n_splits, int split, int row,
                                             int tile_rows) {
  return ((int64_t(item) * hkv + g) * n_splits + split) * tile_rows + row;
}

// ---- the tensor-core prefill kernel (attention_prefill.cu) ----------------------------------

constexpr int kPrefillKeys = 128;  // keys per tile of the tensor-core kernel

// Whether prefill_mma takes this call: bf16 with head_dim a multiple of 16 up to 128 and 16-byte
// aligned q and cache rows (its Q, K and V tiles are copied with cp.async in 16-byte pieces).
// Anything else stays on the SIMT tile kernel.
bool prefill_mma_supported(const AttnArgs<bf16>& a);

// Tile rows of the tensor-core kernel: 128 (two warpgroups share each K/V tile: half the K/V
// traffic from L2 of 64-row tiles, which at 16K tokens keep the L2 at 96% of its throughput;
// measured in bench/RESULTS.md session 14) unless forced to 64. STATELM_ATTN_PREFILL_ROWS=64 or
// 128 in the environment forces one (benchmarks; read once, at the first call), as does
// force_attention_prefill_rows (cuda_kernels.h: tests).
int prefill_tile_rows();

// The tiles of `items` (n_items of them, every KV head each; a.tile_rows rows each) over key
// tiles of kPrefillKeys, split as a.tiles_per_split says into n_splits (> 1: writes the split-K
// scratch, the caller merges). The span's own k, v must already be in the cache.
void prefill_mma(const AttnArgs<bf16>& a, const SpanItems& items, int64_t n_items, int n_splits, cudaStream_t stream);

}  // namespace statelm::cuda::attn
