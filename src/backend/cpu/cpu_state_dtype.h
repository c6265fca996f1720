// Element types of the recurrent state the stateful CPU ops (conv1d, selective_scan, ssd) read
// and write: fp32, or bf16 for half the memory per slot (f16 too: not offered to users, but
// measured beside the others by bench/cpu/state_drift.cpp, since its narrow exponent range is
// the classic way a long recurrence goes wrong). The ops always compute in fp32: a
// state element is widened when a span starts (exact: bf16 is the top half of an fp32) and
// narrowed when the span ends (round to nearest even, core/dtype.h), so with an fp32 state the
// two conversions are the identity and the kernel is the fp32 kernel, bit for bit.
//
// Each op writes its state loop once as a generic lambda over the element type and calls
// with_state_type: the one place that maps the state's runtime dtype to a compile-time type,
// and so the one place that says which dtypes are supported.
#pragma once

#include <cstdint>
#include <type_traits>

#include "core/tensor.h"
#include "backend/cpu/cpu_op_checks.h"

namespace statelm::cpu {

struct Bf16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

inline float widen(float v) { return v; }
inline float widen(Bf16 v) { return bf16_to_f32(v.bits); }
inline float widen(F16 v) { return f16_to_f32(v.bits); }

template <typename S>
inline S narrow(float v) {
  if constexpr (std::is_same_v<S, float>)
    return v;
  else if constexpr (std::is_same_v<S, F16>)
    return F16{f32_to_f16(v)};
  else
    return Bf16{f32_to_bf16(v)};
}

template <typename S>
struct StateType {
  using type = S;
};

// Calls fn(StateType<float>{}), fn(StateType<Bf16>{}) or fn(StateType<F16>{}) to match the state's dtype; any other
// dtype is a caller bug.
template <typename Fn>
void with_state_type(const Tensor& state, const char* op, Fn&& fn) {
  switch (state.dtype) {
    case DType::F32:
      fn(StateType<float>{});
      return;
    case DType::BF16:
      fn(StateType<Bf16>{});
      return;
    case DType::F16:
      fn(StateType<F16>{});
      return;
    default:
      STATELM_CHECK(false, op, ": state must be float32, bfloat16 or float16, got ", state.describe());
  }
}

// The state is a host tensor of exactly `shape` in a supported dtype (see check_shape).
inline void check_state(const Tensor& state, std::initializer_list<int64_t> shape, const char* op) {
  check_shape(state, shape, op, "state");
  with_state_type(state, op, [](auto) {});
}

}  // namespace statelm::cpu
