// `statelm bench` end to end on tiny shapes: every case runs and reports consistent figures,
// a bare config.json runs with --random-weights, and a case that cannot fit is a clear error.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "unit/test_support.h"

namespace statelm {
namespace {

TEST(CliBench, HybridCasesReportTimeBytesAndFlops) {
  auto r = test::run_statelm("bench " + test::fixture("models/jamba-tiny").string() +
                             " --prefill 40,70 --chunk 32 --decode-batch 1,3 --context 30 --decode-steps 2 --repeats 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["cases"].size(), 4u);
  EXPECT_GT(j["copy_bytes_per_second"].get<double>(), 0);
  EXPECT_GT(j["matmul_flops_per_second"].get<double>(), 0);
  const auto& prefill = j["cases"][1];
  EXPECT_EQ(prefill["kind"], "prefill");
  EXPECT_EQ(prefill["tokens"], 70);
  EXPECT_EQ(prefill["steps"], 3) << "70 tokens in chunks of 32";
  const auto& decode = j["cases"][3];
  EXPECT_EQ(decode["kind"], "decode");
  EXPECT_EQ(decode["batch"], 3);
  EXPECT_EQ(decode["tokens"], 6);
  EXPECT_GT(decode["kv_bytes"].get<double>(), 0) << "the attention layer reads its cache";
  EXPECT_GT(decode["state_bytes"].get<double>(), 0) << "the Mamba layers read and write their state";
  for (const auto& c : j["cases"]) {
    EXPECT_GT(c["seconds"].get<double>(), 0);
    EXPECT_NEAR(c["tokens_per_second"].get<double>(), c["tokens"].get<double>() / c["seconds"].get<double>(), 1e-6 * c["tokens_per_second"].get<double>());
    EXPECT_GT(c["fraction_of_copy_bandwidth"].get<double>(), 0);
  }
}

TEST(CliBench, BareConfigWithRandomWeights) {
  test::TempDir tmp;
  std::filesystem::copy_file(test::fixture("models/mamba2-tiny/config.json"), tmp / "config.json");
  auto r = test::run_statelm("bench " + (tmp / "config.json").string() +
                             " --random-weights --prefill 16 --decode-batch 2 --context 8 --decode-steps 2 --repeats 1 --no-roofline");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("random"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("decode"), std::string::npos) << r.out;
}

// --sweep context: a hybrid's memory per sequence grows with the context (its KV cache) and its
// largest batch shrinks; a pure Mamba-2's stays flat; a context beyond memory is reported as
// not fitting, not measured and not fatal.
TEST(CliBench, ContextSweepShowsMemoryGrowthAndLimits) {
  auto sweep = [](const std::string& model) {
    auto r = test::run_statelm("bench " + test::fixture("models/" + model).string() +
                               " --sweep context --sweep-contexts 32,256,100000000000 --decode-steps 2 --chunk 64 --json");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return nlohmann::json::parse(r.out.empty() ? "{}" : r.out);
  };
  const auto hybrid = sweep("jamba-tiny"), ssm = sweep("mamba2-tiny");
  for (const auto* j : {&hybrid, &ssm}) {
    ASSERT_EQ((*j)["points"].size(), 3u);
    for (int i = 0; i < 2; ++i) {
      const auto& p = (*j)["points"][i];
      EXPECT_GT(p["prefill_tokens_per_second"].get<double>(), 0);
      EXPECT_GT(p["decode_ms_per_step"].get<double>(), 0);
      EXPECT_GE(p["max_batch"].get<int64_t>(), 1);
    }
  }
  const auto& h = hybrid["points"];
  EXPECT_GT(h[1]["bytes_per_sequence"].get<int64_t>(), h[0]["bytes_per_sequence"].get<int64_t>());
  EXPECT_LT(h[1]["max_batch"].get<int64_t>(), h[0]["max_batch"].get<int64_t>());
  EXPECT_EQ(h[2]["max_batch"], 0) << "10^11 tokens of KV cannot fit";
  EXPECT_FALSE(h[2].contains("decode_ms_per_step"));
  const auto& m = ssm["points"];
  EXPECT_EQ(m[0]["bytes_per_sequence"], m[2]["bytes_per_sequence"]) << "a Mamba state does not grow";
  EXPECT_EQ(m[0]["kv_bytes"], 0);
}

TEST(CliBench, MissingWeightsWithoutRandomIsAnError) {
  test::TempDir tmp;
  std::filesystem::copy_file(test::fixture("models/mamba2-tiny/config.json"), tmp / "config.json");
  auto r = test::run_statelm("bench " + tmp.path().string() + " --prefill 16 --no-roofline");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_FALSE(r.err.empty());
}

}  // namespace
}  // namespace statelm
