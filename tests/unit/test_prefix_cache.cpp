// Prefix reuse: requests resumed from state checkpoints give exactly the tokens they give
// alone, report the reused prompt tokens (the longest checkpoint below the prompt's length),
// evict least recently used checkpoints under a small budget or when KV blocks run short, and
// leave no slot or block behind; pure Mamba models hit as well as hybrids and Llama.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <mutex>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "runtime/prefix_cache.h"
#include "runtime/scheduler.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

struct Outcome {
  std::vector<int32_t> tokens;
  std::string finish_reason;
  int64_t cached_tokens = -1;
  int finished_events = 0;
};

struct Collector {
  std::mutex mu;
  std::map<uint64_t, Outcome> by_id;
  std::vector<std::pair<uint64_t, bool>> order;  // (request, finished) in event order
  EventCallback callback() {
    return [this](const RequestEvent& e) {
      std::lock_guard<std::mutex> lock(mu);
      Outcome& o = by_id[e.request_id];
      if (o.cached_tokens >= 0) {
        EXPECT_EQ(o.cached_tokens, e.cached_tokens) << "same on every event";
      }
      o.cached_tokens = e.cached_tokens;
      order.emplace_back(e.request_id, e.finished);
      if (e.finished) {
        o.finish_reason = e.finish_reason;
        ++o.finished_events;
      } else {
        o.tokens.push_back(e.token);
      }
      return true;
    };
  }
};

std::vector<int32_t> random_tokens(std::mt19937& rng, int64_t vocab, int64_t n) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (auto& t : p) t = std::uniform_int_distribution<int32_t>(0, int32_t(vocab) - 1)(rng);
  return p;
}

// base[0, common) followed by `extra` random tokens, the first of which differs from base[common].
std::vector<int32_t> branch(std::mt19937& rng, int64_t vocab, const std::vector<int32_t>& base, int64_t common,
                            int64_t extra) {
  std::vector<int32_t> p(base.begin(), base.begin() + common);
  for (int64_t i = 0; i < extra; ++i) {
    int32_t t = std::uniform_int_distribution<int32_t>(0, int32_t(vocab) - 1)(rng);
    if (i == 0 && common < int64_t(base.size()) && t == base[size_t(common)]) t = (t + 1) % int32_t(vocab);
    p.push_back(t);
  }
  return p;
}

SamplingParams sampling(int i) {
  SamplingParams s;
  s.max_tokens = 6;
  if (i % 2) {
    s.greedy = true;
  } else {
    s.temperature = 0.9f;
    s.top_p = 0.95f;
    s.seed = uint64_t(100 + i);
  }
  return s;
}

// The longest multiple of `interval` that is at most `common` and below `length`.
int64_t expected_hit(int64_t common, int64_t length, int64_t interval) {
  return std::min(common, length - 1) / interval * interval;
}

class PrefixModel : public ::testing::TestWithParam<const char*> {};

TEST_P(PrefixModel, ReuseGivesTheSameTokensAndReportsTheLongestCheckpoint) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 8;
  o.max_context = 160;
  o.prefix_cache_slots = 16;
  ModelRunner runner(test::fixture(std::string("models/") + GetParam()).string(), backend, o);
  const int32_t blocks = runner.free_blocks(), slots = runner.free_slots();
  const int64_t vocab = runner.spec().vocab_size, interval = 32;
  std::mt19937 rng(77);
  const std::vector<int32_t> base = random_tokens(rng, vocab, 80);  // checkpoints at 32 and 64

  // Phase 2 prompts branch off the base before, at and after its checkpoints; their own
  // checkpoints past the branch point cannot match each other (different tokens there).
  struct Case {
    std::vector<int32_t> prompt;
    int64_t common;
  };
  std::vector<Case> cases;
  for (int64_t common : {5, 31, 32, 33, 63, 64, 65, 80})
    for (int64_t extra : {0, 1, 16}) {
      if (common + extra == 0) continue;
      cases.push_back({branch(rng, vocab, base, common, extra), common});
    }
  std::vector<std::vector<int32_t>> alone;
  for (size_t i = 0; i < cases.size(); ++i) alone.push_back(generate(runner, cases[i].prompt, sampling(int(i))).tokens);
  const auto base_alone = generate(runner, base, sampling(1)).tokens;

  Collector c;
  SchedulerOptions so;
  so.max_batch_tokens = 40;
  so.prefix_cache = true;
  so.prefix_interval = interval;
  Scheduler s(runner, so);
  const uint64_t warm = s.submit(Request{base, sampling(1), c.callback()});
  s.run_until_idle();
  EXPECT_EQ(c.by_id[warm].tokens, base_alone);
  EXPECT_EQ(c.by_id[warm].cached_tokens, 0);
  EXPECT_EQ(s.stats().prefix_entries, 2);  // 32, 64 (80 is no boundary)

  // All in flight together (8 at a time), chunked under the budget.
  std::vector<uint64_t> ids;
  for (size_t i = 0; i < cases.size(); ++i) ids.push_back(s.submit(Request{cases[i].prompt, sampling(int(i)), c.callback()}));
  s.run_until_idle();
  int64_t hits = 0, reused = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Outcome& out = c.by_id[ids[i]];
    const int64_t n = int64_t(cases[i].prompt.size());
    const int64_t want = expected_hit(cases[i].common, n, interval);
    EXPECT_EQ(out.tokens, alone[i]) << GetParam() << " case " << i << " (common " << cases[i].common << ", length " << n << ")";
    EXPECT_EQ(out.cached_tokens, want) << "case " << i << " (common " << cases[i].common << ", length " << n << ")";
    EXPECT_EQ(out.finished_events, 1);
    hits += want > 0;
    reused += want;
  }
  EXPECT_EQ(s.stats().prefix_hits, hits);
  EXPECT_EQ(s.stats().prefix_reused_tokens, reused);
  EXPECT_EQ(s.stats().prefix_lookups, int64_t(cases.size()) + 1);

  // Each prompt now has a checkpoint at every boundary up to its end: the same prompts grown by
  // a few tokens (the next turn of a chat) resume from there, again several in flight.
  std::vector<uint64_t> again;
  std::vector<std::vector<int32_t>> grown_alone;
  std::vector<Request> grown;
  for (size_t i = 0; i < cases.size(); ++i) {
    std::vector<int32_t> p = cases[i].prompt;
    for (int32_t t : random_tokens(rng, vocab, 3)) p.push_back(t);
    grown.push_back(Request{p, sampling(int(i) + 1), c.callback()});
  }
  s.clear_prefix_cache();  // generate() below needs slots; the cache is rebuilt from the base
  for (auto& r : grown) grown_alone.push_back(generate(runner, r.prompt, r.sampling).tokens);
  s.submit(Request{base, sampling(1), c.callback()});
  for (const Case& k : cases) s.submit(Request{k.prompt, sampling(0), c.callback()});
  s.run_until_idle();
  for (auto& r : grown) again.push_back(s.submit(r));
  s.run_until_idle();
  for (size_t i = 0; i < grown.size(); ++i) {
    const Outcome& out = c.by_id[again[i]];
    EXPECT_EQ(out.tokens, grown_alone[i]) << GetParam() << " grown case " << i;
    EXPECT_EQ(out.cached_tokens, int64_t(cases[i].prompt.size()) / interval * interval) << "grown case " << i;
  }

  // No leaks: running sequences gave everything back; the cache gives the rest.
  EXPECT_EQ(runner.free_slots(), slots - s.stats().prefix_entries);
  s.clear_prefix_cache();
  EXPECT_EQ(runner.free_slots(), slots);
  EXPECT_EQ(runner.free_blocks(), blocks);
}

// Below the scheduler: a sequence resumed from a checkpoint (state slot copied, KV blocks
// shared) gives logits bit-identical to the whole prompt fed in one span.
TEST_P(PrefixModel, ResumedLogitsAreBitIdentical) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 2;
  o.max_context = 96;
  o.prefix_cache_slots = 2;
  ModelRunner runner(test::fixture(std::string("models/") + GetParam()).string(), backend, o);
  const int32_t blocks = runner.free_blocks(), slots = runner.free_slots();
  const int64_t vocab = runner.spec().vocab_size, n = 70;
  std::mt19937 rng(3);
  const std::vector<int32_t> prompt = random_tokens(rng, vocab, n);
  auto feed = [&](Sequence& seq, int64_t begin, int64_t end) {
    Sequence* seqs[] = {&seq};
    const std::vector<int32_t> tokens[] = {std::vector<int32_t>(prompt.begin() + begin, prompt.begin() + end)};
    return runner.step(seqs, tokens, /*all_logits=*/true);
  };
  Sequence whole = *runner.try_open(n);
  const std::vector<float> want = feed(whole, 0, n);  // [n, vocab]
  runner.close(whole);

  PrefixCache cache(runner.states(), runner.kv(), 32, 2);
  Sequence first = *runner.try_open(n);
  feed(first, 0, 32);
  ASSERT_TRUE(cache.insert(std::span(prompt).first(32), first));
  feed(first, 32, 64);
  ASSERT_TRUE(cache.insert(std::span(prompt).first(64), first));
  runner.close(first);  // the checkpoints keep what they need

  for (int64_t at : {64, 32}) {
    std::vector<int32_t> shorter(prompt.begin(), prompt.begin() + at + 1);  // longest below its length
    ASSERT_EQ(cache.longest_prefix(shorter), at);
    std::optional<Sequence> resumed = cache.open(prompt, at, n);
    ASSERT_TRUE(resumed);
    EXPECT_EQ(resumed->n_tokens, at);
    const std::vector<float> got = feed(*resumed, at, n);  // [n - at, vocab]
    ASSERT_EQ(got.size(), size_t((n - at) * vocab));
    EXPECT_EQ(0, std::memcmp(got.data(), want.data() + at * vocab, got.size() * sizeof(float)))
        << GetParam() << " from " << at;
    runner.close(*resumed);
  }
  EXPECT_EQ(cache.size(), 2);
  cache.clear();
  EXPECT_EQ(runner.free_slots(), slots);
  EXPECT_EQ(runner.free_blocks(), blocks);
}

INSTANTIATE_TEST_SUITE_P(Families, PrefixModel,
                         ::testing::Values("mamba-tiny", "mamba2-tiny", "jamba-tiny", "llama-tiny"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// Two checkpoint slots: the least recently used checkpoint goes first, and a hit counts as a use.
TEST(PrefixCache, LeastRecentlyUsedIsEvicted) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 2;
  o.max_context = 64;
  o.prefix_cache_slots = 2;
  ModelRunner runner(test::fixture("models/jamba-tiny").string(), backend, o);
  const int32_t blocks = runner.free_blocks();
  SchedulerOptions so;
  so.prefix_cache = true;
  so.prefix_interval = 16;
  Scheduler s(runner, so);
  Collector c;
  std::mt19937 rng(5);
  const int64_t vocab = runner.spec().vocab_size;
  const auto a = random_tokens(rng, vocab, 20), b = random_tokens(rng, vocab, 20), d = random_tokens(rng, vocab, 20);
  auto run = [&](const std::vector<int32_t>& prefix_of, int64_t keep) {
    std::vector<int32_t> p = branch(rng, vocab, prefix_of, keep, 4);
    const uint64_t id = s.submit(Request{p, sampling(1), c.callback()});
    s.run_until_idle();
    return c.by_id[id].cached_tokens;
  };
  EXPECT_EQ(run(a, 20), 0);   // checkpoints a16           [a16]
  EXPECT_EQ(run(b, 20), 0);   // b16                       [b16 a16]
  EXPECT_EQ(run(a, 16), 16);  // hit: a16 is used again    [a16 b16]
  EXPECT_EQ(run(d, 20), 0);   // d16 evicts b16            [d16 a16]
  EXPECT_EQ(run(b, 16), 0);   // b16 gone; taken again, evicting a16: [b16 d16]
  EXPECT_EQ(run(a, 16), 0);
  EXPECT_EQ(run(d, 16), 0);   // a16 evicted d16 just above
  EXPECT_EQ(s.stats().prefix_entries, 2);
  EXPECT_EQ(s.stats().prefix_hits, 1);
  s.clear_prefix_cache();
  EXPECT_EQ(runner.free_slots(), 4);
  EXPECT_EQ(runner.free_blocks(), blocks);
}

// Checkpoints hold KV blocks; when a new request needs them they are dropped rather than making
// the request wait for running ones to finish.
TEST(PrefixCache, CheckpointsGiveWayToRequestsWhenBlocksRunShort) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 2;
  o.max_context = 64;  // 4 blocks of 16 per sequence, 8 in all
  o.prefix_cache_slots = 4;
  ModelRunner runner(test::fixture("models/jamba-tiny").string(), backend, o);
  const int32_t blocks = runner.free_blocks();
  SchedulerOptions so;
  so.prefix_cache = true;
  so.prefix_interval = 16;
  Scheduler s(runner, so);
  Collector c;
  std::mt19937 rng(9);
  const int64_t vocab = runner.spec().vocab_size;
  const auto warm = random_tokens(rng, vocab, 56);
  s.submit(Request{warm, sampling(1), c.callback()});
  s.run_until_idle();
  EXPECT_EQ(s.stats().prefix_entries, 3);  // 16, 32, 48: 3 blocks held
  EXPECT_EQ(runner.free_blocks(), blocks - 3);
  std::vector<std::vector<int32_t>> prompts = {random_tokens(rng, vocab, 58), random_tokens(rng, vocab, 58)};
  std::vector<std::vector<int32_t>> alone;
  for (const auto& p : prompts) alone.push_back(generate(runner, p, sampling(0)).tokens);
  std::vector<uint64_t> ids;
  for (const auto& p : prompts) ids.push_back(s.submit(Request{p, sampling(0), c.callback()}));
  s.run_until_idle();
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(c.by_id[ids[i]].tokens, alone[i]);
  // Both ran side by side: the second's first token came before the first finished.
  auto first_event = [&](uint64_t id, bool finished) {
    return std::find(c.order.begin(), c.order.end(), std::make_pair(id, finished)) - c.order.begin();
  };
  EXPECT_LT(first_event(ids[1], false), first_event(ids[0], true));
  s.clear_prefix_cache();
  EXPECT_EQ(runner.free_slots(), 6);
  EXPECT_EQ(runner.free_blocks(), blocks);
}

TEST(PrefixCache, RefusesSettingsThatCannotWork) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_context = 64;
  ModelRunner no_slots(test::fixture("models/jamba-tiny").string(), backend, o);
  SchedulerOptions so;
  so.prefix_cache = true;
  so.prefix_interval = 16;
  EXPECT_THROW((Scheduler{no_slots, so}), Error);  // no slots set aside
  o.prefix_cache_slots = 2;
  ModelRunner runner(test::fixture("models/jamba-tiny").string(), backend, o);
  so.prefix_interval = 24;  // not a multiple of the KV block size 16
  EXPECT_THROW((Scheduler{runner, so}), Error);
  so.prefix_cache = false;  // off by default: the extra slots stay unused
  Scheduler off(runner, so);
  Collector c;
  const uint64_t id = off.submit(Request{std::vector<int32_t>(40, 3), sampling(1), c.callback()});
  off.run_until_idle();
  EXPECT_EQ(c.by_id[id].cached_tokens, 0);
  EXPECT_EQ(off.stats().prefix_lookups, 0);
}

}  // namespace
}  // namespace statelm
