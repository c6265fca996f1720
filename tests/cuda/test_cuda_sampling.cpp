// Backend::sample on CUDA against the CPU reference: the same ids, exactly — greedy, seeded draws
// under every filter, repetition penalties — since both implement ops/sampling_math.h's integer
// definition of a draw. Vocabularies of 1, 7, 4099 and 50277 tokens (plus one beyond the 48 KiB
// penalty bitmap), 1 to 33 logits rows, rows with mixed parameters, some reading the same logits
// row. Logits come in kinds that stress different paths: spread (most weights 0), flat (everything
// kept), and coarse steps (ties everywhere, also at the top-k and top-p thresholds).
// Skips when no CUDA device is visible.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/device_info.h"
#include "ops/ops.h"

namespace statelm {
namespace {

bool have_gpu() {
  static const bool yes = !cuda::list_devices().empty();
  return yes;
}

#define REQUIRE_GPU() \
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device visible"

enum class Kind { Spread, Flat, Steps };

std::vector<float> make_logits(std::mt19937& rng, int64_t rows, int64_t vocab, Kind kind) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(size_t(rows * vocab));
  for (float& l : v) {
    const float x = normal(rng);
    l = kind == Kind::Spread ? 4.0f * x : kind == Kind::Flat ? 0.05f * x : std::round(2.0f * x) * 0.5f;
  }
  if (vocab > 3)  // a masked token, as a grammar or a banned id would leave
    v[size_t(std::uniform_int_distribution<int64_t>(0, rows * vocab - 1)(rng))] = -INFINITY;
  return v;
}

// Random parameters for `n` sampling rows over `logits_rows` rows of logits; `histories` holds
// the penalised ids each row's span points to.
std::vector<SampleRow> make_rows(std::mt19937& rng, size_t n, int64_t logits_rows, int64_t vocab,
                                 std::vector<std::vector<int32_t>>& histories) {
  auto pick = [&](auto... choices) {
    const std::vector<std::common_type_t<decltype(choices)...>> c = {choices...};
    return c[std::uniform_int_distribution<size_t>(0, c.size() - 1)(rng)];
  };
  histories.assign(n, {});
  std::vector<SampleRow> rows(n);
  for (size_t r = 0; r < n; ++r) {
    SampleRow& s = rows[r];
    s.logits_row = int32_t(r < size_t(logits_rows) ? int64_t(r) : std::uniform_int_distribution<int64_t>(0, logits_rows - 1)(rng));
    s.temperature = pick(0.0f, 0.3f, 0.7f, 1.0f, 1.5f);
    s.top_k = pick(0, 0, 1, 2, 40, int(vocab) - 1, int(vocab) + 5);
    s.top_p = pick(1.0f, 1.0f, 0.95f, 0.5f, 0.05f);
    s.min_p = pick(0.0f, 0.0f, 0.05f, 0.3f);
    s.repetition_penalty = pick(1.0f, 1.0f, 1.3f, 0.8f);
    const int length = std::uniform_int_distribution<int>(0, 300)(rng);
    for (int i = 0; i < length; ++i)  // repeats included, as in a real history
      histories[r].push_back(std::uniform_int_distribution<int32_t>(0, int32_t(std::min<int64_t>(vocab, 64) - 1))(rng));
    for (int i = 0; i < length / 4; ++i) histories[r].push_back(std::uniform_int_distribution<int32_t>(0, int32_t(vocab - 1))(rng));
    s.penalized = histories[r];
    s.seed = std::uniform_int_distribution<uint64_t>()(rng);
    s.step = std::uniform_int_distribution<uint64_t>(0, 5000)(rng);
  }
  return rows;
}

std::string describe(const SampleRow& s) {
  std::ostringstream o;
  o << "{logits_row " << s.logits_row << ", T " << s.temperature << ", top_k " << s.top_k << ", top_p " << s.top_p
    << ", min_p " << s.min_p << ", penalty " << s.repetition_penalty << " over " << s.penalized.size() << " ids, seed "
    << s.seed << ", step " << s.step << "}";
  return o.str();
}

// The ids the CPU and the CUDA backend draw for the same rows.
struct BothIds {
  std::vector<int32_t> cpu, cuda;
};

BothIds sample_both(CudaBackend& gpu, std::vector<float> logits, int64_t vocab, const std::vector<SampleRow>& rows) {
  const int64_t n = int64_t(logits.size()) / vocab;
  BothIds out{std::vector<int32_t>(rows.size(), -1), std::vector<int32_t>(rows.size(), -1)};
  CpuBackend cpu;
  cpu.sample(Tensor::contiguous(logits.data(), DType::F32, {n, vocab}), rows, out.cpu);
  Buffer buf = gpu.allocate(logits.size() * sizeof(float));
  const Tensor t = Tensor::contiguous(buf.data(), DType::F32, {n, vocab}, Device::Cuda);
  gpu.upload(t, logits.data());
  gpu.sample(t, rows, out.cuda);
  std::vector<float> after(logits.size());
  gpu.download(t, after.data());
  EXPECT_TRUE(std::equal(after.begin(), after.end(), logits.begin(), [](float a, float b) {
    return a == b || (std::isnan(a) && std::isnan(b));
  })) << "sample must leave the logits as they were (a logprobs row is downloaded after it)";
  return out;
}

void expect_same_ids(const BothIds& ids, const std::vector<SampleRow>& rows, const std::string& what) {
  int shown = 0;
  for (size_t r = 0; r < rows.size(); ++r)
    if (ids.cpu[r] != ids.cuda[r] && shown++ < 5)
      ADD_FAILURE() << what << " row " << r << " " << describe(rows[r]) << ": cpu " << ids.cpu[r] << ", cuda "
                    << ids.cuda[r];
  EXPECT_EQ(shown, 0) << what << ": rows that differ";
}

TEST(CudaOps, SamplingMatchesCpu) {
  REQUIRE_GPU();
  CudaBackend gpu;
  std::mt19937 rng(2024);
  for (int64_t vocab : {1, 7, 4099, 50277})
    for (int64_t logits_rows : {1, 2, 33})
      for (Kind kind : {Kind::Spread, Kind::Flat, Kind::Steps}) {
        const std::vector<float> logits = make_logits(rng, logits_rows, vocab, kind);
        std::vector<std::vector<int32_t>> histories;
        const auto rows = make_rows(rng, size_t(logits_rows + logits_rows / 2 + 1), logits_rows, vocab, histories);
        const BothIds ids = sample_both(gpu, logits, vocab, rows);
        expect_same_ids(ids, rows,
                        "vocab " + std::to_string(vocab) + ", " + std::to_string(logits_rows) + " logits rows, kind " +
                            std::to_string(int(kind)));
      }
}

TEST(CudaOps, SamplingSeededStreamMatchesCpu) {
  REQUIRE_GPU();
  CudaBackend gpu;
  std::mt19937 rng(7);
  const int64_t vocab = 50277;
  const std::vector<float> logits = make_logits(rng, 1, vocab, Kind::Spread);
  for (float top_p : {1.0f, 0.9f}) {
    std::vector<SampleRow> rows(200);
    for (size_t i = 0; i < rows.size(); ++i) {
      rows[i].temperature = 1.2f;
      rows[i].top_p = top_p;
      rows[i].seed = 99;
      rows[i].step = i;
    }
    const BothIds first = sample_both(gpu, logits, vocab, rows), again = sample_both(gpu, logits, vocab, rows);
    expect_same_ids(first, rows, "a stream of 200 draws");
    EXPECT_EQ(first.cuda, again.cuda) << "the same seed and steps give the same tokens on every run";
    std::vector<int32_t> distinct = first.cuda;
    std::sort(distinct.begin(), distinct.end());
    EXPECT_GT(std::unique(distinct.begin(), distinct.end()) - distinct.begin(), 20) << "the steps draw different tokens";
  }
}

TEST(CudaOps, SamplingGreedyTiesAndNonFiniteLogits) {
  REQUIRE_GPU();
  CudaBackend gpu;
  const int64_t vocab = 4099;
  std::vector<float> logits(size_t(4 * vocab), 1.0f);  // row 0: all equal
  for (int64_t i = 0; i < vocab; ++i) logits[size_t(vocab + i)] = (i % 3 == 0) ? NAN : -2.0f;  // row 1: NaN and ties
  logits[size_t(vocab + 4000)] = 3.0f;
  logits[size_t(vocab + 4001)] = 3.0f;
  for (int64_t i = 0; i < vocab; ++i) logits[size_t(2 * vocab + i)] = -INFINITY;  // row 2: nothing possible
  logits[size_t(3 * vocab + 17)] = INFINITY;                                     // row 3: +inf
  logits[size_t(3 * vocab + 5)] = INFINITY;
  std::vector<SampleRow> rows;
  for (float t : {0.0f, 1.0f})
    for (int32_t r = 0; r < 4; ++r) {
      SampleRow s;
      s.temperature = t;
      s.logits_row = r;
      rows.push_back(s);
    }
  const BothIds ids = sample_both(gpu, logits, vocab, rows);
  expect_same_ids(ids, rows, "ties and non-finite logits");
  EXPECT_EQ(ids.cuda[0], 0);
  EXPECT_EQ(ids.cuda[1], 4000);
  EXPECT_EQ(ids.cuda[2], 0);
  EXPECT_EQ(ids.cuda[3], 5);
}

TEST(CudaOps, SamplingPenaltiesMatchCpu) {
  REQUIRE_GPU();
  CudaBackend gpu;
  std::mt19937 rng(31);
  // 400003 tokens: the penalty bitmap (50 KB) is past the default 48 KiB of shared memory.
  for (int64_t vocab : {int64_t(50277), int64_t(400003)}) {
    const std::vector<float> logits = make_logits(rng, 3, vocab, Kind::Spread);
    std::vector<std::vector<int32_t>> histories(6);
    std::vector<SampleRow> rows(6);
    for (size_t r = 0; r < rows.size(); ++r) {
      for (int i = 0; i < 2000; ++i)
        histories[r].push_back(std::uniform_int_distribution<int32_t>(0, int32_t(vocab - 1))(rng));
      // The row's best tokens seen: greedy must move off them exactly as the CPU does.
      const float* row = logits.data() + (r % 3) * size_t(vocab);
      const int32_t best = int32_t(std::max_element(row, row + vocab) - row);
      histories[r].insert(histories[r].end(), {best, best, best});
      rows[r].logits_row = int32_t(r % 3);
      rows[r].temperature = r < 3 ? 0.0f : 0.9f;
      rows[r].repetition_penalty = r % 2 ? 1.8f : 0.7f;
      rows[r].top_k = r == 5 ? 50 : 0;
      rows[r].penalized = histories[r];
      rows[r].seed = r;
    }
    const BothIds ids = sample_both(gpu, logits, vocab, rows);
    expect_same_ids(ids, rows, "penalties over a vocabulary of " + std::to_string(vocab));
  }
}

}  // namespace
}  // namespace statelm
