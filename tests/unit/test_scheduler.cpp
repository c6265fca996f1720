// Continuous batching: many sequences through the scheduler give exactly what each gives
// alone; cancellation and stress leave no slot or block behind; bad requests are refused.
#include <gtest/gtest.h>

#include <atomic>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "runtime/scheduler.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

struct Outcome {
  std::vector<int32_t> tokens;
  std::string finish_reason;
  int finished_events = 0;
};

// Collects each request's events (the callback runs on the engine thread).
struct Collector {
  std::mutex mu;
  std::map<uint64_t, Outcome> by_id;
  EventCallback callback() {
    return [this](const RequestEvent& e) {
      std::lock_guard<std::mutex> lock(mu);
      Outcome& o = by_id[e.request_id];
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

std::vector<int32_t> random_prompt(std::mt19937& rng, int64_t vocab, int max_len) {
  std::vector<int32_t> p(size_t(std::uniform_int_distribution<int>(1, max_len)(rng)));
  for (auto& t : p) t = std::uniform_int_distribution<int32_t>(0, int32_t(vocab) - 1)(rng);
  return p;
}

class SchedulerModel : public ::testing::TestWithParam<const char*> {};

TEST_P(SchedulerModel, SixtyFourSequencesEqualEachAlone) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 8;  // fewer slots than requests: admission waits for memory
  o.max_context = 128;
  ModelRunner runner(test::fixture(std::string("models/") + GetParam()).string(), backend, o);
  std::mt19937 rng(1234);
  std::vector<Request> requests;
  for (int i = 0; i < 64; ++i) {
    Request r;
    r.prompt = random_prompt(rng, runner.spec().vocab_size, 40);
    r.sampling.max_tokens = std::uniform_int_distribution<int>(1, 12)(rng);
    if (i % 2) {  // half greedy, half seeded sampling: both must be batch-independent
      r.sampling.greedy = true;
    } else {
      r.sampling.temperature = 0.9f;
      r.sampling.top_p = 0.95f;
      r.sampling.seed = uint64_t(i);
    }
    requests.push_back(r);
  }
  // Alone.
  std::vector<std::vector<int32_t>> alone;
  for (const auto& r : requests) alone.push_back(generate(runner, r.prompt, r.sampling).tokens);
  // Together: 37-token budget forces chunked prefills that share steps with decodes.
  Collector c;
  SchedulerOptions so;
  so.max_batch_tokens = 37;
  Scheduler s(runner, so);
  std::vector<uint64_t> ids;
  for (auto r : requests) {
    r.on_event = c.callback();
    ids.push_back(s.submit(std::move(r)));
  }
  s.run_until_idle();
  for (size_t i = 0; i < ids.size(); ++i) {
    const Outcome& o = c.by_id[ids[i]];
    EXPECT_EQ(o.tokens, alone[i]) << GetParam() << " request " << i;
    EXPECT_EQ(o.finished_events, 1);
    EXPECT_EQ(o.finish_reason, "length");
  }
  EXPECT_EQ(runner.free_slots(), 8);
  EXPECT_EQ(s.stats().running, 0);
  EXPECT_GT(s.stats().steps, 10);
}

INSTANTIATE_TEST_SUITE_P(Families, SchedulerModel, ::testing::Values("mamba2-tiny", "jamba-tiny", "llama-tiny"),
                         [](const auto& info) { return test::param_name(info.param); });

TEST(Scheduler, CancelFreesSlotAndBlocksAtOnce) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 2;
  o.max_context = 64;
  ModelRunner runner(test::fixture("models/jamba-tiny").string(), backend, o);
  const int32_t blocks = runner.free_blocks();
  Scheduler s(runner);
  Collector c;
  std::atomic<uint64_t> id{0};
  Request r;
  r.prompt = {1, 2, 3};
  r.sampling.greedy = true;
  r.sampling.max_tokens = 50;
  r.on_event = [&](const RequestEvent& e) {
    c.callback()(e);
    if (!e.finished && e.completion_tokens == 3) s.cancel(id);
    return true;
  };
  id = s.submit(r);
  s.run_until_idle();
  EXPECT_EQ(c.by_id[id].finish_reason, "cancelled");
  EXPECT_LE(c.by_id[id].tokens.size(), 4u);
  EXPECT_EQ(runner.free_slots(), 2);
  EXPECT_EQ(runner.free_blocks(), blocks);
}

TEST(Scheduler, CallbackCanStopAndStopIdsStop) {
  CpuBackend backend;
  ModelRunner runner(test::fixture("models/mamba-tiny").string(), backend);
  Scheduler s(runner);
  Collector c;
  Request r;
  r.prompt = {5, 6, 7};
  r.sampling.greedy = true;
  r.sampling.max_tokens = 20;
  auto alone = generate(runner, r.prompt, r.sampling).tokens;
  r.on_event = [&](const RequestEvent& e) { c.callback()(e); return e.finished || e.completion_tokens < 2; };
  uint64_t a = s.submit(r);
  r.on_event = c.callback();
  r.sampling.stop_token_ids = {alone[4]};
  uint64_t b = s.submit(r);
  s.run_until_idle();
  EXPECT_EQ(c.by_id[a].tokens.size(), 2u);
  EXPECT_EQ(c.by_id[a].finish_reason, "stop");
  auto first = std::find(alone.begin(), alone.end(), alone[4]);
  EXPECT_EQ(c.by_id[b].tokens, std::vector<int32_t>(alone.begin(), first + 1));
  EXPECT_EQ(c.by_id[b].finish_reason, "stop");
}

// A request whose callback throws (e.g. text for an id its tokenizer lacks) ends with an error;
// the scheduler's thread, its slots and the other requests go on. A throwing final-event handler
// is logged and dropped.
TEST(Scheduler, ThrowingCallbackFailsOnlyItsRequest) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 2;
  ModelRunner runner(test::fixture("models/mamba-tiny").string(), backend, o);
  Scheduler s(runner);
  Collector c;
  Request r;
  r.prompt = {5, 6, 7};
  r.sampling.greedy = true;
  r.sampling.max_tokens = 6;
  const auto alone = generate(runner, r.prompt, r.sampling).tokens;
  std::string error;
  r.on_event = [&](const RequestEvent& e) -> bool {
    c.callback()(e);
    if (e.finished) {
      error = e.error;
      throw Error(ErrorKind::Internal, "final handler failed too");
    }
    if (e.completion_tokens == 2) throw Error(ErrorKind::InvalidArgument, "no text for this token");
    return true;
  };
  const uint64_t bad = s.submit(r);
  r.on_event = c.callback();
  const uint64_t good = s.submit(r);
  s.run_until_idle();
  EXPECT_EQ(c.by_id[bad].finish_reason, "error");
  EXPECT_EQ(c.by_id[bad].tokens.size(), 2u);
  EXPECT_NE(error.find("no text for this token"), std::string::npos) << error;
  EXPECT_EQ(c.by_id[good].tokens, alone);
  EXPECT_EQ(c.by_id[good].finish_reason, "length");
  EXPECT_EQ(runner.free_slots(), 2);
}

TEST(Scheduler, RefusesRequestsThatCanNeverRun) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_context = 32;
  ModelRunner runner(test::fixture("models/llama-tiny").string(), backend, o);
  Scheduler s(runner);
  Request r;
  EXPECT_THROW(s.submit(r), Error);  // empty prompt
  r.prompt = {1, 100000};
  EXPECT_THROW(s.submit(r), Error);  // out of vocabulary
  r.prompt = std::vector<int32_t>(20, 3);
  r.sampling.max_tokens = 20;
  try {
    s.submit(r);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("context limit of 32"), std::string::npos) << e.what();
  }
  r.sampling.max_tokens = 12;
  EXPECT_NO_THROW(s.submit(r));
  s.run_until_idle();
}

// Random submits and cancels from two client threads against a running engine thread: every
// request ends exactly once and the pools come back full.
TEST(Scheduler, StressSubmitCancelFinish) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 5;
  o.max_context = 96;
  ModelRunner runner(test::fixture("models/jamba-tiny").string(), backend, o);
  const int32_t blocks = runner.free_blocks();
  SchedulerOptions so;
  so.max_batch_tokens = 23;
  Scheduler s(runner, so);
  Collector c;
  s.start();
  auto client = [&](unsigned seed) {
    std::mt19937 rng(seed);
    std::vector<uint64_t> mine;
    for (int i = 0; i < 40; ++i) {
      Request r;
      r.prompt = random_prompt(rng, runner.spec().vocab_size, 30);
      r.sampling.max_tokens = std::uniform_int_distribution<int>(0, 20)(rng);
      r.sampling.seed = rng();
      r.on_event = c.callback();
      mine.push_back(s.submit(r));
      if (rng() % 3 == 0) s.cancel(mine[rng() % mine.size()]);
      if (rng() % 4 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
    }
  };
  std::thread t1(client, 1), t2(client, 2);
  t1.join();
  t2.join();
  for (int i = 0; i < 2000 && (s.stats().running > 0 || s.stats().waiting > 0 || c.by_id.size() < 80); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  s.stop();
  std::lock_guard<std::mutex> lock(c.mu);
  int ended = 0;
  for (auto& [id, o] : c.by_id) {
    EXPECT_EQ(o.finished_events, 1) << "request " << id;
    ended += o.finished_events;
  }
  EXPECT_EQ(ended, 80);
  EXPECT_EQ(runner.free_slots(), 5);
  EXPECT_EQ(runner.free_blocks(), blocks);
}

}  // namespace
}  // namespace statelm

namespace statelm {
namespace {

// Without worst-case reservation, more sequences run than the KV cache could hold at their
// full length: the youngest are preempted (state swapped to host) and resumed later, and every
// request still gets exactly the tokens it gets alone.
class PreemptionModel : public ::testing::TestWithParam<const char*> {};

TEST_P(PreemptionModel, SwappedSequencesContinueExactly) {
  CpuBackend backend;
  RunnerOptions o;
  o.max_sequences = 6;
  o.max_context = 96;
  o.kv_blocks = 14;  // worst case would be 6 x 6 = 36 blocks of 16
  ModelRunner runner(test::fixture(std::string("models/") + GetParam()).string(), backend, o);
  const int32_t blocks = runner.free_blocks();
  std::mt19937 rng(77);
  std::vector<Request> requests;
  for (int i = 0; i < 14; ++i) {
    Request r;
    r.prompt = random_prompt(rng, runner.spec().vocab_size, 30);
    r.sampling.max_tokens = std::uniform_int_distribution<int>(20, 60)(rng);
    r.sampling.greedy = i % 2 == 0;
    r.sampling.seed = uint64_t(i);
    requests.push_back(r);
  }
  std::vector<std::vector<int32_t>> alone;
  for (const auto& r : requests) alone.push_back(generate(runner, r.prompt, r.sampling).tokens);
  Collector c;
  SchedulerOptions so;
  so.max_batch_tokens = 41;
  so.reserve_worst_case = false;
  Scheduler s(runner, so);
  std::vector<uint64_t> ids;
  for (auto r : requests) {
    r.on_event = c.callback();
    ids.push_back(s.submit(std::move(r)));
  }
  s.run_until_idle();
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(c.by_id[ids[i]].tokens, alone[i]) << GetParam() << " request " << i;
    EXPECT_EQ(c.by_id[ids[i]].finished_events, 1);
  }
  EXPECT_GT(s.stats().preemptions, 0) << "the test should force preemption";
  std::cout << GetParam() << ": " << s.stats().preemptions << " preemptions, " << s.stats().steps << " steps\n";
  EXPECT_EQ(runner.free_slots(), 6);
  EXPECT_EQ(runner.free_blocks(), blocks);
}

INSTANTIATE_TEST_SUITE_P(Attention, PreemptionModel, ::testing::Values("jamba-tiny", "llama-tiny"),
                         [](const auto& info) { return test::param_name(info.param); });

}  // namespace
}  // namespace statelm
