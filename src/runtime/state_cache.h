// StateCache: the fixed-size recurrent state of every sequence, as a pool of slots.
// For every Mamba layer a slot holds the conv state [C, K-1] and the SSM state (Mamba-1
// [Di, N], Mamba-2 [H, P, N]); the per-layer tensors are [n_slots, ...] so a batch of sequences
// indexes them by slot id. A slot is zeroed when a sequence takes it: no cross-talk.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "model/model_spec.h"
#include "ops/ops.h"

namespace statelm {

class StateCache {
 public:
  StateCache(const ModelSpec& spec, Backend& backend, int32_t n_slots);

  int32_t n_slots() const { return n_slots_; }
  int32_t free_slots() const { return int32_t(free_.size()); }
  size_t bytes_per_slot() const { return bytes_per_slot_; }

  // Takes a free slot and zeroes it; nullopt when all are in use.
  std::optional<int32_t> acquire();
  void release(int32_t slot);
  void zero(int32_t slot);
  // Slot dst takes slot src's state (both in use): a prefix checkpoint, or a sequence resuming
  // from one.
  void copy(int32_t dst, int32_t src);

  // Per-layer state tensors (undefined for attention layers).
  const Tensor& conv(int64_t layer) const { return conv_[size_t(layer)]; }
  const Tensor& ssm(int64_t layer) const { return ssm_[size_t(layer)]; }

 private:
  Backend& backend_;
  int32_t n_slots_;
  size_t bytes_per_slot_ = 0;
  std::vector<Buffer> storage_;
  std::vector<Tensor> conv_, ssm_;
  std::vector<int32_t> free_;
  std::vector<bool> in_use_;
};

}  // namespace statelm
