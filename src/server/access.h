// What every request passes through before and after its handler: the API key check, its
// request id, and the one log line written when it ends.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace statelm::server {

// `Authorization: Bearer KEY` against the server's key, in time that depends on the lengths
// only (never on where the strings first differ), so the key cannot be found byte by byte.
bool bearer_matches(std::string_view authorization, std::string_view key);

// The client's X-Request-Id when it is a sane token (1-128 visible ASCII characters), else a
// new random one ("req-" + 24 hex digits).
std::string request_id_from(std::string_view client_value);

// The request a worker thread is serving. cpp-httplib runs a request's routing, handler,
// streamed body and logger on one thread, so a thread_local carries what the end-of-request
// log line needs from the start (id, clock) and from the handler (token counts).
struct RequestContext {
  std::string id;
  std::chrono::steady_clock::time_point start;
  int64_t prompt_tokens = -1, completion_tokens = -1;  // -1: not a generation
};
RequestContext& current_request();

// "request <id> POST /v1/completions 200 prompt_tokens=5 completion_tokens=16 12.3 ms"
std::string request_log_line(const RequestContext& c, const std::string& method, const std::string& path, int status);

}  // namespace statelm::server
