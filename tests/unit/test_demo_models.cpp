// The shipped demo models (models/shakespeare-*, trained by tools/train_demo.py) against the
// references PyTorch computed from the same bf16 weights in float32 on the CPU: validation
// perplexity on the first 4096 tokens of the held-out text (two window lengths), the tokenizer
// on the prompts, and greedy continuations token for token.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "runtime/generate.h"
#include "runtime/perplexity.h"
#include "tokenizer/tokenizer.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

class DemoModel : public ::testing::TestWithParam<std::string> {
 protected:
  std::filesystem::path dir() const { return test::source_dir() / "models" / GetParam(); }
  nlohmann::json reference() const { return nlohmann::json::parse(test::read_file(dir() / "reference.json")); }
};

TEST_P(DemoModel, ValidationPerplexityMatchesPyTorch) {
  const auto ref = reference();
  const Tokenizer tok = Tokenizer::from_file((dir() / "tokenizer.json").string());
  const std::vector<int32_t> all = tok.encode(test::read_file(test::source_dir() / "models/tinyshakespeare-validation.txt"));
  int checked = 0;
  for (const auto& p : ref["perplexity"]) {
    if (p["limit_tokens"].is_null()) continue;  // the whole text: too slow for every CI run
    const int64_t context = p["context"], limit = p["limit_tokens"];
    ASSERT_GE(int64_t(all.size()), limit);
    CpuBackend cpu;
    RunnerOptions o;
    o.max_sequences = 4;
    o.max_context = context;
    ModelRunner runner(dir().string(), cpu, o);
    const PerplexityResult r = evaluate_perplexity(runner, std::span(all).first(size_t(limit)), context);
    EXPECT_EQ(r.scored, p["scored"].get<int64_t>());
    const double expected = p["perplexity"];
    // The issue asks for 1e-3; both sides are fp32 over the same weights, so it is ~1e-7.
    EXPECT_NEAR(r.perplexity() / expected, 1.0, 1e-5) << "context " << context << ": statelm " << r.perplexity()
                                                        << ", PyTorch " << expected;
    ++checked;
  }
  EXPECT_EQ(checked, 2);
}

TEST_P(DemoModel, GreedyContinuationsMatchTransformers) {
  const auto ref = reference();
  const Tokenizer tok = Tokenizer::from_file((dir() / "tokenizer.json").string());
  CpuBackend cpu;
  RunnerOptions o;
  o.max_sequences = 1;
  o.max_context = 256;
  ModelRunner runner(dir().string(), cpu, o);
  ASSERT_FALSE(ref["greedy"].empty());
  for (const auto& g : ref["greedy"]) {
    const std::string prompt = g["prompt"];
    const auto ids = tok.encode(prompt);
    ASSERT_EQ(ids, g["prompt_ids"].get<std::vector<int32_t>>()) << prompt;
    SamplingParams sp;
    sp.greedy = true;
    sp.max_tokens = int64_t(g["new_tokens"].size());
    const GenerationResult r = generate(runner, ids, sp);
    EXPECT_EQ(r.tokens, g["new_tokens"].get<std::vector<int32_t>>()) << prompt;
    EXPECT_EQ(tok.decode(r.tokens), g["text"].get<std::string>()) << prompt;
  }
}

INSTANTIATE_TEST_SUITE_P(Shipped, DemoModel, ::testing::Values("shakespeare-mamba2", "shakespeare-jamba"),
                         [](const auto& info) { return test::param_name(info.param); });

}  // namespace
}  // namespace statelm
