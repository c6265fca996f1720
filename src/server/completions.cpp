#include "server/completions.h"

#include <algorithm>

#include "server/logprobs_json.h"
#include "server/response_shape.h"

namespace statelm::server {

using nlohmann::json;

CompletionText::CompletionText(const Tokenizer& tokenizer, const std::vector<int32_t>& stop_token_ids,
                               std::vector<std::string> stop_strings)
    : detok_(tokenizer), stops_(std::move(stop_strings)), stop_ids_(stop_token_ids) {}

bool CompletionText::is_stop_token(int32_t id) const {
  return std::find(stop_ids_.begin(), stop_ids_.end(), id) != stop_ids_.end();
}

std::string CompletionText::on_token(int32_t id) {
  if (finished_ || stops_.stopped() || is_stop_token(id)) return {};
  return stops_.push(detok_.push_generated(id));
}

std::string CompletionText::finish() {
  if (finished_ || stops_.stopped()) return {};
  finished_ = true;
  std::string out = stops_.push(detok_.flush());
  if (!stops_.stopped()) out += stops_.flush();
  return out;
}

json usage_json(const Usage& u) {
  return json{{"prompt_tokens", u.prompt_tokens},
              {"completion_tokens", u.completion_tokens},
              {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

std::string dump_json(const json& data) { return data.dump(-1, ' ', false, json::error_handler_t::replace); }
std::string sse_event(const json& data) { return "data: " + dump_json(data) + "\n\n"; }

namespace {

// POST /v1/completions: {"object": "text_completion", "choices": [{"index", "text",
// "logprobs", "finish_reason"}]}; stream chunks have the same shape, one choice each.
class CompletionShape : public ResponseShape {
 public:
  CompletionShape(ResponseMeta meta, const Tokenizer& tokenizer) : meta_(std::move(meta)), tokenizer_(tokenizer) {}

  json response(const std::vector<ChoiceResult>& choices, const Usage& usage) override {
    json r = envelope();
    for (size_t i = 0; i < choices.size(); ++i) {
      int64_t offset = 0;
      r["choices"].push_back(choice(int32_t(i), choices[i].text, logprobs(choices[i].logprobs, offset), choices[i].finish_reason));
    }
    r["usage"] = usage_json(usage);
    return r;
  }
  std::string start_events(int32_t n) override {
    offsets_.assign(size_t(n), 0);
    return {};
  }
  std::string delta_event(int32_t index, const std::string& text, const std::vector<TokenLogprobs>& lps) override {
    json r = envelope();
    r["choices"].push_back(choice(index, text, logprobs(lps, offsets_.at(size_t(index))), nullptr));
    return sse_event(r);
  }
  std::string finish_event(int32_t index, const std::string& reason) override {
    json r = envelope();
    int64_t unused = 0;
    r["choices"].push_back(choice(index, "", logprobs({}, unused), reason));
    return sse_event(r);
  }
  std::string usage_event(const Usage& usage) override {
    json r = envelope();
    r["usage"] = usage_json(usage);
    return sse_event(r);
  }

 private:
  json envelope() const {
    return json{{"id", meta_.id}, {"object", "text_completion"}, {"created", meta_.created}, {"model", meta_.model},
                {"choices", json::array()}};
  }
  json logprobs(const std::vector<TokenLogprobs>& lps, int64_t& offset) const {
    return meta_.logprobs ? completion_logprobs(tokenizer_, lps, offset) : json(nullptr);
  }
  static json choice(int32_t index, const std::string& text, json logprobs, json finish_reason) {
    return json{{"index", index}, {"text", text}, {"logprobs", std::move(logprobs)}, {"finish_reason", std::move(finish_reason)}};
  }

  ResponseMeta meta_;
  const Tokenizer& tokenizer_;
  std::vector<int64_t> offsets_;  // per choice: bytes of text streamed so far
};

}  // namespace

std::unique_ptr<ResponseShape> completion_shape(ResponseMeta meta, const Tokenizer& tokenizer) {
  return std::make_unique<CompletionShape>(std::move(meta), tokenizer);
}

}  // namespace statelm::server
