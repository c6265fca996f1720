// Per-channel parameters as kernels take them: fp32 or bf16 behind one pointer (Param). Host code
// builds them (param_of) and passes them to launchers, so this header compiles without nvcc too.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "core/error.h"
#include "core/tensor.h"

namespace statelm::cuda {

// A small per-channel parameter vector/matrix (conv weight and bias, A, D, dt_bias): fp32 or
// bf16, read through one uniform branch. Undefined = absent (reads as `fallback`).
struct Param {
  const void* p = nullptr;
  bool is_bf16 = false;
  __device__ __forceinline__ float operator[](int64_t i) const {
    return is_bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]) : static_cast<const float*>(p)[i];
  }
  __device__ __forceinline__ float get(int64_t i, float fallback) const { return p ? (*this)[i] : fallback; }
};

inline Param param_of(const Tensor& t, const char* op, const char* name) {
  if (!t.defined()) return {};
  if (t.dtype != DType::F32 && t.dtype != DType::BF16)
    fail(ErrorKind::Unsupported, op, ": ", name, " must be float32 or bfloat16, got ", t.describe());
  return {t.data, t.dtype == DType::BF16};
}

}  // namespace statelm::cuda
