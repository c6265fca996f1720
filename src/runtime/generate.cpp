#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace statelm {

GenerationResult continue_generation(ModelRunner& runner, Sequence& seq, std::vector<int32_t>& context,
                                     const SamplingParams& params, const std::function<bool(int32_t)>& on_token) {
  using clock = std::chrono::steady_clock;
  Sampler sampler(params);
  GenerationResult r;
  r.finish_reason = "length";
  std::vector<int32_t> feed(context.begin() + seq.n_tokens, context.end());
  r.prompt_tokens = int64_t(feed.size());
  Sequence* seqs[] = {&seq};
  auto t0 = clock::now();
  std::vector<float> logits = runner.step(seqs, std::span(&feed, 1));
  auto t1 = clock::now();
  r.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  for (int64_t i = 0; i < params.max_tokens; ++i) {
    const int32_t id = sampler.sample(logits, context);
    r.tokens.push_back(id);
    context.push_back(id);
    const bool stop_id =
        std::find(params.stop_token_ids.begin(), params.stop_token_ids.end(), id) != params.stop_token_ids.end();
    const bool keep_going = on_token ? on_token(id) : true;
    if (stop_id || !keep_going) {
      r.finish_reason = "stop";
      break;
    }
    if (i + 1 == params.max_tokens) break;  // no forward for a token nobody will read
    feed.assign(1, id);
    logits = runner.step(seqs, std::span(&feed, 1));
  }
  r.decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  return r;
}

GenerationResult generate(ModelRunner& runner, std::span<const int32_t> prompt, const SamplingParams& params,
                          const std::function<bool(int32_t)>& on_token) {
  std::vector<int32_t> context(prompt.begin(), prompt.end());
  Sequence seq = runner.open();
  try {
    GenerationResult r = continue_generation(runner, seq, context, params, on_token);
    runner.close(seq);
    return r;
  } catch (...) {
    runner.close(seq);
    throw;
  }
}

}  // namespace statelm
