// The OpenAI-compatible HTTP front of `statelm serve`: routes, the per-request hand-off to the
// scheduler, and the server's lifecycle. The scheduler (and its engine thread) belongs to the
// caller; this class only submits to it and cancels what a client abandoned.
//
//   GET  /                     the chat page (server/chat_page.html)
//   GET  /health               200 {"status":"ok"} (the model is loaded before the server exists)
//   GET  /v1/models            the one model, id = the model folder's name, and its chat template
//   POST /v1/completions       text_completion, or server-sent events with "stream": true
//   POST /v1/chat/completions  chat.completion, or chat.completion.chunk events
//   GET  /metrics              Prometheus text format (server/metrics.h)
//   /v1/sessions...            the sessions API, with ServerOptions::sessions (server/sessions_api.h)
// With an API key, every /v1/* route needs `Authorization: Bearer KEY` (401 otherwise); / ,
// /health and /metrics stay open. Every request gets an id (the client's X-Request-Id, or a new
// one), echoed in X-Request-Id and in its one log line. Every error is an OpenAI error body
// (openai_errors.h); unknown routes are 404. Details: docs/api.md.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "runtime/model_runner.h"
#include "runtime/scheduler.h"
#include "runtime/session_store.h"
#include "server/chat_prompt.h"
#include "server/generation_request.h"
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
  int port = 8080;       // 0 = any free port (bind() says which)
  std::string model_id;  // what /v1/models lists and responses name
  std::string api_key;   // "" = no authentication
  // Generation requests (completions + chat) open at once; beyond it, 429 with Retry-After.
  // Each holds an HTTP thread while it runs; the pool has this many plus a few, so /health,
  // /metrics and the 429s themselves are always answered. 0 = 64.
  int max_concurrent_requests = 256;
  size_t max_body_bytes = 1u << 20;  // larger bodies get 413
  int listen_backlog = 1024;         // connections the kernel queues before accept()
  ChatPrompt chat_prompt;            // how /v1/chat/completions turns messages into a prompt
  SessionStore* sessions = nullptr;  // the sessions API's store (server/sessions_api.h); null = off
};

// The limits requests are checked against: the runner's vocabulary and context, and the
// end-of-sequence ids (the config's, else the tokenizer's) as stop tokens. The server's own
// limits (max_prompt_tokens, max_tokens) and generation defaults are the caller's to add.
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
  void add_routes();
  void add_middleware();
  // Both generation endpoints (server/generation.cpp): submit n choices, then gather or stream.
  void handle_generation(const httplib::Request& req, httplib::Response& res, bool chat);
  uint64_t submit(Request request);

  Scheduler& scheduler_;
  Tokenizer tokenizer_;
  ModelLimits limits_;
  ServerOptions options_;
  std::unique_ptr<httplib::Server> http_;
  int listen_fd_ = -1;    // the listening socket, for its backlog
  std::mutex submit_mu_;  // orders submit() against shutdown()
  bool stopping_ = false;
  std::atomic<uint64_t> next_completion_{1};
  // Generation requests open now; shared with stream callbacks that may outlive a handler.
  std::shared_ptr<std::atomic<int>> open_requests_ = std::make_shared<std::atomic<int>>(0);
  // Shared with the requests' event callbacks, which the scheduler may call after this is gone.
  std::shared_ptr<ServerMetrics> metrics_ = std::make_shared<ServerMetrics>();
};

}  // namespace statelm::server
