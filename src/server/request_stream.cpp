#include "server/request_stream.h"

namespace statelm::server {

bool RequestStream::on_event(const RequestEvent& e) {
  if (!e.finished) {
    std::string t = text_.on_token(e.token);
    if (!t.empty()) {
      StreamPiece piece;
      piece.text = std::move(t);
      push(std::move(piece));
    }
    return !text_.stopped();
  }
  StreamPiece last;
  last.finished = true;
  last.finish_reason = e.finish_reason;
  last.error = e.error;
  last.prompt_tokens = e.prompt_tokens;
  last.completion_tokens = e.completion_tokens;
  if (e.finish_reason == "stop" || e.finish_reason == "length") last.text = text_.finish();
  push(std::move(last));
  return true;
}

void RequestStream::push(StreamPiece piece) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;  // a second final event (cannot happen today) changes nothing
    finished_ = piece.finished;
    pieces_.push_back(std::move(piece));
  }
  ready_.notify_one();
}

bool RequestStream::pop(StreamPiece& out, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!ready_.wait_for(lock, timeout, [&] { return !pieces_.empty(); })) return false;
  out = std::move(pieces_.front());
  pieces_.pop_front();
  return true;
}

bool RequestStream::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_;
}

}  // namespace statelm::server
