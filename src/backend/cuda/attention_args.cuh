// The arguments every paged-attention kernel takes, whatever its work split: attention.cu's tile
// kernels and the tensor-core prefill kernel (attention_tile.cuh's AttnArgs), and the decode
// kernel (attention_decode.cu's DecodeArgs). Each of those argument structs derives from
// PagedAttnArgs and adds its own launch plan; fill_paged_args fills the common part from the op's
// tensors and the batch, once for all of them.
#pragma once

#include <cstdint>

#include "backend/cuda/span_kernels.cuh"
#include "ops/ops.h"

namespace statelm::cuda::attn {

constexpr float kLog2e = 1.4426950408889634f;

template <typename T>
struct PagedAttnArgs {
  const T *q, *k, *v;
  T *k_cache, *v_cache;
  T* out;
  int64_t qs0, qs1, ks0, ks1, vs0, vs1, os0, os1;
  int64_t cs0, cs1, cs2;  // cache strides (block, row, head); k and v caches share them
  const int32_t* block_tables;  // the device copy
  int max_blocks, block_size;
  int hkv, group, dh;  // KV heads, query heads per KV head, head_dim
  float scale_log2;    // scale · log2 e
};

// The common arguments of a call: q [T, Hq, dh], k and v [T, Hkv, dh], out like q, the caches
// [blocks, block_size, Hkv, dh] (attention() has checked the shapes and that the caches share
// one layout), and the batch's block tables on the device.
template <typename T>
void fill_paged_args(PagedAttnArgs<T>& a, const AttentionParams& p, const BatchView& batch) {
  a.q = static_cast<const T*>(p.q.data);
  a.k = static_cast<const T*>(p.k.data);
  a.v = static_cast<const T*>(p.v.data);
  a.k_cache = static_cast<T*>(p.k_cache.data);
  a.v_cache = static_cast<T*>(p.v_cache.data);
  a.out = static_cast<T*>(p.out.data);
  a.qs0 = p.q.stride[0];
  a.qs1 = p.q.stride[1];
  a.ks0 = p.k.stride[0];
  a.ks1 = p.k.stride[1];
  a.vs0 = p.v.stride[0];
  a.vs1 = p.v.stride[1];
  a.os0 = p.out.stride[0];
  a.os1 = p.out.stride[1];
  a.cs0 = p.k_cache.stride[0];
  a.cs1 = p.k_cache.stride[1];
  a.cs2 = p.k_cache.stride[2];
  a.block_tables = batch.device_block_tables;
  a.max_blocks = batch.max_blocks_per_seq;
  a.block_size = batch.block_size;
  a.hkv = int(p.k.shape[1]);
  a.group = int(p.q.shape[1] / p.k.shape[1]);
  a.dh = int(p.q.shape[2]);
  a.scale_log2 = p.scale * kLog2e;
}

}  // namespace statelm::cuda::attn
