// `statelm serve` in-process: the HTTP server on an ephemeral port over a real scheduler and the
// mamba-tiny fixture, driven with httplib's client. Completions must be exactly what a
// sequence run alone (generate()) produces, streamed or not, under concurrency and after
// clients vanish mid-stream; every bad request is an OpenAI error body with the right status.
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <sstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "backend/cpu/cpu_backend.h"
#include "runtime/generate.h"
#include "server/http_server.h"
#include "unit/test_support.h"

namespace statelm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// mamba-tiny plus a tokenizer.json that covers its 216 ids.
struct ModelFolder {
  test::TempDir dir;
  ModelFolder() {
    for (const char* f : {"config.json", "model.safetensors"})
      fs::copy_file(test::fixture(std::string("models/mamba-tiny/") + f), dir / f);
    test::write_file(dir / "tokenizer.json", test::tiny_tokenizer_json());
  }
  std::string path() const { return dir.path().string(); }
};

RunnerOptions runner_options(int32_t sequences) {
  RunnerOptions o;
  o.max_sequences = sequences;
  o.max_context = 256;
  return o;
}

// A server on 127.0.0.1:<any free port>, torn down as `statelm serve` does on SIGTERM.
class TestServer {
 public:
  explicit TestServer(const ModelFolder& model, SchedulerOptions so = {}, int32_t sequences = 4)
      : tokenizer(Tokenizer::from_file(model.path())),
        runner(model.path(), backend, runner_options(sequences)),
        scheduler(runner, so),
        http(scheduler, tokenizer, server::model_limits(runner, tokenizer), options()) {
    port = http.bind();
    scheduler.start();
    thread_ = std::thread([this] { http.serve(); });
  }
  ~TestServer() {
    http.shutdown();
    scheduler.stop();
    thread_.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60, 0);
    return c;
  }
  httplib::Result post(const json& body) const { return client().Post("/v1/completions", body.dump(), "application/json"); }
  // Waits (up to 10 s) until no request holds a slot or waits for one, and a one-token probe
  // request still succeeds.
  bool idle() const {
    for (int i = 0; i < 100; ++i) {
      auto r = post({{"prompt", {1}}, {"max_tokens", 1}});
      for (int j = 0; j < 10; ++j) {
        SchedulerStats s = scheduler.stats();
        if (r && r->status == 200 && s.running == 0 && s.waiting == 0 && s.free_slots == runner.max_sequences())
          return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
    SchedulerStats s = scheduler.stats();
    ADD_FAILURE() << "running " << s.running << ", waiting " << s.waiting << ", free slots " << s.free_slots;
    return false;
  }

  CpuBackend backend;
  Tokenizer tokenizer;
  ModelRunner runner;
  Scheduler scheduler;
  server::HttpServer http;
  int port = 0;

 private:
  static server::ServerOptions options() {
    server::ServerOptions o;
    o.port = 0;
    o.model_id = "mamba-tiny";
    return o;
  }
  std::thread thread_;
};

// The same prompt through generate() on a runner of its own: the text and finish reason a
// request must get, whatever else the server is doing.
struct Alone {
  std::vector<int32_t> tokens;  // without a final stop token
  std::string text, finish_reason;
  int64_t completion_tokens = 0;
};
Alone run_alone(const TestServer& s, ModelRunner& runner, const std::vector<int32_t>& prompt, int64_t max_tokens) {
  SamplingParams p;
  p.greedy = true;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  p.stop_token_ids = server::model_limits(s.runner, s.tokenizer).stop_token_ids;
  GenerationResult r = generate(runner, prompt, p);
  Alone a;
  a.tokens = r.tokens;
  a.completion_tokens = int64_t(r.tokens.size());
  a.finish_reason = r.finish_reason;
  if (r.finish_reason == "stop") a.tokens.pop_back();
  a.text = s.tokenizer.decode(a.tokens, /*skip_special_tokens=*/true);
  return a;
}

struct Sse {
  std::string text, finish_reason;
  bool done = false, well_formed = true;
  json error;
};
Sse parse_sse(const std::string& body) {
  Sse s;
  size_t at = 0;
  while (at < body.size()) {
    const size_t end = body.find("\n\n", at);
    if (end == std::string::npos || body.compare(at, 6, "data: ") != 0 || s.done) {
      s.well_formed = false;
      break;
    }
    const std::string data = body.substr(at + 6, end - at - 6);
    at = end + 2;
    if (data == "[DONE]") {
      s.done = true;
      continue;
    }
    json j = json::parse(data);
    if (j.contains("error")) {
      s.error = j;
      continue;
    }
    s.text += j["choices"][0]["text"].get<std::string>();
    if (!j["choices"][0]["finish_reason"].is_null()) s.finish_reason = j["choices"][0]["finish_reason"];
  }
  return s;
}

class ServerTest : public ::testing::Test {
 protected:
  ModelFolder model;
};

TEST_F(ServerTest, HealthAndModels) {
  TestServer s(model);
  auto r = s.client().Get("/health");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body), json({{"status", "ok"}}));
  r = s.client().Get("/v1/models");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  json j = json::parse(r->body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], "mamba-tiny");
  EXPECT_EQ(j["data"][0]["object"], "model");
}

TEST_F(ServerTest, GreedyCompletionMatchesGenerate) {
  TestServer s(model);
  CpuBackend b2;
  ModelRunner alone_runner(model.path(), b2, runner_options(1));
  for (const std::vector<int32_t>& prompt : {std::vector<int32_t>{5, 17, 3, 40, 41}, std::vector<int32_t>{60}}) {
    Alone want = run_alone(s, alone_runner, prompt, 24);
    auto r = s.post({{"model", "mamba-tiny"}, {"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    json j = json::parse(r->body);
    EXPECT_EQ(j["object"], "text_completion");
    EXPECT_EQ(j["model"], "mamba-tiny");
    EXPECT_EQ(j["choices"][0]["text"], want.text);
    EXPECT_EQ(j["choices"][0]["finish_reason"], want.finish_reason);
    EXPECT_EQ(j["usage"]["prompt_tokens"], prompt.size());
    EXPECT_EQ(j["usage"]["completion_tokens"], want.completion_tokens);
    EXPECT_EQ(j["usage"]["total_tokens"], int64_t(prompt.size()) + want.completion_tokens);

    auto st = s.post({{"prompt", prompt}, {"max_tokens", 24}, {"temperature", 0}, {"stream", true}});
    ASSERT_TRUE(st);
    ASSERT_EQ(st->status, 200) << st->body;
    EXPECT_NE(st->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
    Sse sse = parse_sse(st->body);
    EXPECT_TRUE(sse.well_formed) << st->body;
    EXPECT_TRUE(sse.done);
    EXPECT_EQ(sse.text, want.text);
    EXPECT_EQ(sse.finish_reason, want.finish_reason);
  }
}

TEST_F(ServerTest, TextPromptIsTokenizedLikeTheTokenizer) {
  TestServer s(model);
  CpuBackend b2;
  ModelRunner alone_runner(model.path(), b2, runner_options(1));
  Alone want = run_alone(s, alone_runner, s.tokenizer.encode("hello world"), 12);
  // The OpenAI SDK sends a single prompt as a one-element list.
  for (json prompt : {json("hello world"), json::array({"hello world"})}) {
    auto r = s.post({{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], want.text);
  }
}

TEST_F(ServerTest, StopStringSplitAcrossTokensNeverLeaks) {
  TestServer s(model);
  CpuBackend b2;
  ModelRunner alone_runner(model.path(), b2, runner_options(1));
  const std::vector<int32_t> prompt{5, 17, 3, 40, 41};
  Alone full = run_alone(s, alone_runner, prompt, 40);
  // A two-character stop string whose first character ends one token's text and whose second
  // starts the next one's, as far into the text as possible.
  IncrementalDetokenizer detok(s.tokenizer);
  std::string text, stop;
  for (int32_t id : full.tokens) {
    std::string piece = detok.push(id);
    if (!text.empty() && !piece.empty() && text.size() > 2) stop = text.substr(text.size() - 1) + piece.substr(0, 1);
    text += piece;
  }
  ASSERT_FALSE(stop.empty()) << "the fixture's greedy text is too short: \"" << full.text << "\"";
  const std::string want = full.text.substr(0, full.text.find(stop));
  for (bool stream : {false, true}) {
    auto r = s.post({{"prompt", prompt}, {"max_tokens", 40}, {"temperature", 0}, {"stop", {"\x01never", stop}},
                     {"stream", stream}});
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    if (stream) {
      Sse sse = parse_sse(r->body);
      EXPECT_TRUE(sse.done && sse.well_formed);
      EXPECT_EQ(sse.text, want) << "stop " << stop;
      EXPECT_EQ(sse.finish_reason, "stop");
    } else {
      json j = json::parse(r->body);
      EXPECT_EQ(j["choices"][0]["text"], want) << "stop " << stop;
      EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
    }
  }
  auto r = s.post({{"prompt", prompt}, {"max_tokens", 40}, {"temperature", 0}, {"stop", stop}});
  ASSERT_TRUE(r);
  EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], want);
  EXPECT_TRUE(s.idle());
}

void expect_error(const httplib::Result& r, int status, const std::string& param, const std::string& what) {
  ASSERT_TRUE(r) << what;
  EXPECT_EQ(r->status, status) << what << ": " << r->body;
  json j = json::parse(r->body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << what << ": " << r->body;
  ASSERT_TRUE(j.contains("error")) << what;
  const json& e = j["error"];
  EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << what;
  EXPECT_TRUE(e["type"].is_string()) << what;
  EXPECT_TRUE(e.contains("code")) << what;
  if (param.empty()) EXPECT_TRUE(e["param"].is_null()) << what << ": " << r->body;
  else EXPECT_EQ(e["param"], param) << what << ": " << r->body;
}

TEST_F(ServerTest, BadRequestsGetOpenAiErrors) {
  TestServer s(model);
  auto raw = [&](const std::string& body) { return s.client().Post("/v1/completions", body, "application/json"); };
  expect_error(raw("{\"prompt\": [1, 2"), 400, "", "malformed JSON");
  expect_error(raw("[1, 2]"), 400, "", "not an object");
  expect_error(raw("{\"prompt\": \"caf\xc3\"}"), 400, "", "broken UTF-8 in the body");
  expect_error(raw(R"({"prompt": "a\ud800b"})"), 400, "", "a lone surrogate escape");
  expect_error(s.post({{"max_tokens", 4}}), 400, "prompt", "missing prompt");
  expect_error(s.post({{"prompt", 5}}), 400, "prompt", "prompt of the wrong type");
  expect_error(s.post({{"prompt", ""}}), 400, "prompt", "empty prompt");
  expect_error(s.post({{"prompt", {1, 216}}}), 400, "prompt", "token id outside the vocabulary");
  expect_error(s.post({{"prompt", {1, -3}}}), 400, "prompt", "negative token id");
  expect_error(s.post({{"prompt", {"a", "b"}}}), 400, "prompt", "several prompts");
  expect_error(s.post({{"prompt", {1, 2}}, {"max_tokens", "8"}}), 400, "max_tokens", "max_tokens as a string");
  expect_error(s.post({{"prompt", {1, 2}}, {"max_tokens", 0}}), 400, "max_tokens", "max_tokens 0");
  expect_error(s.post({{"prompt", {1, 2}}, {"temperature", -1}}), 400, "temperature", "negative temperature");
  expect_error(s.post({{"prompt", {1, 2}}, {"top_p", 0}}), 400, "top_p", "top_p 0");
  expect_error(s.post({{"prompt", {1, 2}}, {"stop", {1}}}), 400, "stop", "stop of numbers");
  expect_error(s.post({{"prompt", {1, 2}}, {"stream", "yes"}}), 400, "stream", "stream as a string");
  expect_error(s.post({{"prompt", {1, 2}}, {"n", 2}}), 400, "n", "n > 1");
  auto r = s.post({{"prompt", {1, 2}}, {"max_tokens", 255}});
  expect_error(r, 400, "max_tokens", "prompt + max_tokens beyond the context");
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "context_length_exceeded");
  expect_error(s.client().Get("/v1/nothing"), 404, "", "unknown route");
  expect_error(s.client().Get("/v1/completions"), 404, "", "wrong method");
  // Nothing above reached the scheduler; a good request still works.
  r = s.post({{"prompt", {1, 2}}, {"max_tokens", 2}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(ServerTest, FullQueueIs429WithRetryAfter) {
  SchedulerOptions so;
  so.max_waiting = 0;  // every request finds the queue full
  TestServer s(model, so);
  auto r = s.post({{"prompt", {1, 2}}, {"max_tokens", 2}});
  expect_error(r, 429, "", "queue full");
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  EXPECT_EQ(json::parse(r->body)["error"]["type"], "rate_limit_error");
}

TEST_F(ServerTest, ClientGoneMidStreamFreesItsSlot) {
  TestServer s(model, {}, 2);
  for (int round = 0; round < 3; ++round) {
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.set_header("Content-Type", "application/json");
    req.body = json{{"prompt", {5, 17, 3}}, {"max_tokens", 250}, {"temperature", 1.5}, {"seed", round}, {"stream", true}}.dump();
    int chunks = 0;
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
    auto c = s.client();
    auto r = c.send(req);  // the receiver hangs up after the first chunk
    EXPECT_GE(chunks, 1);
  }
  EXPECT_TRUE(s.idle()) << "a slot is still held";
  auto r = s.post({{"prompt", {1, 2}}, {"max_tokens", 2}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST_F(ServerTest, ConcurrentClientsEachGetTheirAloneResult) {
  TestServer s(model, {}, 4);  // 8 clients, 4 slots: half of them queue
  CpuBackend b2;
  ModelRunner alone_runner(model.path(), b2, runner_options(1));
  constexpr int kClients = 8;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<Alone> want;
  for (int i = 0; i < kClients; ++i) {
    prompts.push_back({int32_t(3 + i), int32_t(40 + 7 * i), int32_t(100 + i), 17});
    want.push_back(run_alone(s, alone_runner, prompts.back(), 20));
  }
  std::vector<std::string> got(kClients), reason(kClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i)
    clients.emplace_back([&, i] {
      const bool stream = i % 2 == 1;
      auto r = s.post({{"prompt", prompts[i]}, {"max_tokens", 20}, {"temperature", 0}, {"stream", stream}});
      if (!r || r->status != 200) return;
      if (stream) {
        Sse sse = parse_sse(r->body);
        got[i] = sse.done ? sse.text : "<no [DONE]>";
        reason[i] = sse.finish_reason;
      } else {
        json j = json::parse(r->body);
        got[i] = j["choices"][0]["text"];
        reason[i] = j["choices"][0]["finish_reason"];
      }
    });
  for (auto& t : clients) t.join();
  for (int i = 0; i < kClients; ++i) {
    EXPECT_EQ(got[i], want[i].text) << "client " << i;
    EXPECT_EQ(reason[i], want[i].finish_reason) << "client " << i;
  }
  EXPECT_TRUE(s.idle());
}

// GET /metrics as {"name{labels}": value}; comment lines skipped.
std::map<std::string, double> scrape(const TestServer& s) {
  auto r = s.client().Get("/metrics");
  std::map<std::string, double> m;
  if (!r || r->status != 200) {
    ADD_FAILURE() << "GET /metrics failed";
    return m;
  }
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/plain; version=0.0.4");
  std::istringstream in(r->body);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    EXPECT_NE(sp, std::string::npos) << line;
    if (sp != std::string::npos) m[line.substr(0, sp)] = std::stod(line.substr(sp + 1));
  }
  return m;
}

TEST_F(ServerTest, MetricsCountCompletionsAndReturnToIdle) {
  TestServer s(model);
  CpuBackend b2;
  ModelRunner alone_runner(model.path(), b2, runner_options(1));
  const std::vector<int32_t> prompt{5, 17, 3, 40, 41};
  Alone want = run_alone(s, alone_runner, prompt, 12);
  ASSERT_GE(want.completion_tokens, 2);

  expect_error(s.post({{"prompt", {1, 216}}}), 400, "prompt", "token id outside the vocabulary");
  auto r = s.post({{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["usage"]["completion_tokens"], want.completion_tokens);
  r = s.post({{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}, {"stream", true}});
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_TRUE(parse_sse(r->body).done);

  // The gauges come from the scheduler's stats, refreshed by its next (idle) step.
  std::map<std::string, double> m;
  for (int i = 0; i < 200; ++i) {
    m = scrape(s);
    if (m["statelm_running_sequences"] == 0 && m["statelm_state_slots_free"] == s.runner.max_sequences()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(m["statelm_requests_total{status=\"200\"}"], 2);
  EXPECT_EQ(m["statelm_requests_total{status=\"400\"}"], 1);
  EXPECT_EQ(m["statelm_requests_total{status=\"503\"}"], 0);
  EXPECT_EQ(m["statelm_prompt_tokens_total"], 2 * prompt.size());
  EXPECT_EQ(m["statelm_generation_tokens_total"], 2 * want.completion_tokens);
  EXPECT_EQ(m["statelm_time_to_first_token_seconds_count"], 2);
  EXPECT_EQ(m["statelm_time_to_first_token_seconds_bucket{le=\"+Inf\"}"], 2);
  EXPECT_GT(m["statelm_time_to_first_token_seconds_sum"], 0);
  EXPECT_EQ(m["statelm_inter_token_latency_seconds_count"], 2 * (want.completion_tokens - 1));
  EXPECT_EQ(m["statelm_inter_token_latency_seconds_bucket{le=\"+Inf\"}"], 2 * (want.completion_tokens - 1));
  EXPECT_EQ(m["statelm_running_sequences"], 0);
  EXPECT_EQ(m["statelm_waiting_sequences"], 0);
  EXPECT_EQ(m["statelm_state_slots_free"], s.runner.max_sequences());
  EXPECT_EQ(m["statelm_kv_blocks_free"], s.runner.free_blocks());
  EXPECT_EQ(m["statelm_scheduler_steps_total"], s.scheduler.stats().steps);
  EXPECT_GT(m["statelm_scheduler_steps_total"], 0);
  EXPECT_EQ(m["statelm_preemptions_total"], 0);
  EXPECT_EQ(m["statelm_prefix_cache_lookups_total"], 0);

  // A wrong method on the completions route counts as its 404.
  EXPECT_EQ(s.client().Get("/v1/completions")->status, 404);
  EXPECT_EQ(scrape(s)["statelm_requests_total{status=\"404\"}"], 1);
}

}  // namespace
}  // namespace statelm
