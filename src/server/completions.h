// POST /v1/completions without the HTTP: the request body parsed and checked into prompt ids +
// SamplingParams, the token stream turned into text (UTF-8-safe, stop strings held back until
// they cannot match), and the OpenAI `text_completion` objects / SSE chunks built from it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/sampler.h"
#include "runtime/stop_strings.h"
#include "tokenizer/tokenizer.h"

namespace statelm::server {

// What a request is checked against: the loaded model's limits.
struct ModelLimits {
  int64_t vocab_size = 0;
  int64_t max_context = 0;              // prompt + max_tokens must fit
  std::vector<int32_t> stop_token_ids;  // end-of-sequence ids: finish "stop", never shown as text
};

struct CompletionRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;  // stop_strings are applied to text by CompletionText, not the sampler
  bool stream = false;
};

// ApiError (400, naming the param) for malformed JSON, missing or wrong-typed fields,
// out-of-range values, ids outside the vocabulary, broken UTF-8, n > 1, and prompt +
// max_tokens beyond the context.
CompletionRequest parse_completion_request(std::string_view body, const Tokenizer& tokenizer,
                                           const ModelLimits& limits);

// One request's generated ids to text. on_token() returns the text that is final now;
// finish() the rest. Stop token ids produce no text; once a stop string is seen, stopped()
// turns true and nothing more is returned. Not thread-safe: one per request.
class CompletionText {
 public:
  CompletionText(const Tokenizer& tokenizer, const std::vector<int32_t>& stop_token_ids,
                 std::vector<std::string> stop_strings);
  std::string on_token(int32_t id);
  std::string finish();
  bool stopped() const { return stops_.stopped(); }

 private:
  IncrementalDetokenizer detok_;
  StopStringMatcher stops_;
  std::vector<int32_t> stop_ids_;
  bool finished_ = false;
};

// Identity shared by the response and every chunk of one completion.
struct CompletionMeta {
  std::string id;  // "cmpl-..."
  std::string model;
  int64_t created = 0;  // unix seconds
};

nlohmann::json completion_response(const CompletionMeta& meta, const std::string& text, const std::string& finish_reason,
                                   int64_t prompt_tokens, int64_t completion_tokens);
// One server-sent event: "data: {chunk}\n\n"; finish_reason empty = null (more to come).
std::string completion_chunk_event(const CompletionMeta& meta, const std::string& text,
                                   const std::string& finish_reason);
inline constexpr std::string_view kDoneEvent = "data: [DONE]\n\n";

}  // namespace statelm::server
