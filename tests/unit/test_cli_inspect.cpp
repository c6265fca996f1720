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
  EXPECT_EQ(j["memory"][0]["bytes"], 3 * (13824 + 1000 * 128));
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

}  // namespace
}  // namespace statelm
