// The hand-off between the scheduler's engine thread and the HTTP thread serving one request
// of n choices (each its own sequence). The engine thread calls on_event() for each token of
// each choice (it must never block there); it turns ids into text at once and queues the
// pieces, tagged with their choice. The HTTP thread pops them, either to stream them as
// server-sent events or to gather the whole response. Shared by both through a shared_ptr, so
// a client that went away leaves nothing dangling for a late event.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/scheduler.h"
#include "server/completions.h"
#include "server/response_shape.h"

namespace statelm::server {

struct StreamPiece {
  int32_t index = 0;  // the choice
  std::string text;
  std::vector<TokenLogprobs> logprobs;  // the tokens behind this piece, when asked for
  bool finished = false;                // the choice's last piece
  std::string finish_reason;            // when finished: "stop" | "length" | "cancelled" | "error"
  std::string error;
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

class RequestStream {
 public:
  RequestStream(const Tokenizer& tokenizer, const std::vector<int32_t>& stop_token_ids,
                const std::vector<std::string>& stop_strings, int32_t n, bool logprobs);

  // Engine thread, choice `index`. Returns false once a stop string matched, so the scheduler
  // ends that choice.
  bool on_event(int32_t index, const RequestEvent& e);

  // HTTP thread: the next piece, or false when none came within `timeout`.
  bool pop(StreamPiece& out, std::chrono::milliseconds timeout);
  bool finished() const;  // every choice's final piece was queued

 private:
  void push(StreamPiece piece);

  std::vector<CompletionText> texts_;  // per choice; engine thread only
  bool logprobs_;
  mutable std::mutex mu_;
  std::condition_variable ready_;
  std::deque<StreamPiece> pieces_;
  std::vector<bool> finished_;
  int32_t open_choices_;
};

}  // namespace statelm::server
