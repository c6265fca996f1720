// `statelm bench MODEL [--random-weights]`: end-to-end prefill and decode through the real
// runner, each case printed with its time, tokens/s, the bytes and FLOPs the step must move
// (model/model_cost.h) and the fraction of this machine's copy bandwidth and matmul rate it
// reached, both measured by the same backend in the same run (runtime/engine_bench.h).
// MODEL is a model folder or a bare config.json; --random-weights benchmarks any shape
// (a 2.7B Mamba-2, a 52B Jamba) without a checkpoint.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/system_memory.h"
#include "runtime/context_sweep.h"
#include "runtime/engine_bench.h"

namespace statelm::cli {

namespace {
struct BenchOptions {
  std::string model;
  bool random_weights = false;
  std::vector<int64_t> prefill = {512, 2048};
  int64_t chunk = 2048;
  std::vector<int64_t> decode_batch = {1, 16};
  std::vector<int64_t> context = {1024};
  int64_t decode_steps = 32;
  int repeats = 3;
  bool roofline = true, json = false;
  std::string sweep;  // "" or "context"
  std::vector<int64_t> sweep_contexts = {1024, 8192, 32768, 131072, 262144, 1048576};
  int64_t sweep_max_prefill = 1 << 20;
  double sweep_prefill_seconds = 0;
  std::string json_file;  // the sweep's JSON, rewritten after every context
  uint64_t seed = 0;
  EngineFlags engine;
};

nlohmann::json result_json(const BenchResult& b, const Roofline& r) {
  const double bw = b.seconds > 0 ? b.cost.bytes() / b.seconds : 0, fl = b.seconds > 0 ? b.cost.flops / b.seconds : 0;
  nlohmann::json j = {{"kind", b.kind},
                      {"batch", b.batch},
                      {"context", b.context},
                      {"tokens", b.tokens},
                      {"steps", b.steps},
                      {"seconds", b.seconds},
                      {"tokens_per_second", b.tokens_per_s()},
                      {"ms_per_step", b.ms_per_step()},
                      {"bytes", b.cost.bytes()},
                      {"weight_bytes", b.cost.weight_bytes},
                      {"state_bytes", b.cost.state_bytes},
                      {"kv_bytes", b.cost.kv_bytes},
                      {"flops", b.cost.flops},
                      {"bytes_per_second", bw},
                      {"flops_per_second", fl}};
  if (r.copy_bytes_per_s > 0) j["fraction_of_copy_bandwidth"] = bw / r.copy_bytes_per_s;
  if (r.matmul_flops_per_s > 0) j["fraction_of_matmul_rate"] = fl / r.matmul_flops_per_s;
  return j;
}

nlohmann::json sweep_json(const SweepResult& s, const SweepOptions& so) {
  nlohmann::json j = {{"architecture", s.architecture}, {"parameters", s.parameters},
                      {"weight_bytes", s.weight_bytes}, {"memory_budget", s.memory_budget},
                      {"activation_bytes", s.activation_bytes}, {"load_seconds", s.load_seconds},
                      {"prefill_chunk", so.prefill_chunk}, {"max_prefill", so.max_prefill},
                      {"max_prefill_seconds", so.max_prefill_seconds}, {"decode_batch", 1},
                      {"decode_steps", so.decode_steps}, {"repeats", so.repeats},
                      {"prefill_method", "one sequence of random token ids from an empty state, in chunks of "
                                         "prefill_chunk tokens; the median of prefill_repeats timed runs"},
                      {"decode_method", "one sequence fast-forwarded to the context (KV blocks reserved, contents "
                                        "zero; no prefill), decode_steps steps timed, the median of repeats"},
                      {"max_batch_method", "the memory planner: sequences of this context whose state + KV fit "
                                           "beside the weights and one step's activations"},
                      {"points", nlohmann::json::array()}};
  for (const SweepPoint& p : s.points) {
    nlohmann::json q = {{"context", p.context}, {"state_bytes", p.state_bytes}, {"kv_bytes", p.kv_bytes},
                        {"bytes_per_sequence", p.state_bytes + p.kv_bytes}, {"max_batch", p.max_batch}};
    if (p.prefill_measured) {
      q["prefill_seconds"] = p.prefill.seconds;
      q["prefill_tokens_per_second"] = p.prefill.tokens_per_s();
      q["prefill_repeats"] = p.prefill_repeats;
    }
    if (p.prefill_estimate > 0) q["prefill_estimate_seconds"] = p.prefill_estimate;
    if (!p.prefill_skipped.empty()) q["prefill_skipped"] = p.prefill_skipped;
    if (!p.error.empty()) q["error"] = p.error;
    if (p.decode_measured) q["decode_ms_per_step"] = p.decode.ms_per_step();
    j["points"].push_back(q);
  }
  return j;
}

// --sweep context: one model across context lengths (runtime/context_sweep.h).
int run_context_sweep(const BenchOptions& o, Backend& backend, const RunnerOptions& ro) {
  const size_t device_free = backend.available_memory();
  const size_t available = device_free > 0 ? device_free : system_memory().available_bytes;
  SweepOptions so;
  so.prefill_chunk = o.chunk;
  so.max_prefill = o.sweep_max_prefill;
  so.max_prefill_seconds = o.sweep_prefill_seconds;
  so.decode_steps = o.decode_steps;
  so.repeats = o.repeats;
  so.seed = o.seed;
  auto as_json = [&](const SweepResult& s, bool complete) {
    nlohmann::json j = sweep_json(s, so);
    j["model"] = o.model;
    j["device"] = o.engine.device;
    j["compute_dtype"] = dtype_name(backend.compute_dtype());  // weights, activations, KV cache
    j["state_dtype"] = o.engine.state_dtype;
    j["random_weights"] = o.random_weights;
    j["available_bytes"] = available;
    j["complete"] = complete;
    return j;
  };
  auto write_file = [&](const nlohmann::json& j) {
    const std::string tmp = o.json_file + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f) fail(ErrorKind::Io, "--json-file: cannot write ", tmp);
    const std::string text = j.dump(1) + "\n";
    const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    if (std::fclose(f) != 0 || !ok) fail(ErrorKind::Io, "--json-file: cannot write ", tmp);
    std::filesystem::rename(tmp, o.json_file);
  };
  if (!o.json_file.empty()) so.on_progress = [&](const SweepResult& s) { write_file(as_json(s, false)); };
  const SweepResult s = sweep_context(o.model, backend, ro, o.sweep_contexts, available, so);
  if (!o.json_file.empty()) write_file(as_json(s, true));
  if (o.json) {
    std::printf("%s\n", as_json(s, true).dump(1).c_str());
    return 0;
  }
  std::printf("model %s (%s, %.2fB parameters, %.2f GB of weights) on %s; %.2f GB free before loading, %.2f GB for "
              "state + KV after weights and %.2f GB of prefill activations\n",
              o.model.c_str(), s.architecture.c_str(), double(s.parameters) / 1e9, double(s.weight_bytes) / 1e9,
              o.engine.device.c_str(), double(available) / 1e9, double(s.memory_budget) / 1e9, double(s.activation_bytes) / 1e9);
  std::printf("%9s %12s %14s %14s %12s %12s %10s\n", "context", "prefill s", "prefill tok/s", "decode ms/step",
              "state MB", "KV MB/seq", "max batch");
  for (const SweepPoint& p : s.points) {
    std::printf("%9lld ", (long long)p.context);
    if (p.prefill_measured) std::printf("%12.3f %14.0f ", p.prefill.seconds, p.prefill.tokens_per_s());
    else std::printf("%12s %14s ", "-", "-");
    if (p.decode_measured) std::printf("%14.3f ", p.decode.ms_per_step());
    else std::printf("%14s ", p.max_batch < 1 ? "does not fit" : "-");
    std::printf("%12.2f %12.2f %10lld\n", double(p.state_bytes) / 1e6, double(p.kv_bytes) / 1e6, (long long)p.max_batch);
  }
  for (const SweepPoint& p : s.points) {
    if (!p.prefill_skipped.empty()) std::printf("context %lld: prefill skipped, %s\n", (long long)p.context, p.prefill_skipped.c_str());
    if (!p.error.empty()) std::printf("context %lld: %s\n", (long long)p.context, p.error.c_str());
  }
  std::printf("decode: one sequence fast-forwarded to the context (KV blocks reserved, contents zero; no prefill)\n");
  return 0;
}

int run_bench(const BenchOptions& o) {
  namespace fs = std::filesystem;
  auto backend = make_backend(o.engine);
  RunnerOptions ro = runner_options(o.engine);
  ro.random_weights = o.random_weights;
  ro.seed = o.seed;
  if (o.sweep == "context") return run_context_sweep(o, *backend, ro);
  // Sized for the largest case: slots for the largest decode batch, context for the longest
  // prefill or decode horizon, KV blocks for the case that needs the most of them at once.
  const int64_t decode_extra = 2 + o.decode_steps * o.repeats;
  int64_t max_context = 1, kv_tokens = 1;
  for (int64_t p : o.prefill) max_context = std::max(max_context, p), kv_tokens = std::max(kv_tokens, p);
  for (int64_t c : o.context) {
    max_context = std::max(max_context, c + decode_extra);
    for (int64_t b : o.decode_batch) kv_tokens = std::max(kv_tokens, b * (c + decode_extra + ro.kv_block_size));
  }
  ro.max_sequences = int32_t(std::max<int64_t>(1, *std::max_element(o.decode_batch.begin(), o.decode_batch.end())));
  ro.max_context = max_context;
  ro.kv_blocks = int32_t((kv_tokens + ro.kv_block_size - 1) / ro.kv_block_size + ro.max_sequences);
  ModelRunner runner(o.model, *backend, ro);

  Roofline roof;
  if (o.roofline) {
    const bool gpu = backend->device() == Device::Cuda;
    roof = measure_roofline(*backend, backend->compute_dtype(), gpu ? (size_t(1) << 31) : (size_t(1) << 28),
                            gpu ? 8192 : 1024);
  }
  std::vector<BenchResult> results;
  for (int64_t p : o.prefill) results.push_back(bench_prefill(runner, p, o.chunk, o.repeats, o.seed + 1));
  for (int64_t c : o.context)
    for (int64_t b : o.decode_batch) results.push_back(bench_decode(runner, b, c, o.decode_steps, o.repeats, o.seed + 2));
  const size_t peak = peak_rss_bytes();

  if (o.json) {
    nlohmann::json j = {{"model", o.model},
                        {"device", o.engine.device},
                        {"random_weights", o.random_weights},
                        {"architecture", runner.spec().architecture},
                        {"parameters", parameter_count(runner.spec())},
                        {"weight_bytes", runner.weight_bytes()},
                        {"state_dtype", o.engine.state_dtype},
                        {"copy_bytes_per_second", roof.copy_bytes_per_s},
                        {"matmul_flops_per_second", roof.matmul_flops_per_s},
                        {"matmul_shape", roof.matmul_shape},
                        {"peak_host_memory_bytes", peak},
                        {"cases", nlohmann::json::array()}};
    for (const auto& b : results) j["cases"].push_back(result_json(b, roof));
    std::printf("%s\n", j.dump(1).c_str());
    return 0;
  }
  std::printf("model %s (%s, %.1fM parameters, %.1f MB of weights%s) on %s\n", o.model.c_str(),
              runner.spec().architecture.c_str(), double(parameter_count(runner.spec())) / 1e6,
              double(runner.weight_bytes()) / 1e6, o.random_weights ? ", random" : "", o.engine.device.c_str());
  if (o.roofline)
    std::printf("measured limits: copy %.1f GB/s (read + write), matmul %.1f GFLOP/s (%s)\n", roof.copy_bytes_per_s / 1e9,
                roof.matmul_flops_per_s / 1e9, roof.matmul_shape.c_str());
  std::printf("%-8s %6s %8s %10s %11s %9s %10s %9s %7s %7s\n", "case", "batch", "context", "time ms", "tokens/s",
              "ms/step", "MB moved", "GFLOP", "%copy", "%mm");
  for (const auto& b : results) {
    const double bw = b.cost.bytes() / b.seconds, fl = b.cost.flops / b.seconds;
    std::printf("%-8s %6lld %8lld %10.2f %11.1f %9.3f %10.1f %9.2f %6.1f%% %6.1f%%\n", b.kind.c_str(), (long long)b.batch,
                (long long)b.context, b.seconds * 1e3, b.tokens_per_s(), b.ms_per_step(), b.cost.bytes() / 1e6,
                b.cost.flops / 1e9, roof.copy_bytes_per_s > 0 ? 100 * bw / roof.copy_bytes_per_s : 0.0,
                roof.matmul_flops_per_s > 0 ? 100 * fl / roof.matmul_flops_per_s : 0.0);
  }
  std::printf("peak host memory %.1f MiB\n", double(peak) / (1 << 20));
  return 0;
}
}  // namespace

void add_bench_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "Benchmark prefill and decode end to end, against the measured machine limits");
  cmd->add_option("model", o->model, "Model folder, or a config.json with --random-weights")->required();
  cmd->add_flag("--random-weights", o->random_weights, "Random weights of the config's shapes (no checkpoint needed)");
  cmd->add_option("--prefill", o->prefill, "Prompt lengths to prefill (one sequence each)")->delimiter(',');
  cmd->add_option("--chunk", o->chunk, "Prefill tokens per forward")->check(CLI::PositiveNumber);
  cmd->add_option("--decode-batch", o->decode_batch, "Decode batch sizes")->delimiter(',');
  cmd->add_option("--context", o->context, "Context each decoding sequence holds")->delimiter(',');
  cmd->add_option("--decode-steps", o->decode_steps, "Decode steps per measurement")->check(CLI::PositiveNumber);
  cmd->add_option("--repeats", o->repeats, "Measurements per case (the median is reported)")->check(CLI::PositiveNumber);
  cmd->add_option("--seed", o->seed, "Seed of the random weights and tokens");
  cmd->add_flag("!--no-roofline", o->roofline, "Skip measuring copy bandwidth and matmul rate");
  cmd->add_flag("--json", o->json, "Print JSON");
  cmd->add_option("--sweep", o->sweep, "context: one sequence at each of --sweep-contexts (prefill, decode, memory, max batch)")
      ->check(CLI::IsMember({"context"}));
  cmd->add_option("--sweep-contexts", o->sweep_contexts, "Context lengths of the sweep")->delimiter(',');
  cmd->add_option("--sweep-max-prefill", o->sweep_max_prefill,
                  "Sweep: longest prefill measured; longer contexts get decode and memory figures only")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--sweep-prefill-seconds", o->sweep_prefill_seconds,
                  "Sweep: skip a prefill estimated (from the shorter ones, a L + b L^2) to take longer than this")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--json-file", o->json_file, "Sweep: also write the JSON to this file, after every context");
  add_engine_flags(cmd, o->engine);
  cmd->callback([o, &action] { action = [o] { return run_bench(*o); }; });
}

}  // namespace statelm::cli
