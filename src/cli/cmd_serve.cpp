// `statelm serve MODEL_DIR [flags]`: loads the model, its tokenizer.json, chat template
// (tokenizer_config.json) and sampling defaults (generation_config.json), starts the
// scheduler's engine thread and serves the OpenAI-compatible API (server/http_server.h) until
// SIGINT or SIGTERM. Shutdown is graceful: stop accepting, then stop the scheduler, which
// cancels what is left. Flags: `statelm serve --help`; the API: docs/api.md.
#include <pthread.h>

#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <thread>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "runtime/snapshot.h"
#include "server/http_server.h"

namespace statelm::cli {

namespace {
struct ServeOptions {
  std::string model, host = "127.0.0.1";
  int port = 8080;
  int32_t max_sequences = 8;
  int64_t max_context = 0;
  int64_t max_batch_tokens = 512;
  int64_t max_waiting = 1024;
  std::string api_key;
  int64_t max_prompt_tokens = 0, max_tokens = 0;
  int64_t max_body_bytes = 1 << 20;
  int max_concurrent = 256;
  bool prefix_cache = false;
  int64_t prefix_interval = 256;
  int32_t prefix_entries = 0;
  bool optimistic_admission = false;
  std::string cache_memory;
  std::string sessions_db;  // sessions API (server/sessions_api.h)
  bool no_sessions = false;
  EngineFlags engine;
};

// --cache-memory: bytes ("4GiB", "512MiB", "1000000") or, for a plain number in (0, 1], a
// fraction of the memory available once the weights are loaded.
void apply_cache_memory(const std::string& value, RunnerOptions& ro) {
  if (value.empty()) return;
  char* end = nullptr;
  const double x = std::strtod(value.c_str(), &end);
  const std::string unit = end ? std::string(end) : "";
  static const std::pair<const char*, double> kUnits[] = {{"", 1},           {"B", 1},           {"KB", 1e3},
                                                         {"MB", 1e6},       {"GB", 1e9},        {"KiB", 1024.0},
                                                         {"MiB", 1048576.0}, {"GiB", 1073741824.0}};
  if (end == value.c_str() || !std::isfinite(x) || x <= 0)
    fail(ErrorKind::InvalidArgument, "--cache-memory: \"", value, "\" is not a size (4GiB, 512MiB, bytes) or a fraction in (0, 1]");
  if (unit.empty() && x <= 1) {
    ro.cache_memory_fraction = x;
    return;
  }
  for (const auto& [name, scale] : kUnits)
    if (unit == name) {
      ro.cache_memory_bytes = int64_t(x * scale);
      return;
    }
  fail(ErrorKind::InvalidArgument, "--cache-memory: unknown unit \"", unit, "\" (B, KB, MB, GB, KiB, MiB, GiB)");
}

int run_serve(const ServeOptions& o) {
  namespace fs = std::filesystem;
  const fs::path tok_path = fs::path(o.model) / "tokenizer.json";
  if (!fs::exists(tok_path)) fail(ErrorKind::Io, tok_path.string(), ": no tokenizer.json in the model folder");
  Tokenizer tokenizer = Tokenizer::from_file(tok_path.string());

  auto backend = make_backend(o.engine);
  RunnerOptions ro = runner_options(o.engine);
  ro.max_sequences = o.max_sequences;
  ro.max_context = o.max_context;
  ro.step_tokens = o.max_batch_tokens;  // the memory plan sets a step's activations aside
  if (o.prefix_cache) ro.prefix_cache_slots = o.prefix_entries > 0 ? o.prefix_entries : o.max_sequences;
  apply_cache_memory(o.cache_memory, ro);
  ModelRunner runner(o.model, *backend, ro);

  // Signals are taken by sigwait() below, not by a handler: blocked here, before any thread
  // starts, so every thread inherits the mask. SIGUSR1 is the server thread saying it ended.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a client that hung up is a failed write, not a dead server

  SchedulerOptions so;
  so.max_batch_tokens = o.max_batch_tokens;
  so.max_waiting = o.max_waiting;
  so.prefix_cache = o.prefix_cache;
  so.prefix_interval = o.prefix_interval;
  so.reserve_worst_case = !o.optimistic_admission;
  Scheduler scheduler(runner, so);

  server::ServerOptions opts;
  opts.host = o.host;
  opts.port = o.port;
  opts.model_id = fs::path(o.model).lexically_normal().filename().string();
  if (opts.model_id.empty()) opts.model_id = fs::path(o.model).lexically_normal().parent_path().filename().string();
  opts.api_key = o.api_key;
  if (opts.api_key.empty())
    if (const char* env = std::getenv("STATELM_API_KEY")) opts.api_key = env;
  opts.max_concurrent_requests = o.max_concurrent;
  opts.max_body_bytes = size_t(o.max_body_bytes);
  opts.chat_prompt = server::ChatPrompt::from_model_dir(o.model);
  if (!opts.chat_prompt.fallback_reason().empty())
    log_warning("chat: using the plain template (\"role: content\" lines, docs/api.md): ", opts.chat_prompt.fallback_reason());
  else
    log_info("chat: using the model's chat template (tokenizer_config.json)");

  server::ModelLimits limits = server::model_limits(runner, tokenizer);
  limits.max_prompt_tokens = o.max_prompt_tokens;
  limits.max_tokens = o.max_tokens;
  limits.defaults = server::GenerationDefaults::from_model_dir(o.model);
  // Sessions API. Declared before the server so that it outlives every handler; SQLite commits
  // each turn as it ends, and closing the store at exit checkpoints its log into the database.
  std::optional<SessionStore> sessions;
  if (!o.no_sessions) {
    try {
      sessions.emplace(o.sessions_db.empty() ? default_sessions_db_path() : o.sessions_db);
      opts.sessions = &*sessions;
      log_info("sessions: ", sessions->path());
      // An exported state must fit back through PUT /v1/sessions/{id}/state.
      const size_t state_body = size_t(max_snapshot_bytes(runner, runner.max_context()));
      if (opts.max_body_bytes < state_body) {
        opts.max_body_bytes = state_body;
        log_info("sessions: request bodies of up to ", state_body, " bytes, for a state of ", runner.max_context(), " tokens");
      }
    } catch (const Error& e) {
      if (!o.sessions_db.empty()) throw;  // asked for by name: not having it is an error
      log_warning("sessions API off: ", e.what());
    }
  }
  server::HttpServer http(scheduler, tokenizer, limits, opts);
  const int port = http.bind();
  scheduler.start();
  log_info("serving ", opts.model_id, " on http://", o.host, ":", port, " (", runner.max_sequences(),
           " sequences of up to ", runner.max_context(), " tokens", opts.api_key.empty() ? "" : "; API key required", ")");

  const pthread_t main_thread = pthread_self();
  std::thread server_thread([&] {
    http.serve();
    pthread_kill(main_thread, SIGUSR1);
  });
  int sig = 0;
  sigwait(&signals, &sig);
  log_info("shutting down (", sig == SIGUSR1 ? "server stopped" : strsignal(sig), ")");
  http.shutdown();
  scheduler.stop();  // cancels what is still running; their HTTP threads then end
  server_thread.join();
  return 0;
}
}  // namespace

void add_serve_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand("serve", "Serve the OpenAI-compatible HTTP API (completions, chat, a chat page at /)");
  cmd->add_option("model", o->model, "Model folder (with tokenizer.json)")->required();
  cmd->add_option("--host", o->host, "Address to listen on");
  cmd->add_option("--port", o->port, "Port to listen on (0 = any free port)")->check(CLI::Range(0, 65535));
  cmd->add_option("--max-sequences", o->max_sequences, "Sequences decoded together (state slots)")->check(CLI::PositiveNumber);
  cmd->add_option("--max-context", o->max_context, "Tokens per sequence, prompt + completion (0 = the model's)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-batch-tokens", o->max_batch_tokens, "Tokens per forward step (decodes + prefill chunks)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-waiting", o->max_waiting, "Sequences queued for a slot beyond this get 429")->check(CLI::PositiveNumber);
  cmd->add_option("--api-key", o->api_key, "Require Authorization: Bearer KEY on /v1/* (default: $STATELM_API_KEY)");
  cmd->add_option("--max-prompt-tokens", o->max_prompt_tokens, "Longest prompt accepted, tokens (0 = the context)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-tokens", o->max_tokens, "Largest max_tokens a request may ask (0 = the context)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-body-bytes", o->max_body_bytes, "Largest request body; larger gets 413")->check(CLI::PositiveNumber);
  cmd->add_option("--max-concurrent-requests", o->max_concurrent, "Generation requests open at once; more get 429")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--prefix-cache", o->prefix_cache, "Reuse the state of earlier prompts' prefixes (checkpoints)");
  cmd->add_option("--prefix-cache-interval", o->prefix_interval, "Tokens between prefix checkpoints (a multiple of 16)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--prefix-cache-entries", o->prefix_entries, "Prefix checkpoints kept (0 = --max-sequences)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--optimistic-admission", o->optimistic_admission,
                "Admit on the prompt's memory, not the worst case; preempt (swap to host) when memory runs out");
  cmd->add_option("--cache-memory", o->cache_memory,
                  "Memory for state slots + KV blocks: bytes (4GiB, 512MiB) or a fraction (0.5) of what is free");
  // Sessions API
  cmd->add_option("--sessions-db", o->sessions_db,
                  "Session database (default: $XDG_DATA_HOME/statelm/sessions.db or ~/.local/share/statelm/sessions.db)");
  cmd->add_flag("--no-sessions", o->no_sessions, "Serve without the sessions API (/v1/sessions)");
  add_engine_flags(cmd, o->engine);
  cmd->callback([o, &action] { action = [o] { return run_serve(*o); }; });
}

}  // namespace statelm::cli
