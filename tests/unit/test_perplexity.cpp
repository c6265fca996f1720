// evaluate_perplexity's definition: windows of `context` tokens from an empty state, the
// first token of each window unscored, a trailing single token not a window; checked against
// a direct computation from one full forward per window.
#include <gtest/gtest.h>

#include <cmath>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "runtime/perplexity.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

TEST(Perplexity, TokenNllIsMinusLogSoftmax) {
  const std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  const double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  EXPECT_NEAR(token_nll(logits, 2), -std::log(std::exp(3.0) / z), 1e-12);
  EXPECT_NEAR(token_nll(logits, 0), -std::log(std::exp(1.0) / z), 1e-12);
  // Large logits must not overflow.
  EXPECT_NEAR(token_nll(std::vector<float>{1000.0f, 1000.0f}, 1), std::log(2.0), 1e-12);
}

TEST(Perplexity, WindowsFromEmptyStateMatchDirectComputation) {
  CpuBackend cpu;
  RunnerOptions o;
  o.max_sequences = 2;  // 3 windows: two steps, the second with one window
  o.max_context = 16;
  const std::string model = test::fixture("models/mamba2-tiny").string();
  ModelRunner runner(model, cpu, o);
  std::vector<int32_t> ids;
  for (int i = 0; i < 16 * 2 + 9; ++i) ids.push_back((i * 37 + 11) % 200);
  ids.push_back(5);  // 42 tokens: windows of 16, 16, 10 (the last shorter)

  const PerplexityResult r = evaluate_perplexity(runner, ids, 16);
  EXPECT_EQ(r.windows, 3);
  EXPECT_EQ(r.tokens, 42);
  EXPECT_EQ(r.scored, 15 + 15 + 9);

  double nll = 0;
  for (size_t begin = 0; begin < ids.size(); begin += 16) {
    std::vector<int32_t> w(ids.begin() + long(begin), ids.begin() + long(std::min(ids.size(), begin + 16)));
    Sequence seq = runner.open();
    Sequence* seqs[] = {&seq};
    const auto logits = runner.step(seqs, std::span(&w, 1), true);
    const size_t V = size_t(runner.spec().vocab_size);
    for (size_t t = 0; t + 1 < w.size(); ++t) nll += token_nll(std::span(logits).subspan(t * V, V), w[t + 1]);
    runner.close(seq);
  }
  EXPECT_NEAR(r.nll_sum, nll, 1e-9 * nll);
  EXPECT_NEAR(r.perplexity(), std::exp(nll / 39), 1e-9);
  EXPECT_EQ(runner.free_slots(), 2) << "every window's slot is given back";
}

TEST(Perplexity, TrailingSingleTokenIsNotAWindow) {
  CpuBackend cpu;
  RunnerOptions o;
  o.max_sequences = 1;
  o.max_context = 8;
  ModelRunner runner(test::fixture("models/mamba2-tiny").string(), cpu, o);
  const std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  const PerplexityResult r = evaluate_perplexity(runner, ids, 8);
  EXPECT_EQ(r.windows, 1);
  EXPECT_EQ(r.scored, 7);
  EXPECT_EQ(r.tokens, 9);
}

TEST(Perplexity, RejectsBadArguments) {
  CpuBackend cpu;
  RunnerOptions o;
  o.max_sequences = 1;
  o.max_context = 8;
  ModelRunner runner(test::fixture("models/mamba2-tiny").string(), cpu, o);
  const std::vector<int32_t> ids = {1, 2, 3};
  EXPECT_THROW(evaluate_perplexity(runner, ids, 1), Error);
  EXPECT_THROW(evaluate_perplexity(runner, std::span(ids).first(1), 8), Error);
  // A pure Mamba model holds any context (no KV cache); a hybrid's KV cache is sized to 8.
  EXPECT_NO_THROW(evaluate_perplexity(runner, ids, 1 << 20));
  ModelRunner hybrid(test::fixture("models/jamba-tiny").string(), cpu, o);
  EXPECT_THROW(evaluate_perplexity(hybrid, ids, 1 << 20), Error) << "a context the KV cache cannot hold";
}

}  // namespace
}  // namespace statelm
