// `statelm run MODEL_DIR --prompt TEXT`: tokenizes with the model folder's tokenizer.json,
// streams the generated text to stdout as it is decoded, and reports prefill and decode speed
// and peak memory on stderr at the end.
//
// With --session NAME the conversation persists in a session database (runtime/session_store.h):
// a run restores the session's state and prefills only its new prompt tokens, then saves the
// state after generating, so each turn costs its own tokens, not the whole history's.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "runtime/session_store.h"
#include "runtime/snapshot.h"
#include "runtime/stop_strings.h"
#include "tokenizer/tokenizer.h"

namespace statelm::cli {

namespace {
struct RunOptions {
  std::string model, prompt, tokenizer;
  EngineFlags engine;
  std::string session, sessions_db;
  bool no_echo = false, quiet = false;
  SamplingParams sampling;
};

// A session as this run found it: its conversation's token ids, of which the first `reused`
// are in its stored state (the rest, e.g. the last sampled token, still to be fed).
struct SessionTurn {
  std::optional<SessionStore> store;
  std::optional<std::string> blob;
  std::vector<int32_t> history;  // the conversation's ids the snapshot kept, from position history_start
  int64_t history_start = 0;
  int64_t reused = 0;

  // Prefixes an error with where the session lives, keeping its kind.
  template <typename Fn>
  auto about(const std::string& name, Fn&& fn) {
    try {
      return fn();
    } catch (const Error& e) {
      fail(e.kind(), store->path(), ": session \"", name, "\": ", e.what());
    }
  }
};

int run_run(RunOptions& o) {
  const std::string tok_path = o.tokenizer.empty() ? (std::filesystem::path(o.model) / "tokenizer.json").string() : o.tokenizer;
  if (!std::filesystem::exists(tok_path))
    fail(ErrorKind::Io, tok_path, ": no tokenizer.json (pass --tokenizer FILE, or use `statelm generate` with ids)");
  Tokenizer tokenizer = Tokenizer::from_file(tok_path);
  std::string prompt = o.prompt == "-" ? read_stdin() : o.prompt;

  SessionTurn turn;
  if (!o.session.empty()) {
    turn.store.emplace(o.sessions_db.empty() ? default_sessions_db_path() : o.sessions_db);
    turn.blob = turn.store->get(o.session);
    if (turn.blob) {
      SnapshotHeader h = turn.about(o.session, [&] { return read_snapshot_header(*turn.blob); });
      turn.history = std::move(h.tokens);
      turn.history_start = h.first_id;
      turn.reused = h.n_tokens;
    }
  }
  // A later turn continues the text: no BOS (or other special tokens) mid-conversation.
  std::vector<int32_t> ids = tokenizer.encode(prompt, /*add_special_tokens=*/!turn.blob);
  if (ids.empty()) fail(ErrorKind::InvalidArgument, "--prompt: empty prompt");
  std::vector<int32_t> context = turn.history;
  context.insert(context.end(), ids.begin(), ids.end());

  LocalModel local =
      open_local_model(o.model, o.engine, turn.history_start + int64_t(context.size()) + o.sampling.max_tokens);
  ModelRunner& runner = *local.runner;
  if (o.sampling.stop_token_ids.empty()) {
    for (int64_t id : runner.spec().eos_token_ids) o.sampling.stop_token_ids.push_back(int32_t(id));
    if (auto eos = tokenizer.eos_id(); eos && o.sampling.stop_token_ids.empty()) o.sampling.stop_token_ids.push_back(*eos);
  }

  if (!o.no_echo) std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  IncrementalDetokenizer detok(tokenizer);
  // A resumed stream continues the conversation's text (leading spaces, split UTF-8): replay it.
  if (turn.blob)
    for (int32_t id : context) detok.push_generated(id);
  StopStringMatcher stops(o.sampling.stop_strings);
  auto on_token = [&](int32_t id) {
    std::fputs(stops.push(detok.push_generated(id)).c_str(), stdout);
    std::fflush(stdout);
    return !stops.stopped();
  };
  GenerationResult r;
  if (o.session.empty()) {
    r = generate(runner, ids, o.sampling, on_token);
  } else {
    Sequence seq = turn.blob ? turn.about(o.session, [&] { return restore_sequence(runner, *turn.blob); }) : runner.open();
    if (!o.quiet && turn.blob) std::fprintf(stderr, "[session %s] reused %lld tokens\n", o.session.c_str(), (long long)turn.reused);
    try {
      r = continue_generation(runner, seq, context, o.sampling, on_token, turn.history_start);
      turn.store->put(o.session, snapshot_sequence(runner, seq, context, turn.history_start));
    } catch (...) {
      runner.close(seq);
      throw;
    }
    runner.close(seq);
  }
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
  add_engine_flags(cmd, o->engine);
  cmd->add_flag("--no-echo", o->no_echo, "Do not print the prompt before the generated text");
  cmd->add_flag("--quiet,-q", o->quiet, "No speed report on stderr");
  CLI::Option* session = cmd->add_option("--session", o->session,
                  "Continue the conversation saved as NAME (created if new): only the new prompt is prefilled, "
                  "and the state is saved after generating");
  cmd->add_option("--sessions-db", o->sessions_db,
                  "Session database (default: $XDG_DATA_HOME/statelm/sessions.db or ~/.local/share/statelm/sessions.db)")
      ->needs(session);
  add_sampling_flags(cmd, o->sampling);
  cmd->callback([o, &action] { action = [o] { return run_run(*o); }; });
}

}  // namespace statelm::cli
