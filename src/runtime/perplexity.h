// Perplexity of a model over a token stream: the quality figure that random weights cannot
// give. Definition (the same as tools/train_demo.py computes with PyTorch, so the two agree):
// the stream is cut into consecutive windows of `context` tokens (the last one may be shorter,
// and is skipped when it has a single token); each window runs from an empty state (a fresh
// sequence), and every token after the first of its window is scored by the log-softmax of the
// logits that precede it. perplexity = exp(sum of negative log-likelihoods / tokens scored).
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <span>

#include "runtime/model_runner.h"

namespace statelm {

struct PerplexityResult {
  int64_t tokens = 0;   // tokens of the stream evaluated
  int64_t windows = 0;
  int64_t scored = 0;   // predictions scored: tokens - windows
  double nll_sum = 0;   // natural log
  double seconds = 0;
  double mean_nll() const { return scored ? nll_sum / double(scored) : 0.0; }
  double perplexity() const { return std::exp(mean_nll()); }
};

// Runs up to runner.max_sequences() windows per forward step. progress(done, total windows)
// is called after each step when set. Error(InvalidArgument) for context < 2, a stream of
// fewer than 2 tokens, or a context the runner cannot hold.
PerplexityResult evaluate_perplexity(ModelRunner& runner, std::span<const int32_t> ids, int64_t context,
                                     const std::function<void(int64_t, int64_t)>& progress = {});

// -log softmax(logits)[target] over one row of logits, in double precision.
double token_nll(std::span<const float> logits, int32_t target);

}  // namespace statelm
