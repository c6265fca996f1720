// Small pieces shared by the commands: reading token ids, sampling flags, the backend.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <vector>

#include "ops/ops.h"
#include "runtime/model_runner.h"
#include "runtime/sampler.h"

namespace statelm::cli {

// "5,17,3" or "-" (a JSON array of ids on stdin). Errors name the flag and the bad entry.
std::vector<int32_t> parse_ids(const std::string& flag, const std::string& value);

// Reads all of stdin (binary-safe).
std::string read_stdin();

// Sampling flags: --greedy --temperature --top-k --top-p --min-p --repetition-penalty --seed
// --max-tokens --stop-id --stop.
void add_sampling_flags(CLI::App* cmd, SamplingParams& p);

// Where and how a command computes: --device, --dtype, --state-dtype.
struct EngineFlags {
  std::string device = "cpu";
  std::string dtype;  // weights + activations; empty = the device's default (cpu float32, cuda bfloat16)
  std::string state_dtype = "float32";
  bool no_decode_graphs = false;  // decode steps launch every kernel (to measure what graphs save)
};
void add_engine_flags(CLI::App* cmd, EngineFlags& flags);

// The compute backend for --device and --dtype: the CPU (float32 only), or CUDA when this build
// has it (float32 or bfloat16). Errors name the flag at fault.
std::unique_ptr<Backend> make_backend(const EngineFlags& flags);
std::unique_ptr<Backend> make_backend(const std::string& device);  // the device's default dtype
// Runner options from the engine flags (state dtype checked); the caller sets the sizes.
RunnerOptions runner_options(const EngineFlags& flags);

// A model loaded for one sequence of up to `context` tokens (the one-shot commands).
struct LocalModel {
  std::unique_ptr<Backend> backend;  // outlives the runner: declared first
  std::unique_ptr<ModelRunner> runner;
};
LocalModel open_local_model(const std::string& model_dir, const EngineFlags& flags, int64_t context);

// Peak resident memory of this process, bytes.
size_t peak_rss_bytes();

}  // namespace statelm::cli
