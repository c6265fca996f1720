// The memory planner: the bytes a model takes on a backend, term by term, from its ModelSpec and
// the engine's settings alone. Each term is computed as the allocations the engine makes, so the
// plan is what the allocator will report, not a formula beside it:
//   weights      every buffer model/weights.cpp places (q|k|v and gate|up fused, experts
//                stacked): matrices in the compute dtype, per-channel vectors in fp32;
//   state        runtime/state_cache.h: per Mamba layer one [slots, C, K-1] fp32 conv tensor and
//                one SSM tensor in the state dtype ([slots, Di, N] or [slots, H, P, N]);
//   kv           runtime/kv_cache.h: per attention layer K and V [blocks, block_size, Hkv, Dh]
//                in the compute dtype, blocks for `context` tokens of each sequence;
//   activations  one forward of step_tokens tokens: Forward's scratch buffers (model/forward.cpp;
//                each as large as its largest use over the layers) plus the ops' own scratch —
//                on the CPU the MoE's routed rows (cpu_moe.cpp); on CUDA the launchers' arena
//                (ssd.cu's chunk states, attention.cu's split partials, moe.cu's routed rows,
//                selective_scan.cu's pieces; the largest call's) and the batch staging;
//   logits       the final norm's rows [rows, D] and the fp32 logits [rows, vocab].
// Each allocation is rounded as the backend's allocator rounds it (allocation_size). Not counted:
// the CPU ops' thread-local vectors (kilobytes), cuBLASLt's fixed workspace and the CUDA
// context (taken before the free memory is read), CUDA graphs' own memory, and transients: a
// scratch buffer replaced by a larger one is held with it for an instant (the first step that
// needs it), and CUDA's arena, grown in a call, keeps its old block until the next call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "model/model_spec.h"

namespace statelm {

struct MemoryPlanOptions {
  Device device = Device::Cpu;       // which ops' scratch applies
  DType compute_dtype = DType::F32;  // weight matrices, activations and the KV cache
  DType state_dtype = DType::F32;    // SSM state (the conv windows are always fp32)
  int64_t batch = 1;                 // sequences: one state slot and KV for `context` tokens each
  int64_t context = 4096;            // tokens per sequence the KV cache holds
  int32_t kv_block_size = 16;
  int64_t kv_blocks = 0;             // KV blocks in all; 0 = `batch` sequences of `context`
  int64_t extra_slots = 0;           // state slots without KV (the prefix cache's)
  int64_t step_tokens = 512;         // tokens in one forward: a prefill chunk, the scheduler's budget
  int64_t step_rows = 0;             // sequences in one forward (logits rows); 0 = min(batch, step_tokens)
  bool whole_batch_decode = false;   // also one decode step of all `batch` sequences (benchmarks),
                                     // whatever step_tokens: the larger step is planned
  int multiprocessors = 132;         // CUDA: the device's SMs, which set the attention splits (H200: 132)
  size_t (*allocation_size)(size_t) = nullptr;  // bytes an allocation of n bytes takes; null = n
};

struct MemoryPlan {
  int64_t weights = 0, state = 0, kv = 0, activations = 0, logits = 0;
  // activations = forward_scratch + op_scratch (CPU MoE rows, CUDA launcher arena) + staging
  // (CUDA: the step's token ids, spans and block tables).
  int64_t forward_scratch = 0, op_scratch = 0, staging = 0;
  // What one more sequence or token costs (unrounded).
  int64_t conv_state_per_slot = 0, ssm_state_per_slot = 0;
  int64_t kv_bytes_per_token = 0;  // all attention layers, K and V
  int32_t kv_block_size = 16;
  int64_t kv_blocks = 0;           // blocks planned in all
  int64_t slots = 0;               // state slots planned in all

  int64_t state_per_slot() const { return conv_state_per_slot + ssm_state_per_slot; }
  // KV bytes of the blocks a sequence of `tokens` tokens holds (0 for a model without attention).
  int64_t kv_for(int64_t tokens) const;
  // One sequence of `tokens` tokens: its state slot and its KV blocks.
  int64_t sequence_bytes(int64_t tokens) const { return state_per_slot() + kv_for(tokens); }
  int64_t caches() const { return state + kv; }
  int64_t total() const { return weights + state + kv + activations + logits; }
};

// Error(InvalidArgument) for non-positive sizes or a total beyond 64 bits.
MemoryPlan plan_memory(const ModelSpec& spec, const MemoryPlanOptions& options);

// The most sequences of options.context tokens (options.batch and kv_blocks are replaced) whose
// plan keeps the caches (state + KV: caches_only) or the total within `budget` bytes; 0 when not
// even one fits. Stops at `limit`.
int64_t max_batch(const ModelSpec& spec, MemoryPlanOptions options, int64_t budget, bool caches_only,
                  int64_t limit = int64_t(1) << 30);

// The buffers model/weights.cpp allocates for `spec` on a backend computing in `compute`, in
// bytes each (unrounded), in no particular order.
std::vector<int64_t> weight_buffer_bytes(const ModelSpec& spec, DType compute);

}  // namespace statelm
