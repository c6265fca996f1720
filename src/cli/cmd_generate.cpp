// `statelm generate MODEL_DIR --ids ... --max-tokens N [sampling flags] [--json]`: prefill then
// token-by-token decode through the state; prints the generated ids.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "runtime/generate.h"

namespace statelm::cli {

namespace {
struct GenerateOptions {
  std::string model, ids;
  EngineFlags engine;
  bool json = false;
  SamplingParams sampling;
};

int run_generate(GenerateOptions& o) {
  std::vector<int32_t> prompt = parse_ids("--ids", o.ids);
  if (prompt.empty()) fail(ErrorKind::InvalidArgument, "--ids: empty prompt");
  if (!o.sampling.stop_strings.empty())
    fail(ErrorKind::InvalidArgument, "--stop: stop strings need text; use `statelm run` (generate works on ids)");
  LocalModel local = open_local_model(o.model, o.engine, int64_t(prompt.size()) + o.sampling.max_tokens);
  ModelRunner& runner = *local.runner;
  GenerationResult r = generate(runner, prompt, o.sampling);
  if (o.json) {
    std::printf("%s\n", nlohmann::json(r.tokens).dump().c_str());
  } else {
    for (size_t i = 0; i < r.tokens.size(); ++i) std::printf("%s%d", i ? "," : "", r.tokens[i]);
    std::printf("\n");
  }
  std::fprintf(stderr, "finish: %s; prefill %lld tokens in %.3f s; decode %zu tokens in %.3f s\n", r.finish_reason.c_str(),
               (long long)r.prompt_tokens, r.prefill_seconds, r.tokens.size(), r.decode_seconds);
  return 0;
}
}  // namespace

void add_generate_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate token ids from prompt ids");
  cmd->add_option("model", o->model, "Model folder")->required();
  cmd->add_option("--ids", o->ids, "Prompt ids: 5,17,3 or - for a JSON array on stdin")->required();
  cmd->add_flag("--json", o->json, "Print a JSON array");
  add_engine_flags(cmd, o->engine);
  add_sampling_flags(cmd, o->sampling);
  cmd->callback([o, &action] { action = [o] { return run_generate(*o); }; });
}

}  // namespace statelm::cli
