// The sessions API (server/sessions_api.h) over a real socket: `statelm serve`'s HttpServer on an
// ephemeral port, over a real scheduler and a tiny fixture model, with its session store in a
// temp dir. Turns must generate exactly what one request over the whole conversation does;
// forks, exported and imported states continue independently and exactly; a session in use is
// 409, a missing one 404, a bad state 400; appending grows the tokens, not a Mamba state.
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <set>
#include <nlohmann/json.hpp>
#include <thread>

#include "backend/cpu/cpu_backend.h"
#include "runtime/generate.h"
#include "runtime/snapshot.h"
#include "server/http_server.h"
#include "unit/test_server_util.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A fixture model plus a tokenizer.json that covers exactly its vocabulary.
struct ModelFolder {
  test::TempDir dir;
  explicit ModelFolder(const std::string& name) {
    for (const char* f : {"config.json", "model.safetensors"})
      fs::copy_file(test::fixture("models/" + name + "/" + f), dir / f);
    const json config = json::parse(test::read_file(dir / "config.json"));
    test::write_file(dir / "tokenizer.json", test::tiny_tokenizer_json(config["vocab_size"].get<int>()));
  }
  std::string path() const { return dir.path().string(); }
};

RunnerOptions runner_options() {
  RunnerOptions o;
  o.max_sequences = 3;
  o.max_context = 256;
  o.kv_block_size = 8;
  return o;
}

// A server with the sessions API on 127.0.0.1:<any free port>, torn down as `statelm serve`
// does on SIGTERM. The engine thread starts with the server unless asked not to.
class SessionServer {
 public:
  explicit SessionServer(const ModelFolder& model, bool start_engine = true, int max_concurrent_requests = 64)
      : store((db_dir / "sessions.db").string()),
        tokenizer(Tokenizer::from_file(model.path())),
        runner(model.path(), backend, runner_options()),
        scheduler(runner),
        http(scheduler, tokenizer, server::model_limits(runner, tokenizer), options(store, max_concurrent_requests)),
        serving(http, scheduler, start_engine) {}
  httplib::Client client() const { return serving.client(); }
  httplib::Result post(const std::string& path, const json& body = json::object()) const {
    return client().Post(path.c_str(), body.dump(), "application/json");
  }
  // POST /v1/sessions, which must succeed; the new session's id.
  std::string create(const json& body = json::object()) const {
    auto r = post("/v1/sessions", body);
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
    return r && r->status == 200 ? json::parse(r->body)["id"].get<std::string>() : "";
  }
  json info(const std::string& id) const {
    auto r = client().Get(("/v1/sessions/" + id).c_str());
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
    return r && r->status == 200 ? json::parse(r->body) : json();
  }
  std::string state(const std::string& id) const {
    auto r = client().Get(("/v1/sessions/" + id + "/state").c_str());
    EXPECT_TRUE(r && r->status == 200) << (r ? r->body : "no response");
    return r ? r->body : "";
  }
  // The session's whole conversation, as its state records it.
  std::vector<int32_t> tokens(const std::string& id) const { return read_snapshot_header(state(id)).tokens; }

  test::TempDir db_dir;
  SessionStore store;
  CpuBackend backend;
  Tokenizer tokenizer;
  ModelRunner runner;
  Scheduler scheduler;
  server::HttpServer http;
  test_server::ServingThread serving;

 private:
  static server::ServerOptions options(SessionStore& store, int max_concurrent_requests) {
    server::ServerOptions o;
    o.max_concurrent_requests = max_concurrent_requests;
    o.port = 0;
    o.model_id = "tiny";
    o.sessions = &store;
    return o;
  }
};

// What one greedy request over `context` generates (on a runner of its own): the reference
// every turn is held to.
struct Expected {
  std::vector<int32_t> tokens;  // the stop token included, as the session's state has it
  std::string text, finish_reason;
};
Expected one_shot(const SessionServer& s, ModelRunner& runner, const std::vector<int32_t>& context, int64_t max_tokens) {
  SamplingParams p;
  p.greedy = true;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  p.stop_token_ids = server::model_limits(s.runner, s.tokenizer).stop_token_ids;
  GenerationResult r = generate(runner, context, p);
  Expected e;
  e.tokens = r.tokens;
  e.finish_reason = r.finish_reason;
  std::vector<int32_t> shown = r.tokens;
  if (r.finish_reason == "stop") shown.pop_back();
  e.text = s.tokenizer.decode(shown, /*skip_special_tokens=*/true);
  return e;
}

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The text of a completion, streamed ("data: " events) or not.
std::string completion_text(const httplib::Result& r, std::string* finish_reason = nullptr) {
  if (!r || r->status != 200) return "<status " + std::to_string(r ? r->status : -1) + ": " + (r ? r->body : "") + ">";
  if (r->get_header_value("Content-Type").find("text/event-stream") == std::string::npos) {
    const json j = json::parse(r->body);
    if (finish_reason) *finish_reason = j["choices"][0]["finish_reason"];
    return j["choices"][0]["text"];
  }
  std::string text;
  size_t at = 0;
  while (at < r->body.size()) {
    const size_t end = r->body.find("\n\n", at);
    if (end == std::string::npos || r->body.compare(at, 6, "data: ") != 0) return "<malformed stream: " + r->body + ">";
    const std::string data = r->body.substr(at + 6, end - at - 6);
    at = end + 2;
    if (data == "[DONE]") break;
    const json j = json::parse(data);
    if (j.contains("error")) return "<error event: " + data + ">";
    text += j["choices"][0]["text"].get<std::string>();
    if (finish_reason && !j["choices"][0]["finish_reason"].is_null()) *finish_reason = j["choices"][0]["finish_reason"];
  }
  return text;
}

void expect_error(const httplib::Result& r, int status, const std::string& needle, const std::string& what) {
  ASSERT_TRUE(r) << what;
  EXPECT_EQ(r->status, status) << what << ": " << r->body;
  const json j = json::parse(r->body, nullptr, false);
  ASSERT_TRUE(j.is_object() && j.contains("error")) << what << ": " << r->body;
  EXPECT_NE(j["error"]["message"].get<std::string>().find(needle), std::string::npos) << what << ": " << r->body;
}

class SessionsOverHttp : public ::testing::TestWithParam<const char*> {};

// create -> completions -> completions (one streamed) -> completions with text: each turn's text
// is what one request over the whole conversation generates, and the state holds exactly it.
TEST_P(SessionsOverHttp, TurnsEqualOneRequestOverTheConversation) {
  ModelFolder model(GetParam());
  SessionServer s(model);
  CpuBackend b2;
  ModelRunner alone(model.path(), b2, runner_options());
  std::vector<int32_t> conversation = {5, 17, 3, 40, 41, 9};
  const std::string id = s.create({{"prompt", conversation}});
  EXPECT_EQ(s.info(id)["tokens"], conversation.size());
  EXPECT_EQ(s.tokens(id), conversation);

  const std::vector<std::vector<int32_t>> turns = {{60, 61, 62}, {7}, s.tokenizer.encode(" and then", false)};
  for (size_t t = 0; t < turns.size(); ++t) {
    const Expected want = one_shot(s, alone, cat(conversation, turns[t]), 12);
    const int64_t state_tokens = s.info(id)["tokens"];  // fed so far: not fed again
    json body = {{"max_tokens", 12}, {"temperature", 0}, {"stream", t == 1}};
    if (t == 2) body["prompt"] = " and then";  // text: continues the conversation, no special tokens
    else body["prompt"] = turns[t];
    auto r = s.post("/v1/sessions/" + id + "/completions", body);
    std::string finish;
    EXPECT_EQ(completion_text(r, &finish), want.text) << GetParam() << " turn " << t;
    EXPECT_EQ(finish, want.finish_reason);
    if (t != 1) {  // usage: the whole conversation, of which the state already held all but the new part
      const json usage = json::parse(r->body)["usage"];
      EXPECT_EQ(usage["prompt_tokens"], conversation.size() + turns[t].size());
      EXPECT_EQ(usage["completion_tokens"], want.tokens.size());
      EXPECT_EQ(usage["prompt_tokens_details"]["cached_tokens"], state_tokens);
    }
    conversation = cat(cat(conversation, turns[t]), want.tokens);
    EXPECT_EQ(s.tokens(id), conversation) << GetParam() << " turn " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, SessionsOverHttp, ::testing::Values("mamba-tiny", "jamba-tiny"),
                         [](const auto& info) { return test::param_name(info.param); });

// A fork holds the same state and then goes its own way: each branch generates what one
// request over its own conversation does, and neither sees the other's turns.
TEST(ServerSessions, ForkDivergesIndependently) {
  ModelFolder model("mamba-tiny");
  SessionServer s(model);
  CpuBackend b2;
  ModelRunner alone(model.path(), b2, runner_options());
  const std::vector<int32_t> opening = {20, 21, 22, 23};
  const std::string a = s.create({{"prompt", opening}});
  auto f = s.post("/v1/sessions/" + a + "/fork");
  ASSERT_TRUE(f && f->status == 200) << (f ? f->body : "");
  const std::string b = json::parse(f->body)["id"];
  EXPECT_NE(a, b);
  EXPECT_EQ(s.tokens(b), opening);

  const std::vector<int32_t> pa = {30, 31}, pb = {90, 91, 92};
  const Expected want_a = one_shot(s, alone, cat(opening, pa), 10), want_b = one_shot(s, alone, cat(opening, pb), 10);
  ASSERT_NE(want_a.tokens, want_b.tokens) << "the test needs branches that differ";
  auto ra = s.post("/v1/sessions/" + a + "/completions", {{"prompt", pa}, {"max_tokens", 10}, {"temperature", 0}});
  auto rb = s.post("/v1/sessions/" + b + "/completions", {{"prompt", pb}, {"max_tokens", 10}, {"temperature", 0}});
  EXPECT_EQ(completion_text(ra), want_a.text);
  EXPECT_EQ(completion_text(rb), want_b.text);
  EXPECT_EQ(s.tokens(a), cat(cat(opening, pa), want_a.tokens));
  EXPECT_EQ(s.tokens(b), cat(cat(opening, pb), want_b.tokens));
  expect_error(s.post("/v1/sessions/nope/fork"), 404, "no session", "fork of a missing session");
}

// GET state, PUT it under another id (or into another server): both continue identically.
TEST(ServerSessions, StateExportImportContinuesIdentically) {
  ModelFolder model("jamba-tiny");
  SessionServer s(model);
  const std::string id = s.create({{"prompt", {5, 6, 7, 8, 9}}});
  auto r = s.post("/v1/sessions/" + id + "/completions", {{"prompt", {10, 11}}, {"max_tokens", 6}, {"temperature", 0}});
  ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "");
  const std::string blob = s.state(id);
  auto put = s.client().Put("/v1/sessions/imported-1/state", blob, "application/octet-stream");
  ASSERT_TRUE(put && put->status == 200) << (put ? put->body : "");
  EXPECT_EQ(json::parse(put->body)["id"], "imported-1");
  EXPECT_EQ(s.info("imported-1")["tokens"], s.info(id)["tokens"]);

  SessionServer other(model);  // a second server, its own database
  put = other.client().Put(("/v1/sessions/" + id + "/state").c_str(), blob, "application/octet-stream");
  ASSERT_TRUE(put && put->status == 200) << (put ? put->body : "");

  const json next = {{"prompt", {12, 13, 14}}, {"max_tokens", 8}, {"temperature", 0}};
  const std::string original = completion_text(s.post("/v1/sessions/" + id + "/completions", next));
  EXPECT_EQ(completion_text(s.post("/v1/sessions/imported-1/completions", next)), original);
  EXPECT_EQ(completion_text(other.post("/v1/sessions/" + id + "/completions", next)), original);
  EXPECT_EQ(s.tokens("imported-1"), s.tokens(id));
  EXPECT_EQ(other.tokens(id), s.tokens(id));
}

// Bad states are refused with a 400 that says why, and leave the session as it was.
TEST(ServerSessions, BadStateIsRefused) {
  ModelFolder model("mamba-tiny");
  SessionServer s(model);
  const std::string id = s.create({{"prompt", {1, 2, 3}}});
  const std::string good = s.state(id);
  auto put = [&](const std::string& blob) { return s.client().Put(("/v1/sessions/" + id + "/state").c_str(), blob, "application/octet-stream"); };
  expect_error(put(""), 400, "snapshot", "empty body");
  expect_error(put("definitely not a snapshot"), 400, "not a valid statelm snapshot", "garbage");
  expect_error(put(good.substr(0, good.size() / 2)), 400, "truncated", "truncated");
  std::string flipped = good;
  flipped[flipped.size() - 5] ^= 0x21;
  expect_error(put(flipped), 400, "state: ", "corrupted");
  {
    CpuBackend b2;
    ModelRunner other(test::fixture("models/mamba2-tiny").string(), b2, runner_options());
    expect_error(put(empty_snapshot(other)), 400, "another model", "another model's state");
  }
  EXPECT_EQ(s.state(id), good);
  // Other bad requests: 400s that name the problem, never a crash.
  const std::string turn = "/v1/sessions/" + id + "/completions";
  expect_error(s.client().Post(turn.c_str(), "{not json", "application/json"), 400, "not valid JSON", "bad JSON");
  expect_error(s.post(turn, {{"prompt", {100000}}}), 400, "outside the vocabulary", "bad id");
  expect_error(s.post(turn, {{"prompt", {1}}, {"n", 2}}), 400, "n must be 1", "n = 2");
  expect_error(s.post(turn, {{"prompt", 5}}), 400, "prompt", "prompt of the wrong type");
  expect_error(s.post(turn, {{"prompt", {1}}, {"temperature", -1}}), 400, "temperature", "bad temperature");
  expect_error(s.post("/v1/sessions/" + id + "/append", {{"prompt", ""}}), 400, "required", "empty append");
  expect_error(s.post("/v1/sessions", {{"system", 3}}), 400, "system", "bad system");
  expect_error(s.client().Post("/v1/sessions", "[1]", "application/json"), 400, "JSON object", "not an object");
  // After an append every token is in the state: a turn must bring at least one.
  ASSERT_EQ(s.post("/v1/sessions/" + id + "/append", {{"prompt", {4}}})->status, 200);
  expect_error(s.post(turn, {{"max_tokens", 3}}), 400, "at least one new token", "nothing to feed");
  EXPECT_EQ(s.tokens(id), std::vector<int32_t>({1, 2, 3, 4}));
}

// Deleted is gone: every route on it is 404 with an OpenAI error body.
TEST(ServerSessions, DeleteThenNotFound) {
  ModelFolder model("mamba-tiny");
  SessionServer s(model);
  const std::string id = s.create({{"prompt", {1, 2, 3}}});
  auto d = s.client().Delete(("/v1/sessions/" + id).c_str());
  ASSERT_TRUE(d && d->status == 200) << (d ? d->body : "");
  EXPECT_EQ(json::parse(d->body), json({{"id", id}, {"object", "session.deleted"}, {"deleted", true}}));
  const std::string path = "/v1/sessions/" + id;
  expect_error(s.client().Get(path.c_str()), 404, "no session", "GET");
  expect_error(s.client().Delete(path.c_str()), 404, "no session", "DELETE again");
  expect_error(s.client().Get((path + "/state").c_str()), 404, "no session", "GET state");
  expect_error(s.post(path + "/completions", {{"prompt", {1}}}), 404, "no session", "completions");
  expect_error(s.post(path + "/append", {{"prompt", {1}}}), 404, "no session", "append");
  auto r = s.client().Get(path.c_str());
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "session_not_found");
}

// While a turn runs, whatever would change the session is 409; reading it is fine; once the turn
// has answered, the next one may start at once.
TEST(ServerSessions, ConcurrentUseIsConflict) {
  ModelFolder model("mamba-tiny");
  SessionServer s(model, /*start_engine=*/false);  // turns wait for the engine: the test decides when
  // With no engine a create would wait too: put the session in directly.
  s.store.put("busy", s.scheduler.empty_snapshot());
  const std::string path = "/v1/sessions/busy";
  std::string first_text;
  std::thread first([&] {
    for (;;) {  // the probe below may hold the session for a moment: retry its 409s
      auto r = s.post(path + "/completions", {{"prompt", {8, 9, 10}}, {"max_tokens", 5}, {"temperature", 0}});
      if (r && r->status == 409) continue;
      first_text = completion_text(r);
      return;
    }
  });
  // Until the first turn holds the session, re-putting its state succeeds; then it is 409.
  const std::string empty = s.scheduler.empty_snapshot();
  bool busy = false;
  for (int i = 0; i < 500 && !busy; ++i) {
    auto r = s.client().Put((path + "/state").c_str(), empty, "application/octet-stream");
    busy = r && r->status == 409;
    if (!busy) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(busy) << "the first turn never took the session";
  expect_error(s.post(path + "/completions", {{"prompt", {1}}}), 409, "in use", "a second turn");
  expect_error(s.post(path + "/append", {{"prompt", {1}}}), 409, "in use", "append");
  expect_error(s.client().Delete(path.c_str()), 409, "in use", "delete");
  auto r = s.post(path + "/completions", {{"prompt", {1}}});
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "session_busy");
  EXPECT_EQ(s.client().Get(path.c_str())->status, 200);  // reading does not conflict
  EXPECT_EQ(s.post(path + "/fork")->status, 200);        // nor does copying the last state

  s.scheduler.start();
  first.join();
  CpuBackend b2;
  ModelRunner alone(model.path(), b2, runner_options());
  EXPECT_EQ(first_text, one_shot(s, alone, {8, 9, 10}, 5).text);
  r = s.post(path + "/completions", {{"prompt", {11}}, {"max_tokens", 2}});
  EXPECT_EQ(r->status, 200) << r->body;
}

// A client that hangs up on a non-streamed turn: the turn is cancelled (it never runs), the
// session is released at once (the next turn is not 409) and keeps its state.
TEST(ServerSessions, NonStreamedTurnOfAGoneClientIsCancelled) {
  ModelFolder model("mamba-tiny");
  SessionServer s(model, /*start_engine=*/false);  // the turn waits in the queue
  s.store.put("left", s.scheduler.empty_snapshot());
  const std::string path = "/v1/sessions/left";
  auto c = s.client();
  c.set_read_timeout(0, 200 * 1000);  // gives up after 200 ms and closes the connection
  auto gone = c.Post((path + "/completions").c_str(), json{{"prompt", {8, 9, 10}}, {"max_tokens", 5}}.dump(),
                     "application/json");
  EXPECT_FALSE(gone) << "no engine: the turn cannot have finished";
  bool released = false;
  for (int i = 0; i < 200 && !released; ++i) {  // the server notices within a poll (50 ms)
    auto r = s.client().Put((path + "/state").c_str(), s.scheduler.empty_snapshot(), "application/octet-stream");
    released = r && r->status == 200;
    if (!released) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(released) << "the abandoned turn still holds the session";
  s.scheduler.start();
  auto r = s.post(path + "/completions", {{"prompt", {11, 12}}, {"max_tokens", 2}, {"temperature", 0}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(s.info("left")["tokens"], 2 + 1) << "only this turn's prompt (and the fed first generated token)";
  EXPECT_EQ(s.scheduler.stats().tokens_in, 2) << "the abandoned turn's prompt was never prefilled";
}

// Session turns are requests like any other: they hold one of --max-concurrent-requests (a
// third request while two wait is 429) and their tokens show in /metrics.
TEST(ServerSessions, TurnsCountInLimitsAndMetrics) {
  ModelFolder model("mamba-tiny");
  SessionServer s(model, /*start_engine=*/false, /*max_concurrent_requests=*/2);
  s.store.put("a", s.scheduler.empty_snapshot());
  s.store.put("b", s.scheduler.empty_snapshot());
  int turn_tokens = -1;  // what turn a generated: up to 3, fewer when it samples the end of text
  std::thread turn_a([&] {
    auto r = s.post("/v1/sessions/a/completions", {{"prompt", {8, 9}}, {"max_tokens", 3}});
    if (r && r->status == 200) turn_tokens = json::parse(r->body)["usage"]["completion_tokens"].get<int>();
  });
  std::thread append_b([&] { s.post("/v1/sessions/b/append", {{"prompt", {4, 5, 6}}}); });
  // Both wait for the engine, each holding a request slot: a third request is refused. Probe only
  // once both are queued: a probe that held a slot for a moment while one of them arrived would
  // have that one refused instead (seen under ASan on 2 cores). The probe is an invalid request
  // (400 at once once it has a slot) so that it never waits itself.
  for (int i = 0; i < 1000 && s.scheduler.stats().submitted < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(s.scheduler.stats().submitted, 2) << "both session requests should be queued";
  int status = 0;
  for (int i = 0; i < 500 && status != 429; ++i) {
    auto r = s.post("/v1/completions", {{"prompt", {1, 2}}, {"max_tokens", -1}});
    status = r ? r->status : 0;
    if (status != 429) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(status, 429) << "two session requests in flight should fill --max-concurrent-requests 2";
  s.scheduler.start();
  turn_a.join();
  append_b.join();
  const std::string metrics = s.client().Get("/metrics")->body;
  auto counter = [&](const std::string& name) {
    const size_t at = metrics.find("\n" + name + " ");
    return at == std::string::npos ? -1.0 : std::stod(metrics.substr(at + name.size() + 2));
  };
  ASSERT_GE(turn_tokens, 1) << "turn a did not finish";
  EXPECT_GE(counter("statelm_generation_tokens_total"), turn_tokens) << metrics;
  EXPECT_GE(counter("statelm_prompt_tokens_total"), 2 + 3) << metrics;
}

// append feeds text into the state: the token count grows, a Mamba state's size does not, and
// the next turn continues after the appended text.
TEST(ServerSessions, AppendGrowsTokensNotMambaState) {
  ModelFolder model("mamba-tiny");
  SessionServer s(model);
  CpuBackend b2;
  ModelRunner alone(model.path(), b2, runner_options());
  const std::string id = s.create();
  const json empty = s.info(id);
  EXPECT_EQ(empty["tokens"], 0);
  EXPECT_EQ(empty["model"], "tiny");
  EXPECT_GT(empty["state_bytes"].get<int64_t>(), 0);
  std::vector<int32_t> conversation;
  for (const char* text : {"Hello there", ", general", " Kenobi"}) {
    auto r = s.post("/v1/sessions/" + id + "/append", {{"prompt", text}});
    ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "");
    const std::vector<int32_t> ids = s.tokenizer.encode(text, /*add_special_tokens=*/conversation.empty());
    conversation = cat(conversation, ids);
    const json j = json::parse(r->body);
    EXPECT_EQ(j["appended_tokens"], ids.size());
    EXPECT_EQ(j["tokens"], conversation.size());
    const json now = s.info(id);
    EXPECT_EQ(now["tokens"], conversation.size());
    EXPECT_EQ(now["pending_tokens"], 0);
    EXPECT_EQ(now["state_bytes"], empty["state_bytes"]);  // fixed size, whatever the length
  }
  EXPECT_EQ(s.tokens(id), conversation);
  auto r = s.post("/v1/sessions/" + id + "/completions",
                  {{"prompt", "!"}, {"max_tokens", 8}, {"temperature", 0}, {"logprobs", 2}});
  EXPECT_EQ(completion_text(r), one_shot(s, alone, cat(conversation, s.tokenizer.encode("!", false)), 8).text);
  EXPECT_TRUE(json::parse(r->body)["choices"][0]["logprobs"].is_object()) << r->body;  // as /v1/completions
}

// create's "system" goes through the chat template (plain here: no tokenizer_config.json),
// "prompt" follows; the list shows every session.
TEST(ServerSessions, CreateWithSystemAndList) {
  ModelFolder model("mamba-tiny");
  SessionServer s(model);
  const json messages = json::array({json{{"role", "system"}, {"content", "Be brief."}}});
  const std::string rendered = server::ChatPrompt::from_source(std::nullopt).render(messages, false);
  ASSERT_FALSE(rendered.empty());
  const std::string id = s.create({{"system", "Be brief."}, {"prompt", "Hi"}});
  EXPECT_EQ(s.tokens(id), cat(s.tokenizer.encode(rendered, true), s.tokenizer.encode("Hi", false)));
  const std::string other = s.create();
  auto r = s.client().Get("/v1/sessions");
  ASSERT_TRUE(r && r->status == 200);
  const json list = json::parse(r->body);
  EXPECT_EQ(list["object"], "list");
  std::set<std::string> ids;
  for (const json& e : list["data"]) {
    ids.insert(e["id"].get<std::string>());
    EXPECT_EQ(e["object"], "session");
    EXPECT_EQ(e["model"], "tiny");
  }
  EXPECT_EQ(ids, std::set<std::string>({id, other}));
}

}  // namespace
}  // namespace statelm
