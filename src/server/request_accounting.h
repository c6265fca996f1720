// What every generating route (completions, chat, session turns) does around the scheduler:
// hold one of --max-concurrent-requests for as long as the response lasts, and let the server's
// metrics see each request's tokens and latencies.
#pragma once

#include <atomic>
#include <memory>

#include "runtime/scheduler.h"
#include "server/metrics.h"

namespace statelm::server {

// Takes one of `limit` request slots counted by `open`; the slot is given back when the last
// copy of the handle is destroyed (a streamed response keeps it in its content provider).
// ApiError 429 (rate_limit_error, Retry-After set by the error writer) when all are taken.
std::shared_ptr<void> claim_request_slot(const std::shared_ptr<std::atomic<int>>& open, int limit);

// `inner` with metrics recorded first (so a client that has its response finds them counted):
// time to first token, inter-token latency, and at the end the completion tokens (and the prompt
// tokens when count_prompt: once per request, not once per choice).
EventCallback metered_events(std::shared_ptr<ServerMetrics> metrics, bool count_prompt, EventCallback inner);

}  // namespace statelm::server
