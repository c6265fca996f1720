// The hand-off between the scheduler's engine thread and the HTTP thread serving one request.
// The engine thread calls on_event() for each token (it must never block there); it turns ids
// into text at once and queues the pieces. The HTTP thread pops them, either to stream them as
// server-sent events or to gather the whole completion. Shared by both through a shared_ptr,
// so a client that went away leaves nothing dangling for a late event.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>

#include "runtime/scheduler.h"
#include "server/completions.h"

namespace statelm::server {

struct StreamPiece {
  std::string text;
  bool finished = false;
  std::string finish_reason;  // when finished: "stop" | "length" | "cancelled" | "error"
  std::string error;
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

class RequestStream {
 public:
  RequestStream(const Tokenizer& tokenizer, const std::vector<int32_t>& stop_token_ids,
                std::vector<std::string> stop_strings)
      : text_(tokenizer, stop_token_ids, std::move(stop_strings)) {}

  // Engine thread. Returns false once a stop string matched, so the scheduler ends the request.
  bool on_event(const RequestEvent& e);

  // HTTP thread: the next piece, or false when none came within `timeout`.
  bool pop(StreamPiece& out, std::chrono::milliseconds timeout);
  bool finished() const;  // the final piece was queued

 private:
  void push(StreamPiece piece);

  CompletionText text_;  // engine thread only
  mutable std::mutex mu_;
  std::condition_variable ready_;
  std::deque<StreamPiece> pieces_;
  bool finished_ = false;
};

}  // namespace statelm::server
