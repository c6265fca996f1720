// Launchers of the CUDA kernel families, one .cu each (conv1d.cu, selective_scan.cu, ssd.cu,
// attention.cu, rope.cu). CudaBackend (cuda_backend.h) checks shapes and dtypes, then calls
// these on its stream; they never synchronise with the host.
//
// Tensors are device views: activations (x, B, C, dt, q, k, v, out) are F32 or BF16, all of one
// dtype per call; small per-channel parameters (conv weight/bias, A, D, dt_bias) are F32 or
// BF16; recurrent state is F32, BF16 or F16 (the `state` tensor's dtype). Kernels compute in
// fp32.
// The spans are read on the device from batch.device_spans (and the paged KV cache through
// batch.device_block_tables); the host copies in batch.spans exist to size the launches.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "ops/ops.h"

namespace statelm::cuda {

// Scratch device memory for one launcher call (e.g. SSD's per-chunk states). Valid until the
// launcher returns: the backend reuses it for later work queued on the same stream, which is
// ordered after this call's kernels.
class Scratch {
 public:
  virtual ~Scratch() = default;
  virtual void* get(size_t bytes) = 0;
};

void conv1d(const Conv1dParams& p, const BatchView& batch, cudaStream_t stream);
void selective_scan(const SelectiveScanParams& p, const BatchView& batch, Scratch& scratch, cudaStream_t stream);
void ssd(const SsdParams& p, const BatchView& batch, Scratch& scratch, cudaStream_t stream);
// Columns of SsdGate::sumsq that ssd writes: one partial sum per decode block (heads × blocks
// per head).
int64_t ssd_gate_partials(int64_t heads, int64_t head_dim);
// Spans shorter than min_len are left as they are (attention's decode kernel rotates its own).
void rope(const RopeParams& p, const BatchView& batch, cudaStream_t stream, int min_len = 1);
void attention(const AttentionParams& p, const BatchView& batch, Scratch& scratch, cudaStream_t stream);

// Forces the tile height of bf16 prefill attention on tensor cores (attention_prefill.cu): 64 or
// 128 query rows, 0 for the automatic choice. The setting starts as STATELM_ATTN_PREFILL_ROWS
// says (read once); tests set it to cover both heights. Returns the previous setting.
int force_attention_prefill_rows(int rows);

}  // namespace statelm::cuda
