// `statelm serve MODEL_DIR [--host H] [--port P] [--max-sequences N] [--max-context L]
// [--max-batch-tokens T]`: loads the model and its tokenizer.json, starts the scheduler's engine
// thread and serves the OpenAI-compatible API (server/http_server.h) until SIGINT or SIGTERM.
// Shutdown is graceful: stop accepting, then stop the scheduler, which cancels what is left.
#include <pthread.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <thread>

#include "cli/cli_util.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
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
  EngineFlags engine;
};

int run_serve(const ServeOptions& o) {
  namespace fs = std::filesystem;
  const fs::path tok_path = fs::path(o.model) / "tokenizer.json";
  if (!fs::exists(tok_path)) fail(ErrorKind::Io, tok_path.string(), ": no tokenizer.json in the model folder");
  Tokenizer tokenizer = Tokenizer::from_file(tok_path.string());

  auto backend = make_backend(o.engine.device);
  RunnerOptions ro = runner_options(o.engine);
  ro.max_sequences = o.max_sequences;
  ro.max_context = o.max_context;
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
  Scheduler scheduler(runner, so);
  server::ServerOptions opts;
  opts.host = o.host;
  opts.port = o.port;
  opts.model_id = fs::path(o.model).lexically_normal().filename().string();
  if (opts.model_id.empty()) opts.model_id = fs::path(o.model).lexically_normal().parent_path().filename().string();
  server::HttpServer http(scheduler, tokenizer, server::model_limits(runner, tokenizer), opts);
  const int port = http.bind();
  scheduler.start();
  log_info("serving ", opts.model_id, " on http://", o.host, ":", port, " (", runner.max_sequences(),
           " sequences of up to ", runner.max_context(), " tokens)");

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
  CLI::App* cmd = app.add_subcommand("serve", "Serve the OpenAI-compatible HTTP API (/v1/completions)");
  cmd->add_option("model", o->model, "Model folder (with tokenizer.json)")->required();
  cmd->add_option("--host", o->host, "Address to listen on");
  cmd->add_option("--port", o->port, "Port to listen on (0 = any free port)")->check(CLI::Range(0, 65535));
  cmd->add_option("--max-sequences", o->max_sequences, "Sequences decoded together (state slots)")->check(CLI::PositiveNumber);
  cmd->add_option("--max-context", o->max_context, "Tokens per sequence, prompt + completion (0 = the model's)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-batch-tokens", o->max_batch_tokens, "Tokens per forward step (decodes + prefill chunks)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-waiting", o->max_waiting, "Queued requests beyond this get 429")->check(CLI::PositiveNumber);
  add_engine_flags(cmd, o->engine);
  cmd->callback([o, &action] { action = [o] { return run_serve(*o); }; });
}

}  // namespace statelm::cli
