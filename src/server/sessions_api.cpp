// The sessions API's routes (the contract is in sessions_api.h). Each handler loads the
// session's snapshot from the store, hands it to the scheduler as a Request's resume_state,
// and stores the final state the scheduler hands back before the client hears "done".
#include "server/sessions_api.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <unordered_set>

#include "core/log.h"
#include "core/utf8.h"
#include "runtime/snapshot.h"
#include "server/chat_prompt.h"
#include "server/connection_probe.h"
#include "server/request_accounting.h"
#include "server/route_guard.h"
#include "server/openai_errors.h"
#include "server/request_stream.h"
#include "server/response_shape.h"

namespace statelm::server {

using nlohmann::json;

namespace {

constexpr size_t kMaxIdBytes = 256;  // the store's limit

// {} for an empty body (every field optional), else a JSON object.
json parse_body(const std::string& text) {
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) return json::object();
  if (!utf8_is_valid(text)) invalid_request("", "the request body is not valid UTF-8");
  json body = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) invalid_request("", "the request body is not valid JSON");
  if (!body.is_object()) invalid_request("", "the request body must be a JSON object");
  return body;
}

const json* field(const json& body, const char* key) {
  auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

std::string checked_id(const httplib::Request& req) {
  std::string id = req.matches[1];
  if (id.empty() || id.size() > kMaxIdBytes)
    invalid_request("session_id", "session id: must be 1 to ", kMaxIdBytes, " bytes");
  return id;
}

ApiError not_found(const std::string& id) {
  return ApiError(404, "invalid_request_error", str_cat("no session \"", id, "\""), "session_id", "session_not_found");
}

// "sess_" + 24 random hex digits: unguessable, so a session id is as good as a capability.
std::string new_session_id() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32)};
  std::lock_guard<std::mutex> lock(mu);
  char out[32];
  std::snprintf(out, sizeof out, "sess_%016llx%08x", (unsigned long long)rng(), unsigned(rng()));
  return out;
}

// Sessions with a turn, an import or a delete under way: whoever comes second gets 409, so
// two turns never start from one state and the second's result never silently replaces the first's.
class Leases {
 public:
  class Lease {
   public:
    Lease(Leases& owner, std::string id) : owner_(owner), id_(std::move(id)) {}
    ~Lease() { release(); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    // Before the client is told the turn is over: it may send the next one at once.
    void release() {
      std::lock_guard<std::mutex> lock(owner_.mu_);
      if (!released_) owner_.held_.erase(id_);
      released_ = true;
    }

   private:
    Leases& owner_;
    std::string id_;
    bool released_ = false;  // under owner_.mu_
  };

  std::shared_ptr<Lease> claim(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!held_.insert(id).second)
      throw ApiError(409, "invalid_request_error",
                     str_cat("session \"", id, "\" is in use by another request; retry when it has finished"),
                     "session_id", "session_busy");
    return std::make_shared<Lease>(*this, id);
  }

 private:
  std::mutex mu_;
  std::unordered_set<std::string> held_;
};

// What the engine thread hands over at the end of a turn, before its final event.
struct TurnOutcome {
  std::mutex mu;
  std::string state;  // the final state; empty unless the turn ended "stop" or "length"
  int64_t cached_tokens = 0;
};

// The error a turn that did not end "stop" or "length" is reported with.
ApiError turn_error(const std::string& finish_reason, const std::string& error) {
  if (finish_reason == "cancelled")
    return ApiError(503, "server_error", "the request was cancelled: the server is shutting down");
  return ApiError(500, "server_error", error.empty() ? "the turn failed" : error);
}

class SessionsApi {
 public:
  explicit SessionsApi(SessionsApiContext c) : c_(std::move(c)), fingerprint_(c_.scheduler.model_fingerprint()) {}

  void create(const httplib::Request& req, httplib::Response& res);
  void list(const httplib::Request& req, httplib::Response& res);
  void get(const httplib::Request& req, httplib::Response& res);
  void remove(const httplib::Request& req, httplib::Response& res);
  void completions(const httplib::Request& req, httplib::Response& res);
  void append(const httplib::Request& req, httplib::Response& res);
  void fork(const httplib::Request& req, httplib::Response& res);
  void get_state(const httplib::Request& req, httplib::Response& res);
  void put_state(const httplib::Request& req, httplib::Response& res);

 private:
  std::string load(const std::string& id);
  SnapshotHeader usable_header(const std::string& id, const std::string& blob);
  std::vector<int32_t> prompt_ids(const json& body, bool conversation_start) const;
  std::vector<int32_t> opening_ids(const json& body) const;
  GenerationRequest sampling_of(const json& body) const;
  std::string prefill(std::vector<int32_t> ids, std::string resume_state);
  void save(const std::string& id, TurnOutcome& outcome);
  json session_json(const SessionInfo& s) const;
  json session_json(const std::string& id) const;
  void reply(httplib::Response& res, const json& body) const { res.set_content(dump_json(body), "application/json"); }
  // The server's accounting (server/request_accounting.h), when it gave any: a turn or an
  // append holds one of --max-concurrent-requests and shows in /metrics like a completion.
  std::shared_ptr<void> claim_slot() const { return c_.claim_request_slot ? c_.claim_request_slot() : nullptr; }
  EventCallback metered(EventCallback inner) const {
    return c_.metrics ? metered_events(c_.metrics, /*count_prompt=*/true, std::move(inner)) : inner;
  }

  SessionsApiContext c_;
  std::string fingerprint_;
  Leases leases_;
  std::atomic<uint64_t> next_completion_{1};
};

std::string SessionsApi::load(const std::string& id) {
  std::optional<std::string> blob = c_.store.get(id);
  if (!blob) throw not_found(id);
  return std::move(*blob);
}

// The stored snapshot's header, refused (400) when another model made it: a session database
// may be shared with other servers and the CLI.
SnapshotHeader SessionsApi::usable_header(const std::string& id, const std::string& blob) {
  SnapshotHeader h;
  try {
    h = read_snapshot_header(blob);
  } catch (const Error& e) {
    throw ApiError(500, "server_error", str_cat("session \"", id, "\": its stored state is unreadable: ", e.what()));
  }
  if (h.fingerprint != fingerprint_)
    invalid_request("session_id", "session \"", id, "\" holds the state of another model (fingerprint ", h.fingerprint,
                    "); this server runs ", c_.model_id, " (fingerprint ", fingerprint_, ")");
  return h;
}

// "prompt": text or token ids, absent or empty = none. Text that starts a conversation gets the
// tokenizer's special tokens (BOS); text later in one continues it, without.
std::vector<int32_t> SessionsApi::prompt_ids(const json& body, bool conversation_start) const {
  const json* p = field(body, "prompt");
  if (!p) return {};
  if (p->is_array() && p->size() == 1 && (p->at(0).is_string() || p->at(0).is_array())) p = &p->at(0);
  std::vector<int32_t> ids;
  if (p->is_string()) {
    const std::string& text = p->get_ref<const std::string&>();
    if (!utf8_is_valid(text)) invalid_request("prompt", "prompt: not valid UTF-8");
    if (text.empty()) return {};
    try {
      return c_.tokenizer.encode(text, /*add_special_tokens=*/conversation_start);
    } catch (const Error& e) {
      invalid_request("prompt", "prompt: ", e.what());
    }
  }
  if (!p->is_array()) invalid_request("prompt", "prompt: expected a string or a list of token ids, got ", p->type_name());
  for (const json& e : *p) {
    if (!e.is_number_integer()) invalid_request("prompt", "prompt: ", e.dump(), " is not a token id");
    const int64_t id = e.is_number_unsigned() ? int64_t(std::min<uint64_t>(e.get<uint64_t>(), INT64_MAX)) : e.get<int64_t>();
    if (id < 0 || id >= c_.limits.vocab_size)
      invalid_request("prompt", "prompt: token id ", id, " is outside the vocabulary [0, ", c_.limits.vocab_size, ")");
    ids.push_back(int32_t(id));
  }
  return ids;
}

// A new session's opening: "system" and "messages" through the model's chat template (no
// generation prompt: the next turn brings its own text), then "prompt".
std::vector<int32_t> SessionsApi::opening_ids(const json& body) const {
  json messages = json::array();
  if (const json* s = field(body, "system")) {
    if (!s->is_string()) invalid_request("system", "system: expected a string, got ", s->type_name());
    messages.push_back({{"role", "system"}, {"content", *s}});
  }
  if (const json* m = field(body, "messages")) {
    if (!m->is_array()) invalid_request("messages", "messages: expected a list of messages, got ", m->type_name());
    messages.insert(messages.end(), m->begin(), m->end());
  }
  std::vector<int32_t> ids;
  if (!messages.empty()) {
    if (!c_.chat_prompt) invalid_request("messages", "messages: this server has no chat template; send \"prompt\" text");
    const std::string text = c_.chat_prompt->render(parse_messages(json{{"messages", messages}}), false);
    ids = c_.tokenizer.encode(text, /*add_special_tokens=*/true);
  }
  const std::vector<int32_t> more = prompt_ids(body, ids.empty());
  ids.insert(ids.end(), more.begin(), more.end());
  return ids;
}

// /v1/completions' sampling fields, parsed by the same code as there. The prompt is ours: it
// is read in session terms (no BOS mid-conversation, may be empty), so the parser is shown a
// one-token stand-in.
GenerationRequest SessionsApi::sampling_of(const json& body) const {
  json stand_in = body;
  stand_in["prompt"] = json::array({0});
  GenerationRequest g = parse_completion_request(dump_json(stand_in), c_.tokenizer, c_.limits);
  if (g.n != 1) invalid_request("n", "n: a session continues one conversation: n must be 1");
  return g;
}

// Feeds ids into the state (a prefill-only request) and returns the final state.
std::string SessionsApi::prefill(std::vector<int32_t> ids, std::string resume_state) {
  struct Done {
    std::string finish_reason, error;
  };
  auto outcome = std::make_shared<TurnOutcome>();
  auto done = std::make_shared<std::promise<Done>>();
  Request r;
  r.prompt = std::move(ids);
  r.sampling.greedy = true;
  r.sampling.max_tokens = 0;
  r.resume_state = std::move(resume_state);
  r.on_final_state = [outcome](std::string state) {
    std::lock_guard<std::mutex> lock(outcome->mu);
    outcome->state = std::move(state);
  };
  r.on_event = metered([done](const RequestEvent& e) {
    if (e.finished) done->set_value(Done{e.finish_reason, e.error});
    return true;
  });
  std::future<Done> result = done->get_future();
  c_.submit(std::move(r));
  const Done d = result.get();  // the scheduler ends every request it accepted, even on stop()
  if (d.finish_reason != "length" && d.finish_reason != "stop") throw turn_error(d.finish_reason, d.error);
  std::lock_guard<std::mutex> lock(outcome->mu);
  if (outcome->state.empty()) throw ApiError(500, "server_error", "the prefill ended without a state");
  return std::move(outcome->state);
}

void SessionsApi::save(const std::string& id, TurnOutcome& outcome) {
  std::lock_guard<std::mutex> lock(outcome.mu);
  if (outcome.state.empty()) throw ApiError(500, "server_error", "the turn ended without a state");
  c_.store.put(id, outcome.state);
}

json SessionsApi::session_json(const SessionInfo& s) const {
  return json{{"id", s.id},
              {"object", "session"},
              {"created", s.created_ms / 1000},
              {"updated", s.updated_ms / 1000},
              {"model", s.model == fingerprint_ ? json(c_.model_id) : json(nullptr)},
              {"fingerprint", s.model},
              {"tokens", s.n_tokens},
              {"blob_bytes", s.blob_bytes}};
}

json SessionsApi::session_json(const std::string& id) const {
  std::optional<SessionInfo> info = c_.store.info(id);
  if (!info) throw not_found(id);
  return session_json(*info);
}

void SessionsApi::create(const httplib::Request& req, httplib::Response& res) {
  const json body = parse_body(req.body);
  std::vector<int32_t> ids = opening_ids(body);
  const std::string id = new_session_id();
  auto lease = leases_.claim(id);
  c_.store.put(id, ids.empty() ? c_.scheduler.empty_snapshot() : prefill(std::move(ids), {}));
  reply(res, session_json(id));
}

void SessionsApi::list(const httplib::Request&, httplib::Response& res) {
  json data = json::array();
  for (const SessionInfo& s : c_.store.list()) data.push_back(session_json(s));
  reply(res, json{{"object", "list"}, {"data", std::move(data)}});
}

void SessionsApi::get(const httplib::Request& req, httplib::Response& res) {
  const std::string id = checked_id(req);
  const std::string blob = load(id);
  json j = session_json(id);
  SnapshotHeader h = read_snapshot_header(blob);
  j["state_bytes"] = h.state_bytes;  // uncompressed: fixed for a Mamba model, + KV for a hybrid
  j["pending_tokens"] = h.pending();  // sampled, fed by the next turn
  reply(res, j);
}

void SessionsApi::remove(const httplib::Request& req, httplib::Response& res) {
  const std::string id = checked_id(req);
  auto lease = leases_.claim(id);
  if (!c_.store.remove(id)) throw not_found(id);
  reply(res, json{{"id", id}, {"object", "session.deleted"}, {"deleted", true}});
}

void SessionsApi::fork(const httplib::Request& req, httplib::Response& res) {
  const std::string src = checked_id(req);
  parse_body(req.body);  // nothing to read yet, but malformed is still malformed
  if (!c_.store.info(src)) throw not_found(src);
  const std::string dst = new_session_id();
  c_.store.fork(src, dst);
  reply(res, session_json(dst));
}

void SessionsApi::get_state(const httplib::Request& req, httplib::Response& res) {
  const std::string id = checked_id(req);
  res.set_content(load(id), "application/octet-stream");
}

void SessionsApi::put_state(const httplib::Request& req, httplib::Response& res) {
  const std::string id = checked_id(req);
  auto lease = leases_.claim(id);
  // The model first, in this server's words (the snapshot's own message names model paths).
  SnapshotHeader h;
  try {
    h = read_snapshot_header(req.body);
  } catch (const Error& e) {
    invalid_request("state", "state: not a valid statelm snapshot: ", e.what());
  }
  if (h.fingerprint != fingerprint_)
    invalid_request("state", "state: a snapshot of another model (fingerprint ", h.fingerprint, "); this server runs ",
                    c_.model_id, " (fingerprint ", fingerprint_, ")");
  try {
    c_.scheduler.check_snapshot(req.body);
  } catch (const Error& e) {
    invalid_request("state", "state: ", e.what());
  }
  c_.store.put(id, req.body);
  reply(res, session_json(id));
}

void SessionsApi::append(const httplib::Request& req, httplib::Response& res) {
  const std::string id = checked_id(req);
  const json body = parse_body(req.body);
  auto lease = leases_.claim(id);
  const std::shared_ptr<void> slot = claim_slot();  // one of --max-concurrent-requests
  const std::string blob = load(id);
  const SnapshotHeader h = usable_header(id, blob);
  std::vector<int32_t> ids = prompt_ids(body, h.tokens.empty());
  if (ids.empty()) invalid_request("prompt", "prompt: required: the text (or token ids) to append");
  const int64_t appended = int64_t(ids.size());
  c_.store.put(id, prefill(std::move(ids), blob));
  lease->release();
  json j = session_json(id);
  j["appended_tokens"] = appended;
  reply(res, j);
}

void SessionsApi::completions(const httplib::Request& req, httplib::Response& res) {
  const std::string id = checked_id(req);
  const json body = parse_body(req.body);
  const GenerationRequest g = sampling_of(body);
  auto lease = leases_.claim(id);
  const std::shared_ptr<void> slot = claim_slot();  // one of --max-concurrent-requests
  std::string blob = load(id);
  const SnapshotHeader h = usable_header(id, blob);

  auto stream = std::make_shared<RequestStream>(c_.tokenizer, c_.limits.stop_token_ids, g.sampling.stop_strings, 1,
                                                g.sampling.logprobs >= 0);
  auto outcome = std::make_shared<TurnOutcome>();
  Request r;
  r.prompt = prompt_ids(body, h.tokens.empty());
  r.sampling = g.sampling;
  r.sampling.stop_strings.clear();  // matched on text by the stream, not on ids
  r.resume_state = std::move(blob);
  r.on_final_state = [outcome](std::string state) {
    std::lock_guard<std::mutex> lock(outcome->mu);
    outcome->state = std::move(state);
  };
  r.on_event = metered([stream, outcome](const RequestEvent& e) {
    if (e.finished) {
      std::lock_guard<std::mutex> lock(outcome->mu);
      outcome->cached_tokens = e.cached_tokens;
    }
    return stream->on_event(0, e);
  });
  const uint64_t request_id = c_.submit(std::move(r));
  ResponseMeta meta{str_cat("cmpl-", unix_now(), "-s", next_completion_++), c_.model_id, unix_now(),
                    g.sampling.logprobs >= 0};
  std::shared_ptr<ResponseShape> shape = completion_shape(meta, c_.tokenizer);

  if (!g.stream) {
    // A client that hangs up before the answer cancels the turn (the session stays as it was)
    // and frees its slot, as /v1/completions does (server/connection_probe.h).
    const ConnectionProbe probe = ConnectionProbe::find(req.local_addr, req.local_port, req.remote_addr, req.remote_port);
    ChoiceResult choice;
    StreamPiece piece;
    auto next_check = std::chrono::steady_clock::now() + kIdlePoll;
    for (;;) {
      bool got = false;
      while (!got) {
        got = stream->pop(piece, kIdlePoll);
        if (const auto now = std::chrono::steady_clock::now(); now >= next_check) {
          next_check = now + kIdlePoll;
          if (probe.peer_gone()) {
            c_.scheduler.cancel(request_id);
            res.status = 499;  // nginx's "client closed request", for the log
            return;
          }
        }
      }
      choice.text += piece.text;
      choice.logprobs.insert(choice.logprobs.end(), piece.logprobs.begin(), piece.logprobs.end());
      if (piece.finished) break;
    }
    if (piece.finish_reason != "stop" && piece.finish_reason != "length") throw turn_error(piece.finish_reason, piece.error);
    save(id, *outcome);
    lease->release();
    choice.finish_reason = piece.finish_reason;
    json j = shape->response({choice}, Usage{piece.prompt_tokens, piece.completion_tokens});
    // OpenAI's field for prompt tokens that were not processed again: here, the session's.
    j["usage"]["prompt_tokens_details"] = {{"cached_tokens", outcome->cached_tokens}};
    reply(res, j);
    return;
  }

  res.set_header("Cache-Control", "no-cache");
  const bool include_usage = g.include_usage;
  const std::string opening = shape->start_events(1);  // also sizes the shape's per-choice state
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, stream, outcome, shape, lease, slot, request_id, id, include_usage, opening, opened = false](
          size_t, httplib::DataSink& sink) mutable {
        auto write = [&](const std::string& s) { return s.empty() || sink.write(s.data(), s.size()); };
        if (!opened && !write(opening)) {
          c_.scheduler.cancel(request_id);
          return false;
        }
        opened = true;
        StreamPiece piece;
        if (!stream->pop(piece, kIdlePoll)) {
          if (sink.is_writable()) return true;  // nothing yet; httplib calls again
          c_.scheduler.cancel(request_id);      // the client went away
          return false;
        }
        bool ok = (piece.text.empty() && piece.logprobs.empty()) || write(shape->delta_event(0, piece.text, piece.logprobs));
        if (ok && piece.finished) {
          std::optional<ApiError> error;
          if (piece.finish_reason != "stop" && piece.finish_reason != "length") error = turn_error(piece.finish_reason, piece.error);
          try {
            if (!error) save(id, *outcome);
          } catch (const ApiError& e) {
            error = e;
          } catch (const Error& e) {
            error = api_error_from(e);
          }
          lease->release();
          if (!error) {
            ok = write(shape->finish_event(0, piece.finish_reason)) &&
                 (!include_usage || write(shape->usage_event(Usage{piece.prompt_tokens, piece.completion_tokens})));
          } else {
            ok = write(sse_event(error_body(*error)));
          }
          ok = ok && write(std::string(kDoneEvent));
          if (ok) sink.done();
        }
        if (!ok && !piece.finished) c_.scheduler.cancel(request_id);
        return ok;
      },
      // However the response ends: a turn that did not finish is cancelled (its slot goes back,
      // the session keeps its old state).
      [this, stream, request_id](bool) {
        if (!stream->finished()) c_.scheduler.cancel(request_id);
      });
}

}  // namespace

void register_sessions_api(httplib::Server& http, SessionsApiContext context) {
  auto api = std::make_shared<SessionsApi>(std::move(context));
  // Each route holds the API: it lives as long as the server's handlers do.
  auto route = [api](void (SessionsApi::*handler)(const httplib::Request&, httplib::Response&)) {
    return guarded([api, handler](const httplib::Request& req, httplib::Response& res) { ((*api).*handler)(req, res); });
  };
  const std::string one = R"(/v1/sessions/([^/]+))";
  http.Post("/v1/sessions", route(&SessionsApi::create));
  http.Get("/v1/sessions", route(&SessionsApi::list));
  http.Get(one, route(&SessionsApi::get));
  http.Delete(one, route(&SessionsApi::remove));
  http.Post(one + "/completions", route(&SessionsApi::completions));
  http.Post(one + "/append", route(&SessionsApi::append));
  http.Post(one + "/fork", route(&SessionsApi::fork));
  http.Get(one + "/state", route(&SessionsApi::get_state));
  http.Put(one + "/state", route(&SessionsApi::put_state));
}

}  // namespace statelm::server
