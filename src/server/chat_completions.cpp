// POST /v1/chat/completions' shape: {"object": "chat.completion", "choices": [{"index",
// "message": {"role": "assistant", "content"}, "logprobs", "finish_reason"}], "usage"}; and as
// a stream, "chat.completion.chunk" objects whose choices carry a "delta": first {"role":
// "assistant", "content": ""} per choice, then {"content": piece}, then {} with the
// finish_reason. The request side is parse_chat_request (server/generation_request.h).
#include "server/logprobs_json.h"
#include "server/response_shape.h"

namespace statelm::server {

using nlohmann::json;

namespace {

class ChatShape : public ResponseShape {
 public:
  ChatShape(ResponseMeta meta, const Tokenizer& tokenizer) : meta_(std::move(meta)), tokenizer_(tokenizer) {}

  json response(const std::vector<ChoiceResult>& choices, const Usage& usage) override {
    json r = envelope("chat.completion");
    for (size_t i = 0; i < choices.size(); ++i)
      r["choices"].push_back({{"index", i},
                              {"message", {{"role", "assistant"}, {"content", choices[i].text}}},
                              {"logprobs", logprobs(choices[i].logprobs)},
                              {"finish_reason", choices[i].finish_reason}});
    r["usage"] = usage_json(usage);
    return r;
  }
  std::string start_events(int32_t n) override {
    std::string out;
    for (int32_t i = 0; i < n; ++i) out += chunk(i, {{"role", "assistant"}, {"content", ""}}, nullptr, nullptr);
    return out;
  }
  std::string delta_event(int32_t index, const std::string& text, const std::vector<TokenLogprobs>& lps) override {
    return chunk(index, {{"content", text}}, logprobs(lps), nullptr);
  }
  std::string finish_event(int32_t index, const std::string& reason) override {
    return chunk(index, json::object(), nullptr, reason);
  }
  std::string usage_event(const Usage& usage) override {
    json r = envelope("chat.completion.chunk");
    r["usage"] = usage_json(usage);
    return sse_event(r);
  }

 private:
  json envelope(const char* object) const {
    return json{{"id", meta_.id}, {"object", object}, {"created", meta_.created}, {"model", meta_.model},
                {"choices", json::array()}};
  }
  json logprobs(const std::vector<TokenLogprobs>& lps) const {
    return meta_.logprobs ? chat_logprobs(tokenizer_, lps) : json(nullptr);
  }
  std::string chunk(int32_t index, json delta, json logprobs, json finish_reason) const {
    json r = envelope("chat.completion.chunk");
    r["choices"].push_back(
        {{"index", index}, {"delta", std::move(delta)}, {"logprobs", std::move(logprobs)}, {"finish_reason", std::move(finish_reason)}});
    return sse_event(r);
  }

  ResponseMeta meta_;
  const Tokenizer& tokenizer_;
};

}  // namespace

std::unique_ptr<ResponseShape> chat_shape(ResponseMeta meta, const Tokenizer& tokenizer) {
  return std::make_unique<ChatShape>(std::move(meta), tokenizer);
}

}  // namespace statelm::server
