// Sampling: each filter does what its name promises, a seed reproduces its draws, and stop
// strings split across tokens are caught without emitting any part of them.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "core/error.h"
#include "runtime/sampler.h"
#include "runtime/stop_strings.h"

namespace statelm {
namespace {

// Draws `n` tokens and returns how often each id came up.
std::map<int32_t, int> histogram(const SamplingParams& p, const std::vector<float>& logits, int n,
                                 std::vector<int32_t> history = {}) {
  Sampler s(p);
  std::map<int32_t, int> h;
  for (int i = 0; i < n; ++i) h[s.sample(logits, history)]++;
  return h;
}

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 0.5f, 2.9f, -1.0f};  // order: 1, 4, 2, 0, 3, 5

TEST(Sampler, GreedyAndZeroTemperatureAreArgmax) {
  SamplingParams p;
  p.greedy = true;
  EXPECT_EQ(Sampler(p).sample(kLogits, {}), 1);
  p.greedy = false;
  p.temperature = 0.0f;
  EXPECT_EQ(Sampler(p).sample(kLogits, {}), 1);
}

TEST(Sampler, SameSeedSameTokensOtherSeedOtherTokens) {
  SamplingParams p;
  p.seed = 42;
  Sampler a(p), b(p);
  p.seed = 43;
  Sampler c(p);
  std::vector<int32_t> da, db, dc;
  for (int i = 0; i < 64; ++i) {
    da.push_back(a.sample(kLogits, {}));
    db.push_back(b.sample(kLogits, {}));
    dc.push_back(c.sample(kLogits, {}));
  }
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc);
}

TEST(Sampler, FrequenciesFollowTheSoftmax) {
  SamplingParams p;
  p.seed = 7;
  auto h = histogram(p, kLogits, 20000);
  double z = 0;
  for (float l : kLogits) z += std::exp(l);
  for (int id = 0; id < 6; ++id) EXPECT_NEAR(h[id] / 20000.0, std::exp(kLogits[size_t(id)]) / z, 0.015) << id;
}

TEST(Sampler, TopKKeepsOnlyTheKBest) {
  SamplingParams p;
  p.top_k = 2;
  auto h = histogram(p, kLogits, 2000);
  EXPECT_EQ((std::set<int32_t>{1, 4}), [&] { std::set<int32_t> s; for (auto& [k, v] : h) s.insert(k); return s; }());
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingP) {
  SamplingParams p;
  p.top_p = 0.5f;  // p(1) ~ 0.36, p(4) ~ 0.33: the first two reach 0.5
  auto h = histogram(p, kLogits, 2000);
  EXPECT_EQ(h.size(), 2u);
  EXPECT_TRUE(h.count(1) && h.count(4));
}

TEST(Sampler, MinPDropsUnlikelyTokens) {
  SamplingParams p;
  p.min_p = 0.3f;  // keeps p >= 0.3 * p(1): ids 1, 4, 2 (e^-1 = 0.37 of the best)
  auto h = histogram(p, kLogits, 3000);
  std::set<int32_t> kept;
  for (auto& [k, v] : h) kept.insert(k);
  EXPECT_EQ(kept, (std::set<int32_t>{1, 2, 4}));
}

TEST(Sampler, RepetitionPenaltyAsTransformers) {
  SamplingParams p;
  p.greedy = true;
  p.repetition_penalty = 2.0f;
  // 3.0 / 2 = 1.5 < 2.9: the best token, once seen, loses to the second.
  EXPECT_EQ(Sampler(p).sample(kLogits, std::vector<int32_t>{1, 1, 1}), 4);
  std::vector<float> negative = {-1.0f, -0.6f};
  // Negative logits are multiplied: -0.6 * 2 = -1.2 < -1.0.
  EXPECT_EQ(Sampler(p).sample(negative, std::vector<int32_t>{1}), 0);
}

TEST(Sampler, InvalidParametersNameTheField) {
  SamplingParams p;
  p.top_p = 0.0f;
  try {
    Sampler s(p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("top_p"), std::string::npos);
  }
  p = {};
  p.temperature = -1.0f;
  EXPECT_THROW(Sampler{p}, Error);
  p = {};
  p.stop_strings = {""};
  EXPECT_THROW(Sampler{p}, Error);
}

TEST(StopStrings, SplitAcrossTokensNeverLeaks) {
  StopStringMatcher m({"\n\nUser:", "###"});
  std::string out;
  for (const char* piece : {"Hello", " world", "\n", "\nUs", "er:", " more"}) out += m.push(piece);
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(out, "Hello world");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopStrings, FalseStartIsReleased) {
  StopStringMatcher m({"###"});
  std::string out = m.push("a#");
  EXPECT_EQ(out, "a");  // '#' might start "###"
  out += m.push("#b");
  EXPECT_EQ(out, "a##b");
  EXPECT_FALSE(m.stopped());
  out += m.push("##");
  out += m.flush();
  EXPECT_EQ(out, "a##b##");
}

}  // namespace
}  // namespace statelm
