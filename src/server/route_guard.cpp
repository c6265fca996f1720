#include "server/route_guard.h"

#include "server/response_shape.h"

namespace statelm::server {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status();
  if (e.status() == 429) res.set_header("Retry-After", "1");
  res.set_content(dump_json(error_body(e)), "application/json");
}

}  // namespace statelm::server
