#include "server/http_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "core/log.h"
#include "server/access.h"
#include "server/chat_page_html.h"  // generated from chat_page.html at build time
#include "server/openai_errors.h"
#include "server/response_shape.h"
#include "server/request_accounting.h"
#include "server/route_guard.h"
#include "server/sessions_api.h"

namespace statelm::server {

using nlohmann::json;

namespace {

bool is_api_path(const std::string& path) { return path.rfind("/v1/", 0) == 0 || path == "/v1"; }

}  // namespace

ModelLimits model_limits(const ModelRunner& runner, const Tokenizer& tokenizer) {
  ModelLimits l;
  l.vocab_size = runner.spec().vocab_size;
  l.max_context = runner.max_context();
  for (int64_t id : runner.spec().eos_token_ids) l.stop_token_ids.push_back(int32_t(id));
  if (auto eos = tokenizer.eos_id(); eos && l.stop_token_ids.empty()) l.stop_token_ids.push_back(*eos);
  return l;
}

HttpServer::HttpServer(Scheduler& scheduler, const Tokenizer& tokenizer, ModelLimits limits, ServerOptions options)
    : scheduler_(scheduler), tokenizer_(tokenizer), limits_(std::move(limits)), options_(std::move(options)),
      http_(std::make_unique<httplib::Server>()) {
  if (options_.max_concurrent_requests <= 0) options_.max_concurrent_requests = 64;
  const size_t threads = size_t(options_.max_concurrent_requests) + 8;
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_->set_payload_max_length(options_.max_body_bytes);
  // httplib listens with a backlog of 5 (compiled into Debian's library): remember the
  // listening socket here so bind() can listen() again with a real one.
  http_->set_socket_options([this](socket_t sock) {
    httplib::default_socket_options(sock);
    listen_fd_ = int(sock);
  });
  add_middleware();
  add_routes();
}

HttpServer::~HttpServer() { shutdown(); }

// Authentication, request ids and the end-of-request log line, around every route.
void HttpServer::add_middleware() {
  http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    RequestContext& c = current_request();
    c = RequestContext{};
    c.id = request_id_from(req.get_header_value("X-Request-Id"));
    c.start = std::chrono::steady_clock::now();
    res.set_header("X-Request-Id", c.id);
    if (options_.api_key.empty() || !is_api_path(req.path) ||
        bearer_matches(req.get_header_value("Authorization"), options_.api_key))
      return httplib::Server::HandlerResponse::Unhandled;
    res.set_header("WWW-Authenticate", "Bearer");
    send_error(res, ApiError(401, "invalid_request_error",
                             req.has_header("Authorization") ? "incorrect API key provided" : "no API key provided: send Authorization: Bearer KEY",
                             "", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  http_->set_logger([](const httplib::Request& req, const httplib::Response& res) {
    RequestContext& c = current_request();
    if (c.id.empty()) {  // failed before routing (a malformed request line): no context was set
      c.id = request_id_from("");
      c.start = std::chrono::steady_clock::now();
    }
    log_info(request_log_line(c, req.method, req.path, res.status == -1 ? 200 : res.status));
    c = RequestContext{};
  });
  // httplib calls this for every response >= 400, including the ones a handler filled in:
  // only an empty body (no route matched, 413 from httplib's own body reading) is ours to write.
  http_->set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Handled;
    if (req.path == "/v1/completions" || req.path == "/v1/chat/completions") metrics_->record_status(res.status);
    ApiError e = res.status == 404 ? ApiError(404, "invalid_request_error", str_cat("no route ", req.method, " ", req.path))
                 : res.status == 413
                     ? ApiError(413, "invalid_request_error",
                                str_cat("the request body is larger than this server's limit of ", options_.max_body_bytes, " bytes"))
                     : ApiError(res.status, "invalid_request_error", str_cat("HTTP status ", res.status));
    send_error(res, e);
    return httplib::Server::HandlerResponse::Handled;
  }));
}

void HttpServer::add_routes() {
  http_->Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(kChatPageHtml), "text/html; charset=utf-8");
  });
  http_->Get("/health", guarded([](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  }));
  http_->Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
    json model{{"id", options_.model_id},
               {"object", "model"},
               {"created", unix_now()},
               {"owned_by", "statelm"},
               {"max_model_len", limits_.max_context},
               {"chat_template", options_.chat_prompt.name()}};
    res.set_content(dump_json(json{{"object", "list"}, {"data", json::array({model})}}), "application/json");
  }));
  http_->Get("/metrics", guarded([this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_->render(scheduler_.stats()), std::string(ServerMetrics::kContentType));
  }));
  for (const bool chat : {false, true}) {
    auto handler = guarded([this, chat](const httplib::Request& req, httplib::Response& res) { handle_generation(req, res, chat); });
    http_->Post(chat ? "/v1/chat/completions" : "/v1/completions", [this, handler](const httplib::Request& req, httplib::Response& res) {
      handler(req, res);
      // httplib turns a status left unset (-1) into 200 later. A stream's status is its
      // header's: errors that come later are sent in-band.
      metrics_->record_status(res.status == -1 ? 200 : res.status);
    });
  }
  if (options_.sessions)  // server/sessions_api.h
    register_sessions_api(*http_, {scheduler_, tokenizer_, limits_, options_.model_id, *options_.sessions,
                                   [this](Request r) { return submit(std::move(r)); }, &options_.chat_prompt,
                                   [this] { return claim_request_slot(open_requests_, options_.max_concurrent_requests); },
                                   metrics_});
}

int HttpServer::bind() {
  if (options_.port == 0) {
    const int port = http_->bind_to_any_port(options_.host);
    if (port < 0) fail(ErrorKind::Io, "cannot bind ", options_.host, " (any port)");
    options_.port = port;
  } else if (!http_->bind_to_port(options_.host, options_.port)) {
    fail(ErrorKind::Io, "cannot bind ", options_.host, ":", options_.port, " (in use, or not an address of this host)");
  }
  // Listening again on a listening socket only changes its backlog (Linux, BSD).
  if (listen_fd_ >= 0 && ::listen(listen_fd_, options_.listen_backlog) != 0)
    log_warning("could not raise the listen backlog to ", options_.listen_backlog);
  return options_.port;
}

void HttpServer::serve() { http_->listen_after_bind(); }

void HttpServer::shutdown() {
  {
    std::lock_guard<std::mutex> lock(submit_mu_);
    stopping_ = true;
  }
  http_->stop();
}

uint64_t HttpServer::submit(Request request) {
  // Under the lock so that nothing reaches the scheduler after shutdown() returned: the caller
  // stops the scheduler then, and a request submitted later would wait forever.
  std::lock_guard<std::mutex> lock(submit_mu_);
  if (stopping_) throw ApiError(503, "server_error", "the server is shutting down");
  try {
    return scheduler_.submit(std::move(request));
  } catch (const Error& e) {
    throw api_error_from(e);
  }
}

}  // namespace statelm::server
