// config.json -> ModelSpec for every family and layout, and the memory figures that
// `statelm inspect` and the planner print — checked against numbers computed by hand here.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "model/arch/arch.h"
#include "model/model_files.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

using nlohmann::json;

json fixture_config(const std::string& model) {
  return json::parse(read_text_file(test::fixture("models/" + model + "/config.json").string()));
}

ModelSpec spec_of(const json& config) { return spec_from_config(ConfigReader(config, "config.json")); }

// Expects building a spec from `config` to fail with `kind`, mentioning each of `parts`.
void expect_config_error(const json& config, ErrorKind kind, std::initializer_list<const char*> parts) {
  try {
    spec_of(config);
    ADD_FAILURE() << "no error for " << config.dump();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    std::string msg = e.what();
    EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
    for (const char* p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

TEST(ModelSpec, MambaFixtureStateBytesByHand) {
  json c = fixture_config("mamba-tiny");
  ModelSpec s = open_model_files(test::fixture("models/mamba-tiny").string()).spec;
  EXPECT_EQ(s.architecture, "mamba");
  EXPECT_EQ(s.mixer_pattern(), "MM");
  EXPECT_TRUE(s.tie_embeddings);
  const int64_t d_inner = c["expand"].get<int64_t>() * c["hidden_size"].get<int64_t>();  // 96
  const int64_t k = c["conv_kernel"], n = c["state_size"], layers = c["num_hidden_layers"];
  MemoryFigures m = memory_figures(s, DType::F32, DType::F32);
  EXPECT_EQ(m.conv_state_bytes, layers * d_inner * (k - 1) * 4);  // 2 * 96 * 3 * 4 = 2304
  EXPECT_EQ(m.ssm_state_bytes, layers * d_inner * n * 4);         // 2 * 96 * 7 * 4 = 5376
  EXPECT_EQ(m.state_bytes(), 7680);
  EXPECT_EQ(m.kv_bytes_per_token, 0);
  EXPECT_EQ(m.bytes_for(3, 1 << 20), 3 * 7680);  // no growth with context
}

TEST(ModelSpec, Mamba2FixtureStateBytesByHand) {
  json c = fixture_config("mamba2-tiny");
  ModelSpec s = open_model_files(test::fixture("models/mamba2-tiny").string()).spec;
  const auto& m2 = std::get<Mamba2Dims>(s.layers[0].mixer);
  EXPECT_EQ(m2.n_heads, 8);
  EXPECT_EQ(m2.n_groups, 2);
  EXPECT_EQ(m2.chunk_size, 16);
  EXPECT_EQ(m2.norm_group_size, 128);  // transformers normalises all of d_inner at once
  EXPECT_FALSE(m2.dt_limited);         // (0, {"__float__": "Infinity"}) = no limit
  const int64_t d_inner = 128, n = c["state_size"], g = c["n_groups"], k = c["conv_kernel"];
  const int64_t conv_dim = d_inner + 2 * g * n;  // 176
  MemoryFigures m = memory_figures(s, DType::F32, DType::BF16);
  EXPECT_EQ(m.conv_state_bytes, 2 * conv_dim * (k - 1) * 4);                    // 4224
  EXPECT_EQ(m.ssm_state_bytes, 2 * c["num_heads"].get<int64_t>() * 16 * n * 4);  // 12288
  MemoryFigures half = memory_figures(s, DType::BF16, DType::BF16);
  EXPECT_EQ(half.ssm_state_bytes * 2, m.ssm_state_bytes);
  EXPECT_EQ(half.conv_state_bytes, m.conv_state_bytes);  // the conv window stays fp32
}

TEST(ModelSpec, JambaFixtureLayerPatternAndKvByHand) {
  ModelSpec s = open_model_files(test::fixture("models/jamba-tiny").string()).spec;
  // attn_layer_period 4 / offset 2; expert_layer_period 2 / offset 1.
  EXPECT_EQ(s.mixer_pattern(), "MMAM");
  EXPECT_EQ(s.ffn_pattern(), "FEFE");
  const auto& mamba = std::get<Mamba1Dims>(s.layers[0].mixer);
  EXPECT_TRUE(mamba.dt_bc_norms);
  EXPECT_EQ(mamba.dt_rank, 4);  // ceil(64 / 16)
  const auto& attn = std::get<AttentionDims>(s.layers[2].mixer);
  EXPECT_EQ(attn.rope.kind, RopeKind::None);
  const auto& moe = std::get<MoeDims>(s.layers[1].ffn);
  EXPECT_EQ(moe.n_experts, 4);
  EXPECT_EQ(moe.top_k, 2);
  EXPECT_FALSE(moe.renormalize);
  MemoryFigures m = memory_figures(s, DType::F32, DType::BF16);
  EXPECT_EQ(m.kv_bytes_per_token, 1 * 2 * 2 * 16 * 2);  // 1 layer * (K+V) * 2 kv heads * 16 dims * 2 B
  EXPECT_EQ(m.conv_state_bytes, 3 * 128 * 3 * 4);
  EXPECT_EQ(m.ssm_state_bytes, 3 * 128 * 6 * 4);
  // Two of four experts active in two MoE layers: 2 layers * 2 experts * 3 * 96 * 64 fewer.
  EXPECT_EQ(parameter_count(s) - active_parameter_count(s), 2 * 2 * 3 * 96 * 64);
}

TEST(ModelSpec, LlamaFixtureRopeAndKvByHand) {
  ModelSpec s = open_model_files(test::fixture("models/llama-tiny").string()).spec;
  const auto& a = std::get<AttentionDims>(s.layers[0].mixer);
  EXPECT_EQ(a.rope.kind, RopeKind::Default);
  EXPECT_DOUBLE_EQ(a.rope.theta, 10000.0);  // from transformers 5's rope_parameters
  EXPECT_EQ(a.head_dim, 16);
  EXPECT_EQ(a.rope.rotary_dim, 16);
  MemoryFigures m = memory_figures(s, DType::F32, DType::F32);
  EXPECT_EQ(m.kv_bytes_per_token, 2 * 2 * 2 * 16 * 4);  // 2 layers * (K+V) * 2 heads * 16 * 4 B = 512
  EXPECT_EQ(m.state_bytes(), 0);
}

TEST(ModelSpec, SecondJambaPlacementAndLlama3Fixture) {
  ModelSpec j = open_model_files(test::fixture("models/jamba-tiny-b").string()).spec;
  EXPECT_EQ(j.mixer_pattern(), "AMMAMM");  // attn_layer_period 3, offset 0
  EXPECT_EQ(j.ffn_pattern(), "FFEFFE");    // expert_layer_period 3, offset 2
  EXPECT_TRUE(j.tie_embeddings);
  EXPECT_EQ(std::get<MoeDims>(j.layers[2].ffn).top_k, 3);
  EXPECT_EQ(std::get<Mamba1Dims>(j.layers[1].mixer).d_conv, 3);
  ModelSpec l = open_model_files(test::fixture("models/llama3-tiny").string()).spec;
  const auto& a = std::get<AttentionDims>(l.layers[0].mixer);
  EXPECT_EQ(a.rope.kind, RopeKind::Llama3);
  EXPECT_EQ(a.rope.original_max_position, 64);
  EXPECT_TRUE(a.qkv_bias);
  EXPECT_TRUE(std::get<MlpDims>(l.layers[0].ffn).bias);
}

TEST(ModelSpec, MambaSsmLayoutEqualsTransformersLayout) {
  for (auto [hf, ssm] : {std::pair{"mamba-tiny", "mamba-tiny-ssm"}, std::pair{"mamba2-tiny", "mamba2-tiny-ssm"}}) {
    ModelSpec a = open_model_files(test::fixture(std::string("models/") + hf).string()).spec;
    ModelSpec b = open_model_files(test::fixture(std::string("models/") + ssm).string()).spec;
    EXPECT_EQ(b.layout, "mamba_ssm");
    EXPECT_EQ(a.vocab_size, b.vocab_size) << ssm;  // mamba-tiny-ssm: 211 padded to 216
    EXPECT_EQ(parameter_count(a), parameter_count(b)) << ssm;
    EXPECT_EQ(memory_figures(a, DType::F32, DType::F32).state_bytes(),
              memory_figures(b, DType::F32, DType::F32).state_bytes());
    EXPECT_EQ(b.names.embedding, "backbone.embedding.weight");
  }
  auto m2 = std::get<Mamba2Dims>(open_model_files(test::fixture("models/mamba2-tiny-ssm").string()).spec.layers[0].mixer);
  EXPECT_EQ(m2.norm_group_size, 64);  // mamba_ssm normalises per group
}

// Real model shapes (TARGETS.md): parameter counts and memory facts from the papers.
TEST(ModelSpec, Mamba2_2_7B_ParameterCount) {
  json c = {{"d_model", 2560}, {"n_layer", 64}, {"vocab_size", 50277}, {"ssm_cfg", {{"layer", "Mamba2"}}},
            {"rms_norm", true}, {"residual_in_fp32", true}, {"fused_add_norm", true},
            {"pad_vocab_size_multiple", 16}, {"tie_embeddings", true}};
  ModelSpec s = spec_of(c);
  EXPECT_EQ(s.vocab_size, 50288);
  const auto& m2 = std::get<Mamba2Dims>(s.layers[0].mixer);
  EXPECT_EQ(m2.n_heads, 80);
  EXPECT_NEAR(double(parameter_count(s)) / 1e9, 2.70, 0.01);
  // 64 layers * 80 heads * 64 * 128 * 4 B = 168 MB of SSM state per sequence (TARGETS.md).
  EXPECT_EQ(memory_figures(s, DType::F32, DType::BF16).ssm_state_bytes, int64_t(64) * 80 * 64 * 128 * 4);
}

TEST(ModelSpec, JambaV01ShapeKvCacheAt256K) {
  // transformers' JambaConfig() defaults = Jamba-v0.1: 52B total, 12B active.
  json c = {{"model_type", "jamba"}, {"hidden_size", 4096}, {"intermediate_size", 14336}, {"num_hidden_layers", 32},
            {"num_attention_heads", 32}, {"num_key_value_heads", 8}, {"vocab_size", 65536}, {"num_experts", 16},
            {"num_experts_per_tok", 2}, {"mamba_dt_rank", 256}};
  ModelSpec s = spec_of(c);
  EXPECT_EQ(s.mixer_pattern(), "MMMMAMMMMMMMAMMMMMMMAMMMMMMMAMMM");
  EXPECT_NEAR(double(parameter_count(s)) / 1e9, 51.6, 0.5);
  EXPECT_NEAR(double(active_parameter_count(s)) / 1e9, 12.1, 0.5);
  // The paper's claim: ~4 GB of KV cache at 256K tokens in 16-bit (4 attention layers).
  MemoryFigures m = memory_figures(s, DType::F32, DType::BF16);
  EXPECT_EQ(m.kv_bytes_per_token, 4 * 2 * 8 * 128 * 2);
  EXPECT_EQ(m.kv_bytes_per_token * 262144, int64_t(4) << 30);
}

TEST(ModelSpec, Llama2_5B_ParameterCount) {
  json c = {{"model_type", "llama"}, {"hidden_size", 2560}, {"intermediate_size", 6912}, {"num_hidden_layers", 32},
            {"num_attention_heads", 32}, {"num_key_value_heads", 8}, {"vocab_size", 50288}, {"rope_theta", 10000.0}};
  ModelSpec s = spec_of(c);
  EXPECT_NEAR(double(parameter_count(s)) / 1e9, 2.48, 0.01);
  EXPECT_EQ(std::get<AttentionDims>(s.layers[0].mixer).head_dim, 80);
}

TEST(ModelSpec, Llama3RopeScaling) {
  json c = {{"model_type", "llama"}, {"hidden_size", 64}, {"intermediate_size", 128}, {"num_hidden_layers", 1},
            {"num_attention_heads", 4}, {"vocab_size", 100}, {"rope_theta", 500000.0},
            {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                              {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}}};
  const ModelSpec spec = spec_of(c);
  const auto& rope = std::get<AttentionDims>(spec.layers[0].mixer).rope;
  EXPECT_EQ(rope.kind, RopeKind::Llama3);
  EXPECT_DOUBLE_EQ(rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(rope.theta, 500000.0);
}

TEST(ModelSpecErrors, UnknownModelType) {
  expect_config_error({{"model_type", "gpt2"}}, ErrorKind::Unsupported, {"model_type", "gpt2", "mamba2"});
}

TEST(ModelSpecErrors, NoModelTypeAndNotMambaSsm) {
  expect_config_error({{"hidden_size", 4}}, ErrorKind::Format, {"model_type"});
}

TEST(ModelSpecErrors, MissingRequiredKey) {
  json c = fixture_config("llama-tiny");
  c.erase("num_attention_heads");
  expect_config_error(c, ErrorKind::Format, {"num_attention_heads", "missing"});
  json m = fixture_config("mamba2-tiny");
  m.erase("hidden_size");
  expect_config_error(m, ErrorKind::Format, {"hidden_size", "missing"});
}

TEST(ModelSpecErrors, WrongTypesAndValues) {
  json c = fixture_config("mamba-tiny");
  c["hidden_size"] = "wide";
  expect_config_error(c, ErrorKind::Format, {"hidden_size", "integer"});
  c = fixture_config("mamba-tiny");
  c["num_hidden_layers"] = 0;
  expect_config_error(c, ErrorKind::Format, {"num_hidden_layers", "positive"});
  c = fixture_config("mamba2-tiny");
  c["num_heads"] = 7;
  expect_config_error(c, ErrorKind::Format, {"num_heads", "must equal"});
  c = fixture_config("llama-tiny");
  c["num_key_value_heads"] = 3;
  expect_config_error(c, ErrorKind::Format, {"num_key_value_heads", "divide"});
  c = fixture_config("llama-tiny");
  c["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_config_error(c, ErrorKind::Unsupported, {"rope_type", "yarn"});
  c = fixture_config("jamba-tiny");
  c["attn_layer_offset"] = 9;
  expect_config_error(c, ErrorKind::Format, {"attn_layer_offset"});
  json s = {{"d_model", 64}, {"n_layer", 2}, {"vocab_size", 10}, {"ssm_cfg", {{"layer", "Mamba2"}, {"ngroups", 3}}}};
  expect_config_error(s, ErrorKind::Format, {"ssm_cfg.ngroups"});
  s = {{"d_model", 64}, {"n_layer", 2}, {"vocab_size", 10}, {"ssm_cfg", 5}};
  expect_config_error(s, ErrorKind::Format, {"ssm_cfg", "object"});
}

TEST(ModelSpecErrors, MalformedJsonNamesFile) {
  test::TempDir dir;
  test::write_file(dir / "config.json", "{\"model_type\": \"mamba\",");
  try {
    open_model_files(dir.path().string(), false);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::Format);
    EXPECT_NE(std::string(e.what()).find((dir / "config.json").string()), std::string::npos) << e.what();
  }
}

TEST(ModelSpec, ExpectedTensorsMatchEveryFixtureExactly) {
  // Every tensor the spec asks for is in the checkpoint with its shape, and nothing the
  // transformers checkpoint holds goes unused (the mamba_ssm copy keeps a tied lm_head).
  for (const char* name : {"mamba-tiny", "mamba2-tiny", "jamba-tiny", "jamba-tiny-b", "llama-tiny", "llama3-tiny",
                           "mamba2-tiny-ssm"}) {
    ModelFiles f = open_model_files(test::fixture(std::string("models/") + name).string());
    ASSERT_TRUE(f.checkpoint);
    EXPECT_TRUE(f.checkpoint->unused(expected_tensors(f.spec)).empty()) << name;
  }
}

}  // namespace
}  // namespace statelm
