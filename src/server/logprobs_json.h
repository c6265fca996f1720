// Log-probabilities in OpenAI's two shapes. The numbers are log-softmax of the model's raw
// logits, before temperature, penalties and top-k/p (what vLLM reports by default), so they
// describe the model, not the sampling settings. A token's text is its own decoding, with
// U+FFFD for a byte-level token that is only part of a character; `bytes` in the chat shape
// are that text's UTF-8 bytes.
#pragma once

#include <nlohmann/json.hpp>
#include <vector>

#include "server/response_shape.h"
#include "tokenizer/tokenizer.h"

namespace statelm::server {

// Legacy completions: {"tokens", "token_logprobs", "top_logprobs": [{text: logprob}],
// "text_offset"}; text_offset counts bytes of the choice's text from `offset`, which advances.
nlohmann::json completion_logprobs(const Tokenizer& tokenizer, const std::vector<TokenLogprobs>& tokens, int64_t& offset);

// Chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}.
nlohmann::json chat_logprobs(const Tokenizer& tokenizer, const std::vector<TokenLogprobs>& tokens);

}  // namespace statelm::server
