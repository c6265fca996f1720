// `statelm inspect` end to end: the numbers it prints, and one-line errors with a non-zero
// exit for broken model folders.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "unit/test_support.h"

namespace statelm {
namespace {

namespace fs = std::filesystem;

nlohmann::json inspect_json(const std::string& args) {
  test::CommandResult r = test::run_statelm("inspect " + args + " --json");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out);
}

// A failing command prints exactly one line on stderr, starting "statelm: error:".
void expect_one_line_error(const test::CommandResult& r, const std::string& must_contain) {
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err.rfind("statelm: error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(must_contain), std::string::npos) << r.err;
}

TEST(CliInspect, JambaNumbers) {
  auto j = inspect_json(test::fixture("models/jamba-tiny").string() + " --context 1000 --batch 3 --kv-dtype bf16");
  EXPECT_EQ(j["architecture"], "jamba");
  EXPECT_EQ(j["mixer_pattern"], "MMAM");
  EXPECT_EQ(j["ffn_pattern"], "FEFE");
  EXPECT_EQ(j["state_bytes_per_sequence"], 3 * 128 * 3 * 4 + 3 * 128 * 6 * 4);
  EXPECT_EQ(j["kv_bytes_per_token"], 2 * 2 * 16 * 2);
  EXPECT_EQ(j["memory"][0]["bytes"], 3 * (13824 + 1008 * 128));  // KV in whole blocks of 16 tokens
  EXPECT_EQ(j["weight_bytes"], fs::file_size(test::fixture("models/jamba-tiny/model.safetensors")) -
                                   /* header */ (fs::file_size(test::fixture("models/jamba-tiny/model.safetensors")) -
                                                  j["parameters"].get<size_t>() * 4));
  EXPECT_EQ(j["parameters"], 311664);  // by hand: 2 * 13760 (embedding, lm_head) + 64 + layers 47376 + 102928 + 30848 + 102928
}

TEST(CliInspect, EveryFixtureFamily) {
  struct Case { const char* model; const char* arch; int64_t state; int64_t kv; };
  for (Case c : {Case{"mamba-tiny", "mamba", 7680, 0}, Case{"mamba-tiny-ssm", "mamba", 7680, 0},
                 Case{"mamba2-tiny", "mamba2", 16512, 0}, Case{"llama-tiny", "llama", 0, 512},
                 Case{"llama3-tiny", "llama", 0, 2 * 2 * 2 * 8 * 4}}) {
    auto j = inspect_json(test::fixture(std::string("models/") + c.model).string());
    EXPECT_EQ(j["architecture"], c.arch) << c.model;
    EXPECT_EQ(j["state_bytes_per_sequence"], c.state) << c.model;
    EXPECT_EQ(j["kv_bytes_per_token"], c.kv) << c.model;
  }
}

TEST(CliInspect, HumanOutputMentionsTheFigures) {
  test::CommandResult r = test::run_statelm("inspect " + test::fixture("models/mamba2-tiny").string());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("mamba2"), std::string::npos);
  EXPECT_NE(r.out.find("conv 4224 B + ssm 12288 B"), std::string::npos) << r.out;
}

TEST(CliInspect, ConfigOnlyGivesEstimates) {
  test::TempDir dir;
  fs::copy_file(test::fixture("models/llama-tiny/config.json"), dir / "config.json");
  auto j = inspect_json((dir / "config.json").string());
  EXPECT_FALSE(j["has_weights"].get<bool>());
  EXPECT_EQ(j["weight_bytes"], j["parameters"].get<int64_t>() * 2);
}

TEST(CliInspect, Errors) {
  expect_one_line_error(test::run_statelm("inspect /no/such/model"), "/no/such/model");
  test::TempDir dir;
  test::write_file(dir / "config.json", R"({"model_type": "rwkv"})");
  expect_one_line_error(test::run_statelm("inspect " + dir.path().string()), "model_type \"rwkv\" is not supported");
  test::write_file(dir / "config.json", test::read_file(test::fixture("models/mamba-tiny/config.json")));
  test::write_file(dir / "model.safetensors", "garbage");
  expect_one_line_error(test::run_statelm("inspect " + dir.path().string()), "model.safetensors");
  expect_one_line_error(test::run_statelm("inspect " + test::fixture("models/mamba-tiny").string() + " --kv-dtype int3"),
                        "--kv-dtype");
}

// The plan of every fixture family, run: what the runner holds after loading is the plan's
// weights + state + KV to the byte (host buffers, 64-byte rounded), and the peak of a prefill
// of B sequences plus a decode step is within 5% of the planned total.
TEST(CliInspect, MeasureAgreesWithThePlan) {
  for (const char* model : {"mamba-tiny", "mamba2-tiny", "jamba-tiny", "llama-tiny"}) {
    auto j = inspect_json(test::fixture(std::string("models/") + model).string() +
                          " --context 200 --batch 3 --chunk 64 --state-dtype bfloat16 --measure");
    const auto& m = j["measured"];
    EXPECT_EQ(m["loaded"], m["planned_loaded"]) << model;
    EXPECT_EQ(m["planned_peak"], j["plans"][0]["total"]) << model;
    const double planned = m["planned_peak"].get<double>(), peak = m["peak"].get<double>();
    EXPECT_NEAR(peak, planned, 0.05 * planned) << model;
    EXPECT_FALSE(m["random_weights"].get<bool>()) << model;
  }
}

// --fast-forward: only each sequence's last chunk is prefilled (the rest jumped over, KV reserved);
// the memory is the same as a full prefill's, which is what the plan is checked against.
TEST(CliInspect, MeasureFastForwardAgreesWithThePlan) {
  for (const char* model : {"jamba-tiny", "llama-tiny"}) {
    auto j = inspect_json(test::fixture(std::string("models/") + model).string() +
                          " --context 1000 --batch 2 --chunk 64 --measure --fast-forward");
    const auto& m = j["measured"];
    EXPECT_TRUE(m["fast_forward"].get<bool>()) << model;
    EXPECT_EQ(m["loaded"], m["planned_loaded"]) << model;
    const double planned = m["planned_peak"].get<double>(), peak = m["peak"].get<double>();
    EXPECT_NEAR(peak, planned, 0.05 * planned) << model;
  }
  expect_one_line_error(test::run_statelm("inspect " + test::fixture("models/llama-tiny").string() +
                                          " --context 100 --fast-forward"),
                        "--fast-forward: only with --measure");
}

TEST(CliInspect, PlanOfALargeConfigOnTheGpu) {
  // The real Jamba-v0.1 config: 52B parameters, 12B active; bf16 weights of ~103 GB; the KV
  // cache of 4 attention layers at 256K tokens is 4 GiB (the paper's "4 GB").
  auto j = inspect_json((test::source_dir() / "bench/configs/jamba-v0.1.json").string() +
                        " --device cuda --context 262144 --batch 1");
  EXPECT_EQ(j["compute_dtype"], "bfloat16");
  EXPECT_NEAR(j["parameters"].get<double>(), 51.6e9, 0.1e9);
  EXPECT_NEAR(j["active_parameters"].get<double>(), 12.1e9, 0.1e9);
  EXPECT_GE(j["plans"][0]["kv"].get<int64_t>(), int64_t(4) << 30);
  EXPECT_LT(j["plans"][0]["kv"].get<int64_t>(), (int64_t(4) << 30) + (int64_t(64) << 20));  // allocator rounding only
  EXPECT_NEAR(j["plans"][0]["weights"].get<double>(), 103.2e9, 0.4e9);
  test::CommandResult r = test::run_statelm("inspect " + (test::source_dir() / "bench/configs/jamba-v0.1.json").string() +
                                            " --device cuda --context 262144");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("51.57B"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("12.1"), std::string::npos) << r.out;
}

TEST(CliInspect, MeasureErrors) {
  const std::string model = test::fixture("models/mamba2-tiny").string();
  expect_one_line_error(test::run_statelm("inspect " + model + " --measure"), "--measure: give one --context");
  expect_one_line_error(test::run_statelm("inspect " + model + " --context 10 --chunk 0"), "--chunk");
  expect_one_line_error(test::run_statelm("inspect " + model + " --context 10 --kv-dtype bf16 --dtype float32"),
                        "the KV cache is in the compute dtype");
}

}  // namespace
}  // namespace statelm
