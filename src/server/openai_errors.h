// OpenAI-shaped errors: every failure the server reports is an HTTP status plus the body
// {"error": {"message", "type", "param", "code"}}, so OpenAI client libraries raise their usual
// exceptions (BadRequestError, RateLimitError, ...) with our message and the field at fault.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "core/error.h"

namespace statelm::server {

// Thrown by request parsing and the handlers; the route wrapper turns it into the response.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string type, const std::string& message, std::string param = {}, std::string code = {})
      : std::runtime_error(message), status_(status), type_(std::move(type)), param_(std::move(param)),
        code_(std::move(code)) {}
  int status() const { return status_; }
  const std::string& type() const { return type_; }
  const std::string& param() const { return param_; }  // "" = null in the body
  const std::string& code() const { return code_; }    // "" = null in the body

 private:
  int status_;
  std::string type_, param_, code_;
};

// 400 invalid_request_error naming `param` (may be empty).
template <typename... Parts>
[[noreturn]] void invalid_request(const std::string& param, Parts&&... parts) {
  throw ApiError(400, "invalid_request_error", str_cat(std::forward<Parts>(parts)...), param);
}

// The engine's typed errors as API errors: InvalidArgument is the client's fault (400),
// OutOfMemory is a full queue (429: retry later), TooLarge a request this server's memory can
// never hold (413: retrying cannot help), anything else is ours (500).
ApiError api_error_from(const Error& e);

nlohmann::json error_body(const ApiError& e);

}  // namespace statelm::server
