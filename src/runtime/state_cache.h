// StateCache: the fixed-size recurrent state of every sequence, as a pool of slots.
// For every Mamba layer a slot holds the conv state [C, K-1] and the SSM state (Mamba-1
// [Di, N], Mamba-2 [H, P, N]); the per-layer tensors are [n_slots, ...] so a batch of sequences
// indexes them by slot id. A slot is zeroed when a sequence takes it: no cross-talk.
//
// The state is kept in fp32 (default) or bf16 (half the bytes per slot). The SSM ops compute in
// fp32 either way: a bf16 state is widened exactly when a span starts and rounded to nearest
// even once when it ends, so a decode step rounds every token and a prefill span only its last.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "model/model_spec.h"
#include "ops/ops.h"

namespace statelm {

class StateCache {
 public:
  // dtype of the SSM state: DType::F32, BF16 or F16 (see RunnerOptions::state_dtype). The
  // conv window stays fp32 whatever it is: rounding it causes most of a bf16 state's drift
  // (measured: 5.7e-2 vs 5.9e-3 for the SSM state on jamba-tiny), and it is ~3% of a slot.
  StateCache(const ModelSpec& spec, Backend& backend, int32_t n_slots, DType dtype = DType::F32);

  int32_t n_slots() const { return n_slots_; }
  int32_t free_slots() const { return int32_t(free_.size()); }
  size_t bytes_per_slot() const { return bytes_per_slot_; }
  DType dtype() const { return dtype_; }

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
  DType dtype_;
  size_t bytes_per_slot_ = 0;
  std::vector<Buffer> storage_;
  std::vector<Tensor> conv_, ssm_;
  std::vector<int32_t> free_;
  std::vector<bool> in_use_;
};

}  // namespace statelm
