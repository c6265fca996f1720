// RMSNorm family on the CPU. transformers computes the mean square in fp32 and multiplies the
// weight after normalising; so do we: out = x * rsqrt(mean(x^2) + eps) * w.
#include <cmath>

#include "backend/cpu/cpu_backend.h"

namespace statelm {

namespace {
inline void normalize_row(const float* x, const float* w, float eps, int64_t d, float* out) {
  double ss = 0.0;  // double: the reference is fp32, but the sum's rounding should not be ours to add
  for (int64_t i = 0; i < d; ++i) ss += double(x[i]) * x[i];
  const float inv = 1.0f / std::sqrt(float(ss / double(d)) + eps);
  for (int64_t i = 0; i < d; ++i) out[i] = w[i] * (x[i] * inv);
}
}  // namespace

void CpuBackend::rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) {
  const int64_t n = x.shape[0], d = x.shape[1];
  cpu::check_2d(x, n, d, "rms_norm x");
  cpu::check_2d(out, n, d, "rms_norm out");
  STATELM_CHECK(weight.numel() == d, "rms_norm weight ", weight.describe(), " for width ", d);
  const float* w = weight.f32();
#pragma omp parallel for schedule(static) if (n * d > 32768)
  for (int64_t t = 0; t < n; ++t) normalize_row(cpu::row(x, t), w, eps, d, cpu::row(out, t));
}

void CpuBackend::add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                              const Tensor& out) {
  const int64_t n = residual.shape[0], d = residual.shape[1];
  cpu::check_2d(residual, n, d, "add_rms_norm residual");
  cpu::check_2d(x, n, d, "add_rms_norm x");
  cpu::check_2d(out, n, d, "add_rms_norm out");
  const float* w = weight.f32();
#pragma omp parallel for schedule(static) if (n * d > 32768)
  for (int64_t t = 0; t < n; ++t) {
    float* r = cpu::row(residual, t);
    const float* a = cpu::row(x, t);
    for (int64_t i = 0; i < d; ++i) r[i] += a[i];
    normalize_row(r, w, eps, d, cpu::row(out, t));
  }
}

void CpuBackend::gated_rms_norm(const Tensor& y, const Tensor& z, const Tensor& weight, int64_t group_size, float eps,
                                const Tensor& out) {
  const int64_t n = y.shape[0], d = y.shape[1];
  cpu::check_2d(y, n, d, "gated_rms_norm y");
  cpu::check_2d(z, n, d, "gated_rms_norm z");
  cpu::check_2d(out, n, d, "gated_rms_norm out");
  STATELM_CHECK(group_size > 0 && d % group_size == 0, "gated_rms_norm group ", group_size, " of ", d);
  const float* w = weight.f32();
#pragma omp parallel for schedule(static) if (n * d > 32768)
  for (int64_t t = 0; t < n; ++t) {
    const float* yr = cpu::row(y, t);
    const float* zr = cpu::row(z, t);
    float* o = cpu::row(out, t);
    for (int64_t i = 0; i < d; ++i) o[i] = yr[i] * (zr[i] / (1.0f + std::exp(-zr[i])));
    for (int64_t g = 0; g < d; g += group_size) normalize_row(o + g, w + g, eps, group_size, o + g);
  }
}

}  // namespace statelm
