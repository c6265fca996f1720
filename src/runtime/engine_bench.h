// End-to-end measurements behind `statelm bench`: prefill and decode through the real runner
// (the same forward the server runs), and the machine's own limits measured with the same
// backend in the same process, so every figure can be printed as a fraction of what the
// hardware did in this run.
//
// Timing includes the host side of each step (packing the batch, copying the logits back): a
// step ends when its logits are on the host, which also makes the timing correct on an
// asynchronous device without a separate synchronise.
#pragma once

#include <cstdint>
#include <string>

#include "model/model_cost.h"
#include "runtime/model_runner.h"

namespace statelm {

struct Roofline {
  double copy_bytes_per_s = 0;    // device-to-device copy, bytes read + written per second
  double matmul_flops_per_s = 0;  // backend.matmul at a large square shape
  std::string matmul_shape;       // "4096x4096x4096 bf16"
};

// `copy_bytes` per copy and an n x n x n matmul in `dtype` (F32 or BF16; the backend must
// support it), each repeated until ~0.2 s have passed; the best repetition counts.
Roofline measure_roofline(Backend& backend, DType dtype, size_t copy_bytes, int64_t n);

struct BenchResult {
  std::string kind;          // "prefill" | "decode"
  int64_t batch = 1;         // sequences
  int64_t context = 0;       // prefill: prompt tokens; decode: tokens each sequence holds
  int64_t tokens = 0;        // tokens processed per measured repetition
  int64_t steps = 0;         // forward calls per repetition
  double seconds = 0;        // median time of one repetition
  StepCost cost;             // work of one repetition
  double tokens_per_s() const { return seconds > 0 ? double(tokens) / seconds : 0.0; }
  double ms_per_step() const { return steps ? 1e3 * seconds / double(steps) : 0.0; }
};

// The byte sizes the cost model should use for this runner's weights, state and KV cache.
CostDtypes cost_dtypes(ModelRunner& runner);

// One sequence prefilling `tokens` random tokens from an empty state in chunks of `chunk`
// tokens per forward, `repeats` times after one warm-up.
// (No warm-up when `warmup` is false: a long sweep warms up once, not at every length.)
BenchResult bench_prefill(ModelRunner& runner, int64_t tokens, int64_t chunk, int repeats, uint64_t seed,
                          bool warmup = true);

// `batch` sequences each holding `context` tokens decode `steps` tokens together (one forward
// per step), `repeats` times after a warm-up. The sequences are fast-forwarded to `context`
// (their KV blocks reserved and positions set, the contents left zero) rather than prefilled:
// a step's cost depends on the context length, not on what the cache holds, and this keeps a
// 128K-context decode benchmark from spending minutes in prefill first.
BenchResult bench_decode(ModelRunner& runner, int64_t batch, int64_t context, int64_t steps, int repeats, uint64_t seed);

}  // namespace statelm
