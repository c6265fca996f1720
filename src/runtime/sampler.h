// Sampling the next token from logits, as users of transformers / vLLM expect:
//   repetition penalty (transformers' rule: divide positive logits, multiply negative ones, for
//   every token already in the sequence) -> temperature -> top-k -> top-p -> min-p -> draw.
// temperature 0 (or greedy) is argmax. A seeded sampler draws the same tokens every run.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

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

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // `history`: every token of the sequence so far (prompt + generated), for the penalty.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> history);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<float> work_;
  std::vector<int32_t> order_;
};

}  // namespace statelm
