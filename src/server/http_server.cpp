#include "server/http_server.h"

#include <httplib.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "core/log.h"
#include "server/openai_errors.h"
#include "server/request_stream.h"

namespace statelm::server {

using nlohmann::json;

namespace {

// How often an idle stream checks that its client is still there.
constexpr std::chrono::milliseconds kIdlePoll{50};

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Generated text is whole UTF-8 characters, but a byte-level tokenizer can still produce
// U+FFFD-worthy bytes at the very end; replacing beats throwing mid-response.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  if (e.status() == 429) res.set_header("Retry-After", "1");
  res.set_content(dump(error_body(e)), "application/json");
}

// Every handler's exceptions become OpenAI error responses; nothing escapes into httplib.
template <typename Handler>
httplib::Server::Handler guarded(Handler handler) {
  return [handler](const httplib::Request& req, httplib::Response& res) {
    try {
      handler(req, res);
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const Error& e) {
      send_error(res, api_error_from(e));
    } catch (const std::exception& e) {
      log_message(LogLevel::Error, str_cat(req.method, " ", req.path, ": ", e.what()));
      send_error(res, ApiError(500, "server_error", e.what()));
    }
  };
}

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
  const int threads = options_.threads;
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  http_->set_payload_max_length(16u << 20);

  http_->Get("/health", guarded([](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  }));
  http_->Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
    json model{{"id", options_.model_id}, {"object", "model"}, {"created", unix_now()}, {"owned_by", "statelm"},
               {"max_model_len", limits_.max_context}};
    res.set_content(dump(json{{"object", "list"}, {"data", json::array({model})}}), "application/json");
  }));
  http_->Get("/metrics", guarded([this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_->render(scheduler_.stats()), std::string(ServerMetrics::kContentType));
  }));
  auto completion = guarded([this](const httplib::Request& req, httplib::Response& res) { handle_completion(req, res); });
  http_->Post("/v1/completions", [this, completion](const httplib::Request& req, httplib::Response& res) {
    completion(req, res);
    // httplib turns a status left unset (-1) into 200 later. A stream's status is its
    // header's: errors that come later are sent in-band.
    metrics_->record_status(res.status == -1 ? 200 : res.status);
  });

  // httplib calls this for every response >= 400, including the ones a handler filled in:
  // only an empty body (no route matched) is ours to write.
  http_->set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Handled;
    if (req.path == "/v1/completions") metrics_->record_status(res.status);  // e.g. 404 for GET
    const ApiError e = res.status == 404
                           ? ApiError(404, "invalid_request_error", str_cat("no route ", req.method, " ", req.path))
                           : ApiError(res.status, "invalid_request_error", str_cat("HTTP status ", res.status));
    send_error(res, e);
    return httplib::Server::HandlerResponse::Handled;
  }));
}

HttpServer::~HttpServer() { shutdown(); }

int HttpServer::bind() {
  if (options_.port == 0) {
    const int port = http_->bind_to_any_port(options_.host);
    if (port < 0) fail(ErrorKind::Io, "cannot bind ", options_.host, " (any port)");
    options_.port = port;
  } else if (!http_->bind_to_port(options_.host, options_.port)) {
    fail(ErrorKind::Io, "cannot bind ", options_.host, ":", options_.port, " (in use, or not an address of this host)");
  }
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

void HttpServer::handle_completion(const httplib::Request& req, httplib::Response& res) {
  const auto received = std::chrono::steady_clock::now();
  CompletionRequest cr = parse_completion_request(req.body, tokenizer_, limits_);
  const CompletionMeta meta{str_cat("cmpl-", unix_now(), "-", next_completion_++), options_.model_id, unix_now()};
  auto stream = std::make_shared<RequestStream>(tokenizer_, limits_.stop_token_ids, cr.sampling.stop_strings);
  Request request;
  request.prompt = std::move(cr.prompt);
  request.sampling = cr.sampling;
  request.sampling.stop_strings.clear();  // matched on text by the stream, not on ids
  // Engine thread. Metrics are recorded before the stream sees the event, so a client that
  // has its response finds them counted.
  request.on_event = [stream, metrics = metrics_, last = received, first = true](const RequestEvent& e) mutable {
    if (e.finished) {
      metrics->record_usage(e.prompt_tokens, e.completion_tokens);
    } else {
      const auto now = std::chrono::steady_clock::now();
      const double seconds = std::chrono::duration<double>(now - last).count();
      if (first) metrics->record_time_to_first_token(seconds);
      else metrics->record_inter_token(seconds);
      first = false;
      last = now;
    }
    return stream->on_event(e);
  };
  const uint64_t id = submit(std::move(request));

  if (!cr.stream) {
    std::string text;
    StreamPiece piece;
    for (;;) {
      while (!stream->pop(piece, std::chrono::milliseconds(1000))) {
      }
      text += piece.text;
      if (piece.finished) break;
    }
    if (piece.finish_reason == "cancelled") throw ApiError(503, "server_error", "the request was cancelled: the server is shutting down");
    if (piece.finish_reason == "error") throw ApiError(500, "server_error", piece.error);
    res.set_content(dump(completion_response(meta, text, piece.finish_reason, piece.prompt_tokens, piece.completion_tokens)),
                    "application/json");
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, stream, id, meta](size_t, httplib::DataSink& sink) {
        auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
        StreamPiece piece;
        if (!stream->pop(piece, kIdlePoll)) {
          if (sink.is_writable()) return true;  // nothing yet; httplib calls again
          scheduler_.cancel(id);                // the client went away
          return false;
        }
        bool ok = piece.text.empty() || write(completion_chunk_event(meta, piece.text, ""));
        if (ok && piece.finished) {
          if (piece.finish_reason == "stop" || piece.finish_reason == "length") {
            ok = write(completion_chunk_event(meta, "", piece.finish_reason));
          } else {
            const ApiError e = piece.finish_reason == "error"
                                   ? ApiError(500, "server_error", piece.error)
                                   : ApiError(503, "server_error", "the request was cancelled: the server is shutting down");
            ok = write("data: " + dump(error_body(e)) + "\n\n");
          }
          ok = ok && write(std::string(kDoneEvent));
          if (ok) sink.done();
        }
        if (!ok && !piece.finished) scheduler_.cancel(id);
        return ok;
      },
      // Called however the response ends; a stream that did not finish is cancelled so its
      // slot goes back (cancelling a finished or unknown id is a no-op).
      [this, stream, id](bool) {
        if (!stream->finished()) scheduler_.cancel(id);
      });
}

}  // namespace statelm::server
