// Backend::sample on the CPU (the reference the CUDA kernel is held to): greedy is the argmax
// with the lowest id on ties, a draw depends on (seed, step) only, each filter keeps exactly its
// set, the draws follow the filtered softmax, and runtime's Sampler picks what the op picks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "ops/sampling_math.h"
#include "runtime/sampler.h"

namespace statelm {
namespace {

// The op over host logits [n, vocab].
std::vector<int32_t> sample(std::vector<float> logits, int64_t vocab, const std::vector<SampleRow>& rows) {
  CpuBackend backend;
  const Tensor t = Tensor::contiguous(logits.data(), DType::F32, {int64_t(logits.size()) / vocab, vocab});
  std::vector<int32_t> ids(rows.size(), -1);
  backend.sample(t, rows, ids);
  return ids;
}

int32_t sample_one(const std::vector<float>& logits, SampleRow row) {
  return sample(logits, int64_t(logits.size()), {row})[0];
}

// `draws` tokens of one row at steps 0, 1, ...; how often each id came up.
std::map<int32_t, int> histogram(const std::vector<float>& logits, SampleRow row, int draws) {
  std::vector<SampleRow> rows(size_t(draws), row);
  for (int i = 0; i < draws; ++i) rows[size_t(i)].step = uint64_t(i);
  std::map<int32_t, int> h;
  for (int32_t id : sample(logits, int64_t(logits.size()), rows)) h[id]++;
  return h;
}

std::set<int32_t> ids_of(const std::map<int32_t, int>& h) {
  std::set<int32_t> s;
  for (const auto& [id, n] : h) s.insert(id);
  return s;
}

TEST(SampleOp, GreedyIsTheArgmaxWithTheLowestIdOnTies) {
  SampleRow greedy;
  greedy.temperature = 0.0f;
  EXPECT_EQ(sample_one({1.0f, 5.0f, 3.0f, 5.0f, 5.0f}, greedy), 1);
  EXPECT_EQ(sample_one({2.0f, 2.0f, 2.0f}, greedy), 0);
  EXPECT_EQ(sample_one({-1.0f, NAN, -0.5f}, greedy), 2) << "NaN counts as -inf";
  EXPECT_EQ(sample_one({NAN, -INFINITY, NAN}, greedy), 0);
  SampleRow hot;  // a +inf logit leaves no distribution: the first +inf, like greedy
  EXPECT_EQ(sample_one({0.0f, INFINITY, 3.0f, INFINITY}, hot), 1);
  EXPECT_EQ(sample_one({0.25f}, hot), 0);
}

TEST(SampleOp, ADrawDependsOnSeedAndStepOnly) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> logits(300);
  for (float& l : logits) l = normal(rng);
  SampleRow row;
  row.seed = 42;
  std::vector<SampleRow> rows(200, row);
  for (size_t i = 0; i < rows.size(); ++i) rows[i].step = i;
  const std::vector<int32_t> first = sample(logits, 300, rows), again = sample(logits, 300, rows);
  EXPECT_EQ(first, again);
  std::vector<SampleRow> backwards(rows.rbegin(), rows.rend());
  std::vector<int32_t> back = sample(logits, 300, backwards);
  std::reverse(back.begin(), back.end());
  EXPECT_EQ(back, first) << "step n is drawn from (seed, n), whatever was drawn before";
  for (SampleRow& r : rows) r.seed = 43;
  const std::vector<int32_t> other = sample(logits, 300, rows);
  EXPECT_GT(std::inner_product(first.begin(), first.end(), other.begin(), 0, std::plus<>(), std::not_equal_to<>()), 150)
      << "another seed draws other tokens";
  EXPECT_GT(ids_of(histogram(logits, row, 200)).size(), 50u) << "the steps of one seed spread over the vocabulary";
}

TEST(SampleOp, TopKOfOneIsGreedy) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.1f);  // flat: anything but the best is likely
  std::vector<float> logits(1000);
  for (float& l : logits) l = normal(rng);
  SampleRow greedy;
  greedy.temperature = 0.0f;
  const int32_t best = sample_one(logits, greedy);
  SampleRow k1;
  k1.top_k = 1;
  k1.temperature = 2.0f;
  EXPECT_EQ(histogram(logits, k1, 500), (std::map<int32_t, int>{{best, 500}}));
  logits[7] = logits[size_t(best)];  // a tie: top-1 keeps the lower id, as greedy does
  EXPECT_EQ(ids_of(histogram(logits, k1, 100)), std::set<int32_t>{std::min(7, best)});
}

// p = {0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02}, placed at shuffled ids.
struct Constructed {
  std::vector<float> logits;
  std::vector<int32_t> id_of_rank;  // id_of_rank[0] is the most likely token
  Constructed() {
    const std::vector<double> p = {0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.02};
    id_of_rank = {4, 0, 6, 2, 5, 1, 3};
    logits.resize(p.size());
    for (size_t r = 0; r < p.size(); ++r) logits[size_t(id_of_rank[r])] = float(std::log(p[r]));
  }
  std::set<int32_t> best(size_t n) const { return {id_of_rank.begin(), id_of_rank.begin() + long(n)}; }
};

TEST(SampleOp, EachFilterKeepsExactlyItsSet) {
  const Constructed c;
  SampleRow row;
  row.seed = 11;
  row.top_k = 3;
  EXPECT_EQ(ids_of(histogram(c.logits, row, 4000)), c.best(3));
  row = {};
  row.top_p = 0.75f;  // 0.4 + 0.25 = 0.65 < 0.75 <= 0.8: the best three
  EXPECT_EQ(ids_of(histogram(c.logits, row, 4000)), c.best(3));
  row.top_p = 0.6f;  // 0.4 < 0.6 <= 0.65: the best two
  EXPECT_EQ(ids_of(histogram(c.logits, row, 4000)), c.best(2));
  row = {};
  row.min_p = 0.3f;  // p >= 0.12: the best three
  EXPECT_EQ(ids_of(histogram(c.logits, row, 4000)), c.best(3));
  row.min_p = 1.0f;  // only the best
  EXPECT_EQ(ids_of(histogram(c.logits, row, 200)), c.best(1));
  row = {};
  row.top_k = 5;
  row.top_p = 0.9f;  // of the best five (mass 0.95): 0.9 * 0.95 = 0.855 needs four
  row.min_p = 0.3f;  // then p >= 0.12 of the best: three
  EXPECT_EQ(ids_of(histogram(c.logits, row, 4000)), c.best(3));
  row.top_p = 0.05f;  // less than the best token alone: the best token
  EXPECT_EQ(ids_of(histogram(c.logits, row, 200)), c.best(1));
}

// Pearson's chi-square of 20000 draws against the filtered softmax, computed here in double from
// the definition (sorted best first, top-k, then the shortest prefix reaching top_p, then min-p).
void expect_frequencies_follow(const std::vector<float>& logits, SampleRow row) {
  const size_t n = logits.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  std::vector<double> p(n, 0.0);
  size_t keep = row.top_k > 0 ? std::min(n, size_t(row.top_k)) : n;
  double z = 0;
  for (size_t r = 0; r < keep; ++r) z += p[order[r]] = std::exp(double(logits[order[r]] - logits[order[0]]) / row.temperature);
  double mass = 0;
  for (size_t r = 0; r < keep; ++r)
    if ((mass += p[order[r]] / z) >= row.top_p) {
      keep = r + 1;
      break;
    }
  const double best = p[order[0]];
  for (size_t r = 0; r < n; ++r)
    if (r >= keep || p[order[r]] < row.min_p * best) p[order[r]] = 0;
  z = std::accumulate(p.begin(), p.end(), 0.0);
  const int draws = 20000;
  const auto h = histogram(logits, row, draws);
  double chi2 = 0;
  int cells = 0;
  for (size_t i = 0; i < n; ++i) {
    const int seen = h.count(int32_t(i)) ? h.at(int32_t(i)) : 0;
    if (p[i] == 0) {
      EXPECT_EQ(seen, 0) << "token " << i << " is filtered out";
      continue;
    }
    const double expected = draws * p[i] / z;
    chi2 += (seen - expected) * (seen - expected) / expected;
    ++cells;
  }
  // The 99.9% quantile of chi-square with cells - 1 <= 7 degrees of freedom is at most 24.3: a
  // correct sampler fails this once in a thousand seeds; a wrong weight by a few % fails always.
  EXPECT_LT(chi2, 24.3) << cells << " kept tokens";
  EXPECT_GE(cells, 3);
}

TEST(SampleOp, FrequenciesFollowTheFilteredSoftmax) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 0.5f, 2.9f, -1.0f, 1.7f, 0.2f};
  SampleRow row;
  row.seed = 7;
  expect_frequencies_follow(logits, row);
  row.temperature = 0.7f;
  row.top_k = 6;
  row.top_p = 0.9f;
  row.min_p = 0.05f;
  row.seed = 8;
  expect_frequencies_follow(logits, row);
  row = {};
  row.temperature = 2.5f;
  row.min_p = 0.2f;
  row.seed = 9;
  expect_frequencies_follow(logits, row);
}

TEST(SampleOp, RepetitionPenaltyAsTransformersOncePerToken) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 0.5f, 2.9f, -1.0f};
  const std::vector<int32_t> seen = {1, 1, 1};
  SampleRow row;
  row.temperature = 0.0f;
  row.repetition_penalty = 2.0f;
  row.penalized = seen;
  EXPECT_EQ(sample_one(logits, row), 4) << "3.0 / 2 = 1.5 loses to 2.9";
  const std::vector<int32_t> one = {1};
  row.penalized = one;
  EXPECT_EQ(sample_one({-1.0f, -0.6f}, row), 0) << "negative logits are multiplied: -1.2 < -1.0";
  const std::vector<int32_t> thrice = {0, 0, 0};
  row.penalized = thrice;
  EXPECT_EQ(sample_one({3.0f, 1.4f}, row), 0) << "once: 1.5 > 1.4 (three times would be 0.375)";
  row.repetition_penalty = 1.0f;
  row.penalized = seen;
  EXPECT_EQ(sample_one(logits, row), 1) << "penalty 1 is off";
}

TEST(SampleOp, RowsReadTheirLogitsRow) {
  std::vector<float> logits(3 * 5, 0.0f);
  logits[0 * 5 + 3] = logits[1 * 5 + 0] = logits[2 * 5 + 4] = 9.0f;
  SampleRow a, b, c;
  a.temperature = b.temperature = 0.0f;
  a.logits_row = 2;
  b.logits_row = 0;
  c.logits_row = 2;
  c.top_k = 1;
  EXPECT_EQ(sample(logits, 5, {a, b, c}), (std::vector<int32_t>{4, 3, 4}));
}

TEST(SampleOp, SamplerDrawsWhatTheOpDraws) {
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const int64_t vocab = 500;
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 40;
  p.top_p = 0.9f;
  p.min_p = 0.02f;
  p.repetition_penalty = 1.3f;
  p.seed = 1234;
  Sampler sampler(p);
  std::vector<int32_t> history = {5, 9, 5, 200};
  for (int step = 0; step < 60; ++step) {
    std::vector<float> logits(static_cast<size_t>(vocab));
    for (float& l : logits) l = normal(rng);
    const int32_t by_op = sample(logits, vocab, {sample_row(p, history, uint64_t(step))})[0];
    ASSERT_EQ(sampler.sample(logits, history), by_op) << "step " << step;
    history.push_back(by_op);
  }
}

TEST(SampleOp, BadRowsNameTheField) {
  const std::vector<float> logits = {0.0f, 1.0f};
  auto expect_internal = [&](SampleRow row, const char* field) {
    try {
      sample(logits, 2, {row});
      ADD_FAILURE() << "no error for " << field;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::Internal) << e.what();
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  SampleRow row;
  row.top_p = 0.0f;
  expect_internal(row, "top_p");
  row = {};
  row.logits_row = 1;
  expect_internal(row, "logits row 1");
  row = {};
  row.temperature = -1.0f;
  expect_internal(row, "temperature");
  const std::vector<int32_t> outside = {2};
  row = {};
  row.repetition_penalty = 1.5f;
  row.penalized = outside;
  expect_internal(row, "penalises token 2");
}

TEST(SamplingMath, WeightsAreExpInFixedPoint) {
  using namespace sampling;
  EXPECT_EQ(quantized_weight(1.5f, 1.5f, 1.0f), kBestWeight);
  EXPECT_EQ(quantized_weight(1.5f, 1.5f, INFINITY), kBestWeight) << "the best token at any temperature";
  for (float x = -27.0f; x < 0.0f; x += 0.37f) {
    const double want = std::ldexp(std::exp(double(x)), kWeightBits);
    EXPECT_NEAR(double(quantized_weight(x, 0.0f, 1.0f)), want, want * 1e-6 + 1) << x;
  }
  EXPECT_EQ(quantized_weight(-30.0f, 0.0f, 1.0f), 0u);
  EXPECT_EQ(quantized_weight(-INFINITY, 0.0f, 1.0f), 0u);
  EXPECT_EQ(quantized_weight(NAN, 0.0f, 1.0f), 0u);
  EXPECT_EQ(quantized_weight(-1.0f, 0.0f, 2.0f), quantized_weight(-2.0f, 0.0f, 1.0f)) << "x = (logit - best) / T";
  EXPECT_EQ(min_p_weight(1.0f), kBestWeight);
  EXPECT_EQ(top_p_target(1.0f, 12345), 12345u);
  EXPECT_EQ(top_p_target(1e-9f, 12345), 1u);
  EXPECT_LT(sample_key(-0.0f, 0), sample_key(0.0f, 5));
  EXPECT_GT(sample_key(2.0f, 3), sample_key(2.0f, 4)) << "on equal logits the lower id is the larger key";
  EXPECT_EQ(key_logit(sample_key(-3.25f, 9)), -3.25f);
  EXPECT_EQ(key_id(sample_key(-3.25f, 9)), 9u);
  EXPECT_NE(draw_bits(1, 0), draw_bits(2, 0));
  EXPECT_NE(draw_bits(1, 0), draw_bits(1, 1));
}

}  // namespace
}  // namespace statelm
