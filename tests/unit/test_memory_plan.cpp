// The memory planner (runtime/memory_plan.h) against what the CPU backend really allocates, for
// every fixture family: weights, state slots and KV blocks byte for byte (each allocation rounded
// as host_buffer rounds it), a forward's activations at least what Forward and the ops take for a
// chunk (exactly, without MoE: the MoE plan assumes every token routes to one expert), and the
// runner's whole load. Hand-checked figures for the CUDA terms of the large shapes, and the
// real Jamba-v0.1 config (bench/configs) read as 52B total / 12B active.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "model/forward.h"
#include "model/model_files.h"
#include "model/weights.h"
#include "runtime/kv_cache.h"
#include "runtime/memory_plan.h"
#include "runtime/model_runner.h"
#include "runtime/state_cache.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

int64_t in_use() { return int64_t(host_buffer_stats().in_use); }

MemoryPlanOptions cpu_options(int64_t batch, int64_t context, int64_t step_tokens, int64_t step_rows) {
  MemoryPlanOptions o;
  o.batch = batch;
  o.context = context;
  o.step_tokens = step_tokens;
  o.step_rows = step_rows;
  o.allocation_size = host_allocation_size;
  return o;
}

class MemoryPlanFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(MemoryPlanFixture, WeightsStateAndKvAreWhatIsAllocated) {
  CpuBackend backend;
  const ModelFiles files = open_model_files(test::fixture("models/" + GetParam()).string());
  const ModelSpec& spec = files.spec;
  for (DType state_dtype : {DType::F32, DType::BF16}) {
    MemoryPlanOptions o = cpu_options(3, 100, 64, 0);
    o.state_dtype = state_dtype;
    o.extra_slots = 2;
    const MemoryPlan plan = plan_memory(spec, o);

    int64_t before = in_use();
    const ModelWeights weights = load_weights(spec, *files.checkpoint, backend);
    EXPECT_EQ(in_use() - before, plan.weights);
    std::vector<int64_t> planned = weight_buffer_bytes(spec, DType::F32), allocated;
    for (const Buffer& b : weights.storage) allocated.push_back(int64_t(b.bytes()));
    std::sort(planned.begin(), planned.end());
    std::sort(allocated.begin(), allocated.end());
    EXPECT_EQ(planned, allocated);

    before = in_use();
    StateCache states(spec, backend, int32_t(plan.slots), state_dtype);
    EXPECT_EQ(in_use() - before, plan.state) << dtype_name(state_dtype);
    EXPECT_EQ(int64_t(states.bytes_per_slot()), plan.state_per_slot());

    before = in_use();
    const int64_t blocks = (100 + 15) / 16 * 3;
    KvCache kv(spec, backend, int32_t(blocks), 16);
    if (kv.empty()) {
      EXPECT_EQ(plan.kv, 0);
      EXPECT_EQ(plan.kv_for(1000), 0);
    } else {
      EXPECT_EQ(in_use() - before, plan.kv);
      EXPECT_EQ(plan.kv_blocks, kv.n_blocks());
      EXPECT_EQ(plan.kv_for(100), kv.blocks_for(100) * int64_t(kv.bytes_per_block()));
    }
  }
}

// One forward of `lens` spans (tokens continuing `pos` each), run twice: the second run's peak
// over what was held before the first is the steady activation memory of that step.
int64_t measured_activations(const std::string& model, const std::vector<int32_t>& lens, const std::vector<int32_t>& pos) {
  CpuBackend backend;
  const ModelFiles files = open_model_files(test::fixture("models/" + model).string());
  const ModelSpec& spec = files.spec;
  const ModelWeights weights = load_weights(spec, *files.checkpoint, backend);
  const int32_t n = int32_t(lens.size());
  StateCache states(spec, backend, n);
  KvCache kv(spec, backend, 64 * n, 16);
  std::vector<LayerCaches> caches(spec.layers.size());
  for (size_t i = 0; i < spec.layers.size(); ++i)
    caches[i] = LayerCaches{states.conv(int64_t(i)), states.ssm(int64_t(i)), kv.k(int64_t(i)), kv.v(int64_t(i))};
  ForwardBatch b;
  b.block_size = 16;
  b.max_blocks_per_seq = 64;
  std::mt19937 rng(7);
  for (int32_t s = 0; s < n; ++s) {
    b.spans.push_back(SeqSpan{int32_t(b.tokens.size()), lens[size_t(s)], s, pos[size_t(s)]});
    for (int32_t t = 0; t < lens[size_t(s)]; ++t) b.tokens.push_back(int32_t(rng() % uint32_t(spec.vocab_size)));
    for (int32_t i = 0; i < 64; ++i) b.block_tables.push_back(s * 64 + i);
  }
  Forward forward(spec, weights, backend);
  const int64_t before = in_use();
  forward.run_device(b, caches);
  reset_host_buffer_peak();
  forward.run_device(b, caches);
  return int64_t(host_buffer_stats().peak_in_use) - before;
}

TEST_P(MemoryPlanFixture, ActivationsCoverAForwardChunk) {
  const ModelSpec spec = open_model_files(test::fixture("models/" + GetParam()).string(), false).spec;
  const bool moe = spec.ffn_pattern().find('E') != std::string::npos;
  struct Step { std::vector<int32_t> lens, pos; };
  for (const Step& s : {Step{{300}, {0}}, Step{{1}, {40}}, Step{{37, 1, 1, 90}, {0, 12, 700, 5}}}) {
    int64_t tokens = 0;
    for (int32_t l : s.lens) tokens += l;
    const MemoryPlan plan = plan_memory(spec, cpu_options(4, 1024, tokens, int64_t(s.lens.size())));
    const int64_t measured = measured_activations(GetParam(), s.lens, s.pos);
    EXPECT_GE(plan.activations + plan.logits, measured) << tokens << " tokens in " << s.lens.size() << " spans";
    if (!moe) EXPECT_EQ(plan.activations + plan.logits, measured) << tokens << " tokens in " << s.lens.size() << " spans";
  }
}

TEST_P(MemoryPlanFixture, RunnerHoldsThePlannedWeightsAndCaches) {
  CpuBackend backend;
  RunnerOptions ro;
  ro.max_sequences = 3;
  ro.max_context = 200;
  ro.prefix_cache_slots = 1;
  ro.state_dtype = DType::BF16;
  const int64_t before = in_use();
  ModelRunner runner(test::fixture("models/" + GetParam()).string(), backend, ro);
  const int64_t held = in_use() - before;
  // The runner's own plan has no allocator rounding (it does not know the backend's); with the
  // host's, the same options give what is held to the byte.
  const MemoryPlan& plan = runner.memory_plan();
  MemoryPlanOptions o = cpu_options(3, 200, 512, 0);
  o.extra_slots = 1;
  o.state_dtype = DType::BF16;
  const MemoryPlan rounded = plan_memory(runner.spec(), o);
  EXPECT_EQ(held, rounded.weights + rounded.state + rounded.kv);
  EXPECT_LE(held - (plan.weights + plan.state + plan.kv), int64_t(64) * int64_t(runner.weights().storage.size() + 4 * runner.spec().layers.size()));
  EXPECT_GE(held, plan.weights + plan.state + plan.kv);
  EXPECT_EQ(plan.slots, 4);
  EXPECT_EQ(plan.sequence_bytes(200), plan.state_per_slot() + plan.kv_for(200));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MemoryPlanFixture,
                         ::testing::Values("mamba-tiny", "mamba-tiny-ssm", "mamba2-tiny", "jamba-tiny", "llama-tiny",
                                           "llama3-tiny"),
                         [](const auto& info) { return test::param_name(info.param); });

ModelSpec bench_config(const std::string& name) {
  return open_model_files((test::source_dir() / "bench/configs" / name).string(), false).spec;
}

TEST(MemoryPlan, JambaV01IsFiftyTwoBillionTwelveActive) {
  const ModelSpec spec = bench_config("jamba-v0.1.json");
  EXPECT_EQ(spec.mixer_pattern(), "MMMMAMMMMMMMAMMMMMMMAMMMMMMMAMMM");
  EXPECT_EQ(spec.ffn_pattern(), "FEFEFEFEFEFEFEFEFEFEFEFEFEFEFEFE");
  EXPECT_NEAR(double(parameter_count(spec)) / 1e9, 51.6, 0.1);
  EXPECT_NEAR(double(active_parameter_count(spec)) / 1e9, 12.1, 0.1);
  MemoryPlanOptions o;
  o.device = Device::Cuda;
  o.compute_dtype = DType::BF16;
  o.context = 256 * 1024;
  const MemoryPlan p = plan_memory(spec, o);
  // 4 attention layers x K,V x 8 heads x 128 x 2 B = 16 KiB a token: 4 GiB at 256K (the paper's 4 GB).
  EXPECT_EQ(p.kv_bytes_per_token, 4 * 2 * 8 * 128 * 2);
  EXPECT_EQ(p.kv, int64_t(4) << 30);
  // 28 Mamba layers x (8192 x 3 conv + 8192 x 16 SSM) x 4 B.
  EXPECT_EQ(p.state_per_slot(), int64_t(28) * (8192 * 3 + 8192 * 16) * 4);
  EXPECT_NEAR(double(p.weights) / 1e9, 103.2, 0.3);
}

TEST(MemoryPlan, CudaSsdScratchOfAChunk) {
  // Mamba-2 130M: one span of 4096 tokens = 16 chunks of 256; per chunk and head dt, base-2
  // cumsum and state weights (fp32) and the cumsum (fp64); C B^T [256, 256] for the one group
  // (bf16: the tensor-core path), and a state [24, 64, 128] in fp32 and again in bf16.
  const ModelSpec spec = bench_config("mamba2-130m.json");  // 24 heads of 64, N 128, 1 group
  MemoryPlanOptions o;
  o.device = Device::Cuda;
  o.compute_dtype = DType::BF16;
  o.step_tokens = 4096;
  o.step_rows = 1;
  const MemoryPlan p = plan_memory(spec, o);
  const int64_t ssd = 3 * 16 * 24 * 256 * 4 + 16 * 24 * 256 * 8 + 16 * 256 * 256 * 2 + int64_t(16) * 24 * 64 * 128 * 4 +
                      int64_t(16) * 24 * 64 * 128 * 2;
  EXPECT_EQ(p.op_scratch, ssd);
  EXPECT_EQ(p.staging, 4096 * 4 + 16);
  // Forward: 3 x [T, 768] + in_proj out, conv out, y, gated (bf16).
  const int64_t in_proj = 2 * 1536 + 2 * 128 + 24, conv = 1536 + 256;
  EXPECT_EQ(p.forward_scratch, int64_t(4096) * 2 * (3 * 768 + in_proj + conv + 2 * 1536));
  EXPECT_EQ(p.logits, 768 * 2 + 50280 * 4);
}

TEST(MemoryPlan, CudaAttentionSplitsOnlyForLongKeys) {
  ModelSpec spec = open_model_files(test::fixture("models/llama-tiny").string(), false).spec;
  MemoryPlanOptions o;
  o.device = Device::Cuda;
  o.compute_dtype = DType::BF16;
  o.step_tokens = 1;
  o.context = 64;  // 2 key tiles, and one decode split (at least 64 keys): never split
  EXPECT_EQ(plan_memory(spec, o).op_scratch, 0);
  o.context = 1 << 20;
  const int64_t long_keys = plan_memory(spec, o).op_scratch;
  EXPECT_GT(long_keys, 0);
  // Bounded whatever the context: fewer than 2 x 2 x SMs blocks of 64 fp32 rows of Dh + 2 (the
  // tiled kernel), plus the decode kernel's one wave (at most 4 blocks an SM) of group rows.
  const auto& a = std::get<AttentionDims>(spec.layers[0].mixer);
  const int64_t group = a.n_heads / a.n_kv_heads;
  EXPECT_LE(long_keys, 4 * 132 * 64 * (a.head_dim + 2) * 4 + 4 * 132 * group * (a.head_dim + 2) * 4 + 512);
}

TEST(MemoryPlan, MaxBatchIsTheLargestThatFits) {
  const ModelSpec spec = open_model_files(test::fixture("models/jamba-tiny").string(), false).spec;
  MemoryPlanOptions o = cpu_options(1, 1000, 64, 0);
  for (int64_t budget : {int64_t(2) << 20, int64_t(5) << 20, int64_t(77777777)}) {
    for (bool caches_only : {true, false}) {
      const int64_t b = max_batch(spec, o, budget, caches_only);
      auto used = [&](int64_t batch) {
        MemoryPlanOptions x = o;
        x.batch = batch;
        const MemoryPlan p = plan_memory(spec, x);
        return caches_only ? p.caches() : p.total();
      };
      ASSERT_GE(b, 1) << budget;
      EXPECT_LE(used(b), budget);
      EXPECT_GT(used(b + 1), budget);
    }
  }
  EXPECT_EQ(max_batch(spec, o, 1000, true), 0);
  // A pure Mamba model's state does not grow with the context.
  const ModelSpec mamba = open_model_files(test::fixture("models/mamba2-tiny").string(), false).spec;
  o.context = 1 << 20;
  EXPECT_EQ(max_batch(mamba, o, 10 * 16512, true), 10);
  EXPECT_EQ(max_batch(mamba, o, 1 << 30, true, 1000), 1000);
}

TEST(MemoryPlan, RefusesNonsense) {
  const ModelSpec spec = open_model_files(test::fixture("models/llama-tiny").string(), false).spec;
  MemoryPlanOptions o;
  o.batch = 0;
  EXPECT_THROW(plan_memory(spec, o), Error);
  o.batch = int64_t(1) << 40;
  o.context = int64_t(1) << 40;
  EXPECT_THROW(plan_memory(spec, o), Error);
}

}  // namespace
}  // namespace statelm
