// The host side of Backend::sample: the argument checks every backend runs, and the reference
// that draws one row exactly as ops/sampling_math.h defines it. The CPU backend's op and
// runtime's Sampler both call it (they share no library, hence a header); the CUDA kernel is
// tested against it.
#pragma once

#include <algorithm>
#include <cmath>
#include <functional>
#include <span>
#include <vector>

#include "core/error.h"
#include "ops/ops.h"
#include "ops/sampling_math.h"

namespace statelm {

// Rows well-formed for logits [n_rows, vocab]: a failure is a bug of the caller (user input is
// checked by SamplingParams::validate), so Internal, naming the row and the field.
inline void check_sample_rows(std::span<const SampleRow> rows, size_t n_ids, int64_t n_rows, int64_t vocab, const char* op) {
  STATELM_CHECK(n_ids == rows.size(), op, ": ", rows.size(), " rows but room for ", n_ids, " ids");
  STATELM_CHECK(vocab >= 1 && vocab <= sampling::kMaxVocab, op, ": vocabulary of ", vocab, " (1..",
                sampling::kMaxVocab, ")");
  for (size_t r = 0; r < rows.size(); ++r) {
    const SampleRow& s = rows[r];
    STATELM_CHECK(s.logits_row >= 0 && s.logits_row < n_rows, op, ": row ", r, " reads logits row ", s.logits_row,
                  " of ", n_rows);
    STATELM_CHECK(s.temperature >= 0.0f && std::isfinite(s.temperature), op, ": row ", r, " temperature ", s.temperature);
    STATELM_CHECK(s.top_k >= 0, op, ": row ", r, " top_k ", s.top_k);
    STATELM_CHECK(s.top_p > 0.0f && s.top_p <= 1.0f, op, ": row ", r, " top_p ", s.top_p);
    STATELM_CHECK(s.min_p >= 0.0f && s.min_p <= 1.0f, op, ": row ", r, " min_p ", s.min_p);
    STATELM_CHECK(s.repetition_penalty > 0.0f && std::isfinite(s.repetition_penalty), op, ": row ", r,
                  " repetition_penalty ", s.repetition_penalty);
    if (s.repetition_penalty != 1.0f)
      for (int32_t id : s.penalized)
        STATELM_CHECK(id >= 0 && id < vocab, op, ": row ", r, " penalises token ", id, " outside the vocabulary of ",
                      vocab);
  }
}

// Buffers one caller reuses across rows (a row of 256K tokens would otherwise allocate MBs).
struct SampleWorkspace {
  std::vector<float> logits;
  std::vector<uint64_t> keys, weights;
};

// The token for `row` from `logits` (one row, checked by check_sample_rows). Plain loops and a
// sort where the CUDA kernel selects thresholds in parallel; the same sets and the same integers.
inline int32_t sample_reference(std::span<const float> logits, const SampleRow& row, SampleWorkspace& ws) {
  using namespace sampling;
  const size_t n = logits.size();
  // Penalised logits, computed from the originals so a repeated id is penalised once.
  std::span<const float> l = logits;
  if (row.repetition_penalty != 1.0f && !row.penalized.empty()) {
    ws.logits.assign(logits.begin(), logits.end());
    for (int32_t id : row.penalized) ws.logits[size_t(id)] = penalize(logits[size_t(id)], row.repetition_penalty);
    l = ws.logits;
  }
  uint64_t best = 0;
  for (size_t i = 0; i < n; ++i) best = std::max(best, sample_key(l[i], uint32_t(i)));
  const float top = key_logit(best);
  // Greedy; also when the best logit is +-inf, where relative weights mean nothing.
  if (row.temperature == 0.0f || !std::isfinite(top)) return int32_t(key_id(best));
  const float inv_t = 1.0f / row.temperature;

  // top-k: keys >= the k-th largest.
  uint64_t keep_from = 0;
  if (row.top_k > 0 && size_t(row.top_k) < n) {
    auto& keys = ws.keys;
    keys.resize(n);
    for (size_t i = 0; i < n; ++i) keys[i] = sample_key(l[i], uint32_t(i));
    std::nth_element(keys.begin(), keys.begin() + (row.top_k - 1), keys.end(), std::greater<>());
    keep_from = keys[size_t(row.top_k - 1)];
  }
  // Weights of the top-k tokens (0 for the others).
  auto& q = ws.weights;
  q.assign(n, 0);
  uint64_t total = 0;
  for (size_t i = 0; i < n; ++i)
    if (sample_key(l[i], uint32_t(i)) >= keep_from) total += q[i] = quantized_weight(l[i], top, inv_t);
  // top-p: walk the weighted tokens best first until their weight reaches the target. Tokens of
  // weight 0 cannot be where it is reached, so only the others are ordered, a block at a time
  // (64, then 4x more each time): the target is mostly reached within the first block.
  if (row.top_p < 1.0f) {
    const uint64_t target = top_p_target(row.top_p, total);
    auto& keys = ws.keys;
    keys.clear();
    for (size_t i = 0; i < n; ++i)
      if (q[i] > 0) keys.push_back(sample_key(l[i], uint32_t(i)));
    uint64_t mass = 0;
    bool reached = false;
    for (size_t done = 0, block = 64; done < keys.size() && !reached; done += block, block *= 4) {
      const auto first = keys.begin() + long(done), last = keys.begin() + long(std::min(keys.size(), done + block));
      std::nth_element(first, last - 1, keys.end(), std::greater<>());
      std::sort(first, last, std::greater<>());
      for (auto k = first; k != last && !reached; ++k)
        if ((mass += q[key_id(*k)]) >= target) {
          keep_from = std::max(keep_from, *k);
          reached = true;
        }
    }
  }
  // min-p, and the kept weight.
  const uint64_t least = min_p_weight(row.min_p);
  uint64_t kept = 0;
  for (size_t i = 0; i < n; ++i) {
    if (q[i] < least || sample_key(l[i], uint32_t(i)) < keep_from) q[i] = 0;
    kept += q[i];
  }
  // The draw, in id order.
  const uint64_t point = draw_point(draw_bits(row.seed, row.step), kept);
  uint64_t run = 0;
  for (size_t i = 0; i < n; ++i)
    if ((run += q[i]) > point) return int32_t(i);
  return int32_t(key_id(best));  // unreachable: point < kept, and the best token is always kept
}

}  // namespace statelm
