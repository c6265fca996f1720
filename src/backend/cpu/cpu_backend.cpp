// CPU backend: memory, element-wise ops and embedding. The heavier op families live in their
// own files (cpu_norm, cpu_matmul, cpu_conv1d, cpu_selective_scan, cpu_ssd, cpu_attention,
// cpu_moe).
#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace statelm {

namespace cpu {
void check_2d(const Tensor& t, int64_t rows, int64_t cols, const char* what) {
  STATELM_CHECK(t.ndim == 2 && t.dtype == DType::F32 && t.device == Device::Cpu, what, " must be a 2-D host float32 tensor, got ",
                t.describe());
  STATELM_CHECK(t.shape[0] == rows && t.shape[1] == cols && (cols <= 1 || t.stride[1] == 1), what, " must be [", rows, ", ",
                cols, "] with contiguous rows, got ", t.describe());
}
}  // namespace cpu

Buffer CpuBackend::allocate(size_t bytes) { return host_buffer(bytes); }

// bf16 and f16 are accepted for state tensors (RunnerOptions::state_dtype); every other CPU
// tensor is fp32.
void CpuBackend::upload(const Tensor& dst, const float* host) {
  STATELM_CHECK(dst.is_contiguous() && (dst.dtype == DType::F32 || dst.dtype == DType::BF16 || dst.dtype == DType::F16),
                "CPU tensors are contiguous float32 (or bfloat16 / float16 state): ", dst.describe());
  convert_from_f32(dst.dtype, host, dst.data, size_t(dst.numel()));
}

void CpuBackend::download(const Tensor& src, float* host) {
  STATELM_CHECK(src.is_contiguous() && (src.dtype == DType::F32 || src.dtype == DType::BF16 || src.dtype == DType::F16),
                "download of ", src.describe());
  if (src.dtype == DType::F32) {
    std::memcpy(host, src.data, src.nbytes());
    return;
  }
  convert_to_f32(src.dtype, src.data, host, size_t(src.numel()));
}

void CpuBackend::fill_zero(const Tensor& t) {
  STATELM_CHECK(t.is_contiguous(), "fill_zero of a strided view ", t.describe());
  std::memset(t.data, 0, t.nbytes());
}

void CpuBackend::copy(const Tensor& dst, const Tensor& src) {
  STATELM_CHECK(dst.is_contiguous() && src.is_contiguous(), "copy of a strided view ", dst.describe(), " <- ",
                src.describe());
  STATELM_CHECK(dst.dtype == src.dtype && dst.ndim == src.ndim &&
                    std::equal(dst.shape, dst.shape + dst.ndim, src.shape), "copy between different tensors ", dst.describe(),
                " <- ", src.describe());
  if (dst.data != src.data) std::memmove(dst.data, src.data, src.nbytes());
}

void CpuBackend::embed(std::span<const int32_t> ids, const Tensor& table, const Tensor& out) {
  const int64_t d = table.shape[1];
  cpu::check_2d(out, int64_t(ids.size()), d, "embed out");
  for (size_t t = 0; t < ids.size(); ++t) {
    STATELM_CHECK(ids[t] >= 0 && ids[t] < table.shape[0], "token id ", ids[t], " outside the embedding");
    std::memcpy(cpu::row(out, int64_t(t)), cpu::row(table, ids[t]), size_t(d) * sizeof(float));
  }
}

void CpuBackend::swiglu(const Tensor& gate_up, const Tensor& out) {
  const int64_t n = out.shape[0], f = out.shape[1];
  cpu::check_2d(gate_up, n, 2 * f, "swiglu gate_up");
  cpu::check_2d(out, n, f, "swiglu out");
#pragma omp parallel for schedule(static) if (n * f > 16384)
  for (int64_t t = 0; t < n; ++t) {
    const float* g = cpu::row(gate_up, t);
    const float* u = g + f;
    float* o = cpu::row(out, t);
    for (int64_t i = 0; i < f; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

void CpuBackend::add(const Tensor& acc, const Tensor& x) {
  const int64_t n = acc.shape[0], d = acc.shape[1];
  cpu::check_2d(acc, n, d, "add acc");
  cpu::check_2d(x, n, d, "add x");
  for (int64_t t = 0; t < n; ++t) {
    float* a = cpu::row(acc, t);
    const float* b = cpu::row(x, t);
    for (int64_t i = 0; i < d; ++i) a[i] += b[i];
  }
}

}  // namespace statelm
