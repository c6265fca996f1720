#include "runtime/state_cache.h"

#include "core/error.h"

namespace statelm {

StateCache::StateCache(const ModelSpec& spec, Backend& backend, int32_t n_slots, DType dtype)
    : backend_(backend), n_slots_(n_slots), dtype_(dtype), conv_(spec.layers.size()), ssm_(spec.layers.size()), in_use_(size_t(n_slots)) {
  STATELM_CHECK(n_slots > 0, "state cache needs at least one slot");
  STATELM_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16,
                "state cache dtype must be float32, bfloat16 or float16, got ", dtype_name(dtype));
  auto alloc = [&](DType type, std::initializer_list<int64_t> shape) {
    Tensor t = Tensor::contiguous(nullptr, type, shape, backend.device());
    Buffer b = backend.allocate(t.nbytes());
    t.data = b.data();
    bytes_per_slot_ += t.nbytes() / size_t(n_slots);
    storage_.push_back(std::move(b));
    return t;
  };
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    const LayerSpec& l = spec.layers[i];
    if (auto* m = std::get_if<Mamba1Dims>(&l.mixer)) {
      conv_[i] = alloc(DType::F32, {n_slots, m->d_inner, m->d_conv - 1});
      ssm_[i] = alloc(dtype, {n_slots, m->d_inner, m->d_state});
    } else if (auto* m2 = std::get_if<Mamba2Dims>(&l.mixer)) {
      conv_[i] = alloc(DType::F32, {n_slots, m2->conv_dim(), m2->d_conv - 1});
      ssm_[i] = alloc(dtype, {n_slots, m2->n_heads, m2->head_dim, m2->d_state});
    }
  }
  for (int32_t s = n_slots - 1; s >= 0; --s) free_.push_back(s);
}

std::optional<int32_t> StateCache::acquire() {
  if (free_.empty()) return std::nullopt;
  int32_t slot = free_.back();
  free_.pop_back();
  in_use_[size_t(slot)] = true;
  zero(slot);
  return slot;
}

void StateCache::release(int32_t slot) {
  STATELM_CHECK(slot >= 0 && slot < n_slots_ && in_use_[size_t(slot)], "release of slot ", slot, " not in use");
  in_use_[size_t(slot)] = false;
  free_.push_back(slot);
}

void StateCache::zero(int32_t slot) {
  for (size_t i = 0; i < conv_.size(); ++i) {
    if (conv_[i].defined()) backend_.fill_zero(conv_[i].rows(slot, 1));
    if (ssm_[i].defined()) backend_.fill_zero(ssm_[i].rows(slot, 1));
  }
}

void StateCache::copy(int32_t dst, int32_t src) {
  STATELM_CHECK(dst >= 0 && dst < n_slots_ && in_use_[size_t(dst)] && src >= 0 && src < n_slots_ &&
                    in_use_[size_t(src)],
                "copy between slots ", src, " -> ", dst, " not both in use");
  for (size_t i = 0; i < conv_.size(); ++i) {
    if (conv_[i].defined()) backend_.copy(conv_[i].rows(dst, 1), conv_[i].rows(src, 1));
    if (ssm_[i].defined()) backend_.copy(ssm_[i].rows(dst, 1), ssm_[i].rows(src, 1));
  }
}

}  // namespace statelm
