// `statelm logits MODEL_DIR --ids 5,17,3 --out FILE`: one full forward, every token's logits
// written as float32 little-endian [n_tokens x vocab] (what the fixture tests compare).
#include <cstdio>
#include <fstream>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "runtime/model_runner.h"

namespace statelm::cli {

namespace {
struct LogitsOptions {
  std::string model, ids, out;
  EngineFlags engine;
};

int run_logits(const LogitsOptions& o) {
  std::vector<int32_t> ids = parse_ids("--ids", o.ids);
  if (ids.empty()) fail(ErrorKind::InvalidArgument, "--ids: empty prompt");
  LocalModel local = open_local_model(o.model, o.engine, int64_t(ids.size()));
  ModelRunner& runner = *local.runner;
  Sequence seq = runner.open();
  Sequence* seqs[] = {&seq};
  std::vector<float> logits = runner.step(seqs, std::span(&ids, 1), /*all_logits=*/true);
  std::ofstream out(o.out, std::ios::binary);
  if (!out) fail(ErrorKind::Io, o.out, ": cannot open for writing");
  out.write(reinterpret_cast<const char*>(logits.data()), std::streamsize(logits.size() * sizeof(float)));
  if (!out) fail(ErrorKind::Io, o.out, ": write failed");
  std::fprintf(stderr, "wrote %zu x %lld float32 logits to %s\n", ids.size(), (long long)runner.spec().vocab_size,
               o.out.c_str());
  return 0;
}
}  // namespace

void add_logits_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<LogitsOptions>();
  CLI::App* cmd = app.add_subcommand("logits", "Write the logits of one full forward over token ids");
  cmd->add_option("model", o->model, "Model folder")->required();
  cmd->add_option("--ids", o->ids, "Token ids: 5,17,3 or - for a JSON array on stdin")->required();
  cmd->add_option("--out,-o", o->out, "Output file (float32 little-endian [n_tokens x vocab])")->required();
  add_engine_flags(cmd, o->engine);
  cmd->callback([o, &action] { action = [o] { return run_logits(*o); }; });
}

}  // namespace statelm::cli
