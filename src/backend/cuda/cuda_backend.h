// The CUDA backend: every op of ops.h on one GPU, all work queued on one stream, bf16 weights and
// activations by default (fp32 accumulation, fp32 SSM state), fp32 on request (the accuracy
// reference). One .cu per kernel family: norm, elementwise, gemm (cuBLASLt), moe here; conv1d,
// selective_scan, ssd, rope, attention behind the launchers of cuda_kernels.h.
//
// Host syncs: none inside a step except download() (the logits) and moe() (its per-expert token
// counts). Decode steps replay recorded CUDA graphs (cuda_graphs.h) when ModelRunner asks. prepare_batch() copies the spans and block tables to the device once per forward
// through pinned staging memory; embed() does the same with the token ids.
//
// This header needs no CUDA headers (the CLI includes it from plain C++).
#pragma once

#include <memory>

#include "ops/ops.h"

namespace statelm {

struct CudaBackendOptions {
  int device = 0;
  // Weights and activations: DType::BF16 (default) or DType::F32. Anything else is
  // Error(InvalidArgument).
  DType dtype = DType::BF16;
};

struct CudaMemoryStats {
  size_t in_use = 0, peak_in_use = 0, cached = 0;  // the caching allocator (cuda_allocator.h)
  size_t device_free = 0, device_total = 0;         // cudaMemGetInfo
};

class CudaBackend final : public Backend {
 public:
  // Error(Unsupported) when no CUDA device is visible or `device` is not one of them.
  explicit CudaBackend(CudaBackendOptions options = {});
  ~CudaBackend() override;

  const char* name() const override { return "cuda"; }
  Device device() const override { return Device::Cuda; }
  DType compute_dtype() const override { return dtype_; }
  size_t available_memory() const override;
  void prepare_batch(BatchView& batch) override;
  bool supports_graphs() const override { return true; }
  void begin_graph(size_t n_ids, size_t n_spans, size_t table_entries) override;
  int end_graph() override;
  void abort_graph() override;
  void replay_graph(int graph, std::span<const int32_t> ids, std::span<const SeqSpan> spans,
                    std::span<const int32_t> block_tables) override;
  void drop_graphs() override;
  uint64_t memory_epoch() const override;

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
  int64_t residual_sumsq_partials(int64_t n) const override;
  bool splits_block_norms(int64_t tokens, int64_t d_model) const override;
  void swiglu(const Tensor& gate_up, const Tensor& out) override;
  void matmul_swiglu(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms, const Tensor& gate_up,
                     const Tensor& out) override;
  void add(const Tensor& acc, const Tensor& x) override;

  void conv1d(const Conv1dParams& p, const BatchView& batch) override;
  void matmul_conv1d(const Tensor& x, const Tensor& w, const Tensor& bias, const RowRms& rms, const Tensor& out,
                     const Conv1dParams& conv, const BatchView& batch) override;
  void selective_scan(const SelectiveScanParams& p, const BatchView& batch) override;
  void ssd(const SsdParams& p, const BatchView& batch) override;
  int64_t ssd_gate_partials(int64_t heads, int64_t head_dim) const override;
  void rope(const RopeParams& p, const BatchView& batch) override;
  void attention(const AttentionParams& p, const BatchView& batch) override;
  void moe(const MoeParams& p) override;
  void sample(const Tensor& logits, std::span<const SampleRow> rows, std::span<int32_t> out_ids) override;

  // Waits for all queued work; a kernel fault surfaces here as an Error naming `what`.
  void synchronize(const char* what = "synchronize");
  CudaMemoryStats memory_stats() const;
  int device_index() const { return device_; }

 private:
  struct Impl;
  // batch with device copies of its spans and block tables: `batch` itself when prepare_batch
  // already made them, else `tmp` after preparing it.
  const BatchView& prepared(const BatchView& batch, BatchView& tmp);

  int device_;
  DType dtype_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace statelm
