#include "server/logprobs_json.h"

namespace statelm::server {

using nlohmann::json;

namespace {

// A generated id without a token (a vocabulary padded past the tokenizer's) has no text.
std::string token_text(const Tokenizer& tokenizer, int32_t id) {
  if (!tokenizer.has_token(id)) return {};
  const int32_t ids[] = {id};
  return tokenizer.decode(ids, /*skip_special_tokens=*/false);
}

json bytes_of(const std::string& s) {
  json b = json::array();
  for (unsigned char c : s) b.push_back(int(c));
  return b;
}

}  // namespace

json completion_logprobs(const Tokenizer& tokenizer, const std::vector<TokenLogprobs>& tokens, int64_t& offset) {
  json out{{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()}, {"text_offset", json::array()}};
  for (const TokenLogprobs& t : tokens) {
    const std::string text = token_text(tokenizer, t.token);
    out["tokens"].push_back(text);
    out["token_logprobs"].push_back(t.logprob);
    json top = json::object();
    for (const TokenLogprob& alt : t.top) top[token_text(tokenizer, alt.token)] = alt.logprob;
    out["top_logprobs"].push_back(std::move(top));
    out["text_offset"].push_back(offset);
    offset += int64_t(text.size());
  }
  return out;
}

json chat_logprobs(const Tokenizer& tokenizer, const std::vector<TokenLogprobs>& tokens) {
  json content = json::array();
  for (const TokenLogprobs& t : tokens) {
    const std::string text = token_text(tokenizer, t.token);
    json top = json::array();
    for (const TokenLogprob& alt : t.top) {
      const std::string a = token_text(tokenizer, alt.token);
      top.push_back({{"token", a}, {"logprob", alt.logprob}, {"bytes", bytes_of(a)}});
    }
    content.push_back({{"token", text}, {"logprob", t.logprob}, {"bytes", bytes_of(text)}, {"top_logprobs", std::move(top)}});
  }
  return json{{"content", std::move(content)}};
}

}  // namespace statelm::server
