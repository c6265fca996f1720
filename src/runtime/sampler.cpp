#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

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

Sampler::Sampler(const SamplingParams& params) : p_(params), rng_(params.seed) { p_.validate(); }

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> history) {
  const size_t n = logits.size();
  STATELM_CHECK(n > 0, "sampling from empty logits");
  work_.assign(logits.begin(), logits.end());
  if (p_.repetition_penalty != 1.0f) {
    for (int32_t id : history) {
      if (id < 0 || size_t(id) >= n) continue;
      float& l = work_[size_t(id)];
      // Applied once per distinct token, whatever its count (as transformers does).
      if (l == logits[size_t(id)]) l = l > 0 ? l / p_.repetition_penalty : l * p_.repetition_penalty;
    }
  }
  if (p_.greedy || p_.temperature == 0.0f)
    return int32_t(std::max_element(work_.begin(), work_.end()) - work_.begin());

  // Candidates sorted by logit, best first (ties: lower id first, so a seed is reproducible).
  order_.resize(n);
  std::iota(order_.begin(), order_.end(), 0);
  size_t keep = n;
  if (p_.top_k > 0) keep = std::min(keep, size_t(p_.top_k));
  auto better = [&](int32_t a, int32_t b) { return work_[size_t(a)] > work_[size_t(b)] || (work_[size_t(a)] == work_[size_t(b)] && a < b); };
  if (keep < n) {
    std::partial_sort(order_.begin(), order_.begin() + long(keep), order_.end(), better);
    order_.resize(keep);
  } else {
    std::sort(order_.begin(), order_.end(), better);
  }
  // Softmax over the kept candidates at the temperature.
  const float inv_t = 1.0f / p_.temperature, top = work_[size_t(order_[0])];
  std::vector<double> probs(order_.size());
  double sum = 0;
  for (size_t i = 0; i < order_.size(); ++i) sum += probs[i] = std::exp(double(work_[size_t(order_[i])] - top) * inv_t);
  for (double& q : probs) q /= sum;
  // top-p: the smallest prefix whose mass reaches top_p (at least one token).
  size_t cut = probs.size();
  if (p_.top_p < 1.0f) {
    double mass = 0;
    for (size_t i = 0; i < probs.size(); ++i) {
      mass += probs[i];
      if (mass >= double(p_.top_p)) {
        cut = i + 1;
        break;
      }
    }
  }
  // min-p: drop tokens less likely than min_p times the most likely one.
  if (p_.min_p > 0.0f)
    while (cut > 1 && probs[cut - 1] < double(p_.min_p) * probs[0]) --cut;
  double total = 0;
  for (size_t i = 0; i < cut; ++i) total += probs[i];
  double r = std::uniform_real_distribution<double>(0.0, total)(rng_);
  for (size_t i = 0; i < cut; ++i) {
    r -= probs[i];
    if (r <= 0) return order_[i];
  }
  return order_[cut - 1];
}

}  // namespace statelm
