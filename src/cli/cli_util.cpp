#include "cli/cli_util.h"

#include <sys/resource.h>

#include <cstdio>
#include <iostream>
#include <iterator>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#ifdef STATELM_WITH_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

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

std::unique_ptr<Backend> make_backend(const EngineFlags& flags) {
  std::optional<DType> dtype;
  if (!flags.dtype.empty()) {
    dtype = dtype_from_name(flags.dtype);
    if (!dtype || (*dtype != DType::F32 && *dtype != DType::BF16))
      fail(ErrorKind::InvalidArgument, "--dtype: \"", flags.dtype, "\" is not float32 or bfloat16");
  }
  if (flags.device == "cpu") {
    if (dtype && *dtype != DType::F32)
      fail(ErrorKind::Unsupported, "--dtype ", flags.dtype, ": the CPU backend computes in float32 only");
    return std::make_unique<CpuBackend>();
  }
  if (flags.device == "cuda" || flags.device.starts_with("cuda:")) {
#ifdef STATELM_WITH_CUDA
    CudaBackendOptions o;
    if (dtype) o.dtype = *dtype;
    if (flags.device.size() > 5) {
      const std::string index = flags.device.substr(5);
      if (index.empty() || index.find_first_not_of("0123456789") != std::string::npos || index.size() > 3)
        fail(ErrorKind::InvalidArgument, "--device: \"", flags.device, "\" is not cuda or cuda:N");
      o.device = std::stoi(index);
    }
    return std::make_unique<CudaBackend>(o);
#else
    fail(ErrorKind::Unsupported, "--device ", flags.device,
         ": this statelm was built without the CUDA backend (configure with -DSTATELM_CUDA=ON on a machine with nvcc)");
#endif
  }
  fail(ErrorKind::InvalidArgument, "--device: unknown device \"", flags.device, "\" (cpu, cuda, cuda:N)");
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  EngineFlags flags;
  flags.device = device;
  return make_backend(flags);
}

void add_engine_flags(CLI::App* cmd, EngineFlags& flags) {
  cmd->add_option("--device", flags.device, "cpu | cuda | cuda:N");
  cmd->add_option("--dtype", flags.dtype,
                  "Weights and activations: float32 or bfloat16 (default: float32 on cpu, bfloat16 on cuda; "
                  "accumulation and SSM state math stay fp32)");
  cmd->add_option("--state-dtype", flags.state_dtype,
                  "Recurrent (SSM) state: float32 (default) or bfloat16 (half the memory; drift in bench/RESULTS.md)");
  cmd->add_flag("--no-decode-graphs", flags.no_decode_graphs,
                "Launch every kernel of a decode step instead of replaying a recorded CUDA graph");
}

RunnerOptions runner_options(const EngineFlags& flags) {
  RunnerOptions o;
  const auto dtype = dtype_from_name(flags.state_dtype);
  if (!dtype || (*dtype != DType::F32 && *dtype != DType::BF16))
    fail(ErrorKind::InvalidArgument, "--state-dtype: \"", flags.state_dtype, "\" is not float32 or bfloat16");
  o.state_dtype = *dtype;
  o.decode_graphs = !flags.no_decode_graphs;
  return o;
}

LocalModel open_local_model(const std::string& model_dir, const EngineFlags& flags, int64_t context) {
  LocalModel m;
  m.backend = make_backend(flags);
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
