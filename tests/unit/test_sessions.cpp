// Sessions (src/runtime/session_store.h and `statelm run --session`): the SQLite store round trip
// (put/get/fork/remove/info/list, reopening, WAL), forks as independent continuations of one
// state, errors that name the database and the session, and a two-turn CLI conversation whose
// second turn prefills only its new tokens yet generates what one run over everything would.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "runtime/model_runner.h"
#include "runtime/sampler.h"
#include "runtime/session_store.h"
#include "runtime/snapshot.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string model_dir(const std::string& name) { return test::fixture("models/" + name).string(); }

std::vector<int32_t> greedy_prompt(const std::string& name) {
  auto j = json::parse(test::read_file(test::fixture("models/" + name + "/reference.json")));
  return j["greedy"]["prompt"].get<std::vector<int32_t>>();
}

RunnerOptions small_runner() {
  RunnerOptions o;
  o.max_sequences = 3;
  o.max_context = 160;
  o.kv_block_size = 8;
  return o;
}

template <typename Fn>
void expect_error(Fn&& fn, ErrorKind kind, const std::vector<std::string>& needles, const std::string& what) {
  try {
    fn();
    ADD_FAILURE() << what << ": no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << what << ": " << e.what();
    for (const std::string& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << what << ": no \"" << n << "\" in: " << e.what();
  }
}

// A snapshot of `prompt` prefilled, with the first sampled token pending.
std::string prefill_blob(ModelRunner& runner, const std::vector<int32_t>& prompt, const SamplingParams& sampling) {
  Sequence seq = runner.open();
  Sequence* seqs[] = {&seq};
  std::vector<float> logits = runner.step(seqs, std::span(&prompt, 1));
  std::vector<int32_t> tokens = prompt;
  Sampler sampler(sampling);
  tokens.push_back(sampler.sample(logits, tokens));
  std::string blob = snapshot_sequence(runner, seq, tokens);
  runner.close(seq);
  return blob;
}

TEST(SessionStore, RoundTrip) {
  CpuBackend backend;
  ModelRunner runner(model_dir("mamba2-tiny"), backend, small_runner());
  const std::vector<int32_t> prompt = greedy_prompt("mamba2-tiny");
  const std::string blob = prefill_blob(runner, prompt, {});
  const std::string shorter = prefill_blob(runner, std::vector<int32_t>(prompt.begin(), prompt.begin() + 10), {});

  test::TempDir dir;
  SessionStore store((dir / "nested" / "s.db").string());  // the folder is created
  EXPECT_EQ(store.get("a"), std::nullopt);
  EXPECT_EQ(store.info("a"), std::nullopt);
  EXPECT_TRUE(store.list().empty());

  store.put("a", blob);
  EXPECT_EQ(store.get("a"), blob);
  std::optional<SessionInfo> a = store.info("a");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->id, "a");
  EXPECT_EQ(a->model, runner.fingerprint());
  EXPECT_EQ(a->n_tokens, int64_t(prompt.size()));
  EXPECT_EQ(a->blob_bytes, int64_t(blob.size()));
  EXPECT_GT(a->created_ms, 1600000000000);
  EXPECT_EQ(a->created_ms, a->updated_ms);

  store.fork("a", "b");
  EXPECT_EQ(store.get("b"), blob);
  std::vector<SessionInfo> all = store.list();
  ASSERT_EQ(all.size(), 2u);
  std::vector<std::string> ids = {all[0].id, all[1].id};
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<std::string>{"a", "b"}));

  // Replacing keeps the creation time and the other session.
  store.put("b", shorter);
  std::optional<SessionInfo> b = store.info("b");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->n_tokens, 10);
  EXPECT_GE(b->updated_ms, b->created_ms);
  EXPECT_EQ(store.get("b"), shorter);
  EXPECT_EQ(store.get("a"), blob);
  all = store.list();  // most recently updated first
  ASSERT_EQ(all.size(), 2u);
  EXPECT_GE(all[0].updated_ms, all[1].updated_ms);

  // Ids are data, never SQL.
  const std::string odd = "x'); DROP TABLE sessions; --";
  store.put(odd, blob);
  EXPECT_EQ(store.get(odd), blob);
  EXPECT_EQ(store.list().size(), 3u);

  EXPECT_TRUE(store.remove("a"));
  EXPECT_FALSE(store.remove("a"));
  EXPECT_EQ(store.get("a"), std::nullopt);
  EXPECT_EQ(store.get("b"), shorter);  // a fork is a copy, not a link
}

TEST(SessionStore, ReopenedDatabaseSeesSessionsInWalMode) {
  CpuBackend backend;
  ModelRunner runner(model_dir("jamba-tiny"), backend, small_runner());
  const std::string blob = prefill_blob(runner, greedy_prompt("jamba-tiny"), {});
  test::TempDir dir;
  const std::string path = (dir / "s.db").string();
  {
    SessionStore store(path);
    EXPECT_EQ(store.journal_mode(), "wal");
    store.put("chat", blob);
    store.fork("chat", "chat-2");
  }
  SessionStore again(path);
  EXPECT_EQ(again.journal_mode(), "wal");
  EXPECT_EQ(again.get("chat"), blob);
  EXPECT_EQ(again.get("chat-2"), blob);
  EXPECT_EQ(again.list().size(), 2u);
  // And the state still restores from there.
  Sequence seq = restore_sequence(runner, *again.get("chat-2"));
  runner.close(seq);
}

TEST(SessionStore, ErrorsNameTheDatabaseAndTheSession) {
  test::TempDir dir;
  const std::string path = (dir / "s.db").string();
  SessionStore store(path);
  expect_error([&] { store.put("chat", "not a snapshot"); }, ErrorKind::Format, {path, "\"chat\"", "not a statelm snapshot"},
               "a bad blob");
  expect_error([&] { store.fork("nobody", "x"); }, ErrorKind::InvalidArgument, {path, "\"nobody\"", "no such session"},
               "fork of a missing session");
  expect_error([&] { store.get(""); }, ErrorKind::InvalidArgument, {path, "session id"}, "an empty id");
  expect_error([&] { store.get(std::string(300, 'x')); }, ErrorKind::InvalidArgument, {path, "session id"}, "a long id");

  CpuBackend backend;
  ModelRunner runner(model_dir("mamba-tiny"), backend, small_runner());
  store.put("a", prefill_blob(runner, {1, 2, 3}, {}));
  store.put("b", prefill_blob(runner, {4, 5}, {}));
  expect_error([&] { store.fork("a", "b"); }, ErrorKind::InvalidArgument, {path, "\"a\"", "\"b\"", "already exists"},
               "fork onto an existing session");

  test::write_file(dir / "junk.db", std::string(4096, 'j'));
  expect_error([&] { SessionStore junk((dir / "junk.db").string()); }, ErrorKind::Io, {(dir / "junk.db").string()},
               "a file that is not a database");
  expect_error([&] { SessionStore folder(dir.path().string()); }, ErrorKind::Io, {dir.path().string()}, "a folder");
}

TEST(SessionStore, ForksAreIndependentContinuations) {
  CpuBackend backend;
  ModelRunner runner(model_dir("jamba-tiny"), backend, small_runner());
  const int64_t V = runner.spec().vocab_size;
  SamplingParams sampling;
  sampling.temperature = 1.0f;
  sampling.seed = 7;
  test::TempDir dir;
  SessionStore store((dir / "s.db").string());
  const std::string original = prefill_blob(runner, greedy_prompt("jamba-tiny"), sampling);
  store.put("base", original);
  store.fork("base", "fork");

  // Continues each restored sequence by sampling `n` tokens with its own seed, all sequences in
  // one batch; returns each sequence's tokens (the restored ones, then the new).
  auto continue_all = [&](std::vector<std::string> blobs, std::vector<uint64_t> seeds, int n) {
    std::vector<Sequence> seqs(blobs.size());
    std::vector<std::vector<int32_t>> tokens(blobs.size());
    std::vector<Sampler> samplers;
    for (size_t i = 0; i < blobs.size(); ++i) {
      seqs[i] = restore_sequence(runner, blobs[i], &tokens[i]);
      SamplingParams p = sampling;
      p.seed = seeds[i];
      samplers.emplace_back(p);
    }
    std::vector<Sequence*> ptrs;
    for (Sequence& s : seqs) ptrs.push_back(&s);
    for (int step = 0; step < n; ++step) {
      std::vector<std::vector<int32_t>> feed;
      for (auto& t : tokens) feed.push_back({t.back()});
      std::vector<float> logits = runner.step(ptrs, feed);
      for (size_t i = 0; i < seqs.size(); ++i)
        tokens[i].push_back(samplers[i].sample(std::span(logits).subspan(i * size_t(V), size_t(V)), tokens[i]));
    }
    for (size_t i = 0; i < seqs.size(); ++i) blobs[i] = snapshot_sequence(runner, seqs[i], tokens[i]);
    for (Sequence& s : seqs) runner.close(s);
    return std::make_pair(tokens, blobs);
  };

  // Both forks side by side, different seeds: different continuations ...
  auto [together, saved] = continue_all({*store.get("base"), *store.get("fork")}, {1, 2}, 12);
  EXPECT_NE(together[0], together[1]);
  store.put("base", saved[0]);
  store.put("fork", saved[1]);
  // ... each what a fresh restore of the original state gives on its own.
  for (size_t i = 0; i < 2; ++i) {
    auto [alone, unused] = continue_all({original}, {uint64_t(i + 1)}, 12);
    EXPECT_EQ(alone[0], together[i]) << "fork " << i;
  }
  // The saved sessions hold their own continuations.
  EXPECT_EQ(read_snapshot_header(*store.get("base")).tokens, together[0]);
  EXPECT_EQ(read_snapshot_header(*store.get("fork")).tokens, together[1]);
  auto [next, unused] = continue_all({*store.get("base"), *store.get("fork")}, {3, 3}, 4);
  EXPECT_EQ(std::vector<int32_t>(next[0].begin(), next[0].begin() + long(together[0].size())), together[0]);
  EXPECT_EQ(std::vector<int32_t>(next[1].begin(), next[1].begin() + long(together[1].size())), together[1]);
  EXPECT_EQ(runner.free_slots(), 3);
}

// --- `statelm run --session` ---


// A model folder with a tokenizer: mamba-tiny's config and weights.
void make_model_folder(const fs::path& dir, const std::string& model = "mamba-tiny") {
  fs::create_directories(dir);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(test::fixture("models/" + model + "/" + f), dir / f);
  test::write_file(dir / "tokenizer.json", test::tiny_tokenizer_json());
}

std::vector<int32_t> tokenize(const fs::path& model, const std::string& text) {
  auto r = test::run_statelm("tokenize --tokenizer " + (model / "tokenizer.json").string() + " --no-special", text);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return json::parse(r.out).get<std::vector<int32_t>>();
}

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s;
}

// Greedy ids and their text, from `generate` over a whole prompt (no session involved).
std::pair<std::vector<int32_t>, std::string> generate_text(const fs::path& model, const std::vector<int32_t>& prompt,
                                                           int max_tokens) {
  auto g = test::run_statelm("generate " + model.string() + " --ids " + join_ids(prompt) + " --max-tokens " +
                             std::to_string(max_tokens) + " --greedy --stop-id 9999 --json");
  EXPECT_EQ(g.exit_code, 0) << g.err;
  auto text = test::run_statelm("detokenize --tokenizer " + (model / "tokenizer.json").string(), g.out);
  EXPECT_EQ(text.exit_code, 0) << text.err;
  std::string s = text.out;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return {json::parse(g.out).get<std::vector<int32_t>>(), s};
}

TEST(CliSessions, SecondTurnReusesStateAndEqualsOneRun) {
  test::TempDir dir;
  const fs::path model = dir / "model";
  make_model_folder(model);
  const std::string db = (dir / "sessions.db").string();
  const std::string run = "run " + model.string() + " --max-tokens 8 --greedy --stop-id 9999 --session chat --sessions-db " + db;

  auto first = test::run_statelm(run + " --prompt 'Hello world'");
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(first.err.find("reused"), std::string::npos) << first.err;  // a new session
  const std::vector<int32_t> a = tokenize(model, "Hello world");
  auto [g1, text1] = generate_text(model, a, 8);
  EXPECT_EQ(first.out, "Hello world" + text1 + "\n");  // as a run without a session

  auto second = test::run_statelm(run + " --prompt ' and then more'");
  ASSERT_EQ(second.exit_code, 0) << second.err;
  // Everything but the last generated token (sampled, never fed) comes from the saved state.
  const size_t reused = a.size() + g1.size() - 1;
  EXPECT_NE(second.err.find("reused " + std::to_string(reused) + " tokens"), std::string::npos) << second.err;
  EXPECT_NE(second.err.find("prompt " + std::to_string(1 + tokenize(model, " and then more").size()) + " tokens"),
            std::string::npos)
      << second.err;

  std::vector<int32_t> whole = a;
  whole.insert(whole.end(), g1.begin(), g1.end());
  const std::vector<int32_t> b = tokenize(model, " and then more");
  whole.insert(whole.end(), b.begin(), b.end());
  auto [g2, text2] = generate_text(model, whole, 8);
  EXPECT_EQ(second.out, " and then more" + text2 + "\n");

  SessionStore store(db);
  std::optional<SessionInfo> info = store.info("chat");
  ASSERT_TRUE(info);
  EXPECT_EQ(info->n_tokens, int64_t(whole.size() + g2.size() - 1));
  std::vector<int32_t> all = whole;
  all.insert(all.end(), g2.begin(), g2.end());
  EXPECT_EQ(read_snapshot_header(*store.get("chat")).tokens, all);
}

TEST(CliSessions, DefaultDatabaseAndErrors) {
  test::TempDir dir;
  const fs::path model = dir / "model";
  make_model_folder(model);
  const char* old = std::getenv("XDG_DATA_HOME");
  const std::string saved = old ? old : "";
  setenv("XDG_DATA_HOME", (dir / "data").c_str(), 1);
  auto r = test::run_statelm("run " + model.string() + " --prompt 'Hi' --max-tokens 3 --greedy --session s1");
  if (old) setenv("XDG_DATA_HOME", saved.c_str(), 1); else unsetenv("XDG_DATA_HOME");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const fs::path db = dir / "data" / "statelm" / "sessions.db";
  ASSERT_TRUE(fs::exists(db));
  EXPECT_TRUE(SessionStore(db.string()).info("s1"));

  // The session belongs to mamba-tiny: resuming it with another model names the session.
  const fs::path other = dir / "other";
  make_model_folder(other, "mamba-tiny-ssm");
  auto wrong = test::run_statelm("run " + other.string() + " --prompt 'Hi' --session s1 --sessions-db " + db.string());
  EXPECT_EQ(wrong.exit_code, 1);
  EXPECT_EQ(std::count(wrong.err.begin(), wrong.err.end(), '\n'), 1) << wrong.err;
  for (const std::string& n : {db.string(), std::string("\"s1\""), std::string("another model")})
    EXPECT_NE(wrong.err.find(n), std::string::npos) << wrong.err;
}

}  // namespace
}  // namespace statelm
