#include "cli/cli_util.h"

#include <sys/resource.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace statelm::cli {

std::string read_stdin() {
  std::ostringstream ss;
  ss << std::cin.rdbuf();
  return ss.str();
}

std::vector<int32_t> parse_ids(const std::string& flag, const std::string& value) {
  std::vector<int32_t> ids;
  if (value == "-") {
    auto j = nlohmann::json::parse(read_stdin(), nullptr, false);
    if (j.is_discarded() || !j.is_array()) fail(ErrorKind::InvalidArgument, flag, " -: stdin is not a JSON array of ids");
    for (const auto& e : j) {
      if (!e.is_number_integer() || e.get<int64_t>() < 0 || e.get<int64_t>() > INT32_MAX)
        fail(ErrorKind::InvalidArgument, flag, " -: ", e.dump(), " is not a token id");
      ids.push_back(e.get<int32_t>());
    }
    return ids;
  }
  std::stringstream ss(value);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (...) {
      used = 0;
    }
    if (used != item.size() || v < 0 || v > INT32_MAX)
      fail(ErrorKind::InvalidArgument, flag, ": \"", item, "\" is not a token id");
    ids.push_back(int32_t(v));
  }
  return ids;
}

void add_sampling_flags(CLI::App* cmd, SamplingParams& p) {
  cmd->add_flag("--greedy", p.greedy, "Always take the most likely token");
  cmd->add_option("--temperature", p.temperature, "Softmax temperature (0 = greedy)");
  cmd->add_option("--top-k", p.top_k, "Keep the k most likely tokens (0 = off)");
  cmd->add_option("--top-p", p.top_p, "Keep the smallest set with this probability mass (1 = off)");
  cmd->add_option("--min-p", p.min_p, "Drop tokens below min_p times the best one's probability (0 = off)");
  cmd->add_option("--repetition-penalty", p.repetition_penalty, "Penalty for tokens already in the sequence (1 = off)");
  cmd->add_option("--seed", p.seed, "Random seed (same seed, same tokens)");
  cmd->add_option("--max-tokens,-n", p.max_tokens, "Tokens to generate at most");
  cmd->add_option("--stop-id", p.stop_token_ids, "Stop at this token id (repeatable)");
  cmd->add_option("--stop", p.stop_strings, "Stop at this string (repeatable)");
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return std::make_unique<CpuBackend>();
  if (device == "cuda") fail(ErrorKind::Unsupported, "--device cuda: the CUDA backend is not built into this version yet");
  fail(ErrorKind::InvalidArgument, "--device: unknown device \"", device, "\" (cpu, cuda)");
}

void add_engine_flags(CLI::App* cmd, EngineFlags& flags) {
  cmd->add_option("--device", flags.device, "cpu | cuda");
  cmd->add_option("--state-dtype", flags.state_dtype,
                  "Recurrent (SSM) state: float32 (default) or bfloat16 (half the memory; drift in bench/RESULTS.md)");
}

RunnerOptions runner_options(const EngineFlags& flags) {
  RunnerOptions o;
  const auto dtype = dtype_from_name(flags.state_dtype);
  if (!dtype || (*dtype != DType::F32 && *dtype != DType::BF16))
    fail(ErrorKind::InvalidArgument, "--state-dtype: \"", flags.state_dtype, "\" is not float32 or bfloat16");
  o.state_dtype = *dtype;
  return o;
}

LocalModel open_local_model(const std::string& model_dir, const EngineFlags& flags, int64_t context) {
  LocalModel m;
  m.backend = make_backend(flags.device);
  RunnerOptions o = runner_options(flags);
  o.max_sequences = 1;
  o.max_context = std::max<int64_t>(context, 1);
  m.runner = std::make_unique<ModelRunner>(model_dir, *m.backend, o);
  return m;
}

size_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return size_t(ru.ru_maxrss) * 1024;
}

}  // namespace statelm::cli
