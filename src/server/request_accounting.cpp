#include "server/request_accounting.h"

#include <chrono>

#include "core/error.h"
#include "server/openai_errors.h"

namespace statelm::server {

std::shared_ptr<void> claim_request_slot(const std::shared_ptr<std::atomic<int>>& open, int limit) {
  if (open->fetch_add(1) >= limit) {
    --*open;
    throw ApiError(429, "rate_limit_error", str_cat("too many requests at once (this server runs at most ", limit, ")"), "",
                   "too_many_requests");
  }
  return std::shared_ptr<void>(nullptr, [open](void*) { --*open; });
}

EventCallback metered_events(std::shared_ptr<ServerMetrics> metrics, bool count_prompt, EventCallback inner) {
  return [metrics = std::move(metrics), count_prompt, inner = std::move(inner), last = std::chrono::steady_clock::now(),
          first = true](const RequestEvent& e) mutable {
    if (e.finished) {
      metrics->record_usage(count_prompt ? e.prompt_tokens : 0, e.completion_tokens);
    } else {
      const auto now = std::chrono::steady_clock::now();
      const double seconds = std::chrono::duration<double>(now - last).count();
      if (first) metrics->record_time_to_first_token(seconds);
      else metrics->record_inter_token(seconds);
      first = false;
      last = now;
    }
    return inner(e);
  };
}

}  // namespace statelm::server
