// The runner sizes its caches from a memory budget: too many sequences are clamped with a
// warning, a budget that cannot hold even one sequence is a clear error, and the clamped
// runner admits exactly as many sequences as fit.
#include <gtest/gtest.h>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "core/system_memory.h"
#include "runtime/memory_plan.h"
#include "runtime/model_runner.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

TEST(MemoryBudget, ClampsSequencesToWhatFits) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 8;
  o.max_context = 64;
  // jamba-tiny, fp32: state 13824 B + KV 64 tokens x 256 B = 30208 B per sequence -> 3 fit.
  o.cache_memory_bytes = 100000;
  ModelRunner runner(test::fixture("models/jamba-tiny").string(), backend, o);
  EXPECT_EQ(runner.max_sequences(), 3);
  std::vector<Sequence> seqs;
  for (int i = 0; i < 3; ++i) seqs.push_back(runner.open());
  EXPECT_THROW(runner.open(), Error);
  EXPECT_FALSE(runner.try_open(10).has_value());
  for (auto& s : seqs) runner.close(s);
  EXPECT_EQ(runner.free_slots(), 3);
}

TEST(MemoryBudget, NoBudgetMeansAsAsked) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 5;
  ModelRunner runner(test::fixture("models/mamba2-tiny").string(), backend, o);
  EXPECT_EQ(runner.max_sequences(), 5);
}

TEST(MemoryBudget, PureMambaNeedsNoKv) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 100;
  o.max_context = 1 << 20;  // context does not matter without attention layers
  o.cache_memory_bytes = 10 * 16512;  // mamba2-tiny state: 16512 B per sequence
  ModelRunner runner(test::fixture("models/mamba2-tiny").string(), backend, o);
  EXPECT_EQ(runner.max_sequences(), 10);
}

TEST(MemoryBudget, TooSmallForOneSequenceIsAClearError) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_context = 64;
  o.cache_memory_bytes = 1000;
  try {
    ModelRunner runner(test::fixture("models/jamba-tiny").string(), backend, o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::OutOfMemory);
    EXPECT_NE(std::string(e.what()).find("30208 bytes"), std::string::npos) << e.what();
  }
}

TEST(MemoryBudget, FractionOfAvailableRam) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 1 << 20;  // far more than fits: the fraction decides
  o.max_context = 64;
  o.cache_memory_fraction = 0.005;
  ModelRunner runner(test::fixture("models/jamba-tiny").string(), backend, o);
  // The fraction covers a step's activations too (the memory plan of 512 tokens, 512 rows).
  MemoryPlanOptions p;
  p.batch = o.max_sequences;
  p.context = 64;
  const MemoryPlan step = plan_memory(runner.spec(), p);
  const int64_t expected =
      (int64_t(0.005 * double(system_memory().available_bytes)) - (step.activations + step.logits)) / 30208;
  // MemAvailable moves a little between the two reads: allow 5%.
  EXPECT_NEAR(double(runner.max_sequences()), double(expected), 0.05 * double(expected) + 1);
  EXPECT_GT(runner.max_sequences(), 1);
  o.cache_memory_fraction = 1.5;
  EXPECT_THROW(ModelRunner(test::fixture("models/jamba-tiny").string(), backend, o), Error);
}

}  // namespace
}  // namespace statelm
