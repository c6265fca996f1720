// `statelm bench --sweep context`: how one model's cost grows with the context on this machine.
// For each context length: the memory one sequence needs (fixed state + KV cache), the largest
// batch of such sequences that fits beside the weights, the prefill time of a prompt that long
// (chunked: activation memory stays that of one chunk at any length), and the decode time per
// step at that context. A Mamba model's decode line is flat; a Transformer's grows with its KV
// cache until it no longer fits — the claim statelm exists to show, measured.
//
// Decode at context L is measured on a sequence fast-forwarded to L (its KV blocks reserved,
// their contents zero, its state zero: engine_bench.h), not after an L-token prefill: a step's
// cost depends on how many keys it reads, not on their values, and a Transformer's O(L^2)
// prefill at 1M tokens would take longer than the whole sweep. So a context whose prefill is
// skipped (longer than max_prefill, or estimated over max_prefill_seconds) still gets a decode
// figure, and the JSON says how it was obtained.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "runtime/engine_bench.h"

namespace statelm {

struct SweepResult;

struct SweepOptions {
  int64_t prefill_chunk = 4096;   // tokens per forward during the prefill
  int64_t max_prefill = 1 << 20;  // longest prefill measured (longer contexts: decode only)
  // A prefill whose estimated time (repeats included) is over this many seconds is skipped
  // (0: no limit). The estimate is t(L) = a L + b L^2 through the last two prefills measured
  // (a, b >= 0; a L alone after one), so an attention model's quadratic growth is foreseen.
  double max_prefill_seconds = 0;
  // Prefills estimated longer than this run once, without repeats (their noise is small next
  // to their length, and a 1M-token prefill three times over would eat the sweep's time).
  double repeat_prefill_below_seconds = 2.0;
  int64_t decode_steps = 16;
  int repeats = 1;
  uint64_t seed = 0;
  // Called with the result so far: once when the memory figures are known, then after each
  // context is measured (a run cut short keeps what it measured).
  std::function<void(const SweepResult&)> on_progress;
};

struct SweepPoint {
  int64_t context = 0;
  int64_t state_bytes = 0, kv_bytes = 0;  // per sequence at this context
  int64_t max_batch = 0;                  // sequences of this context that fit (0: not even one)
  bool prefill_measured = false, decode_measured = false;
  int prefill_repeats = 0;           // timed repetitions behind prefill.seconds (their median)
  double prefill_estimate = 0;       // seconds the estimate gave before measuring (0: none)
  std::string prefill_skipped;       // why the prefill was not measured ("" when it was)
  std::string error;                 // why this context was not (fully) measured after all
  BenchResult prefill, decode;
};

// The estimate behind max_prefill_seconds: seconds for a prefill of `tokens`, from the
// (tokens, seconds) of earlier prefills in increasing length; 0 when there are none.
double estimate_prefill_seconds(std::span<const std::pair<int64_t, double>> measured, int64_t tokens);

struct SweepResult {
  std::string architecture;
  int64_t parameters = 0;
  size_t weight_bytes = 0;
  int64_t memory_budget = 0;     // bytes left for state and KV after the weights and activations
  int64_t activation_bytes = 0;  // set aside for one prefill chunk's activations
  double load_seconds = 0;       // building the runner: weights (random ones generated) + caches
  std::vector<SweepPoint> points;
};

// Loads the model once (runner options from `base`: device, dtypes, random weights), sized for
// the longest context in `contexts` that fits, then measures every context up to it; longer
// ones are reported with their memory figures and max_batch 0. `available_bytes` is the memory
// free before the model is loaded (device memory on a GPU, host memory on the CPU).
SweepResult sweep_context(const std::string& model, Backend& backend, RunnerOptions base, std::span<const int64_t> contexts,
                          size_t available_bytes, const SweepOptions& options);

}  // namespace statelm
