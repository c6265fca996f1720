#include "runtime/context_sweep.h"

#include <algorithm>

#include "core/error.h"
#include "core/log.h"
#include "model/model_files.h"
#include "runtime/memory_plan.h"

namespace statelm {

SweepResult sweep_context(const std::string& model, Backend& backend, RunnerOptions base, std::span<const int64_t> contexts,
                          size_t available_bytes, const SweepOptions& options) {
  if (contexts.empty()) fail(ErrorKind::InvalidArgument, "sweep: no context lengths");
  for (int64_t c : contexts)
    if (c < 1) fail(ErrorKind::InvalidArgument, "sweep: context ", c, " must be positive");
  const ModelSpec spec = open_model_files(model, false).spec;
  // The memory planner's figures (runtime/memory_plan.h): weights as this backend stores them,
  // the KV cache in its compute dtype, a prefill chunk's activations (one sequence at a time, as
  // measured here) or a decode step of the whole batch, whichever is larger.
  MemoryPlanOptions plan;
  plan.device = backend.device();
  plan.compute_dtype = backend.compute_dtype();
  plan.state_dtype = base.state_dtype;
  plan.kv_block_size = base.kv_block_size;
  plan.step_tokens = options.prefill_chunk;
  plan.step_rows = 1;
  plan.whole_batch_decode = true;
  const MemoryPlan one = plan_memory(spec, plan);

  SweepResult r;
  r.architecture = spec.architecture;
  r.parameters = parameter_count(spec);
  r.activation_bytes = one.activations + one.logits;
  r.memory_budget = int64_t(available_bytes) - one.weights - r.activation_bytes;

  std::vector<int64_t> sorted(contexts.begin(), contexts.end());
  std::sort(sorted.begin(), sorted.end());
  int64_t longest_fit = 0;
  for (int64_t c : sorted) {
    SweepPoint p;
    p.context = c;
    plan.context = c;
    const MemoryPlan at = plan_memory(spec, plan);
    p.state_bytes = at.state_per_slot();
    p.kv_bytes = at.kv_for(c);
    p.max_batch = max_batch(spec, plan, int64_t(available_bytes), /*caches_only=*/false);
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
