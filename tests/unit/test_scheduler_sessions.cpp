// Sessions through the scheduler (Request::resume_state / on_final_state): a conversation
// continued turn by turn from snapshots generates exactly what one request over the whole
// conversation generates, for pure Mamba, Mamba-2, a hybrid with KV and a Transformer; a
// prefill-only turn (max_tokens 0) is the same as feeding those tokens with the next turn;
// interleaved sessions do not leak into each other, under chunked prefill, waiting for memory,
// preemption and the prefix cache; a bad snapshot ends in an error, never in a leaked slot.
#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "runtime/generate.h"
#include "runtime/scheduler.h"
#include "runtime/snapshot.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

// What one request produced: tokens, the final event and the final state.
struct Turn {
  std::vector<int32_t> tokens;
  RequestEvent last;
  int finished_events = 0;
  std::string state;
};

// The turns of many requests, filled by their callbacks on the engine thread.
struct Turns {
  std::mutex mu;
  std::map<uint64_t, Turn> by_id;
  // Fills in the callbacks of r and submits it.
  uint64_t submit(Scheduler& s, Request r) {
    auto id = std::make_shared<uint64_t>(0);
    r.on_event = [this, id](const RequestEvent& e) {
      std::lock_guard<std::mutex> lock(mu);
      Turn& t = by_id[e.request_id];
      if (e.finished) {
        t.last = e;
        ++t.finished_events;
      } else {
        t.tokens.push_back(e.token);
      }
      return true;
    };
    r.on_final_state = [this, id](std::string state) {
      std::lock_guard<std::mutex> lock(mu);
      by_id[*id].state = std::move(state);
    };
    // The engine runs only in step(), after submit() returned: *id is set by then.
    *id = s.submit(std::move(r));
    return *id;
  }
};

SamplingParams greedy(int64_t max_tokens) {
  SamplingParams p;
  p.greedy = true;
  p.max_tokens = max_tokens;
  return p;
}

std::vector<int32_t> random_ids(std::mt19937& rng, int64_t vocab, int min_len, int max_len) {
  std::vector<int32_t> p(size_t(std::uniform_int_distribution<int>(min_len, max_len)(rng)));
  for (auto& t : p) t = std::uniform_int_distribution<int32_t>(0, int32_t(vocab) - 1)(rng);
  return p;
}

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

RunnerOptions runner_options(int32_t sequences = 4) {
  RunnerOptions o;
  o.max_sequences = sequences;
  o.max_context = 192;
  o.kv_block_size = 8;
  return o;
}

std::string model_dir(const std::string& name) { return test::fixture("models/" + name).string(); }

class SessionTurns : public ::testing::TestWithParam<const char*> {};

// Three turns, each a request resumed from the last one's final state, against generate() over
// the concatenation of every prompt and every generated token so far.
TEST_P(SessionTurns, ThreeTurnsEqualOneRequestOverTheConversation) {
  CpuBackend backend;
  ModelRunner runner(model_dir(GetParam()), backend, runner_options());
  SchedulerOptions so;
  so.max_batch_tokens = 13;  // turns prefill in several chunks
  Scheduler s(runner, so);
  std::mt19937 rng(5);
  const int64_t vocab = runner.spec().vocab_size;
  std::vector<int32_t> conversation;
  std::string state;
  for (int turn = 0; turn < 3; ++turn) {
    const std::vector<int32_t> prompt = random_ids(rng, vocab, 3, 20);
    const std::vector<int32_t> want = generate(runner, cat(conversation, prompt), greedy(7)).tokens;
    Turns turns;
    Request r;
    r.prompt = prompt;
    r.sampling = greedy(7);
    r.resume_state = state;
    const uint64_t id = turns.submit(s, r);
    s.run_until_idle();
    const Turn& t = turns.by_id[id];
    EXPECT_EQ(t.tokens, want) << GetParam() << " turn " << turn;
    EXPECT_EQ(t.finished_events, 1);
    EXPECT_EQ(t.last.finish_reason, "length");
    // Usage counts the whole conversation; only the new part was prefilled. The last token of
    // the previous turn was sampled but never fed: it is fed now, so it is not "cached".
    EXPECT_EQ(t.last.prompt_tokens, int64_t(conversation.size() + prompt.size()));
    EXPECT_EQ(t.last.cached_tokens, conversation.empty() ? 0 : int64_t(conversation.size()) - 1);
    conversation = cat(cat(conversation, prompt), t.tokens);
    ASSERT_FALSE(t.state.empty());
    const SnapshotHeader h = read_snapshot_header(t.state);
    EXPECT_EQ(h.tokens, conversation);
    EXPECT_EQ(h.n_tokens, int64_t(conversation.size()) - 1);  // the last token is pending
    EXPECT_LE(t.state.size(), max_snapshot_bytes(runner, int64_t(conversation.size())));
    state = t.state;
  }
  EXPECT_EQ(runner.free_slots(), runner.max_sequences());
  EXPECT_EQ(runner.free_blocks(), runner.kv().n_blocks());
}

// Prefill only (max_tokens 0): the tokens go into the state, nothing is generated, and the next
// turn continues as if they had come with it.
TEST_P(SessionTurns, PrefillOnlyTurnFeedsTheState) {
  CpuBackend backend;
  ModelRunner runner(model_dir(GetParam()), backend, runner_options());
  Scheduler s(runner);
  const std::vector<int32_t> p1 = {5, 17, 3, 40, 41}, p2 = {7, 8, 9, 10, 11, 12}, p3 = {60, 61};
  Turns turns;
  Request r;
  r.prompt = p1;
  r.sampling = greedy(4);
  const uint64_t first = turns.submit(s, r);
  s.run_until_idle();
  const std::vector<int32_t> g1 = turns.by_id[first].tokens;

  r.prompt = p2;
  r.sampling = greedy(0);
  r.resume_state = turns.by_id[first].state;
  const uint64_t append = turns.submit(s, r);
  s.run_until_idle();
  const Turn& a = turns.by_id[append];
  EXPECT_TRUE(a.tokens.empty());
  EXPECT_EQ(a.last.finish_reason, "length");
  EXPECT_EQ(a.last.completion_tokens, 0);
  const SnapshotHeader h = read_snapshot_header(a.state);
  EXPECT_EQ(h.tokens, cat(cat(p1, g1), p2));
  EXPECT_EQ(h.n_tokens, int64_t(h.tokens.size()));  // nothing pending: every token was fed

  r.prompt = p3;
  r.sampling = greedy(6);
  r.resume_state = a.state;
  const uint64_t last = turns.submit(s, r);
  s.run_until_idle();
  EXPECT_EQ(turns.by_id[last].tokens, generate(runner, cat(cat(cat(p1, g1), p2), p3), greedy(6)).tokens);
  EXPECT_EQ(turns.by_id[last].last.cached_tokens, int64_t(h.tokens.size()));

  // A state that holds all its tokens, and nothing new: there is no logit to start from.
  r.prompt.clear();
  r.resume_state = a.state;
  EXPECT_THROW(s.submit(r), Error);
  // A pending token alone is enough: "continue" after a turn.
  r.resume_state = turns.by_id[first].state;
  const uint64_t cont = turns.submit(s, r);
  s.run_until_idle();
  EXPECT_EQ(turns.by_id[cont].tokens, generate(runner, cat(p1, g1), greedy(6)).tokens);
}

INSTANTIATE_TEST_SUITE_P(Families, SessionTurns,
                         ::testing::Values("mamba-tiny", "mamba2-tiny", "jamba-tiny", "llama-tiny"),
                         [](const auto& info) { return test::param_name(info.param); });

// How the scheduler is set up for the interleaving test.
struct SessionSetup {
  const char* model;
  bool prefix_cache;
  bool reserve_worst_case;
  int32_t kv_blocks;  // 0 = enough for every sequence's worst case
};

class InterleavedSessions : public ::testing::TestWithParam<SessionSetup> {};

// Six sessions, three turns each, every turn of every session submitted at once to a scheduler
// with fewer slots than sessions: each turn equals generate() over its own conversation only.
TEST_P(InterleavedSessions, DoNotCrossTalk) {
  const SessionSetup& setup = GetParam();
  CpuBackend backend;
  RunnerOptions o = runner_options(3);
  o.kv_blocks = setup.kv_blocks;
  o.prefix_cache_slots = setup.prefix_cache ? 4 : 0;
  ModelRunner runner(model_dir(setup.model), backend, o);
  SchedulerOptions so;
  so.max_batch_tokens = 19;
  so.prefix_cache = setup.prefix_cache;
  so.prefix_interval = 8;
  so.reserve_worst_case = setup.reserve_worst_case;
  Scheduler s(runner, so);
  std::mt19937 rng(11);
  const int64_t vocab = runner.spec().vocab_size;
  constexpr int kSessions = 6;
  std::vector<std::vector<int32_t>> conversations(kSessions);
  std::vector<std::string> states(kSessions);
  // Sessions share an opening, so the prefix cache has something to find.
  const std::vector<int32_t> opening = random_ids(rng, vocab, 16, 16);
  for (int turn = 0; turn < 3; ++turn) {
    Turns turns;
    std::vector<uint64_t> ids;
    std::vector<std::vector<int32_t>> want;
    for (int i = 0; i < kSessions; ++i) {
      std::vector<int32_t> prompt = random_ids(rng, vocab, 1, 24);
      if (turn == 0) prompt = cat(opening, prompt);
      Request r;
      r.prompt = prompt;
      r.sampling = greedy(std::uniform_int_distribution<int>(i % 2 ? 0 : 1, 12)(rng));  // some only prefill
      want.push_back(generate(runner, cat(conversations[size_t(i)], prompt), r.sampling).tokens);
      if (r.sampling.max_tokens == 0) want.back().clear();
      r.resume_state = states[size_t(i)];
      conversations[size_t(i)] = cat(conversations[size_t(i)], prompt);
      ids.push_back(turns.submit(s, std::move(r)));
    }
    s.run_until_idle();
    for (int i = 0; i < kSessions; ++i) {
      const Turn& t = turns.by_id[ids[size_t(i)]];
      EXPECT_EQ(t.tokens, want[size_t(i)]) << setup.model << " session " << i << " turn " << turn;
      EXPECT_EQ(t.finished_events, 1);
      conversations[size_t(i)] = cat(conversations[size_t(i)], t.tokens);
      ASSERT_FALSE(t.state.empty());
      EXPECT_EQ(read_snapshot_header(t.state).tokens, conversations[size_t(i)]);
      states[size_t(i)] = t.state;
    }
  }
  if (!setup.reserve_worst_case) {
    EXPECT_GT(s.stats().preemptions, 0) << "the setup should force preemption";
  }
  s.clear_prefix_cache();
  EXPECT_EQ(runner.free_slots(), runner.max_sequences() + runner.prefix_cache_slots());
  EXPECT_EQ(runner.free_blocks(), runner.kv().n_blocks());
}

INSTANTIATE_TEST_SUITE_P(Setups, InterleavedSessions,
                         ::testing::Values(SessionSetup{"mamba-tiny", false, true, 0}, SessionSetup{"mamba2-tiny", true, true, 0},
                                           SessionSetup{"jamba-tiny", false, true, 24},  // admission waits for blocks
                                           SessionSetup{"jamba-tiny", true, true, 0},
                                           SessionSetup{"jamba-tiny", false, false, 20}),  // preemption
                         [](const auto& info) {
                           const SessionSetup& s = info.param;
                           return test::param_name(s.model) + (s.prefix_cache ? "_prefix" : "") +
                                  (s.reserve_worst_case ? "" : "_preempt") +
                                  (s.kv_blocks ? "_blocks" + std::to_string(s.kv_blocks) : "");
                         });

// The empty state restores to a fresh sequence; check_snapshot accepts what restore accepts.
TEST(SchedulerSessions, EmptySnapshotIsAFreshSequence) {
  CpuBackend backend;
  ModelRunner runner(model_dir("jamba-tiny"), backend, runner_options());
  Scheduler s(runner);
  const std::string empty = s.empty_snapshot();
  const SnapshotHeader h = s.check_snapshot(empty);
  EXPECT_EQ(h.n_tokens, 0);
  EXPECT_TRUE(h.tokens.empty());
  EXPECT_EQ(h.fingerprint, runner.fingerprint());
  EXPECT_EQ(size_t(h.state_bytes), runner.states().bytes_per_slot());  // no KV at 0 tokens
  Turns turns;
  Request r;
  r.prompt = {9, 8, 7, 6};
  r.sampling = greedy(5);
  r.resume_state = empty;
  const uint64_t id = turns.submit(s, r);
  s.run_until_idle();
  EXPECT_EQ(turns.by_id[id].tokens, generate(runner, r.prompt, r.sampling).tokens);
  EXPECT_EQ(turns.by_id[id].last.cached_tokens, 0);
  // The uncompressed state of a hybrid grows with its tokens (KV); a Mamba slot would not.
  EXPECT_GT(s.check_snapshot(turns.by_id[id].state).state_bytes, h.state_bytes);
}

// A snapshot that cannot be used is refused at submit when its header says so, or ends the
// request "error" when only the restore finds out; either way nothing leaks and the next
// request runs.
TEST(SchedulerSessions, BadStatesFailCleanly) {
  CpuBackend backend;
  ModelRunner runner(model_dir("jamba-tiny"), backend, runner_options(2));
  ModelRunner other(model_dir("jamba-tiny-b"), backend, runner_options(1));
  Scheduler s(runner);
  Turns turns;
  Request r;
  r.prompt = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  r.sampling = greedy(3);
  const uint64_t base = turns.submit(s, r);
  s.run_until_idle();
  const std::string good = turns.by_id[base].state;
  ASSERT_FALSE(good.empty());

  r.prompt = {11};
  for (const std::string& bad : {std::string("not a snapshot"), good.substr(0, 20), empty_snapshot(other)}) {
    r.resume_state = bad;
    EXPECT_THROW(s.submit(r), Error);
    EXPECT_THROW(s.check_snapshot(bad), Error);
  }
  // A flipped byte inside the compressed state: the header still reads, the checksum does not.
  std::string corrupt = good;
  corrupt[corrupt.size() - 6] ^= 0x5a;
  EXPECT_THROW(s.check_snapshot(corrupt), Error);
  r.resume_state = corrupt;
  uint64_t id = 0;
  try {
    id = turns.submit(s, r);
  } catch (const Error&) {
    // Also acceptable: the flip landed where the header is read.
  }
  s.run_until_idle();
  if (id) {
    EXPECT_EQ(turns.by_id[id].last.finish_reason, "error");
    EXPECT_NE(turns.by_id[id].last.error.find("resume state"), std::string::npos) << turns.by_id[id].last.error;
    EXPECT_TRUE(turns.by_id[id].state.empty());
  }
  EXPECT_EQ(runner.free_slots(), 2);
  EXPECT_EQ(runner.free_blocks(), runner.kv().n_blocks());
  // The scheduler goes on.
  r.resume_state = good;
  id = turns.submit(s, r);
  s.run_until_idle();
  EXPECT_EQ(turns.by_id[id].tokens,
            generate(runner, cat(cat({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, turns.by_id[base].tokens), {11}), greedy(3)).tokens);
}

// A cancelled turn hands no state over: the session stays as it was.
TEST(SchedulerSessions, CancelledTurnGivesNoState) {
  CpuBackend backend;
  ModelRunner runner(model_dir("mamba2-tiny"), backend, runner_options(2));
  Scheduler s(runner);
  Turns turns;
  Request r;
  r.prompt = {4, 5, 6};
  r.sampling = greedy(30);
  const uint64_t id = turns.submit(s, r);
  s.cancel(id);
  s.run_until_idle();
  EXPECT_EQ(turns.by_id[id].last.finish_reason, "cancelled");
  EXPECT_TRUE(turns.by_id[id].state.empty());
  EXPECT_EQ(runner.free_slots(), 2);
}

// A session that has read more than a snapshot keeps ids of (kSnapshotKeptIds) stays the same
// size: its snapshot keeps only the last ids, and the next turns still continue it exactly —
// the state is the whole past — with usage counted over every position. Appends (prefill-only
// turns) far past the window; then a generating turn, against generate() over the whole text.
TEST(SessionTurnsLong, SnapshotsKeepTheLastIdsAndStillContinueExactly) {
  CpuBackend backend;
  RunnerOptions o = runner_options(2);
  ModelRunner runner(model_dir("mamba2-tiny"), backend, o);
  SchedulerOptions so;
  so.max_batch_tokens = 4096;
  Scheduler s(runner, so);
  std::mt19937 rng(11);
  const int64_t vocab = runner.spec().vocab_size;
  std::vector<int32_t> text;
  std::string state;
  size_t blob_after_window = 0;
  for (int append = 0; append < 4; ++append) {  // 4 x 24000 ids: past the 65536 kept
    const std::vector<int32_t> piece = random_ids(rng, vocab, 24000, 24000);
    Turns turns;
    Request r;
    r.prompt = piece;
    r.sampling = greedy(0);
    r.resume_state = state;
    const uint64_t id = turns.submit(s, r);
    s.run_until_idle();
    const Turn& t = turns.by_id[id];
    ASSERT_EQ(t.last.finish_reason, "length") << t.last.error;
    text = cat(text, piece);
    EXPECT_EQ(t.last.prompt_tokens, int64_t(text.size()));
    EXPECT_EQ(t.last.cached_tokens, int64_t(text.size() - piece.size()));
    state = t.state;
    const SnapshotHeader h = read_snapshot_header(state);
    EXPECT_EQ(h.n_tokens, int64_t(text.size()));
    EXPECT_EQ(h.pending(), 0);
    const int64_t kept = std::min<int64_t>(int64_t(text.size()), kSnapshotKeptIds);
    EXPECT_EQ(h.first_id, int64_t(text.size()) - kept);
    EXPECT_EQ(h.tokens, std::vector<int32_t>(text.end() - kept, text.end()));
    if (int64_t(text.size()) > kSnapshotKeptIds) {
      if (blob_after_window == 0) blob_after_window = state.size();
      EXPECT_LE(state.size(), blob_after_window + blob_after_window / 20) << "the blob grows with the text";
    }
  }
  // A generating turn: what one request over the whole text generates.
  const std::vector<int32_t> prompt = random_ids(rng, vocab, 5, 5);
  ModelRunner whole_runner(model_dir("mamba2-tiny"), backend, runner_options(1));
  const std::vector<int32_t> want = generate(whole_runner, cat(text, prompt), greedy(6)).tokens;
  Turns turns;
  Request r;
  r.prompt = prompt;
  r.sampling = greedy(6);
  r.resume_state = state;
  const uint64_t id = turns.submit(s, r);
  s.run_until_idle();
  const Turn& t = turns.by_id[id];
  EXPECT_EQ(t.tokens, want);
  EXPECT_EQ(t.last.prompt_tokens, int64_t(text.size() + prompt.size()));
  const SnapshotHeader h = read_snapshot_header(t.state);
  EXPECT_EQ(h.n_tokens, int64_t(text.size() + prompt.size() + want.size()) - 1);  // the last one pending
  EXPECT_EQ(h.pending(), 1);
  EXPECT_EQ(int64_t(h.tokens.size()), kSnapshotKeptIds);
  EXPECT_EQ(h.tokens.back(), want.back());
  EXPECT_EQ(runner.free_slots(), runner.max_sequences());
}

}  // namespace
}  // namespace statelm
