// Scheduler overhead per step (Google Benchmark): N running sequences of a tiny model all in
// decode, one step() per iteration. Reported: wall time per step, the part spent in the model,
// and the rest — packing the batch, sampling, callbacks, bookkeeping — which is what this
// measures (it must stay small next to a real model's step at 64 or 512 sequences).
#include <benchmark/benchmark.h>

#include <memory>

#include "backend/cpu/cpu_backend.h"
#include "runtime/scheduler.h"

namespace statelm {
namespace {

void BM_SchedulerStep(benchmark::State& state) {
  const int32_t n = int32_t(state.range(0));
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = n;
  ModelRunner runner(std::string(STATELM_SOURCE_DIR) + "/tests/fixtures/models/mamba-tiny", backend, o);
  SchedulerOptions so;
  so.max_batch_tokens = std::max<int64_t>(n, 64);
  Scheduler s(runner, so);
  for (int32_t i = 0; i < n; ++i) {
    Request r;
    r.prompt = {1 + i % 200, 2, 3, 4};
    r.sampling.greedy = true;
    r.sampling.max_tokens = int64_t(1) << 40;  // never finishes while measured
    r.on_event = [](const RequestEvent&) { return true; };
    s.submit(std::move(r));
  }
  while (s.stats().running < n || s.stats().tokens_out < n) s.step();  // all admitted and decoding
  const SchedulerStats before = s.stats();
  for (auto _ : state) s.step();
  const SchedulerStats after = s.stats();
  const double steps = double(after.steps - before.steps);
  const double overhead = (after.step_seconds - before.step_seconds) - (after.model_seconds - before.model_seconds);
  state.counters["overhead_us/step"] = overhead / steps * 1e6;
  state.counters["model_us/step"] = (after.model_seconds - before.model_seconds) / steps * 1e6;
  state.counters["tok/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  s.stop();
}
BENCHMARK(BM_SchedulerStep)->Arg(1)->Arg(64)->Arg(512)->Unit(benchmark::kMicrosecond)->UseRealTime();

}  // namespace
}  // namespace statelm
