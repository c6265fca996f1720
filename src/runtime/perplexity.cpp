#include "runtime/perplexity.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "core/error.h"

namespace statelm {

double token_nll(std::span<const float> logits, int32_t target) {
  STATELM_CHECK(target >= 0 && size_t(target) < logits.size(), "target ", target, " outside the vocabulary");
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(double(l) - double(max_logit));
  return std::log(sum) + double(max_logit) - double(logits[size_t(target)]);
}

PerplexityResult evaluate_perplexity(ModelRunner& runner, std::span<const int32_t> ids, int64_t context,
                                     const std::function<void(int64_t, int64_t)>& progress) {
  if (context < 2) fail(ErrorKind::InvalidArgument, "perplexity: context must be at least 2 tokens, got ", context);
  if (ids.size() < 2) fail(ErrorKind::InvalidArgument, "perplexity: the text has ", ids.size(), " tokens; need at least 2");
  if (!runner.fits(context))
    fail(ErrorKind::InvalidArgument, "perplexity: a context of ", context, " tokens does not fit this runner (max ",
         runner.max_context(), ")");

  // Window w covers ids[w * context, min(n, (w + 1) * context)); a trailing single token is
  // not a window (nothing in it can be scored).
  const int64_t n = int64_t(ids.size());
  std::vector<std::span<const int32_t>> windows;
  for (int64_t begin = 0; begin < n; begin += context) {
    const int64_t len = std::min(context, n - begin);
    if (len >= 2) windows.push_back(ids.subspan(size_t(begin), size_t(len)));
  }

  PerplexityResult r;
  r.windows = int64_t(windows.size());
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t vocab = runner.spec().vocab_size;
  const size_t per_step = size_t(std::max<int32_t>(1, runner.max_sequences()));
  for (size_t first = 0; first < windows.size(); first += per_step) {
    const size_t count = std::min(per_step, windows.size() - first);
    std::vector<Sequence> seqs;
    std::vector<Sequence*> ptrs;
    std::vector<std::vector<int32_t>> tokens;
    seqs.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      const auto& w = windows[first + i];
      auto seq = runner.try_open(int64_t(w.size()));
      if (!seq) fail(ErrorKind::OutOfMemory, "perplexity: no free state slot / KV blocks for a window");
      seqs.push_back(std::move(*seq));
      tokens.emplace_back(w.begin(), w.end());
    }
    for (auto& s : seqs) ptrs.push_back(&s);
    std::vector<float> logits;
    try {
      logits = runner.step(ptrs, tokens, /*all_logits=*/true);
    } catch (...) {
      for (auto& s : seqs) runner.close(s);
      throw;
    }
    // Rows are the windows' tokens back to back; row t predicts token t + 1 of its window.
    size_t row = 0;
    for (const auto& w : tokens) {
      for (size_t t = 0; t + 1 < w.size(); ++t)
        r.nll_sum += token_nll(std::span(logits).subspan((row + t) * size_t(vocab), size_t(vocab)), w[t + 1]);
      r.scored += int64_t(w.size()) - 1;
      row += w.size();
    }
    for (auto& s : seqs) runner.close(s);
    if (progress) progress(int64_t(first + count), r.windows);
  }
  r.tokens = n;  // a trailing single token counts, though no window scores it
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace statelm
