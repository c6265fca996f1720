// POST /v1/completions and /v1/chat/completions after parsing: n choices submitted to the
// scheduler as n sequences sharing one RequestStream, then either gathered into one response
// or streamed as server-sent events in the order tokens come, each chunk naming its choice.
// A client that goes away cancels every choice: a stream notices on its next write (or while
// idle, through the sink), a non-streamed request through its socket (server/connection_probe.h).
#include <httplib.h>

#include <chrono>

#include "core/log.h"
#include "server/access.h"
#include "server/connection_probe.h"
#include "server/http_server.h"
#include "server/openai_errors.h"
#include "server/request_accounting.h"
#include "server/route_guard.h"
#include "server/request_stream.h"
#include "server/response_shape.h"

namespace statelm::server {

namespace {

ApiError failure(const StreamPiece& piece) {
  return piece.finish_reason == "error" ? ApiError(500, "server_error", piece.error)
                                        : ApiError(503, "server_error", "the request was cancelled: the server is shutting down");
}

bool finished_normally(const StreamPiece& piece) { return piece.finish_reason == "stop" || piece.finish_reason == "length"; }

// What a stream has sent so far.
struct StreamState {
  bool started = false;
  int32_t open_choices = 0;
  Usage usage;
};

}  // namespace

void HttpServer::handle_generation(const httplib::Request& req, httplib::Response& res, bool chat) {
  // One of --max-concurrent-requests, held until the response (streamed or not) ends.
  std::shared_ptr<void> slot = claim_request_slot(open_requests_, options_.max_concurrent_requests);

  GenerationRequest g = chat ? parse_chat_request(req.body, tokenizer_, limits_, options_.chat_prompt)
                             : parse_completion_request(req.body, tokenizer_, limits_);
  const bool logprobs = g.sampling.logprobs >= 0;
  ResponseMeta meta{str_cat(chat ? "chatcmpl-" : "cmpl-", unix_now(), "-", next_completion_++), options_.model_id, unix_now(), logprobs};
  std::shared_ptr<ResponseShape> shape = chat ? chat_shape(meta, tokenizer_) : completion_shape(meta, tokenizer_);
  auto stream = std::make_shared<RequestStream>(tokenizer_, limits_.stop_token_ids, g.sampling.stop_strings, g.n, logprobs);
  current_request().prompt_tokens = int64_t(g.prompt.size());
  current_request().completion_tokens = 0;

  auto ids = std::make_shared<std::vector<uint64_t>>();
  auto cancel_all = [this, ids] {
    for (uint64_t id : *ids) scheduler_.cancel(id);  // a finished or unknown id is a no-op
  };
  try {
    for (int32_t i = 0; i < g.n; ++i) {
      Request request;
      request.prompt = g.prompt;
      request.sampling = g.sampling;
      request.sampling.seed += uint64_t(i);   // independent choices, reproducible with a seed
      request.sampling.stop_strings.clear();  // matched on text by the stream, not on ids
      // Engine thread.
      request.on_event = metered_events(metrics_, /*count_prompt=*/i == 0,
                                        [stream, i](const RequestEvent& e) { return stream->on_event(i, e); });
      ids->push_back(submit(std::move(request)));
    }
  } catch (...) {
    cancel_all();
    throw;
  }

  if (!g.stream) {
    const ConnectionProbe probe = ConnectionProbe::find(req.local_addr, req.local_port, req.remote_addr, req.remote_port);
    if (!probe.found())
      log_message(LogLevel::Debug, str_cat(current_request().id, ": no socket for ", req.local_addr, ":", req.local_port, " <- ",
                                           req.remote_addr, ":", req.remote_port, "; a hang-up will not cancel it"));
    std::vector<ChoiceResult> choices(size_t(g.n));
    Usage usage{int64_t(g.prompt.size()), 0};
    std::optional<ApiError> failed;
    auto next_check = std::chrono::steady_clock::now() + kIdlePoll;
    for (int32_t open = g.n; open > 0;) {
      StreamPiece piece;
      const bool got = stream->pop(piece, kIdlePoll);
      // Checked on a clock, not only when idle: a busy request has pieces every few ms.
      if (const auto now = std::chrono::steady_clock::now(); now >= next_check) {
        next_check = now + kIdlePoll;
        if (probe.peer_gone()) {
          cancel_all();      // nobody is left to read the answer: give the slots back now
          res.status = 499;  // nginx's "client closed request", for the log and metrics
          return;
        }
      }
      if (!got) continue;
      ChoiceResult& c = choices.at(size_t(piece.index));
      c.text += piece.text;
      c.logprobs.insert(c.logprobs.end(), piece.logprobs.begin(), piece.logprobs.end());
      if (!piece.finished) continue;
      --open;
      c.finish_reason = piece.finish_reason;
      usage.completion_tokens += piece.completion_tokens;
      if (!finished_normally(piece) && !failed) failed = failure(piece);
    }
    current_request().completion_tokens = usage.completion_tokens;
    if (failed) throw *failed;
    res.set_content(dump_json(shape->response(choices, usage)), "application/json");
    return;
  }

  auto state = std::make_shared<StreamState>();
  state->open_choices = g.n;
  state->usage.prompt_tokens = int64_t(g.prompt.size());
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [stream, shape, state, cancel_all, n = g.n, include_usage = g.include_usage](size_t, httplib::DataSink& sink) {
        std::string out;
        if (!state->started) {
          state->started = true;
          out = shape->start_events(n);
        }
        StreamPiece piece;
        if (!stream->pop(piece, kIdlePoll)) {
          if (!out.empty() ? sink.write(out.data(), out.size()) : sink.is_writable()) return true;  // nothing yet
          cancel_all();  // the client went away
          return false;
        }
        if (!piece.text.empty() || !piece.logprobs.empty()) out += shape->delta_event(piece.index, piece.text, piece.logprobs);
        if (piece.finished) {
          --state->open_choices;
          state->usage.completion_tokens += piece.completion_tokens;
          current_request().completion_tokens = state->usage.completion_tokens;
          // Errors after the 200 header can only be sent in-band, as an error event.
          out += finished_normally(piece) ? shape->finish_event(piece.index, piece.finish_reason)
                                          : sse_event(error_body(failure(piece)));
          if (state->open_choices == 0) {
            if (include_usage) out += shape->usage_event(state->usage);
            out += kDoneEvent;
          }
        }
        const bool ok = out.empty() || sink.write(out.data(), out.size());
        if (!ok) cancel_all();
        else if (state->open_choices == 0) sink.done();
        return ok;
      },
      // Called however the response ends; choices that did not finish are cancelled so their
      // slots go back. The concurrency slot is released with this lambda.
      [stream, cancel_all, slot](bool) {
        if (!stream->finished()) cancel_all();
      });
}

}  // namespace statelm::server
