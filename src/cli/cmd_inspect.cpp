// `statelm inspect MODEL_DIR`: what a model is and what it costs to run — architecture, layer
// pattern, parameters, weight bytes, fixed state bytes per sequence, KV bytes per token, and
// the memory for B sequences at context L. The memory planner uses the same figures.
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "model/model_files.h"

namespace statelm::cli {

namespace {

struct InspectOptions {
  std::string model;
  std::vector<int64_t> contexts;
  int64_t batch = 1;
  std::string state_dtype = "float32", kv_dtype = "float32";
  bool json = false;
};

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
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

int run_inspect(const InspectOptions& o) {
  ModelFiles files = open_model_files(o.model, /*require_weights=*/false);
  const ModelSpec& s = files.spec;
  const DType state_dt = parse_dtype("--state-dtype", o.state_dtype);
  const DType kv_dt = parse_dtype("--kv-dtype", o.kv_dtype);
  const MemoryFigures mem = memory_figures(s, state_dt, kv_dt);
  const int64_t params = parameter_count(s), active = active_parameter_count(s);
  std::vector<int64_t> contexts = o.contexts;
  if (contexts.empty()) contexts = {4096, 32768, 262144, 1048576};
  if (o.batch <= 0) fail(ErrorKind::InvalidArgument, "--batch: must be positive");
  for (int64_t c : contexts)
    if (c <= 0) fail(ErrorKind::InvalidArgument, "--context: must be positive");

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
    j["state_dtype"] = dtype_name(state_dt);
    j["kv_dtype"] = dtype_name(kv_dt);
    j["conv_state_bytes_per_sequence"] = mem.conv_state_bytes;
    j["ssm_state_bytes_per_sequence"] = mem.ssm_state_bytes;
    j["state_bytes_per_sequence"] = mem.state_bytes();
    j["kv_bytes_per_token"] = mem.kv_bytes_per_token;
    j["batch"] = o.batch;
    for (int64_t c : contexts)
      j["memory"].push_back({{"context", c}, {"batch", o.batch}, {"bytes", mem.bytes_for(o.batch, c)}});
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
    std::printf("weights        %s in %zu tensors (", human_bytes(double(weight_bytes)).c_str(), files.checkpoint->tensor_count());
    bool first = true;
    for (const auto& [code, n] : bytes_by_dtype) {
      std::printf("%s%s %s", first ? "" : ", ", code.c_str(), human_bytes(double(n)).c_str());
      first = false;
    }
    std::printf(")\n");
    auto unused = files.checkpoint->unused(expected_tensors(s));
    if (!unused.empty()) std::printf("               %zu tensors not used, e.g. %s\n", unused.size(), unused[0].c_str());
  } else {
    std::printf("weights        none in folder; %s at bfloat16\n", human_bytes(double(params) * 2).c_str());
  }
  std::printf("state/seq      %s = conv %lld B + ssm %lld B (%s, fixed at any context)\n",
              human_bytes(double(mem.state_bytes())).c_str(), (long long)mem.conv_state_bytes,
              (long long)mem.ssm_state_bytes, std::string(dtype_name(state_dt)).c_str());
  std::printf("KV/token       %lld B (%s, %lld attention layers)\n", (long long)mem.kv_bytes_per_token,
              std::string(dtype_name(kv_dt)).c_str(), (long long)n_attn);
  std::printf("memory for %lld sequence%s (state + KV, without weights and activations):\n", (long long)o.batch,
              o.batch == 1 ? "" : "s");
  for (int64_t c : contexts)
    std::printf("  context %9lld  %12s  (%lld B)\n", (long long)c, human_bytes(double(mem.bytes_for(o.batch, c))).c_str(),
                (long long)mem.bytes_for(o.batch, c));
  return 0;
}

}  // namespace

void add_inspect_command(CLI::App& app, Action& action) {
  auto opts = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand("inspect", "Print a model's architecture, size and memory needs");
  cmd->add_option("model", opts->model, "Model folder (config.json [+ model.safetensors]) or a config.json")->required();
  cmd->add_option("--context,-L", opts->contexts, "Context length(s) for the memory figures");
  cmd->add_option("--batch,-B", opts->batch, "Number of sequences for the memory figures");
  cmd->add_option("--state-dtype", opts->state_dtype, "SSM/conv state dtype (float32, bfloat16, float16)");
  cmd->add_option("--kv-dtype", opts->kv_dtype, "KV cache dtype (float32, bfloat16, float16)");
  cmd->add_flag("--json", opts->json, "Print JSON");
  cmd->callback([opts, &action] { action = [opts] { return run_inspect(*opts); }; });
}

}  // namespace statelm::cli
