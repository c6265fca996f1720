#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace statelm {

GenerationResult continue_generation(ModelRunner& runner, Sequence& seq, std::vector<int32_t>& context,
                                     const SamplingParams& params, const std::function<bool(int32_t)>& on_token,
                                     int64_t context_start) {
  using clock = std::chrono::steady_clock;
  params.validate();
  Backend& backend = runner.backend();
  GenerationResult r;
  r.finish_reason = "length";
  STATELM_CHECK(context_start <= seq.n_tokens && seq.n_tokens <= context_start + int64_t(context.size()),
                "context from position ", context_start, " of ", context.size(), " ids for a state of ", seq.n_tokens);
  std::vector<int32_t> feed(context.begin() + (seq.n_tokens - context_start), context.end());
  r.prompt_tokens = int64_t(feed.size());
  Sequence* seqs[] = {&seq};
  // Token i is drawn where the logits are (only the id comes back), as draw i of the seed.
  auto next_token = [&](const Tensor& logits, int64_t i) {
    const SampleRow row = sample_row(params, context, uint64_t(i));
    int32_t id = -1;
    backend.sample(logits, {&row, 1}, {&id, 1});
    return id;
  };
  auto t0 = clock::now();
  Tensor logits = runner.step_device(seqs, std::span(&feed, 1));
  // A device backend computes asynchronously: the prefill has ended when its first token is known.
  int32_t id = params.max_tokens > 0 ? next_token(logits, 0) : -1;
  auto t1 = clock::now();
  r.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  for (int64_t i = 0; i < params.max_tokens; ++i) {
    if (i > 0) id = next_token(logits, i);
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
    logits = runner.step_device(seqs, std::span(&feed, 1));
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
