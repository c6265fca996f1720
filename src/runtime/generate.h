// One sequence from prompt to finish: prefill, then token-by-token decode through the state,
// sampling each next token. The CLI's `generate` and `run` use it; the server's scheduler
// batches many such sequences instead.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <vector>

#include "runtime/model_runner.h"
#include "runtime/sampler.h"

namespace statelm {

struct GenerationResult {
  std::vector<int32_t> tokens;      // generated (the stop token, if any, included)
  std::string finish_reason;        // "stop" (stop token or on_token said so) | "length"
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0;
};

// on_token(id) is called for each generated token; returning false stops (finish "stop").
GenerationResult generate(ModelRunner& runner, std::span<const int32_t> prompt, const SamplingParams& params,
                          const std::function<bool(int32_t)>& on_token = {});

// The same loop on a sequence that already holds a state (a restored session): `context` is
// the conversation's tokens from position `context_start` on (a snapshot keeps only its last
// ids); the tokens past seq.n_tokens are fed first, and the generated ones are appended to it.
// The last generated token is not fed (it stays pending, so a snapshot taken now continues
// exactly).
GenerationResult continue_generation(ModelRunner& runner, Sequence& seq, std::vector<int32_t>& context,
                                     const SamplingParams& params, const std::function<bool(int32_t)>& on_token = {},
                                     int64_t context_start = 0);

}  // namespace statelm
