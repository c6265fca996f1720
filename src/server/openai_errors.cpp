#include "server/openai_errors.h"

namespace statelm::server {

ApiError api_error_from(const Error& e) {
  switch (e.kind()) {
    case ErrorKind::InvalidArgument: {
      // The engine's messages start with the field at fault ("prompt: ...", "max_tokens: ...").
      const std::string msg = e.what();
      const size_t colon = msg.find_first_of(": (");
      std::string param = colon == std::string::npos ? "" : msg.substr(0, colon);
      if (param.find_first_not_of("abcdefghijklmnopqrstuvwxyz_") != std::string::npos) param.clear();
      return ApiError(400, "invalid_request_error", msg, param);
    }
    case ErrorKind::OutOfMemory:
      return ApiError(429, "rate_limit_error", e.what(), "", "queue_full");
    case ErrorKind::TooLarge:  // would never fit, however long the client waits: do not retry
      return ApiError(413, "invalid_request_error", e.what(), "", "request_too_large");
    default:
      return ApiError(500, "server_error", e.what());
  }
}

nlohmann::json error_body(const ApiError& e) {
  using nlohmann::json;
  return json{{"error",
               {{"message", e.what()},
                {"type", e.type()},
                {"param", e.param().empty() ? json(nullptr) : json(e.param())},
                {"code", e.code().empty() ? json(nullptr) : json(e.code())}}}};
}

}  // namespace statelm::server
