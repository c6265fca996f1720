#include "server/request_stream.h"

namespace statelm::server {

RequestStream::RequestStream(const Tokenizer& tokenizer, const std::vector<int32_t>& stop_token_ids,
                             const std::vector<std::string>& stop_strings, int32_t n, bool logprobs)
    : logprobs_(logprobs), finished_(size_t(n), false), open_choices_(n) {
  texts_.reserve(size_t(n));
  for (int32_t i = 0; i < n; ++i) texts_.emplace_back(tokenizer, stop_token_ids, stop_strings);
}

bool RequestStream::on_event(int32_t index, const RequestEvent& e) {
  CompletionText& text = texts_.at(size_t(index));
  StreamPiece piece;
  piece.index = index;
  if (!e.finished) {
    // A token after a matched stop string, or an end-of-sequence id, shows nothing.
    const bool shown = !text.stopped() && !text.is_stop_token(e.token);
    piece.text = text.on_token(e.token);
    if (logprobs_ && shown) piece.logprobs.push_back({e.token, e.logprob, e.top_logprobs});
    if (!piece.text.empty() || !piece.logprobs.empty()) push(std::move(piece));
    return !text.stopped();
  }
  piece.finished = true;
  piece.finish_reason = e.finish_reason;
  piece.error = e.error;
  piece.prompt_tokens = e.prompt_tokens;
  piece.completion_tokens = e.completion_tokens;
  if (e.finish_reason == "stop" || e.finish_reason == "length") piece.text = text.finish();
  push(std::move(piece));
  return true;
}

void RequestStream::push(StreamPiece piece) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_.at(size_t(piece.index))) return;  // a second final event changes nothing
    if (piece.finished) {
      finished_[size_t(piece.index)] = true;
      --open_choices_;
    }
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
  return open_choices_ == 0;
}

}  // namespace statelm::server
