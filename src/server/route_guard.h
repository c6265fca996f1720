// What every route of `statelm serve` shares: its exceptions become OpenAI error responses
// (nothing escapes into httplib), the clock responses are stamped with, and how often a request
// that waits on the model checks that its client is still there.
#pragma once

#include <httplib.h>

#include <chrono>
#include <cstdint>
#include <exception>

#include "core/error.h"
#include "core/log.h"
#include "server/access.h"
#include "server/openai_errors.h"

namespace statelm::server {

// How often a request waiting on the model checks its client (server/connection_probe.h).
inline constexpr std::chrono::milliseconds kIdlePoll{50};

// Seconds since the epoch: the "created" field of responses.
int64_t unix_now();

// The error as an OpenAI error body with its status (and Retry-After on 429).
void send_error(httplib::Response& res, const ApiError& e);

// `handler` with every exception turned into an error response; unexpected ones are logged with
// the request id and answered 500.
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
      log_message(LogLevel::Error, str_cat(current_request().id, " ", req.method, " ", req.path, ": ", e.what()));
      send_error(res, ApiError(500, "server_error", e.what()));
    }
  };
}

}  // namespace statelm::server
