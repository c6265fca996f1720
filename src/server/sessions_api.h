// The sessions API: conversations whose recurrent state lives on the server, so each turn
// prefills only its own tokens whatever the length of the conversation before it.
//
//   POST   /v1/sessions                  create: {} or {"prompt": text | ids, "system": text,
//                                        "messages": [...]}, prefilled into the new state
//   GET    /v1/sessions                  list (this database's sessions, newest first)
//   GET    /v1/sessions/{id}             tokens, state bytes, created/updated, model
//   DELETE /v1/sessions/{id}
//   POST   /v1/sessions/{id}/completions the next turn: "prompt" (text or ids, may be empty to
//                                        go on generating) + /v1/completions' sampling fields;
//                                        a text_completion, or SSE with "stream": true
//   POST   /v1/sessions/{id}/append      prefill "prompt" into the state, generate nothing
//   POST   /v1/sessions/{id}/fork        a new session holding the same state
//   GET    /v1/sessions/{id}/state       the snapshot blob (application/octet-stream)
//   PUT    /v1/sessions/{id}/state       import a blob, checked in full against this model
//
// A session is a snapshot (runtime/snapshot.h) in the SessionStore (SQLite): its token ids and
// its state. A turn restores it into a free slot on the engine thread, feeds the new tokens,
// and the final state replaces the stored one only when the turn ends "stop" or "length": a
// turn that fails, is cancelled or whose client goes away leaves the session as it was. One
// turn at a time per session: a second request that would change it meanwhile gets 409.
//
// The state holds every generated token, including the end-of-sequence id and text past a
// matched stop string (a recurrent state cannot un-read tokens); the next turn follows them.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "runtime/scheduler.h"
#include "runtime/session_store.h"
#include "server/generation_request.h"
#include "server/metrics.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
}

namespace statelm::server {

class ChatPrompt;

struct SessionsApiContext {
  Scheduler& scheduler;
  const Tokenizer& tokenizer;
  const ModelLimits& limits;
  std::string model_id;
  SessionStore& store;
  // The server's submit: refuses new requests (503) once it is shutting down.
  std::function<uint64_t(Request)> submit;
  // Renders create's "system" / "messages" (null: those fields are refused).
  const ChatPrompt* chat_prompt = nullptr;
  // The server's accounting, shared with /v1/completions (server/request_accounting.h): claims
  // one of --max-concurrent-requests (throws 429), and the metrics turns are counted in. Either
  // may be empty (tests that build the API alone).
  std::function<std::shared_ptr<void>()> claim_request_slot;
  std::shared_ptr<ServerMetrics> metrics;
};

// Adds the routes above to `http`. Everything they share lives as long as the routes do.
void register_sessions_api(httplib::Server& http, SessionsApiContext context);

}  // namespace statelm::server
