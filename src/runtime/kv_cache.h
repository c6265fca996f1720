// KvCache: keys and values of the attention layers in fixed-size blocks (paged), so memory
// grows with each sequence's length and is freed block by block. Pure Mamba models have no
// attention layers and allocate nothing here. Keys and values are kept in the backend's compute dtype (fp32 on the CPU, bf16 by default on
// CUDA), the dtype attention computes q, k and v in.
//
// Blocks are reference counted: a full block of a shared prompt prefix can be held by several
// sequences and by the prefix cache at once (never written again: every holder writes only
// past it), and goes back to the free list when its last holder releases it.
#pragma once

#include <cstdint>
#include <vector>

#include "model/model_spec.h"
#include "ops/ops.h"

namespace statelm {

// The blocks one sequence holds, in token order.
struct BlockList {
  std::vector<int32_t> blocks;
};

class KvCache {
 public:
  KvCache(const ModelSpec& spec, Backend& backend, int32_t n_blocks, int32_t block_size = 16);

  bool empty() const { return n_attention_layers_ == 0; }
  int32_t block_size() const { return block_size_; }
  int32_t n_blocks() const { return n_blocks_; }
  int32_t free_blocks() const { return int32_t(free_.size()); }
  size_t bytes_per_block() const { return bytes_per_block_; }
  int64_t blocks_for(int64_t tokens) const { return (tokens + block_size_ - 1) / block_size_; }

  // Grows `seq` to hold `tokens` tokens; false (and no change) when not enough blocks are free.
  bool reserve(BlockList& seq, int64_t tokens);
  // Drops seq's hold on each of its blocks (a block is free once no one holds it) and empties it.
  void release(BlockList& seq);
  // A new hold on the first n_blocks blocks of `seq` (they must be full: holders only read them).
  BlockList share(const BlockList& seq, int64_t n_blocks);
  // How many lists hold `block` (0 = free).
  int32_t holders(int32_t block) const { return refs_[size_t(block)]; }

  const Tensor& k(int64_t layer) const { return k_[size_t(layer)]; }
  const Tensor& v(int64_t layer) const { return v_[size_t(layer)]; }

 private:
  int32_t n_blocks_, block_size_;
  int64_t n_attention_layers_ = 0;
  size_t bytes_per_block_ = 0;
  std::vector<Buffer> storage_;
  std::vector<Tensor> k_, v_;
  std::vector<int32_t> free_;
  std::vector<int32_t> refs_;  // per block
};

}  // namespace statelm
