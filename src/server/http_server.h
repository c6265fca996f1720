// The OpenAI-compatible HTTP front of `statelm serve`: routes, the per-request hand-off to the
// scheduler, and the server's lifecycle. The scheduler (and its engine thread) belongs to the
// caller; this class only submits to it and cancels what a client abandoned.
//
//   GET  /health          200 {"status":"ok"} (the model is loaded before the server exists)
//   GET  /v1/models       the one model, id = the model folder's name
//   POST /v1/completions  text_completion, or server-sent events with "stream": true
//   GET  /metrics         Prometheus text format (server/metrics.h)
// Every error is an OpenAI error body (openai_errors.h); unknown routes are 404.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "runtime/model_runner.h"
#include "runtime/scheduler.h"
#include "server/completions.h"
#include "server/metrics.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}  // namespace httplib

namespace statelm::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;      // 0 = any free port (bind() says which)
  std::string model_id;  // what /v1/models lists and responses name
  int threads = 64;      // HTTP worker threads: each open request (streaming or not) holds one
};

// The limits requests are checked against: the runner's vocabulary and context, and the
// end-of-sequence ids (the config's, else the tokenizer's) as stop tokens.
ModelLimits model_limits(const ModelRunner& runner, const Tokenizer& tokenizer);

class HttpServer {
 public:
  HttpServer(Scheduler& scheduler, const Tokenizer& tokenizer, ModelLimits limits, ServerOptions options);
  ~HttpServer();

  // Binds host:port and returns the port; Error(Io) when it cannot.
  int bind();
  // Serves on the bound socket until shutdown(); call from one thread.
  void serve();
  // Any thread: stops accepting, refuses new completions (503) and makes serve() return once
  // the open requests end. The scheduler keeps running: stop it afterwards to cancel the rest.
  void shutdown();

 private:
  void handle_completion(const httplib::Request& req, httplib::Response& res);
  uint64_t submit(Request request);

  Scheduler& scheduler_;
  Tokenizer tokenizer_;
  ModelLimits limits_;
  ServerOptions options_;
  std::unique_ptr<httplib::Server> http_;
  std::mutex submit_mu_;  // orders submit() against shutdown()
  bool stopping_ = false;
  std::atomic<uint64_t> next_completion_{1};
  // Shared with the requests' event callbacks, which the scheduler may call after this is gone.
  std::shared_ptr<ServerMetrics> metrics_ = std::make_shared<ServerMetrics>();
};

}  // namespace statelm::server
