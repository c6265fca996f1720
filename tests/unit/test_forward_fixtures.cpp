// The CPU engine against Hugging Face transformers: logits of every fixture model (made by
// tools/make_model_fixtures.py) to 1e-4 of their max magnitude, identical greedy tokens, and the
// engine's invariants (prefill+decode = one forward, chunked prefill, batch independence).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "runtime/model_runner.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

using test::load_reference;
using test::relative_error;

int32_t argmax(const float* v, int64_t n) { return int32_t(std::max_element(v, v + n) - v); }

class FixtureModel : public ::testing::TestWithParam<const char*> {
 protected:
  CpuBackend backend;
};

TEST_P(FixtureModel, LogitsMatchTransformers) {
  const std::string model = GetParam();
  test::FixtureReference ref = load_reference(model);
  ModelRunner runner(test::fixture("models/" + model).string(), backend);
  for (size_t i = 0; i < ref.inputs.size(); ++i) {
    Sequence seq = runner.open();
    Sequence* seqs[] = {&seq};
    std::vector<float> logits = runner.step(seqs, std::span(&ref.inputs[i], 1), /*all_logits=*/true);
    EXPECT_LE(relative_error(logits, ref.logits[i]), 1e-4) << model << " sequence " << i;
    runner.close(seq);
  }
}

TEST_P(FixtureModel, GreedyTokensMatchTransformers) {
  const std::string model = GetParam();
  test::FixtureReference ref = load_reference(model);
  ModelRunner runner(test::fixture("models/" + model).string(), backend);
  const int64_t V = runner.spec().vocab_size;
  Sequence seq = runner.open();
  Sequence* seqs[] = {&seq};
  std::vector<float> logits = runner.step(seqs, std::span(&ref.greedy_prompt, 1));
  std::vector<int32_t> generated;
  for (size_t i = 0; i < ref.greedy_tokens.size(); ++i) {
    generated.push_back(argmax(logits.data(), V));
    std::vector<int32_t> next = {generated.back()};
    logits = runner.step(seqs, std::span(&next, 1));
  }
  EXPECT_EQ(generated, ref.greedy_tokens) << model;
}

TEST_P(FixtureModel, PrefillThenDecodeEqualsOneForward) {
  const std::string model = GetParam();
  test::FixtureReference ref = load_reference(model);
  ModelRunner runner(test::fixture("models/" + model).string(), backend);
  const int64_t V = runner.spec().vocab_size;
  const std::vector<int32_t>& ids = ref.inputs[0];
  Sequence whole = runner.open();
  Sequence* w[] = {&whole};
  std::vector<float> full = runner.step(w, std::span(&ids, 1), true);
  // Split points: decode token by token after n, and chunked prefills at awkward boundaries.
  for (size_t chunk : {size_t(1), size_t(3), size_t(7), size_t(15), size_t(16), size_t(17)}) {  // mamba2 chunk_size 16 ± 1
    Sequence seq = runner.open();
    Sequence* s[] = {&seq};
    std::vector<float> pieces;
    for (size_t at = 0; at < ids.size(); at += chunk) {
      std::vector<int32_t> part(ids.begin() + long(at), ids.begin() + long(std::min(ids.size(), at + chunk)));
      std::vector<float> l = runner.step(s, std::span(&part, 1), true);
      pieces.insert(pieces.end(), l.begin(), l.end());
    }
    ASSERT_EQ(pieces.size(), full.size());
    EXPECT_LE(relative_error(pieces, full), 1e-5) << model << " chunk " << chunk;
    runner.close(seq);
  }
  (void)V;
}

TEST_P(FixtureModel, BatchedSequencesDoNotInteract) {
  const std::string model = GetParam();
  test::FixtureReference ref = load_reference(model);
  RunnerOptions o;
  o.max_sequences = 4;
  ModelRunner runner(test::fixture("models/" + model).string(), backend, o);
  const int64_t V = runner.spec().vocab_size;
  // Alone: each reference input's last-token logits.
  std::vector<std::vector<float>> alone;
  for (const auto& ids : ref.inputs) {
    Sequence s = runner.open();
    Sequence* p[] = {&s};
    alone.push_back(runner.step(p, std::span(&ids, 1)));
    runner.close(s);
  }
  // Together in one batch, plus a fourth sequence, then one decode step for all of them.
  std::vector<std::vector<int32_t>> inputs = ref.inputs;
  inputs.push_back({1, 2, 3, 4, 5});
  std::vector<Sequence> seqs(inputs.size());
  std::vector<Sequence*> ptrs;
  for (auto& s : seqs) {
    s = runner.open();
    ptrs.push_back(&s);
  }
  std::vector<float> together = runner.step(ptrs, inputs);
  for (size_t i = 0; i < ref.inputs.size(); ++i) {
    std::vector<float> row(together.begin() + long(i * size_t(V)), together.begin() + long((i + 1) * size_t(V)));
    EXPECT_LE(relative_error(row, alone[i]), 1e-5) << model << " sequence " << i;
  }
  for (auto& s : seqs) runner.close(s);
  // A reused slot starts from zero: the same input gives the same logits again.
  Sequence again = runner.open();
  Sequence* p[] = {&again};
  EXPECT_LE(relative_error(runner.step(p, std::span(&ref.inputs[0], 1)), alone[0]), 1e-6) << model;
}

TEST_P(FixtureModel, BadInputIsAClearError) {
  const std::string model = GetParam();
  ModelRunner runner(test::fixture("models/" + model).string(), backend);
  Sequence seq = runner.open();
  Sequence* s[] = {&seq};
  std::vector<int32_t> bad = {1, int32_t(runner.spec().vocab_size)};
  EXPECT_THROW(runner.step(s, std::span(&bad, 1)), Error);
  std::vector<int32_t> empty;
  EXPECT_THROW(runner.step(s, std::span(&empty, 1)), Error);
  EXPECT_EQ(seq.n_tokens, 0);  // a refused step leaves the sequence untouched
}

INSTANTIATE_TEST_SUITE_P(AllFamilies, FixtureModel,
                         ::testing::Values("mamba-tiny", "mamba-tiny-ssm", "mamba2-tiny", "mamba2-tiny-ssm", "jamba-tiny",
                                           "jamba-tiny-b", "llama-tiny", "llama3-tiny"),
                         [](const auto& info) { return test::param_name(info.param); });

TEST(FixtureModelErrors, ContextOverTheLimit) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_context = 8;
  ModelRunner runner(test::fixture("models/llama-tiny").string(), backend, o);
  Sequence seq = runner.open();
  Sequence* s[] = {&seq};
  std::vector<int32_t> ids(9, 3);
  try {
    runner.step(s, std::span(&ids, 1));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the limit of 8"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace statelm
