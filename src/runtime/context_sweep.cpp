#include "runtime/context_sweep.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>

#include "core/error.h"
#include "core/log.h"
#include "model/model_files.h"
#include "runtime/memory_plan.h"

namespace statelm {

double estimate_prefill_seconds(std::span<const std::pair<int64_t, double>> measured, int64_t tokens) {
  if (measured.empty()) return 0;
  const double L = double(tokens);
  const auto [l2, t2] = measured.back();
  if (measured.size() == 1) return t2 / double(l2) * L;
  const auto [l1, t1] = measured[measured.size() - 2];
  // t = a L + b L^2 through both points: t/L = a + b L is a line in L.
  double a = t2 / double(l2), b = 0;
  if (l2 > l1) {
    b = (t2 / double(l2) - t1 / double(l1)) / double(l2 - l1);
    a = t1 / double(l1) - b * double(l1);
  }
  if (b < 0) a = t2 / double(l2), b = 0;  // noise, or a per-token cost that falls
  if (a < 0) a = 0, b = t2 / (double(l2) * double(l2));
  return a * L + b * L * L;
}

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

  // One runner for every context, sized for the longest that fits. Should the plan be wrong and
  // the runner not fit after all, the next shorter context is tried; the longer ones report why.
  std::optional<ModelRunner> runner;
  int64_t sized_for = 0;
  for (auto p = r.points.rbegin(); p != r.points.rend() && !runner; ++p) {
    if (p->max_batch < 1) continue;
    RunnerOptions o = base;
    o.max_sequences = 1;
    o.max_context = p->context + 2 + options.decode_steps * std::max(1, options.repeats);
    o.kv_blocks = 0;  // one sequence of max_context
    o.step_tokens = options.prefill_chunk;
    o.cache_memory_bytes = 0;
    o.cache_memory_fraction = 0;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      runner.emplace(model, backend, o);
      sized_for = p->context;
    } catch (const Error& e) {
      if (e.kind() != ErrorKind::OutOfMemory && e.kind() != ErrorKind::TooLarge) throw;
      p->error = str_cat("planned to fit, but the runner for it could not be built: ", e.what());
      log_warning("sweep: context ", p->context, ": ", p->error);
    }
    r.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (!runner) return r;
  r.weight_bytes = runner->weight_bytes();
  if (options.on_progress) options.on_progress(r);
  bool warm = false;
  std::vector<std::pair<int64_t, double>> prefills;  // (tokens, seconds) measured so far
  for (SweepPoint& p : r.points) {
    if (p.max_batch < 1 || p.context > sized_for) continue;
    const double estimate = estimate_prefill_seconds(prefills, p.context);
    const int reps = estimate > options.repeat_prefill_below_seconds ? 1 : std::max(1, options.repeats);
    p.prefill_estimate = estimate;
    if (p.context > options.max_prefill) {
      p.prefill_skipped = str_cat("longer than the longest prefill measured (", options.max_prefill, " tokens)");
    } else if (options.max_prefill_seconds > 0 && estimate * reps > options.max_prefill_seconds) {
      char text[96];
      std::snprintf(text, sizeof text, "estimated %.3g s, over the limit of %.3g s", estimate * reps,
                    options.max_prefill_seconds);
      p.prefill_skipped = text;
    }
    if (!p.prefill_skipped.empty()) log_info("sweep: context ", p.context, ": prefill skipped, ", p.prefill_skipped);
    // Decode first (seconds), then the prefill (up to minutes): a sweep cut short in a long
    // prefill keeps that context's decode figure. A failure at one context (out of memory after
    // all) is reported there; the sweep goes on.
    try {
      p.decode = bench_decode(*runner, 1, p.context, options.decode_steps, options.repeats, options.seed + 2);
      p.decode_measured = true;
      if (options.on_progress) options.on_progress(r);
      if (p.prefill_skipped.empty()) {
        p.prefill = bench_prefill(*runner, p.context, options.prefill_chunk, reps, options.seed + 1, !warm);
        p.prefill_measured = warm = true;
        p.prefill_repeats = reps;
        prefills.emplace_back(p.context, p.prefill.seconds);
      }
    } catch (const Error& e) {
      p.error = e.what();
      log_warning("sweep: context ", p.context, ": ", p.error);
    }
    log_info("sweep: context ", p.context, ": ",
             p.prefill_measured ? str_cat("prefill ", p.prefill.seconds, " s, ") : std::string(),
             p.decode_measured ? str_cat("decode ", p.decode.ms_per_step(), " ms/step") : std::string("no decode"));
    if (options.on_progress) options.on_progress(r);
  }
  return r;
}

}  // namespace statelm
