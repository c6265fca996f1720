#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace statelm {

void SamplingParams::validate() const {
  auto bad = [](const char* field, auto value, const char* why) {
    fail(ErrorKind::InvalidArgument, field, " = ", value, ": ", why);
  };
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) bad("temperature", temperature, "must be >= 0");
  if (top_k < 0) bad("top_k", top_k, "must be >= 0 (0 = off)");
  if (!(top_p > 0.0f && top_p <= 1.0f)) bad("top_p", top_p, "must be in (0, 1]");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) bad("min_p", min_p, "must be in [0, 1]");
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) bad("repetition_penalty", repetition_penalty, "must be > 0");
  if (logprobs < -1) bad("logprobs", logprobs, "must be >= 0 (or -1 = off)");
  if (max_tokens < 0) bad("max_tokens", max_tokens, "must be >= 0");
  for (const auto& s : stop_strings)
    if (s.empty()) bad("stop", "\"\"", "stop strings must not be empty");
}

float token_logprobs(std::span<const float> logits, int32_t chosen, int32_t k, std::vector<TokenLogprob>& top) {
  const size_t n = logits.size();
  STATELM_CHECK(n > 0 && chosen >= 0 && size_t(chosen) < n, "logprobs: token outside the logits");
  // Stable log-sum-exp in double: the log-probabilities of unlikely tokens are differences of
  // large numbers.
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(double(l) - double(max));
  const double log_z = double(max) + std::log(sum);
  top.clear();
  if (k > 0) {
    std::vector<int32_t> ids(n);
    std::iota(ids.begin(), ids.end(), 0);
    const size_t keep = std::min(n, size_t(k));
    std::partial_sort(ids.begin(), ids.begin() + long(keep), ids.end(), [&](int32_t a, int32_t b) {
      return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
    });
    for (size_t i = 0; i < keep; ++i) top.push_back({ids[i], float(double(logits[size_t(ids[i])]) - log_z)});
  }
  return float(double(logits[size_t(chosen)]) - log_z);
}

SampleRow sample_row(const SamplingParams& p, std::span<const int32_t> history, uint64_t step) {
  SampleRow row;
  row.temperature = p.greedy ? 0.0f : p.temperature;
  row.top_k = p.top_k;
  row.top_p = p.top_p;
  row.min_p = p.min_p;
  row.repetition_penalty = p.repetition_penalty;
  if (p.repetition_penalty != 1.0f) row.penalized = history;
  row.seed = p.seed;
  row.step = step;
  return row;
}

Sampler::Sampler(const SamplingParams& params) : p_(params) { p_.validate(); }

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  STATELM_CHECK(!logits.empty(), "sampling from empty logits");
  const SampleRow row = sample_row(p_, history, step_++);
  check_sample_rows({&row, 1}, 1, 1, int64_t(logits.size()), "Sampler");
  return sample_reference(logits, row, work_);
}

}  // namespace statelm
