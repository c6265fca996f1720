// `statelm perplexity` end to end: the JSON figures agree with the demo model's PyTorch
// reference, and bad input is one clear line with exit code 1.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "unit/test_support.h"

namespace statelm {
namespace {

std::string demo() { return (test::source_dir() / "models/shakespeare-mamba2").string(); }
std::string validation() { return (test::source_dir() / "models/tinyshakespeare-validation.txt").string(); }

TEST(CliPerplexity, JsonMatchesThePyTorchReference) {
  auto r = test::run_statelm("perplexity " + demo() + " --file " + validation() +
                             " --context 128 --limit-tokens 4096 --batch 8 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["tokens"], 4096);
  EXPECT_EQ(j["windows"], 32);
  EXPECT_EQ(j["scored"], 4064);
  auto ref = nlohmann::json::parse(test::read_file(test::source_dir() / "models/shakespeare-mamba2/reference.json"));
  double expected = 0;
  for (const auto& p : ref["perplexity"])
    if (p["context"] == 128) expected = p["perplexity"];
  ASSERT_GT(expected, 1.0);
  EXPECT_NEAR(j["perplexity"].get<double>() / expected, 1.0, 1e-5);
}

TEST(CliPerplexity, BadInputIsOneLine) {
  auto missing = test::run_statelm("perplexity " + demo() + " --file /nonexistent/text.txt");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("/nonexistent/text.txt"), std::string::npos) << missing.err;

  test::TempDir tmp;
  const auto one_token = tmp / "one.txt";
  test::write_file(one_token, "A");
  auto short_text = test::run_statelm("perplexity " + demo() + " --file " + one_token.string());
  EXPECT_EQ(short_text.exit_code, 1);
  EXPECT_NE(short_text.err.find("need at least 2"), std::string::npos) << short_text.err;

  auto bad_context = test::run_statelm("perplexity " + demo() + " --file " + validation() + " --context 1");
  EXPECT_NE(bad_context.exit_code, 0);
}

}  // namespace
}  // namespace statelm
