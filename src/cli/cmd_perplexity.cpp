// `statelm perplexity MODEL_DIR --file TEXT [--context N] [--limit-tokens N] [--batch B]`:
// the model's perplexity over a text file (runtime/perplexity.h has the definition: windows of
// N tokens, each from an empty state). The quality check of a checkpoint and of a backend:
// CPU fp32 must equal PyTorch's figure, the CUDA bf16 path must stay within 1% of it.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "runtime/perplexity.h"
#include "tokenizer/tokenizer.h"

namespace statelm::cli {

namespace {
struct PerplexityOptions {
  std::string model, file;
  int64_t context = 512;
  int64_t limit_tokens = 0;
  int32_t batch = 4;
  bool json = false;
  EngineFlags engine;
};

int run_perplexity(const PerplexityOptions& o) {
  namespace fs = std::filesystem;
  const fs::path tok_path = fs::path(o.model) / "tokenizer.json";
  if (!fs::exists(tok_path)) fail(ErrorKind::Io, tok_path.string(), ": no tokenizer.json in the model folder");
  const Tokenizer tokenizer = Tokenizer::from_file(tok_path.string());
  const std::string text = read_text_file(o.file);
  std::vector<int32_t> ids = tokenizer.encode(text);
  if (o.limit_tokens > 0 && int64_t(ids.size()) > o.limit_tokens) ids.resize(size_t(o.limit_tokens));

  auto backend = make_backend(o.engine);
  RunnerOptions ro = runner_options(o.engine);
  ro.max_sequences = o.batch;
  ro.max_context = o.context;
  ModelRunner runner(o.model, *backend, ro);
  const bool show_progress = !o.json && isatty(fileno(stderr));
  const PerplexityResult r = evaluate_perplexity(runner, ids, o.context, [&](int64_t done, int64_t total) {
    if (show_progress) std::fprintf(stderr, "\r%lld/%lld windows", (long long)done, (long long)total);
  });
  if (show_progress) std::fprintf(stderr, "\n");
  const double tok_per_s = r.seconds > 0 ? double(r.tokens) / r.seconds : 0.0;
  if (o.json) {
    nlohmann::json j = {{"model", o.model},         {"file", o.file},         {"device", o.engine.device},
                        {"context", o.context},     {"tokens", r.tokens},     {"windows", r.windows},
                        {"scored", r.scored},       {"nll_sum", r.nll_sum},   {"mean_nll", r.mean_nll()},
                        {"perplexity", r.perplexity()}, {"seconds", r.seconds}, {"tokens_per_second", tok_per_s}};
    std::printf("%s\n", j.dump(1).c_str());
  } else {
    std::printf("perplexity %.4f  (mean NLL %.5f nats over %lld scored tokens; %lld tokens in %lld windows of %lld)\n",
                r.perplexity(), r.mean_nll(), (long long)r.scored, (long long)r.tokens, (long long)r.windows,
                (long long)o.context);
    std::printf("%.1f s, %.0f tokens/s on %s\n", r.seconds, tok_per_s, o.engine.device.c_str());
  }
  return 0;
}
}  // namespace

void add_perplexity_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<PerplexityOptions>();
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of the model over a text file");
  cmd->add_option("model", o->model, "Model folder (with tokenizer.json)")->required();
  cmd->add_option("--file,-f", o->file, "UTF-8 text file")->required();
  cmd->add_option("--context", o->context, "Window length in tokens; each window starts from an empty state")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 30));
  cmd->add_option("--limit-tokens", o->limit_tokens, "Evaluate only the first N tokens of the file (0 = all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--batch", o->batch, "Windows run together in one forward")->check(CLI::PositiveNumber);
  cmd->add_flag("--json", o->json, "Print the result as JSON");
  add_engine_flags(cmd, o->engine);
  cmd->callback([o, &action] { action = [o] { return run_perplexity(*o); }; });
}

}  // namespace statelm::cli
