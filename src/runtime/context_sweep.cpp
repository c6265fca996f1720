#include "runtime/context_sweep.h"

#include <algorithm>

#include "core/error.h"
#include "core/log.h"
#include "model/model_files.h"

namespace statelm {

SweepResult sweep_context(const std::string& model, Backend& backend, RunnerOptions base, std::span<const int64_t> contexts,
                          size_t available_bytes, const SweepOptions& options) {
  if (contexts.empty()) fail(ErrorKind::InvalidArgument, "sweep: no context lengths");
  for (int64_t c : contexts)
    if (c < 1) fail(ErrorKind::InvalidArgument, "sweep: context ", c, " must be positive");
  const ModelSpec spec = open_model_files(model, false).spec;
  const int64_t act_bytes = int64_t(dtype_size(backend.compute_dtype()));
  // The KV cache is fp32 today (runtime/kv_cache.cpp).
  const MemoryFigures figures = memory_figures(spec, base.state_dtype, DType::F32);

  SweepResult r;
  r.architecture = spec.architecture;
  r.parameters = parameter_count(spec);
  // Weights as this backend stores them: matrices in the compute dtype (small vectors in fp32
  // are a rounding error here); the runner reports the exact figure once loaded.
  const int64_t weight_estimate = r.parameters * act_bytes;
  r.activation_bytes = activation_bytes(spec, options.prefill_chunk, 1, act_bytes);
  r.memory_budget = int64_t(available_bytes) - weight_estimate - r.activation_bytes;

  std::vector<int64_t> sorted(contexts.begin(), contexts.end());
  std::sort(sorted.begin(), sorted.end());
  int64_t longest_fit = 0;
  for (int64_t c : sorted) {
    SweepPoint p;
    p.context = c;
    p.state_bytes = figures.state_bytes();
    p.kv_bytes = figures.kv_bytes_per_token * c;
    const int64_t per_seq = figures.bytes_for(1, c);
    p.max_batch = r.memory_budget > 0 && per_seq > 0 ? r.memory_budget / per_seq : 0;
    if (p.max_batch >= 1) longest_fit = c;
    r.points.push_back(p);
  }
  if (longest_fit == 0) {
    log_warning("sweep: not even the shortest context fits beside the weights");
    return r;
  }

  RunnerOptions o = base;
  o.max_sequences = 1;
  o.max_context = longest_fit + 2 + options.decode_steps * std::max(1, options.repeats);
  o.kv_blocks = 0;  // one sequence of max_context
  o.cache_memory_bytes = 0;
  o.cache_memory_fraction = 0;
  ModelRunner runner(model, backend, o);
  r.weight_bytes = runner.weight_bytes();
  bool warm = false;
  for (SweepPoint& p : r.points) {
    if (p.max_batch < 1) continue;
    if (p.context <= options.max_prefill) {
      p.prefill = bench_prefill(runner, p.context, options.prefill_chunk, options.repeats, options.seed + 1, !warm);
      p.prefill_measured = warm = true;
    }
    p.decode = bench_decode(runner, 1, p.context, options.decode_steps, options.repeats, options.seed + 2);
    p.decode_measured = true;
  }
  return r;
}

}  // namespace statelm
