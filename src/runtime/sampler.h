// Sampling the next token from logits, as users of transformers / vLLM expect:
//   repetition penalty (transformers' rule: divide positive logits, multiply negative ones, for
//   every token already in the sequence) -> temperature -> top-k -> top-p -> min-p -> draw.
// temperature 0 (or greedy) is argmax. The draw is counter-based (ops/sampling_math.h): token n
// of a request comes from (seed, n) alone, so a seed gives the same tokens every run, on every
// backend (Backend::sample), batched or alone, preempted or not.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ops/sample_reference.h"

namespace statelm {

struct SamplingParams {
  bool greedy = false;
  float temperature = 1.0f;         // 0 = greedy
  int32_t top_k = 0;                // 0 = off
  float top_p = 1.0f;               // 1 = off
  float min_p = 0.0f;               // 0 = off; keeps tokens with p >= min_p * p_max
  float repetition_penalty = 1.0f;  // 1 = off
  uint64_t seed = 0;
  int64_t max_tokens = 128;
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop_strings;
  // Log-probabilities reported with each sampled token (OpenAI's `logprobs`): -1 = none (the
  // hot path computes nothing), 0 = the chosen token's only, k > 0 = also the k most likely.
  int32_t logprobs = -1;

  // Error(InvalidArgument) naming the field for out-of-range values.
  void validate() const;
};

// One token and its log-probability.
struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0;
};

// log-softmax of the model's raw logits -- before repetition penalty, temperature, top-k/p and
// min-p, i.e. the model's own distribution, which is what vLLM reports by default -- for
// `chosen`, and in `top` the `k` most likely tokens, best first (ties: lower id first).
float token_logprobs(std::span<const float> logits, int32_t chosen, int32_t k, std::vector<TokenLogprob>& top);

// The Backend::sample row for a sequence with these params that has sampled `step` tokens so
// far; `history` (prompt + generated) is what the repetition penalty applies to, referenced, not
// copied (it must outlive the sample call). Reads logits row 0; set logits_row for another.
SampleRow sample_row(const SamplingParams& params, std::span<const int32_t> history, uint64_t step);

// One sequence's draws on the host, from host logits: the reference (ops/sample_reference.h),
// so it picks what Backend::sample picks for sample_row(params, history, draws so far).
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // `history`: every token of the sequence so far (prompt + generated), for the penalty.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);

 private:
  SamplingParams p_;
  uint64_t step_ = 0;
  SampleWorkspace work_;
};

}  // namespace statelm
