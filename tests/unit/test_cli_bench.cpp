// `statelm bench` end to end on tiny shapes: every case runs and reports consistent figures,
// a bare config.json runs with --random-weights, and a case that cannot fit is a clear error.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "runtime/context_sweep.h"
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

// Prefills too long for the sweep's time are skipped (and say why) while their context still
// gets its decode and memory figures; --json-file holds the result after every context.
TEST(CliBench, ContextSweepSkipsLongPrefillsButStillDecodes) {
  test::TempDir tmp;
  const auto file = tmp / "sweep.json";
  auto r = test::run_statelm("bench " + test::fixture("models/llama-tiny").string() +
                             " --sweep context --sweep-contexts 16,64,4096,100000 --sweep-max-prefill 50000 "
                             "--sweep-prefill-seconds 0.000001 --decode-steps 2 --repeats 1 --chunk 32 --json --json-file " +
                             file.string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(nlohmann::json::parse(test::read_file(file)), j);
  EXPECT_TRUE(j["complete"].get<bool>());
  EXPECT_NE(j["decode_method"].get<std::string>().find("fast-forwarded"), std::string::npos);
  const auto& p = j["points"];
  ASSERT_EQ(p.size(), 4u);
  EXPECT_TRUE(p[0].contains("prefill_seconds")) << "nothing to estimate from: the first prefill runs";
  for (int i = 1; i < 4; ++i) {
    EXPECT_FALSE(p[i].contains("prefill_seconds")) << i;
    EXPECT_GT(p[i]["decode_ms_per_step"].get<double>(), 0) << i;
  }
  EXPECT_NE(p[1]["prefill_skipped"].get<std::string>().find("estimated"), std::string::npos) << p[1];
  EXPECT_GT(p[2]["prefill_estimate_seconds"].get<double>(), p[1]["prefill_estimate_seconds"].get<double>());
  EXPECT_NE(p[3]["prefill_skipped"].get<std::string>().find("longest prefill"), std::string::npos) << p[3];
}

// The estimate behind --sweep-prefill-seconds: a L + b L^2 through the last two prefills.
TEST(ContextSweep, PrefillEstimateFollowsLinearAndQuadraticGrowth) {
  using M = std::vector<std::pair<int64_t, double>>;
  EXPECT_EQ(estimate_prefill_seconds(M{}, 1000), 0.0);
  EXPECT_DOUBLE_EQ(estimate_prefill_seconds(M{{1000, 2.0}}, 4000), 8.0);
  EXPECT_NEAR(estimate_prefill_seconds(M{{1000, 1.0}, {2000, 2.0}}, 8000), 8.0, 1e-9) << "linear";
  // t = 1e-3 L + 1e-6 L^2
  auto t = [](double L) { return 1e-3 * L + 1e-6 * L * L; };
  EXPECT_NEAR(estimate_prefill_seconds(M{{500, t(500)}, {1000, t(1000)}, {4000, t(4000)}}, 64000), t(64000), 1e-6);
  // A per-token cost that falls (launch overheads at short lengths): linear from the last point.
  EXPECT_NEAR(estimate_prefill_seconds(M{{1000, 1.0}, {2000, 1.5}}, 4000), 3.0, 1e-9);
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
