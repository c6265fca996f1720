// The body of POST /v1/completions and POST /v1/chat/completions, parsed and checked into what
// the scheduler runs: prompt ids, SamplingParams, n choices, streaming options. Every problem is
// an ApiError 400 naming the field (413 and 401 come from the HTTP layer); unknown fields are
// ignored, as OpenAI does.
//
// Defaults for fields a request omits: the model folder's generation_config.json (temperature,
// top_p, top_k, min_p, repetition_penalty, max_new_tokens), as vLLM does, else OpenAI's (1.0,
// 1.0, off, off, 1.0; max_tokens 16 for completions, the rest of the context for chat), each
// capped by the server's --max-tokens.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace statelm::server {

class ChatPrompt;

// generation_config.json's sampling defaults; absent fields stay nullopt.
struct GenerationDefaults {
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int64_t> top_k, max_tokens;
  // Empty when the folder has no generation_config.json; Error(Format) when it is not JSON.
  static GenerationDefaults from_model_dir(const std::string& model_dir);
};

// What a request is checked against: the loaded model and the server's limits.
struct ModelLimits {
  int64_t vocab_size = 0;
  int64_t max_context = 0;              // prompt + max_tokens must fit
  std::vector<int32_t> stop_token_ids;  // end-of-sequence ids: finish "stop", never shown as text
  int64_t max_prompt_tokens = 0;        // 0 = only the context limits the prompt
  int64_t max_tokens = 0;               // the largest max_tokens a request may ask; 0 = no cap
  int32_t max_n = 16;                   // choices per request
  GenerationDefaults defaults;
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  // Sampling for choice 0; choice i draws with seed + i. stop_strings are applied to text by
  // the stream, not by the sampler. sampling.logprobs: -1 off, else the top alternatives asked.
  SamplingParams sampling;
  int32_t n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
  bool chat = false;
};

// "prompt": a string, a list of token ids, or a one-element list of either; "logprobs": 0..20.
GenerationRequest parse_completion_request(std::string_view body, const Tokenizer& tokenizer, const ModelLimits& limits);

// "messages" rendered by the chat template; "logprobs": bool with "top_logprobs": 0..20;
// "max_completion_tokens" or "max_tokens".
GenerationRequest parse_chat_request(std::string_view body, const Tokenizer& tokenizer, const ModelLimits& limits,
                                     const ChatPrompt& chat_prompt);

}  // namespace statelm::server
