// Generated ids to the text a client sees (UTF-8-safe, stop strings held back until they
// cannot match), shared by both endpoints. The `text_completion` shape of POST /v1/completions
// is completion_shape() (server/response_shape.h); request parsing is
// server/generation_request.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/stop_strings.h"
#include "tokenizer/tokenizer.h"

namespace statelm::server {

// One choice's generated ids to text. on_token() returns the text that is final now;
// finish() the rest. Stop token ids produce no text; once a stop string is seen, stopped()
// turns true and nothing more is returned. Not thread-safe: one per choice.
class CompletionText {
 public:
  CompletionText(const Tokenizer& tokenizer, const std::vector<int32_t>& stop_token_ids,
                 std::vector<std::string> stop_strings);
  std::string on_token(int32_t id);
  std::string finish();
  bool stopped() const { return stops_.stopped(); }
  bool is_stop_token(int32_t id) const;

 private:
  IncrementalDetokenizer detok_;
  StopStringMatcher stops_;
  std::vector<int32_t> stop_ids_;
  bool finished_ = false;
};

}  // namespace statelm::server
