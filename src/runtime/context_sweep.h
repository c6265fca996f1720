// `statelm bench --sweep context`: how one model's cost grows with the context on this machine.
// For each context length: the memory one sequence needs (fixed state + KV cache), the largest
// batch of such sequences that fits beside the weights, the prefill time of a prompt that long
// (chunked: activation memory stays that of one chunk at any length), and the decode time per
// step at that context. A Mamba model's decode line is flat; a Transformer's grows with its KV
// cache until it no longer fits — the claim statelm exists to show, measured.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "runtime/engine_bench.h"

namespace statelm {

struct SweepOptions {
  int64_t prefill_chunk = 4096;   // tokens per forward during the prefill
  int64_t max_prefill = 1 << 20;  // longest prefill measured (longer contexts: decode only)
  int64_t decode_steps = 16;
  int repeats = 1;
  uint64_t seed = 0;
};

struct SweepPoint {
  int64_t context = 0;
  int64_t state_bytes = 0, kv_bytes = 0;  // per sequence at this context
  int64_t max_batch = 0;                  // sequences of this context that fit (0: not even one)
  bool prefill_measured = false, decode_measured = false;
  BenchResult prefill, decode;
};

struct SweepResult {
  std::string architecture;
  int64_t parameters = 0;
  size_t weight_bytes = 0;
  int64_t memory_budget = 0;     // bytes left for state and KV after the weights and activations
  int64_t activation_bytes = 0;  // set aside for one prefill chunk's activations
  std::vector<SweepPoint> points;
};

// Loads the model once (runner options from `base`: device, dtypes, random weights), sized for
// the longest context in `contexts` that fits, then measures every context up to it; longer
// ones are reported with their memory figures and max_batch 0. `available_bytes` is the memory
// free before the model is loaded (device memory on a GPU, host memory on the CPU).
SweepResult sweep_context(const std::string& model, Backend& backend, RunnerOptions base, std::span<const int64_t> contexts,
                          size_t available_bytes, const SweepOptions& options);

}  // namespace statelm
