// Argument checks shared by the stateful CPU ops (conv1d, selective_scan, ssd). A failure here
// is a bug in the caller (the forward or a test), not a user error, so it is a STATELM_CHECK
// whose message names the op and the tensor.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "ops/ops.h"

namespace statelm::cpu {

// `t` has exactly `shape`, lives on the host and has a contiguous last dimension (the other
// strides are free: column slices of a wider matrix are accepted).
inline void check_shape(const Tensor& t, std::initializer_list<int64_t> shape, const char* op, const char* what) {
  STATELM_CHECK(t.defined() && t.device == Device::Cpu, op, ": ", what, " must be a host tensor, got ", t.describe());
  bool same = t.ndim == int(shape.size());
  int i = 0;
  for (int64_t d : shape) same = same && t.shape[i++] == d;
  std::string want;
  for (int64_t d : shape) want += (want.empty() ? "" : ", ") + std::to_string(d);
  STATELM_CHECK(same, op, ": ", what, " must be [", want, "], got ", t.describe());
  STATELM_CHECK(t.shape[t.ndim - 1] <= 1 || t.stride[t.ndim - 1] == 1, op, ": ", what,
                " needs a contiguous last dimension, got ", t.describe());
  for (int k = 0; k < t.ndim; ++k)
    STATELM_CHECK(t.stride[k] >= 0, op, ": ", what, " has a negative stride: ", t.describe());
}

// `t` is a host float32 tensor of exactly `shape` (see check_shape).
inline void check_tensor(const Tensor& t, std::initializer_list<int64_t> shape, const char* op, const char* what) {
  STATELM_CHECK(t.defined() && t.dtype == DType::F32 && t.device == Device::Cpu, op, ": ", what,
                " must be a host float32 tensor, got ", t.describe());
  check_shape(t, shape, op, what);
}

// Whether the memory spanned by two views (first to last element) intersects.
inline bool overlaps(const Tensor& a, const Tensor& b) {
  auto range = [](const Tensor& t, const char*& lo, const char*& hi) {
    int64_t last = 0;
    for (int k = 0; k < t.ndim; ++k) last += (t.shape[k] - 1) * t.stride[k];
    lo = static_cast<const char*>(t.data);
    hi = lo + (last + 1) * int64_t(dtype_size(t.dtype));
  };
  if (!a.defined() || !b.defined() || a.numel() == 0 || b.numel() == 0) return false;
  const char *alo, *ahi, *blo, *bhi;
  range(a, alo, ahi);
  range(b, blo, bhi);
  return alo < bhi && blo < ahi;
}

// Spans lie inside the batch, do not share tokens, and own distinct slots: the ops write
// outputs and state rows from several threads and rely on all three.
inline void check_spans(const BatchView& batch, int64_t n_tokens, int64_t n_slots, const char* op) {
  STATELM_CHECK(batch.n_tokens == n_tokens, op, ": batch has ", batch.n_tokens, " tokens but the inputs have ",
                n_tokens, " rows");
  std::vector<uint8_t> slot_used(size_t(std::max<int64_t>(n_slots, 0)), 0);
  std::vector<std::pair<int64_t, int64_t>> ranges;
  ranges.reserve(batch.spans.size());
  for (size_t s = 0; s < batch.spans.size(); ++s) {
    const SeqSpan& sp = batch.spans[s];
    STATELM_CHECK(sp.len >= 1 && sp.start >= 0 && int64_t(sp.start) + sp.len <= n_tokens && sp.pos >= 0, op, ": span ",
                  s, " {start ", sp.start, ", len ", sp.len, ", pos ", sp.pos, "} outside the batch of ", n_tokens,
                  " tokens");
    STATELM_CHECK(sp.slot >= 0 && sp.slot < n_slots, op, ": span ", s, " has slot ", sp.slot, " of ", n_slots);
    STATELM_CHECK(!slot_used[size_t(sp.slot)], op, ": slot ", sp.slot, " appears in two spans of one batch");
    slot_used[size_t(sp.slot)] = 1;
    ranges.emplace_back(sp.start, int64_t(sp.start) + sp.len);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    STATELM_CHECK(ranges[i].first >= ranges[i - 1].second, op, ": spans share tokens [", ranges[i].first, ", ",
                  ranges[i - 1].second, ")");
}

// An optional per-channel vector: undefined, or [n] contiguous.
inline const float* optional_vector(const Tensor& t, int64_t n, const char* op, const char* what) {
  if (!t.defined()) return nullptr;
  check_tensor(t, {n}, op, what);
  return t.f32();
}

}  // namespace statelm::cpu
