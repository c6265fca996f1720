// The CPU backend: fp32 reference ops that are also fast enough for a laptop. Threads come
// from OpenMP (all cores); large GEMMs go to OpenBLAS, small ones (decode) to our own GEMV.
// One file per op family: cpu_norm, cpu_matmul, cpu_conv1d, cpu_selective_scan, cpu_ssd,
// cpu_attention, cpu_moe, cpu_sampling.
#pragma once

#include "ops/ops.h"

namespace statelm {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  Device device() const override { return Device::Cpu; }

  Buffer allocate(size_t bytes) override;
  void upload(const Tensor& dst, const float* host) override;
  void download(const Tensor& src, float* host) override;
  void fill_zero(const Tensor& t) override;
  void copy(const Tensor& dst, const Tensor& src) override;

  void embed(std::span<const int32_t> ids, const Tensor& table, const Tensor& out) override;
  void rms_norm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) override;
  void add_rms_norm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                    const Tensor& out) override;
  void gated_rms_norm(const Tensor& y, const Tensor& z, const Tensor& weight, int64_t group_size, float eps,
                      const Tensor& out) override;
  void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out) override;
  void matmul_row_rms(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms,
                      const Tensor& out) override;
  void matmul_residual(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms, const ResidualAdd& add,
                       const Tensor& out) override;
  void swiglu(const Tensor& gate_up, const Tensor& out) override;
  void add(const Tensor& acc, const Tensor& x) override;

  void conv1d(const Conv1dParams& p, const BatchView& batch) override;
  void selective_scan(const SelectiveScanParams& p, const BatchView& batch) override;
  void ssd(const SsdParams& p, const BatchView& batch) override;
  void rope(const RopeParams& p, const BatchView& batch) override;
  void attention(const AttentionParams& p, const BatchView& batch) override;
  void moe(const MoeParams& p) override;

  void sample(const Tensor& logits, std::span<const SampleRow> rows, std::span<int32_t> out_ids) override;
};

// Row-major 2-D access helpers shared by the CPU op files.
namespace cpu {
inline float* row(const Tensor& t, int64_t r) { return t.f32() + r * t.stride[0]; }
// Checks a 2-D host fp32 view with a contiguous last dimension; `what` names it in errors.
void check_2d(const Tensor& t, int64_t rows, int64_t cols, const char* what);
}  // namespace cpu

}  // namespace statelm
