// `statelm run MODEL_DIR --prompt TEXT`: tokenizes with the model folder's tokenizer.json,
// streams the generated text to stdout as it is decoded, and reports prefill and decode speed
// and peak memory on stderr at the end.
#include <cstdio>
#include <filesystem>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "runtime/stop_strings.h"
#include "tokenizer/tokenizer.h"

namespace statelm::cli {

namespace {
struct RunOptions {
  std::string model, prompt, tokenizer, device = "cpu";
  bool no_echo = false, quiet = false;
  SamplingParams sampling;
};

int run_run(RunOptions& o) {
  const std::string tok_path = o.tokenizer.empty() ? (std::filesystem::path(o.model) / "tokenizer.json").string() : o.tokenizer;
  if (!std::filesystem::exists(tok_path))
    fail(ErrorKind::Io, tok_path, ": no tokenizer.json (pass --tokenizer FILE, or use `statelm generate` with ids)");
  Tokenizer tokenizer = Tokenizer::from_file(tok_path);
  std::string prompt = o.prompt == "-" ? read_stdin() : o.prompt;
  std::vector<int32_t> ids = tokenizer.encode(prompt);
  if (ids.empty()) fail(ErrorKind::InvalidArgument, "--prompt: empty prompt");

  auto backend = make_backend(o.device);
  RunnerOptions ro;
  ro.max_sequences = 1;
  ro.max_context = int64_t(ids.size()) + o.sampling.max_tokens;
  ModelRunner runner(o.model, *backend, ro);
  if (o.sampling.stop_token_ids.empty()) {
    for (int64_t id : runner.spec().eos_token_ids) o.sampling.stop_token_ids.push_back(int32_t(id));
    if (auto eos = tokenizer.eos_id(); eos && o.sampling.stop_token_ids.empty()) o.sampling.stop_token_ids.push_back(*eos);
  }

  if (!o.no_echo) std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  IncrementalDetokenizer detok(tokenizer);
  StopStringMatcher stops(o.sampling.stop_strings);
  GenerationResult r = generate(runner, ids, o.sampling, [&](int32_t id) {
    std::fputs(stops.push(detok.push(id)).c_str(), stdout);
    std::fflush(stdout);
    return !stops.stopped();
  });
  if (!stops.stopped()) std::fputs(stops.push(detok.flush()).c_str(), stdout), std::fputs(stops.flush().c_str(), stdout);
  std::fputs("\n", stdout);
  if (!o.quiet)
    std::fprintf(stderr, "\n[%s] prompt %lld tokens: %.1f tok/s prefill; %zu tokens: %.1f tok/s decode; peak memory %.1f MiB\n",
                 r.finish_reason.c_str(), (long long)r.prompt_tokens, double(r.prompt_tokens) / std::max(r.prefill_seconds, 1e-9),
                 r.tokens.size(), double(r.tokens.size()) / std::max(r.decode_seconds, 1e-9),
                 double(peak_rss_bytes()) / (1 << 20));
  return 0;
}
}  // namespace

void add_run_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", "Generate text from a prompt, streaming it to stdout");
  cmd->add_option("model", o->model, "Model folder (with tokenizer.json)")->required();
  cmd->add_option("--prompt,-p", o->prompt, "Prompt text (- reads stdin)")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: the model folder's)");
  cmd->add_option("--device", o->device, "cpu | cuda");
  cmd->add_flag("--no-echo", o->no_echo, "Do not print the prompt before the generated text");
  cmd->add_flag("--quiet,-q", o->quiet, "No speed report on stderr");
  add_sampling_flags(cmd, o->sampling);
  cmd->callback([o, &action] { action = [o] { return run_run(*o); }; });
}

}  // namespace statelm::cli
