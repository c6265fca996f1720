// The cost model behind `statelm bench`'s "fraction of the limit" columns, checked against
// figures worked out by hand from the fixtures' config.json.
#include <gtest/gtest.h>

#include "model/model_cost.h"
#include "model/model_files.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

ModelSpec spec_of(const std::string& fixture) {
  return open_model_files(test::fixture("models/" + fixture).string(), false).spec;
}

TEST(ModelCost, LlamaDecodeByHand) {
  // llama-tiny: d 64, ff 112, 4 heads x 16, 2 KV heads, 2 layers, vocab 217, untied.
  // Linear weights per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 + gate,up 2*112*64 +
  // down 64*112 = 33792; LM head 217*64 = 13888.
  const ModelSpec s = spec_of("llama-tiny");
  CostDtypes d;  // bf16 weights and KV
  const StepCost c = decode_cost(s, 1, 10, d);
  // 2 FLOPs per weight, plus QK^T and PV over 11 positions: 4 * (4*16) * 11 per layer.
  EXPECT_DOUBLE_EQ(c.flops, 2.0 * (2 * 33792 + 13888) + 2 * 4.0 * 64 * 11);
  // KV: 11 positions (10 held + the new one) x 2 layers x (K + V) x 2 heads x 16 x 2 bytes.
  EXPECT_DOUBLE_EQ(c.kv_bytes, 11.0 * 2 * 2 * 2 * 16 * 2);
  EXPECT_DOUBLE_EQ(c.state_bytes, 0.0);
  // Weights: every linear weight, the norms (64 per norm: 2 per layer + final), the LM head,
  // one embedding row.
  EXPECT_DOUBLE_EQ(c.weight_bytes, 2.0 * (2 * 33792 + 5 * 64 + 13888 + 64));
}

TEST(ModelCost, SsmStateIsConstantInContextAttentionIsNot) {
  const ModelSpec mamba = spec_of("mamba2-tiny");
  CostDtypes d;
  const StepCost short_ctx = decode_cost(mamba, 4, 100, d), long_ctx = decode_cost(mamba, 4, 1000000, d);
  EXPECT_GT(short_ctx.state_bytes, 0);
  EXPECT_DOUBLE_EQ(short_ctx.bytes(), long_ctx.bytes());
  EXPECT_DOUBLE_EQ(short_ctx.flops, long_ctx.flops);

  const ModelSpec llama = spec_of("llama-tiny");
  EXPECT_GT(decode_cost(llama, 4, 1000000, d).kv_bytes, 1000 * decode_cost(llama, 4, 100, d).kv_bytes / 2);
}

TEST(ModelCost, MoeDecodeTouchesExpertsAsTheBatchGrows) {
  // jamba-tiny: 4 experts, top-2, on 2 layers. One token reaches half of each MoE layer's
  // experts; a large batch reaches all of them.
  const ModelSpec s = spec_of("jamba-tiny");
  CostDtypes d;
  const double one = decode_cost(s, 1, 0, d).weight_bytes, many = decode_cost(s, 4096, 0, d).weight_bytes;
  EXPECT_LT(one, many);
  // FLOPs per token do not depend on the batch beyond the linear factor.
  EXPECT_NEAR(decode_cost(s, 8, 0, d).flops, 8 * decode_cost(s, 1, 0, d).flops, 1e-6 * decode_cost(s, 8, 0, d).flops);
}

TEST(ModelCost, PrefillCountsCausalAttentionAndChunks) {
  const ModelSpec s = spec_of("llama-tiny");
  CostDtypes d;
  // Attention FLOPs of a prefill of T from empty: 4 * Hq*Dh * T(T+1)/2 per layer.
  const double T = 100;
  const double linear = 2.0 * T * (2 * 33792) + 2.0 * 13888;
  EXPECT_DOUBLE_EQ(prefill_cost(s, 0, 100, 1, d).flops, linear + 2 * 4.0 * 64 * T * (T + 1) / 2);
  // Chunked into 4 forwards, the weights are read 4 times.
  EXPECT_NEAR(prefill_cost(s, 0, 100, 4, d).weight_bytes - 2.0 * T * 64,
              4 * (prefill_cost(s, 0, 100, 1, d).weight_bytes - 2.0 * T * 64), 1e-6);
}

}  // namespace
}  // namespace statelm
