// The two OpenAI response shapes a generation can take -- `text_completion` (POST
// /v1/completions) and `chat.completion` / `chat.completion.chunk` (POST /v1/chat/completions)
// -- behind one interface, so the code that submits choices and streams them
// (server/generation.cpp) is written once. One object per request: a shape may keep
// per-choice state between stream events (the legacy logprobs' running text_offset).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace statelm::server {

// Identity shared by the response and every chunk of one request.
struct ResponseMeta {
  std::string id;  // "cmpl-..." / "chatcmpl-..."
  std::string model;
  int64_t created = 0;  // unix seconds
  bool logprobs = false;  // the request asked for logprobs: the field is an object, else null
};

// One generated token's log-probability and its most likely alternatives (RequestEvent's).
struct TokenLogprobs {
  int32_t token = -1;
  float logprob = 0;
  std::vector<TokenLogprob> top;
};

struct ChoiceResult {
  std::string text;
  std::vector<TokenLogprobs> logprobs;
  std::string finish_reason;  // "stop" | "length"
};

struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;
};

class ResponseShape {
 public:
  virtual ~ResponseShape() = default;
  // The whole (non-streamed) response.
  virtual nlohmann::json response(const std::vector<ChoiceResult>& choices, const Usage& usage) = 0;
  // Server-sent events ("data: {...}\n\n"): what opens the stream for n choices (chat: each
  // choice's role), a piece of one choice's text, its end, and the usage chunk.
  virtual std::string start_events(int32_t n) = 0;
  virtual std::string delta_event(int32_t index, const std::string& text, const std::vector<TokenLogprobs>& logprobs) = 0;
  virtual std::string finish_event(int32_t index, const std::string& finish_reason) = 0;
  virtual std::string usage_event(const Usage& usage) = 0;
};

std::unique_ptr<ResponseShape> completion_shape(ResponseMeta meta, const Tokenizer& tokenizer);
std::unique_ptr<ResponseShape> chat_shape(ResponseMeta meta, const Tokenizer& tokenizer);

inline constexpr std::string_view kDoneEvent = "data: [DONE]\n\n";

// {"prompt_tokens", "completion_tokens", "total_tokens"}.
nlohmann::json usage_json(const Usage& usage);
// "data: <json>\n\n", invalid UTF-8 replaced (generated text is whole characters; this guards
// against the rest, e.g. a token's own bytes in logprobs).
std::string sse_event(const nlohmann::json& data);
std::string dump_json(const nlohmann::json& data);

}  // namespace statelm::server
