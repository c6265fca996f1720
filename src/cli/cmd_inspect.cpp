// `statelm inspect MODEL`: what a model is and what it costs to run — architecture, layer
// pattern, parameters, weight bytes, fixed state bytes per sequence, KV bytes per token — and the
// memory plan (runtime/memory_plan.h) of B sequences at context L on a device: weights, state
// slots, KV blocks, a prefill chunk's activations, logits, the total, and whether it fits in the
// device's free memory (host MemAvailable for the CPU). `--measure` runs the plan — loads the
// model (its weights, or random ones from a bare config.json), prefills B sequences of L tokens
// chunk by chunk and decodes one step of all of them — and prints the allocator's peak beside
// the plan: on CUDA the caching allocator's peak in use, on the CPU every host buffer's.
#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/system_memory.h"
#include "model/model_files.h"
#include "runtime/memory_plan.h"
#ifdef STATELM_WITH_CUDA
#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device_info.h"
#endif

namespace statelm::cli {

namespace {

struct InspectOptions {
  std::string model;
  std::vector<int64_t> contexts;
  int64_t batch = 1;
  int64_t chunk = 4096;
  std::string kv_dtype;  // the same as --dtype (the KV cache is in the compute dtype)
  EngineFlags engine;
  bool measure = false, random_weights = false, json = false;
  bool fast_forward = false;  // --measure: skip all but each sequence's last prefill chunk
};

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::abs(b) >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.2f %s" : "%.0f %s", b, units[u]);
  return buf;
}

std::string human_count(double n) {
  char buf[32];
  if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1e3) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

DType parse_dtype(const std::string& flag, const std::string& value) {
  auto d = dtype_from_name(value);
  if (!d) fail(ErrorKind::InvalidArgument, flag, ": unknown dtype \"", value, "\" (float32, bfloat16, float16)");
  return *d;
}

// One line per run of identical layers: "0-3  mamba2 + none".
std::vector<std::string> layer_runs(const ModelSpec& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.layers.size()) {
    size_t j = i;
    auto same = [&](size_t k) {
      return s.layers[k].mixer_kind() == s.layers[i].mixer_kind() && s.layers[k].ffn_kind() == s.layers[i].ffn_kind();
    };
    while (j + 1 < s.layers.size() && same(j + 1)) ++j;
    out.push_back(str_cat(i == j ? std::to_string(i) : str_cat(i, "-", j), ": ", mixer_kind_name(s.layers[i].mixer_kind()),
                          " + ", ffn_kind_name(s.layers[i].ffn_kind())));
    i = j + 1;
  }
  return out;
}

// Where the plan is for: the device, its allocator's rounding and (CUDA) its multiprocessors,
// and the memory free there now. A CUDA plan from a build without CUDA has no device to ask:
// exact bytes, 132 SMs (H200), no free-memory figure.
struct Target {
  bool cuda = false;
  std::unique_ptr<Backend> backend;  // when this build can make one
  size_t (*allocation_size)(size_t) = host_allocation_size;
  int multiprocessors = 132;
  int64_t available = -1;  // bytes free now; -1 unknown
  std::string where;       // "host MemAvailable", "cuda:0 free"
};

Target open_target(const EngineFlags& flags, bool need_backend) {
  Target t;
  t.cuda = flags.device != "cpu";
  if (!t.cuda) {
    if (need_backend) t.backend = make_backend(flags);
    t.available = system_memory().available_bytes;
    t.where = "host MemAvailable";
    return t;
  }
#ifdef STATELM_WITH_CUDA
  t.allocation_size = cuda::allocation_size;
  try {
    t.backend = make_backend(flags);
  } catch (const Error& e) {
    if (need_backend) throw;
    t.where = str_cat("unknown: ", e.what());
    return t;
  }
  auto* device = dynamic_cast<CudaBackend*>(t.backend.get());
  t.multiprocessors = cuda::list_devices().at(size_t(device->device_index())).multiprocessors;
  t.available = int64_t(device->available_memory());
  t.where = str_cat("cuda:", device->device_index(), " free");
#else
  if (need_backend) make_backend(flags);  // fails, naming the missing CUDA backend
  t.allocation_size = nullptr;
  t.where = "unknown: this statelm has no CUDA backend (allocator rounding not counted)";
#endif
  return t;
}

// The allocator's bytes in use and the most in use since the measurement started.
struct Usage {
  int64_t in_use = 0, peak = 0;
};

Usage usage(Backend& backend) {
#ifdef STATELM_WITH_CUDA
  if (auto* device = dynamic_cast<CudaBackend*>(&backend)) {
    device->synchronize("inspect --measure");
    const CudaMemoryStats s = device->memory_stats();
    return Usage{int64_t(s.in_use), int64_t(s.peak_in_use)};
  }
#endif
  (void)backend;
  const HostBufferStats s = host_buffer_stats();
  return Usage{int64_t(s.in_use), int64_t(s.peak_in_use)};
}

struct Measured {
  int64_t loaded = 0;  // weights + state + KV, as allocated after the runner is built
  int64_t peak = 0;    // the most in use while prefilling and decoding
  double seconds = 0;
  bool random_weights = false;
  bool fast_forward = false;
};

// Builds a runner for the plan's B sequences of L tokens, prefills each in chunks (L - 1
// tokens) and decodes one step of all of them (the L-th token). With --fast-forward each
// sequence jumps to its last chunk (KV blocks reserved, contents zero) and prefills only that:
// its activations are the largest (it attends to the most keys), the memory is the same, and a
// Transformer's 128K-token prefill, O(L^2), is not waited for.
Measured measure(const InspectOptions& o, Target& t, const MemoryPlanOptions& plan, bool has_weights) {
  Backend& backend = *t.backend;
  RunnerOptions ro = runner_options(o.engine);
  ro.max_sequences = int32_t(plan.batch);
  ro.max_context = plan.context;
  ro.kv_block_size = plan.kv_block_size;
  ro.step_tokens = plan.step_tokens;
  ro.random_weights = o.random_weights || !has_weights;
  Measured m;
  m.random_weights = ro.random_weights;
  m.fast_forward = o.fast_forward;
  reset_host_buffer_peak();  // the CUDA allocator's peak counts from the start of this process
  const Usage before = usage(backend);
  const auto t0 = std::chrono::steady_clock::now();
  ModelRunner runner(o.model, backend, ro);
  m.loaded = usage(backend).in_use - before.in_use;
  std::mt19937 rng(1);
  const int64_t vocab = runner.spec().vocab_size;
  auto draw = [&](int64_t n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int32_t& id : ids) id = int32_t(rng() % uint64_t(vocab));
    return ids;
  };
  std::vector<Sequence> seqs;
  for (int64_t b = 0; b < plan.batch; ++b) seqs.push_back(runner.open());
  for (Sequence& s : seqs) {
    Sequence* one[] = {&s};
    int64_t done = 0;
    if (o.fast_forward) {
      done = std::max<int64_t>(0, plan.context - 1 - plan.step_tokens);
      if (!runner.fast_forward(s, done))
        fail(ErrorKind::OutOfMemory, "inspect --measure: no KV blocks for ", done, " tokens");
    }
    while (done < plan.context - 1) {
      const std::vector<int32_t> chunk = draw(std::min(plan.step_tokens, plan.context - 1 - done));
      runner.step_device(one, std::span(&chunk, 1));
      done += int64_t(chunk.size());
    }
  }
  std::vector<Sequence*> all;
  std::vector<std::vector<int32_t>> next;
  for (Sequence& s : seqs) all.push_back(&s), next.push_back(draw(1));
  runner.step(all, next);  // downloads the logits: every queued kernel has run
  m.peak = usage(backend).peak - before.in_use;
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (Sequence& s : seqs) runner.close(s);
  return m;
}

std::string percent(int64_t measured, int64_t planned) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%+.2f%%", planned ? 100.0 * double(measured - planned) / double(planned) : 0.0);
  return buf;
}

nlohmann::json plan_json(const MemoryPlan& p) {
  return {{"weights", p.weights},
          {"state", p.state},
          {"kv", p.kv},
          {"activations", p.activations},
          {"forward_scratch", p.forward_scratch},
          {"op_scratch", p.op_scratch},
          {"staging", p.staging},
          {"logits", p.logits},
          {"total", p.total()},
          {"state_per_sequence", p.state_per_slot()},
          {"kv_blocks", p.kv_blocks}};
}

int run_inspect(InspectOptions o) {
  ModelFiles files = open_model_files(o.model, /*require_weights=*/false);
  const ModelSpec& s = files.spec;
  if (!o.kv_dtype.empty()) {
    if (!o.engine.dtype.empty() && o.engine.dtype != o.kv_dtype)
      fail(ErrorKind::InvalidArgument, "--kv-dtype ", o.kv_dtype, " and --dtype ", o.engine.dtype,
           " differ: the KV cache is in the compute dtype");
    parse_dtype("--kv-dtype", o.kv_dtype);
    o.engine.dtype = o.kv_dtype;
  }
  const bool cuda = o.engine.device != "cpu";
  const DType compute = o.engine.dtype.empty() ? (cuda ? DType::BF16 : DType::F32) : parse_dtype("--dtype", o.engine.dtype);
  const DType state_dt = parse_dtype("--state-dtype", o.engine.state_dtype);
  const int64_t params = parameter_count(s), active = active_parameter_count(s);
  std::vector<int64_t> contexts = o.contexts;
  if (contexts.empty()) contexts = {4096, 32768, 262144, 1048576};
  if (o.batch <= 0) fail(ErrorKind::InvalidArgument, "--batch: must be positive");
  if (o.chunk <= 0) fail(ErrorKind::InvalidArgument, "--chunk: must be positive");
  for (int64_t c : contexts)
    if (c <= 0) fail(ErrorKind::InvalidArgument, "--context: must be positive");
  if (o.fast_forward && !o.measure) fail(ErrorKind::InvalidArgument, "--fast-forward: only with --measure");
  if (o.measure && contexts.size() != 1) fail(ErrorKind::InvalidArgument, "--measure: give one --context");
  if (o.measure && contexts[0] < 2) fail(ErrorKind::InvalidArgument, "--measure: --context must be at least 2");
  if (o.measure && o.batch > INT32_MAX) fail(ErrorKind::InvalidArgument, "--batch: too many sequences to run");

  Target target = open_target(o.engine, o.measure);
  MemoryPlanOptions po;
  po.device = cuda ? Device::Cuda : Device::Cpu;
  po.compute_dtype = compute;
  po.state_dtype = state_dt;
  po.batch = o.batch;
  po.step_tokens = o.chunk;
  po.allocation_size = target.allocation_size;
  po.multiprocessors = target.multiprocessors;
  // A step is one sequence's prefill chunk (never longer than its context) or a decode step of
  // all B sequences, whichever takes more.
  po.whole_batch_decode = true;
  std::vector<MemoryPlan> plans;
  for (int64_t c : contexts) {
    po.context = c;
    po.step_tokens = std::min(o.chunk, c);
    plans.push_back(plan_memory(s, po));
  }
  std::optional<Measured> measured;
  if (o.measure) {
    po.context = contexts[0];
    po.step_tokens = std::min(o.chunk, contexts[0]);
    measured = measure(o, target, po, bool(files.checkpoint));
  }

  int64_t n_mamba = 0, n_attn = 0, n_moe = 0;
  for (const auto& l : s.layers) {
    n_mamba += l.is_mamba();
    n_attn += !l.is_mamba();
    n_moe += l.ffn_kind() == FfnKind::Moe;
  }
  std::map<std::string, size_t> bytes_by_dtype;
  size_t weight_bytes = 0;
  if (files.checkpoint) {
    weight_bytes = files.checkpoint->total_bytes();
    for (const auto& t : expected_tensors(s)) {
      const TensorInfo& info = *files.checkpoint->find(t.name)->info;
      bytes_by_dtype[info.dtype_code] += info.nbytes();
    }
  }
  const MemoryPlan& first = plans[0];
  auto fits = [&](const MemoryPlan& p) { return target.available >= 0 && p.total() <= target.available; };

  if (o.json) {
    nlohmann::json j;
    j["model"] = o.model;
    j["architecture"] = s.architecture;
    j["layout"] = s.layout;
    j["d_model"] = s.d_model;
    j["n_layers"] = s.n_layers();
    j["vocab_size"] = s.vocab_size;
    j["tie_embeddings"] = s.tie_embeddings;
    j["mixer_pattern"] = s.mixer_pattern();
    j["ffn_pattern"] = s.ffn_pattern();
    j["layers"] = {{"mamba", n_mamba}, {"attention", n_attn}, {"moe", n_moe}};
    j["parameters"] = params;
    j["active_parameters"] = active;
    j["has_weights"] = bool(files.checkpoint);
    j["weight_bytes"] = files.checkpoint ? nlohmann::json(weight_bytes) : nlohmann::json(params * 2);
    j["device"] = o.engine.device;
    j["compute_dtype"] = dtype_name(compute);
    j["state_dtype"] = dtype_name(state_dt);
    j["kv_dtype"] = dtype_name(compute);
    j["conv_state_bytes_per_sequence"] = first.conv_state_per_slot;
    j["ssm_state_bytes_per_sequence"] = first.ssm_state_per_slot;
    j["state_bytes_per_sequence"] = first.state_per_slot();
    j["kv_bytes_per_token"] = first.kv_bytes_per_token;
    j["batch"] = o.batch;
    j["chunk"] = o.chunk;
    j["available_bytes"] = target.available >= 0 ? nlohmann::json(target.available) : nlohmann::json(nullptr);
    for (size_t i = 0; i < contexts.size(); ++i) {
      const MemoryPlan& p = plans[i];
      j["memory"].push_back({{"context", contexts[i]}, {"batch", o.batch}, {"bytes", p.caches()}});
      nlohmann::json pj = plan_json(p);
      pj["context"] = contexts[i];
      pj["fits"] = target.available >= 0 ? nlohmann::json(fits(p)) : nlohmann::json(nullptr);
      j["plans"].push_back(pj);
    }
    if (measured)
      j["measured"] = {{"loaded", measured->loaded},         {"peak", measured->peak},
                       {"planned_loaded", first.weights + first.caches()}, {"planned_peak", first.total()},
                       {"seconds", measured->seconds},        {"random_weights", measured->random_weights},
                       {"fast_forward", measured->fast_forward}};
    std::printf("%s\n", j.dump(1).c_str());
    return 0;
  }

  std::printf("model          %s\n", o.model.c_str());
  std::printf("architecture   %s (%s layout)\n", s.architecture.c_str(), s.layout.c_str());
  std::printf("d_model        %lld, %lld layers (%lld mamba, %lld attention, %lld MoE), vocab %lld%s\n",
              (long long)s.d_model, (long long)s.n_layers(), (long long)n_mamba, (long long)n_attn, (long long)n_moe,
              (long long)s.vocab_size, s.tie_embeddings ? ", tied embeddings" : "");
  std::printf("mixers         %s   (M mamba, A attention)\n", s.mixer_pattern().c_str());
  std::printf("feed-forward   %s   (- none, F mlp, E moe)\n", s.ffn_pattern().c_str());
  for (const auto& run : layer_runs(s)) std::printf("  layers %s\n", run.c_str());
  std::printf("parameters     %s (%lld)", human_count(double(params)).c_str(), (long long)params);
  if (active != params) std::printf(", %s active per token", human_count(double(active)).c_str());
  std::printf("\n");
  if (files.checkpoint) {
    std::printf("checkpoint     %s in %zu tensors (", human_bytes(double(weight_bytes)).c_str(), files.checkpoint->tensor_count());
    bool first_dtype = true;
    for (const auto& [code, n] : bytes_by_dtype) {
      std::printf("%s%s %s", first_dtype ? "" : ", ", code.c_str(), human_bytes(double(n)).c_str());
      first_dtype = false;
    }
    std::printf(")\n");
    auto unused = files.checkpoint->unused(expected_tensors(s));
    if (!unused.empty()) std::printf("               %zu tensors not used, e.g. %s\n", unused.size(), unused[0].c_str());
  } else {
    std::printf("checkpoint     none in folder (--measure uses random weights)\n");
  }
  std::printf("state/seq      %s = conv %lld B + ssm %lld B (%s, fixed at any context)\n",
              human_bytes(double(first.state_per_slot())).c_str(), (long long)first.conv_state_per_slot,
              (long long)first.ssm_state_per_slot, std::string(dtype_name(state_dt)).c_str());
  std::printf("KV/token       %lld B (%s, %lld attention layers)\n", (long long)first.kv_bytes_per_token,
              std::string(dtype_name(compute)).c_str(), (long long)n_attn);
  std::printf("\nmemory plan on %s: %lld sequence%s, %s weights/activations/KV, %s state, prefill chunk %lld tokens\n",
              o.engine.device.c_str(), (long long)o.batch, o.batch == 1 ? "" : "s", std::string(dtype_name(compute)).c_str(),
              std::string(dtype_name(state_dt)).c_str(), (long long)o.chunk);
  std::printf("  weights      %12s\n", human_bytes(double(first.weights)).c_str());
  std::printf("  %-9s %12s %12s %12s %12s %12s  %s\n", "context", "state", "KV", "activations", "logits", "total", "fits");
  for (size_t i = 0; i < contexts.size(); ++i) {
    const MemoryPlan& p = plans[i];
    std::printf("  %-9lld %12s %12s %12s %12s %12s  %s\n", (long long)contexts[i], human_bytes(double(p.state)).c_str(),
                human_bytes(double(p.kv)).c_str(), human_bytes(double(p.activations)).c_str(),
                human_bytes(double(p.logits)).c_str(), human_bytes(double(p.total())).c_str(),
                target.available < 0 ? "?" : fits(p) ? "yes" : "no");
  }
  std::printf("  activations: Forward's scratch %s + ops' scratch %s + staging %s (at context %lld)\n",
              human_bytes(double(first.forward_scratch)).c_str(), human_bytes(double(first.op_scratch)).c_str(),
              human_bytes(double(first.staging)).c_str(), (long long)contexts[0]);
  std::printf("  available: %s%s\n", target.available >= 0 ? human_bytes(double(target.available)).c_str() : "",
              target.available >= 0 ? str_cat(" (", target.where, ")").c_str() : target.where.c_str());
  if (measured) {
    const int64_t planned_loaded = first.weights + first.caches();
    std::printf("\nmeasured (%s weights, %.1f s: %lld x %lld tokens in chunks of %lld%s, then one decode step)\n",
                measured->random_weights ? "random" : "checkpoint", measured->seconds, (long long)o.batch,
                (long long)contexts[0], (long long)o.chunk,
                measured->fast_forward ? ", fast-forwarded to the last chunk (KV contents zero)" : "");
    std::printf("  loaded (weights + state + KV)  planned %12s  measured %12s  %s\n",
                human_bytes(double(planned_loaded)).c_str(), human_bytes(double(measured->loaded)).c_str(),
                percent(measured->loaded, planned_loaded).c_str());
    std::printf("  peak in use                    planned %12s  measured %12s  %s\n",
                human_bytes(double(first.total())).c_str(), human_bytes(double(measured->peak)).c_str(),
                percent(measured->peak, first.total()).c_str());
    std::printf("  (%lld / %lld bytes)\n", (long long)measured->peak, (long long)first.total());
  }
  return 0;
}

}  // namespace

void add_inspect_command(CLI::App& app, Action& action) {
  auto opts = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand("inspect", "Print a model's architecture, size and memory plan");
  cmd->add_option("model", opts->model, "Model folder (config.json [+ model.safetensors]) or a config.json")->required();
  cmd->add_option("--context,-L", opts->contexts, "Context length(s) of the memory plan, tokens per sequence");
  cmd->add_option("--batch,-B", opts->batch, "Number of sequences of the memory plan");
  cmd->add_option("--chunk", opts->chunk, "Tokens of one forward step (prefill chunk) the plan sets activations aside for");
  add_engine_flags(cmd, opts->engine);
  cmd->add_option("--kv-dtype", opts->kv_dtype, "The same as --dtype: the KV cache is kept in the compute dtype");
  cmd->add_flag("--measure", opts->measure,
                "Run the plan (B sequences of L tokens, then a decode step) and print planned vs measured memory");
  cmd->add_flag("--random-weights", opts->random_weights, "With --measure: random weights even when the folder has some");
  cmd->add_flag("--fast-forward", opts->fast_forward,
                "With --measure: prefill only each sequence's last chunk, the ones before skipped (KV reserved, "
                "contents zero): the same memory without an O(L^2) attention prefill");
  cmd->add_flag("--json", opts->json, "Print JSON");
  cmd->callback([opts, &action] { action = [opts] { return run_inspect(*opts); }; });
}

}  // namespace statelm::cli
