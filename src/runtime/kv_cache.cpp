#include "runtime/kv_cache.h"

#include "core/error.h"

namespace statelm {

KvCache::KvCache(const ModelSpec& spec, Backend& backend, int32_t n_blocks, int32_t block_size)
    : n_blocks_(n_blocks), block_size_(block_size), k_(spec.layers.size()), v_(spec.layers.size()) {
  STATELM_CHECK(block_size > 0, "KV block size must be positive");
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    auto* a = std::get_if<AttentionDims>(&spec.layers[i].mixer);
    if (!a) continue;
    ++n_attention_layers_;
    for (Tensor* t : {&k_[i], &v_[i]}) {
      *t = Tensor::contiguous(nullptr, backend.compute_dtype(), {n_blocks, block_size, a->n_kv_heads, a->head_dim},
                              backend.device());
      Buffer b = backend.allocate(t->nbytes());
      t->data = b.data();
      bytes_per_block_ += n_blocks ? t->nbytes() / size_t(n_blocks) : 0;
      storage_.push_back(std::move(b));
    }
  }
  if (n_attention_layers_ == 0) n_blocks_ = 0;
  for (int32_t b = n_blocks_ - 1; b >= 0; --b) free_.push_back(b);
  refs_.assign(size_t(n_blocks_), 0);
}

bool KvCache::reserve(BlockList& seq, int64_t tokens) {
  if (empty()) return true;
  const int64_t need = blocks_for(tokens) - int64_t(seq.blocks.size());
  if (need <= 0) return true;
  if (need > int64_t(free_.size())) return false;
  for (int64_t i = 0; i < need; ++i) {
    seq.blocks.push_back(free_.back());
    refs_[size_t(free_.back())] = 1;
    free_.pop_back();
  }
  return true;
}

void KvCache::release(BlockList& seq) {
  for (int32_t b : seq.blocks) {
    STATELM_CHECK(refs_[size_t(b)] > 0, "release of KV block ", b, " that is not held");
    if (--refs_[size_t(b)] == 0) free_.push_back(b);
  }
  seq.blocks.clear();
}

BlockList KvCache::share(const BlockList& seq, int64_t n_blocks) {
  STATELM_CHECK(n_blocks >= 0 && n_blocks <= int64_t(seq.blocks.size()), "share of ", n_blocks, " blocks of a list of ",
                seq.blocks.size());
  BlockList out;
  out.blocks.assign(seq.blocks.begin(), seq.blocks.begin() + n_blocks);
  for (int32_t b : out.blocks) {
    STATELM_CHECK(refs_[size_t(b)] > 0, "share of KV block ", b, " that is not held");
    ++refs_[size_t(b)];
  }
  return out;
}

}  // namespace statelm
